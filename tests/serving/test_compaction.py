"""Compaction: every sequence reads back the same keys and values; free blocks form one range."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.data import KVCache
from tinyserve_sim.errors import InvalidArgumentError
from tinyserve_sim.serving.compaction import (
    STRATEGIES,
    compact,
    is_compacted,
    plan_compaction,
)

HEADS, DIM = 1, 8


class Harness:
    """A manager plus a KV cache that every step is applied to, and what each sequence should read."""

    def __init__(self, num_blocks: int, block_size: int, caching: bool) -> None:
        self.m = BlockManager(num_blocks, block_size, prefix_caching=caching)
        self.kv = KVCache(num_blocks, block_size, HEADS, DIM, dtype=np.float32)
        self.expected: dict[int, list[float]] = {}
        self.counter = 0.0

    def _markers(self, n: int) -> np.ndarray:
        values = self.counter + np.arange(n, dtype=np.float32)
        self.counter += n
        return values

    def apply(self, step, markers: np.ndarray) -> None:
        kv = np.repeat(markers[:, None, None], DIM, axis=2).astype(np.float32)
        self.kv.apply(step, kv, kv)

    def add(self, seq: int, n: int) -> None:
        ids = list(range(n))  # equal prompts share cached blocks under prefix caching
        step = self.m.add(seq, ids)
        # Cache hits are not rewritten: the markers of a hit come from the block's earlier writer.
        hit_tokens = len(step.cache_hits) * self.m.block_size
        markers = self._markers(n)
        written = markers[hit_tokens:]
        if hit_tokens:
            k, _ = self.kv.to_numpy()
            table = self.m.block_table(seq)
            markers[:hit_tokens] = [k[table[t // self.m.block_size], t % self.m.block_size, 0, 0]
                                    for t in range(hit_tokens)]
        self.apply(step, written)
        self.expected[seq] = list(markers)

    def append(self, seq: int, n: int) -> None:
        step = self.m.append(seq, n)
        markers = self._markers(n)
        self.apply(step, markers)
        self.expected[seq] += list(markers)

    def read_back(self) -> dict[int, list[float]]:
        k, v = self.kv.to_numpy()
        bs = self.m.block_size
        out = {}
        for seq in self.m.seq_ids():
            table = self.m.block_table(seq)
            tokens = range(self.m.num_tokens(seq))
            keys = [float(k[table[t // bs], t % bs, 0, 0]) for t in tokens]
            assert keys == [float(v[table[t // bs], t % bs, 0, 0]) for t in tokens]
            out[seq] = keys
        return out


ops = st.lists(st.tuples(st.sampled_from(["add", "append", "fork", "free"]), st.integers(0, 7),
                         st.integers(1, 20)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(script=ops, block_size=st.sampled_from([1, 2, 4]), caching=st.booleans(),
       strategy=st.sampled_from(STRATEGIES))
def test_compaction_preserves_every_sequence_and_leaves_one_free_range(script, block_size, caching, strategy):
    h = Harness(48, block_size, caching)
    next_id = 100
    for op, who, n in script:
        seqs = h.m.seq_ids()
        try:
            if op == "add" and who not in seqs:
                h.add(who, n)
            elif op == "append" and seqs:
                h.append(seqs[who % len(seqs)], n)
            elif op == "fork" and seqs:
                parent = seqs[who % len(seqs)]
                h.m.fork(parent, next_id)
                h.expected[next_id] = list(h.expected[parent])
                next_id += 1
            elif op == "free" and seqs:
                victim = seqs[who % len(seqs)]
                h.m.free(victim)
                del h.expected[victim]
        except Exception as exc:  # out of blocks: the manager is unchanged, go on
            assert type(exc).__name__ == "OutOfBlocksError"
    assert h.read_back() == h.expected  # the harness itself is right before compaction

    plan = plan_compaction(h.m, strategy)
    step = compact(h.m, plan)
    if step is not None:
        h.kv.copy_blocks(np.asarray(step.copies, dtype=np.int64))  # the data plane applies the copy list
    h.m.check_invariants()
    assert h.read_back() == h.expected
    assert is_compacted(h.m)
    free = sorted(h.m.snapshot().free_queue)
    if free:
        assert free[0] == plan.free_start
    if strategy == "low":
        assert not free or free[-1] == h.m.num_blocks - 1  # live blocks all in the low ids


@settings(max_examples=40, deadline=None)
@given(script=st.lists(st.tuples(st.integers(1, 12), st.integers(0, 3), st.booleans()), min_size=2, max_size=14))
def test_weighted_never_moves_more_weight_than_low(script) -> None:
    """Weighting by reference count leaves shared (frequently read) blocks in place where it can."""
    m = BlockManager(64, 4)
    for i, (n, forks, drop) in enumerate(script):
        if not m.can_add(n):
            break
        m.add(i, n)
        for f in range(forks):
            m.fork(i, 1000 + 10 * i + f)
        if drop:
            m.free(i)
    low = plan_compaction(m, "low")
    weighted = plan_compaction(m, "weighted")
    assert weighted.moved_weight <= low.moved_weight
    assert weighted.table_entries <= low.table_entries


def test_compaction_of_a_compact_pool_moves_nothing() -> None:
    m = BlockManager(16, 4)
    m.add("a", 9)
    assert compact(m) is None and is_compacted(m)


def test_weighted_keeps_a_hot_shared_block_in_place() -> None:
    m = BlockManager(8, 4)
    m.add("cold", 4)       # block 0, read by one sequence
    m.add("gap", 20)       # blocks 1..5
    m.add("hot", 4)        # block 6, shared by 5 sequences below
    for i in range(4):
        m.fork("hot", f"beam{i}")
    m.free("gap")          # free: 1..5 and 7
    low = plan_compaction(m, "low")
    weighted = plan_compaction(m, "weighted")
    assert low.moves == ((6, 1),) and low.table_entries == 5  # the hot block moves down
    assert weighted.moves == ((0, 7),) and weighted.table_entries == 1  # the cold one moves instead
    assert weighted.free_start == 0
    with pytest.raises(InvalidArgumentError, match="unknown compaction strategy 'nope'"):
        plan_compaction(m, "nope")
