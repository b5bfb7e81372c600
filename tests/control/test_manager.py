"""BlockManager: fork, copy-on-write, prefix caching, admission queries, and every error path.

Each error test asserts the message and that the state after the error equals
the state before it (snapshots compare the whole state).
"""

import dataclasses
from array import array

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyserve_sim import BlockManager
from tinyserve_sim.control.prefix_cache import (
    ROOT_HASH,
    hash_block,
    hash_blocks,
    hash_token_array,
)
from tinyserve_sim.errors import (
    BlockIdError,
    ConfigError,
    DuplicateSequenceError,
    InvalidArgumentError,
    InvalidTokenCountError,
    OutOfBlocksError,
    UnknownSequenceError,
)


def unchanged(manager, call, error, match):
    before = manager.snapshot()
    with pytest.raises(error, match=match):
        call()
    assert manager.snapshot() == before


def test_slot_of_token_t_is_table_times_block_size_plus_offset():
    m = BlockManager(num_blocks=10, block_size=4, policy="lifo")
    step = m.add("a", 6)
    table = m.block_table("a")
    assert table == (9, 8)
    assert step.slot_mapping.tolist() == [9 * 4 + 0, 9 * 4 + 1, 9 * 4 + 2, 9 * 4 + 3, 8 * 4 + 0, 8 * 4 + 1]
    step = m.append("a", 3)
    assert step.slot_mapping.tolist() == [8 * 4 + 2, 8 * 4 + 3, 7 * 4 + 0]
    assert m.slot_mapping("a", 5, 7).tolist() == [8 * 4 + 1, 8 * 4 + 2]


def test_fork_shares_everything_and_allocates_nothing():
    m = BlockManager(8, 4)
    m.add("p", 6)
    step = m.fork("p", "c")
    assert step.allocated == () and step.shared == (0, 1)
    assert m.block_table("c") == m.block_table("p")
    assert [m.pool.ref_count(b) for b in (0, 1)] == [2, 2]


def test_copy_on_write_on_a_shared_partial_block():
    m = BlockManager(8, 4)
    m.add("p", 6)
    m.fork("p", "c")
    step = m.append("c", 1)
    assert step.copies == ((1, 2),) and step.allocated == (2,)
    assert m.block_table("c") == (0, 2) and m.block_table("p") == (0, 1)
    assert m.pool.ref_count(1) == 1 and m.pool.ref_count(0) == 2
    # The parent is now the only user of block 1: it writes in place.
    assert m.append("p", 1).copies == ()


def test_full_shared_blocks_are_never_copied():
    m = BlockManager(8, 4)
    m.add("p", 8)
    m.fork("p", "c")
    step = m.append("c", 1)
    assert step.copies == () and step.allocated == (2,)
    assert m.block_table("c") == (0, 1, 2)


def test_prefix_hits_and_the_last_token_rule():
    m = BlockManager(16, 4, prefix_caching=True)
    prompt = list(range(12))
    m.add("a", prompt + [99])
    step = m.add("b", prompt + [98])
    assert step.cache_hits == m.block_table("a")[:3]
    assert len(step.slot_mapping) == 1  # only the 13th token is written
    # Exactly 12 tokens: at most 11 can come from the cache, so 2 hits.
    step = m.add("c", prompt)
    assert len(step.cache_hits) == 2 and step.cache_misses == 0
    assert m.cache.hits == 5


def test_freed_cached_blocks_are_reused_then_evicted_lru_deepest_first():
    m = BlockManager(6, 2, prefix_caching=True)
    m.add("x", [1, 2, 3, 4, 5])  # blocks 0, 1 full; 2 partial
    m.free("x")
    assert m.snapshot().evictable == (1, 0)  # deepest first
    m.add("y", [7, 8, 9])  # blocks 3, 4; 1 full block cached
    m.free("y")
    assert m.snapshot().evictable == (1, 0, 3)
    step = m.add("z", 8)  # 4 blocks: the 3 in the free queue, then evict the LRU one
    assert step.allocated == (5, 2, 4, 1) and step.evicted == (1,)
    m.free("z")
    step = m.add("w", [1, 2, 3, 4, 6])  # block 0 is still cached, block 1's content was evicted
    assert step.cache_hits == (0,) and step.cache_misses == 1


