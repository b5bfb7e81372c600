"""Exports to vLLM's and FlashInfer's batch tensors, and the import back.

* export then import is a round trip (tables, lengths, reference counts), over random
  add / append / fork / free traces;
* a step's slot mapping is ``table[t // bs] * bs + t % bs`` for every token it writes,
  and vLLM's export carries it (padded with -1);
* every kind of malformed table is refused with PageTableError naming the field and
  the position, and nothing is built.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.control.formats import (
    VLLM_PAD_BLOCK,
    from_flashinfer,
    from_vllm,
    to_flashinfer,
    to_vllm,
)
from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.errors import InvalidArgumentError, OutOfBlocksError, PageTableError, SimError

OPS = st.lists(
    st.tuples(st.sampled_from(["add", "append", "append", "fork", "free"]), st.integers(0, 10**6), st.integers(1, 40)),
    max_size=40,
)


def replay(ops, block_size: int, num_blocks: int, policy: str, prefix_caching: bool):
    """Apply random operations (refused ones skipped); yield (manager, record) after each."""
    m = BlockManager(num_blocks, block_size, policy=policy, prefix_caching=prefix_caching)
    next_id = 0
    for kind, pick, n in ops:
        live = m.seq_ids()
        try:
            if kind == "add" or not live:
                tokens = [pick % 3] * n if prefix_caching else n  # shared prompts: prefix hits
                record = m.add(next_id, tokens)
                next_id += 1
            elif kind == "append":
                record = m.append(live[pick % len(live)], n % 5 + 1)
            elif kind == "fork":
                record = m.fork(live[pick % len(live)], next_id)
                next_id += 1
            else:
                record = m.free(live[pick % len(live)])
        except OutOfBlocksError:
            continue
        yield m, record


def _state(m: BlockManager):
    return [(seq, m.block_table(seq), m.num_tokens(seq)) for seq in m.seq_ids()], m.pool.ref_counts()


@settings(max_examples=max(20, settings.default.max_examples))
@given(
    ops=OPS,
    block_size=st.sampled_from([1, 3, 4, 16]),
    num_blocks=st.integers(1, 40),
    policy=st.sampled_from(["fifo", "lifo"]),
    prefix_caching=st.booleans(),
)
@example(ops=[("add", 0, 6), ("fork", 0, 1), ("append", 1, 1)], block_size=4, num_blocks=8, policy="fifo",
         prefix_caching=False)
def test_export_then_import_is_a_round_trip(ops, block_size, num_blocks, policy, prefix_caching):
    for m, _ in replay(ops, block_size, num_blocks, policy, prefix_caching):
        batch = DecodeBatch.from_manager(m)
        tables, refs = _state(m)
        f = to_flashinfer(batch)
        back = from_flashinfer(f.kv_indptr, f.kv_indices, f.kv_last_page_len, block_size, num_blocks,
                               seq_lens=batch.seq_lens, seq_ids=batch.seq_ids, policy=policy)
        assert _state(back) == (tables, refs)
        back.check_invariants()
        v = to_vllm(batch)
        back = from_vllm(v.block_tables, v.seq_lens, block_size, num_blocks, seq_ids=batch.seq_ids)
        assert _state(back) == (tables, refs)
        assert f.kv_indptr[0] == 0 and (np.diff(f.kv_indptr) >= 1).all()
        assert ((f.kv_last_page_len >= 1) & (f.kv_last_page_len <= block_size)).all()
        assert (f.seq_lens == batch.seq_lens).all()
        for a in (*f.arrays().values(), v.block_tables, v.seq_lens):
            assert a.dtype == np.int32
        assert v.slot_mapping.dtype == np.int64


@given(ops=OPS, block_size=st.sampled_from([1, 3, 4, 16]), prefix_caching=st.booleans())
def test_the_slot_mapping_of_a_step_is_table_t_div_bs_times_bs_plus_t_mod_bs(ops, block_size, prefix_caching):
    for m, record in replay(ops, block_size, 40, "fifo", prefix_caching):
        if record.op not in ("add", "append"):
            assert record.slot_mapping.size == 0
            continue
        table, n = m.block_table(record.seq_id), m.num_tokens(record.seq_id)
        first = n - record.num_new_tokens + (len(record.cache_hits) * block_size if record.op == "add" else 0)
        expected = [table[t // block_size] * block_size + t % block_size for t in range(first, n)]
        assert record.slot_mapping.tolist() == expected
        batch = DecodeBatch.from_manager(m, slot_mapping=record.slot_mapping)
        v = to_vllm(batch, num_tokens=len(expected) + 3)
        assert v.slot_mapping.tolist() == expected + [-1, -1, -1]


def test_the_default_slot_mapping_is_each_sequences_newest_token():
    m = BlockManager(8, 4)
    m.add("a", 6)
    m.add("b", 4)
    batch = DecodeBatch.from_manager(m)
    assert batch.slot_mapping.tolist() == [1 * 4 + 1, 2 * 4 + 3]


def test_vllm_padding_is_documented_and_adjustable():
    batch = DecodeBatch.from_tables([[4, 2, 7], [5]], [9, 3], block_size=4)
    assert VLLM_PAD_BLOCK == 0
    assert to_vllm(batch).block_tables.tolist() == [[4, 2, 7], [5, 0, 0]]
    assert to_vllm(batch, pad_block=-1, max_blocks=4).block_tables.tolist() == [[4, 2, 7, -1], [5, -1, -1, -1]]
    with pytest.raises(InvalidArgumentError, match="max_blocks"):
        to_vllm(batch, max_blocks=2)
    with pytest.raises(InvalidArgumentError, match="num_tokens"):
        to_vllm(DecodeBatch.from_tables([[1]], [1], 4, slot_mapping=[4, 5]), num_tokens=1)


def test_exports_refuse_what_a_server_table_cannot_say():
    per_head = DecodeBatch.from_tables([[4, 2]], [5], block_size=4).broadcast_heads(2)
    for export in (to_vllm, to_flashinfer):
        with pytest.raises(InvalidArgumentError, match="no KV-head axis"):
            export(per_head)
        with pytest.raises(InvalidArgumentError, match="seq_lens"):
            export(DecodeBatch(4, np.array([[1, 2]], np.int32), np.array([0], np.int32)))
        with pytest.raises(InvalidArgumentError, match="padding entry"):
            export(DecodeBatch(4, np.array([[1, -1]], np.int32), np.array([6], np.int32)))
        with pytest.raises(InvalidArgumentError, match="DecodeBatch"):
            export("not a batch")


# ------------------------------------------------------------ malformed tables
GOOD = dict(kv_indptr=[0, 2, 3], kv_indices=[5, 1, 5], kv_last_page_len=[3, 4], page_size=4, num_pages=8)


@pytest.mark.parametrize(
    "change, field, index, words",
    [
        (dict(kv_indptr=[1, 2, 3]), "kv_indptr", 0, "not 0"),
        (dict(kv_indptr=[0, 3, 2]), "kv_indptr", 2, "not monotone"),
        (dict(kv_indptr=[0, 2, 4]), "kv_indptr", 2, "kv_indices has 3"),
        (dict(kv_indptr=[]), "kv_indptr", None, "empty"),
        (dict(kv_indptr=[0, 0, 3], kv_indices=[5, 1, 6]), "kv_indptr", 1, "no page"),
        (dict(kv_indices=[5, 8, 5]), "kv_indices", 1, "outside 0..7"),
        (dict(kv_indices=[5, -1, 5]), "kv_indices", 1, "outside"),
        (dict(kv_indices=[5, 5, 1]), "kv_indices", 1, "repeats a page of sequence 0"),
        (dict(kv_last_page_len=[0, 4]), "kv_last_page_len", 0, "outside 1..4"),
        (dict(kv_last_page_len=[3, 5]), "kv_last_page_len", 1, "outside 1..4"),
        (dict(kv_last_page_len=[3]), "kv_last_page_len", None, "1 entries for 2"),
        (dict(seq_lens=[7, 5]), "seq_lens", 1, "contradicts"),
        (dict(seq_lens=[8, 4]), "seq_lens", 0, "contradicts"),
        (dict(seq_lens=[7]), "seq_lens", None, "1 entries for 2"),
        (dict(kv_indices=[5.0, 1.0, 5.0]), "kv_indices", None, "integer"),
        (dict(kv_indptr=[[0, 2, 3]]), "kv_indptr", None, "1-D"),
        (dict(kv_indices=[[5], [1, 5]]), "kv_indices", None, "integer"),
        (dict(kv_indptr="0 2 3"), "kv_indptr", None, "integer"),
    ],
)
def test_each_malformed_table_is_refused_naming_field_and_position(change, field, index, words):
    args = {**GOOD, **change}
    with pytest.raises(PageTableError, match=words) as info:
        from_flashinfer(**args)
    assert (info.value.field, info.value.index) == (field, index)
    assert field in str(info.value)


def test_the_good_table_imports():
    m = from_flashinfer(**GOOD, seq_lens=[7, 4], seq_ids=["x", "y"])
    assert m.block_table("x") == (5, 1) and m.num_tokens("x") == 7
    assert m.pool.ref_counts()[5] == 2
    m.check_invariants()


@pytest.mark.parametrize(
    "change, error",
    [
        (dict(page_size=0), InvalidArgumentError),
        (dict(num_pages=-3), InvalidArgumentError),
        (dict(seq_ids=["x"]), InvalidArgumentError),
        (dict(seq_ids=["x", "x"]), InvalidArgumentError),
        (dict(seq_ids=[["x"], "y"]), InvalidArgumentError),
        (dict(policy="random"), SimError),
    ],
)
def test_bad_settings_are_refused(change, error):
    with pytest.raises(error):
        from_flashinfer(**{**GOOD, **change})


@pytest.mark.parametrize(
    "tables, lens, field, index",
    [
        ([[1, 2], [3, 0]], [5, 9], "seq_lens", 1),
        ([[1, 2], [3, 0]], [5, 0], "seq_lens", 1),
        ([[1, 9], [3, 0]], [5, 3], "block_tables", (0, 1)),
        ([[1, 1], [3, 0]], [5, 3], "block_tables", (0, 1)),
        ([[1, 2], [3, 0]], [5], "seq_lens", None),
        ([1, 2], [5], "block_tables", None),
    ],
)
def test_malformed_vllm_tables_are_refused_naming_field_and_position(tables, lens, field, index):
    with pytest.raises(PageTableError) as info:
        from_vllm(tables, lens, block_size=4, num_blocks=8)
    assert (info.value.field, info.value.index) == (field, index)


def test_vllm_padding_is_never_read_on_import():
    m = from_vllm([[1, 2], [3, 77]], [5, 3], block_size=4, num_blocks=8)  # 77: padding, whatever it is
    assert m.block_table(1) == (3,)