@given(
    prompt=st.integers(1, 40),
    used=st.integers(0, 12),
    extra=st.integers(1, 12),
)
def test_admission_queries_agree_with_the_operations(prompt, used, extra):
    m = BlockManager(12, 4)
    if used:
        m.add("bg", min(used * 4, 48))
    assert m.blocks_needed_to_add(prompt) == -(-prompt // 4)
    before = m.snapshot()
    fits = m.can_add(prompt)
    assert m.snapshot() == before
    if fits:
        m.add("a", prompt)
        need = m.blocks_needed_to_append("a", extra)
        assert m.can_append("a", extra) == (need <= m.num_available)
        if m.can_append("a", extra):
            assert len(m.append("a", extra).allocated) == need
        else:
            unchanged(m, lambda: m.append("a", extra), OutOfBlocksError, "out of blocks")
    else:
        unchanged(m, lambda: m.add("a", prompt), OutOfBlocksError, "out of blocks")


def test_out_of_blocks_on_add_names_the_numbers():
    m = BlockManager(3, 4)
    m.add("a", 8)
    unchanged(m, lambda: m.add("b", 9), OutOfBlocksError, r"adding 'b' \(9 tokens\) needs 3 new block\(s\), only 1")


def test_out_of_blocks_on_copy_on_write():
    m = BlockManager(2, 4)
    m.add("a", 6)
    m.fork("a", "b")
    unchanged(m, lambda: m.append("b", 1), OutOfBlocksError, r"needs 1 block\(s\), only 0 available")


def test_unknown_and_duplicate_ids():
    m = BlockManager(4, 4)
    m.add("a", 1)
    unchanged(m, lambda: m.append("b"), UnknownSequenceError, "unknown sequence 'b'")
    unchanged(m, lambda: m.free("b"), UnknownSequenceError, "unknown sequence 'b'")
    unchanged(m, lambda: m.fork("b", "c"), UnknownSequenceError, "unknown sequence 'b'")
    unchanged(m, lambda: m.add("a", 1), DuplicateSequenceError, "sequence 'a' already exists")
    unchanged(m, lambda: m.fork("a", "a"), DuplicateSequenceError, "sequence 'a' already exists")
    unchanged(m, lambda: m.add(1.5, 1), InvalidArgumentError, "must be a str or an int")


@pytest.mark.parametrize("tokens", [0, -3, [], [[1, 2]], ["x"], 2.5, np.array([1.0, 2.0])])
def test_bad_token_counts(tokens):
    m = BlockManager(4, 4)
    m.add("a", 2)
    unchanged(m, lambda: m.append("a", tokens), InvalidTokenCountError, "token")
    unchanged(m, lambda: m.add("b", tokens), InvalidTokenCountError, "token")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_blocks": 4, "block_size": 0}, "block_size must be a positive integer"),
        ({"num_blocks": 0, "block_size": 4}, "num_blocks must be a positive integer"),
        ({"num_blocks": 4, "block_size": 4, "policy": "mru"}, "unknown free-queue policy"),
    ],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BlockManager(**kwargs)


def test_evict_errors():
    m = BlockManager(4, 4)
    unchanged(m, lambda: m.evict(1), ConfigError, "evict needs prefix caching")
    m = BlockManager(4, 4, prefix_caching=True)
    unchanged(m, lambda: m.evict(0), InvalidArgumentError, "positive number")


def test_move_relocates_blocks_and_rewrites_tables():
    m = BlockManager(8, 2, prefix_caching=True)
    m.add("a", [1, 2, 3])
    m.fork("a", "b")
    step = m.move([(0, 6), (1, 7)])
    assert step.copies == ((0, 6), (1, 7))
    assert m.block_table("a") == m.block_table("b") == (6, 7)
    assert m.pool.ref_count(6) == 2 and m.pool.ref_count(0) == 0
    assert m.cache.hash_of(6) is not None and m.cache.hash_of(0) is None
    m.check_invariants()
    unchanged(m, lambda: m.move([(6, 7)]), BlockIdError, "block 7 is not in the free queue")
    unchanged(m, lambda: m.move([(2, 3)]), InvalidArgumentError, "holds no data")
    unchanged(m, lambda: m.move([(6, 5), (7, 5)]), InvalidArgumentError, "appear once")


def test_records_off_returns_none_but_state_is_the_same():
    on, off = BlockManager(8, 4), BlockManager(8, 4, record_ops=False)
    for m in (on, off):
        m.add("a", 5)
        m.fork("a", "b")
        m.append("b", 2)
    assert off.append("a", 1) is None
    on.append("a", 1)
    assert on.snapshot() == off.snapshot()


def test_long_sequence_without_per_token_loops():
    m = BlockManager(1_000_000, 16, prefix_caching=True)
    step = m.add("long", np.arange(131_072))
    assert len(m.block_table("long")) == 8192 and len(step.slot_mapping) == 131_072
    m.append("long", 1)
    m.free("long")
    assert m.num_cached_free == 8192


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda m: m._ref.__setitem__(0, 2), "block 0: ref count 2 but 1 table entries"),
        (lambda m: m._queue.push(0), "twice in the free queue|not exactly the blocks"),
        (lambda m: m._seqs["a"].table.append(7), "ref count 0 but 1 table entries"),
        (lambda m: setattr(m._seqs["a"], "num_tokens", 13), "blocks for 13 tokens"),
        (lambda m: m._seqs["a"].tail.append(9), "tail tokens"),
        (lambda m: m.cache._block_of.__setitem__(m.cache.hash_of(0), 5), "maps disagree"),
    ],
)
def test_check_invariants_finds_a_corrupted_state(corrupt, match):
    from tinyserve_sim.errors import InvariantError

    m = BlockManager(8, 4, prefix_caching=True)
    m.add("a", [1, 2, 3, 4, 5, 6])
    m.check_invariants()
    corrupt(m)
    with pytest.raises(InvariantError, match=match):
        m.check_invariants()


def test_a_decode_record_gives_the_batch_its_slot_mapping():
    from tinyserve_sim.control.batch import DecodeBatch

    m = BlockManager(16, 4, prefix_caching=True)
    m.add("a", [1, 2, 3, 4, 5, 6])
    m.fork("a", "b")
    m.add("c", 4)
    record = m.decode(["a", "b", "c"], [7, 8, 9])
    # a copies its shared partial block; b then writes in place; c's last block is full.
    assert record.copies == ((1, 3),) and record.allocated == (3, 4)
    assert record.slot_mapping.tolist() == [3 * 4 + 2, 1 * 4 + 2, 4 * 4 + 0]
    batch = DecodeBatch.from_manager(m, record.seq_ids, slot_mapping=record.slot_mapping)
    assert batch.slot_mapping.tolist() == DecodeBatch.from_manager(m, ["a", "b", "c"]).slot_mapping.tolist()
    assert "'a': block 1 is shared, copy-on-write into 3" in record.explain()
    # The same steps as three one-token appends, in order.
    n = BlockManager(16, 4, prefix_caching=True)
    n.add("a", [1, 2, 3, 4, 5, 6])
    n.fork("a", "b")
    n.add("c", 4)
    slots = [n.append(seq, [token]).slot_mapping[0] for seq, token in (("a", 7), ("b", 8), ("c", 9))]
    assert slots == record.slot_mapping.tolist()
    assert dataclasses.replace(m.snapshot(), op_index=0) == dataclasses.replace(n.snapshot(), op_index=0)


@given(
    tokens=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=600),
    block_size=st.sampled_from([1, 3, 16, 129, 256]),
)
def test_hash_blocks_is_hash_block_chained(tokens, block_size):
    # hash_blocks remembers recent blocks (not above 128 tokens) and hash_token_array hashes
    # an array('q') as its buffer: both must give exactly hash_block's values.
    expected, parent = [], ROOT_HASH
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = tokens[start : start + block_size]
        parent = hash_block(parent, block)
        assert hash_token_array(expected[-1] if expected else ROOT_HASH, array("q", block)) == parent
        expected.append(parent)
    assert hash_blocks(tokens, block_size) == expected
    assert hash_blocks(np.array(tokens, dtype=np.int64), block_size) == expected  # remembered now
    assert hash_blocks(tokens, block_size) == expected


def test_block_hashes_are_the_same_everywhere():
    # BLAKE2b-64 of the parent hash and the token ids, little-endian: pinned, so that a
    # faster implementation cannot change the values (traces and snapshots compare them).
    assert hash_blocks(list(range(40)), 16) == [15419130808853295947, 13931401434043050494]
