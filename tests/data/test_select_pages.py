"""select_pages: the budget, the sink and the newest page, top-K by score with ties to the lower
index, logical order, compacted tables and lengths, every page selected = the dense batch, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from selection_strategies import selection_cases

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data import (
    compact_tables,
    page_metadata_from_cache,
    page_scores,
    paged_attention,
    select_page_indices,
    select_pages,
)
from tinyserve_sim.data.select_pages import score_order_keys, selected_lengths, selected_lengths_of
from tinyserve_sim.errors import KernelInputError


def _pages(n_tokens: int, bs: int) -> int:
    return -(-n_tokens // bs)


@given(case=selection_cases())
@example(case=(np.zeros((1, 1, 5), np.float32), DecodeBatch.from_tables([[4, 3, 2, 1, 0]], [5], 1), 3))  # all ties
def test_selection_rules(case):
    scores, batch, budget = case
    Hkv = scores.shape[1]
    bs = batch.block_size
    K = budget // bs
    logical = select_page_indices(scores, batch, budget)
    sparse = select_pages(scores, batch, budget)
    tables, lens = batch.head_tables(Hkv)
    keys = score_order_keys(scores).astype(np.int64)
    assert logical.shape == (*scores.shape[:2], min(K, scores.shape[2]))
    assert sparse.per_head and sparse.block_tables.shape == logical.shape
    for s in range(scores.shape[0]):
        for h in range(Hkv):
            n = _pages(int(lens[s, h]), bs)
            row = logical[s, h]
            chosen = row[row >= 0]
            assert (row[chosen.size :] == -1).all()  # padding only at the end
            assert chosen.size == min(n, K)  # the budget, used in full
            assert (np.diff(chosen) > 0).all()  # logical order, no repeats
            assert chosen[0] == 0 and chosen[-1] == n - 1  # sink and newest
            middle = set(range(1, n - 1))
            taken, left = set(chosen.tolist()) & middle, middle - set(chosen.tolist())
            for a in taken:  # the top-K by key, ties to the lower index
                for b in left:
                    assert keys[s, h, a] > keys[s, h, b] or (keys[s, h, a] == keys[s, h, b] and a < b)
            # the compacted row: the chosen blocks, the newest page's tokens last
            assert sparse.block_tables[s, h, : chosen.size].tolist() == tables[s, h, chosen].tolist()
            newest = int(lens[s, h]) - (n - 1) * bs
            assert sparse.seq_lens[s, h] == (chosen.size - 1) * bs + newest
            assert sparse.seq_lens[s, h] <= max(budget, 0) and sparse.seq_lens[s, h] <= lens[s, h]


@given(case=selection_cases(), scale=st.sampled_from([1.0, -1.0, 0.0]))
def test_selected_lengths_are_known_before_scoring(case, scale):
    """How many tokens a row keeps does not depend on the scores (the GPU's sparse step plans
    its attention on it before selecting): any scores, even all equal, give these lengths."""
    scores, batch, budget = case
    predicted = selected_lengths(batch, scores.shape[1], budget)
    assert predicted.dtype == np.int32
    with np.errstate(invalid="ignore"):  # an infinite score times 0 is NaN: any scores will do here
        scaled = (scores * np.float32(scale)).astype(np.float32)
    for drawn in (scores, scaled):
        assert (select_pages(drawn, batch, budget).seq_lens == predicted).all()


def test_selected_lengths_refuse_a_budget_under_two_pages():
    batch = DecodeBatch.from_tables([[0, 1, 2]], [40], block_size=16)
    with pytest.raises(KernelInputError, match="less than two pages"):
        selected_lengths(batch, 1, budget_tokens=31)
    for bad in (np.array([-1, 5]), np.array([1.5])):
        with pytest.raises(KernelInputError, match="non-negative integers"):
            selected_lengths_of(bad, 16, budget_tokens=64)


@given(case=selection_cases())
def test_a_budget_covering_every_page_is_the_dense_batch(case):
    scores, batch, _ = case
    Hkv = scores.shape[1]
    tables, lens = batch.head_tables(Hkv)
    sparse = select_pages(scores, batch, budget_tokens=max(2, batch.max_blocks) * batch.block_size + 5)
    assert (sparse.seq_lens == lens).all()
    for s in range(scores.shape[0]):
        for h in range(Hkv):
            n = _pages(int(lens[s, h]), batch.block_size)
            assert (sparse.block_tables[s, h, :n] == tables[s, h, :n]).all()
    assert sparse.slot_mapping is batch.slot_mapping or (sparse.slot_mapping == batch.slot_mapping).all()


def test_selection_by_hand():
    batch = DecodeBatch.from_tables([[10, 11, 12, 13, 14, 15, 16, 17], [20, 21, 22, -1, -1, -1, -1, -1]], [120, 40], 16)
    scores = np.array([[0, 0.9, 0.1, 0.7, 0.3, 0.2, 0.8, 0], [5, 5, 5, 5, 5, 5, 5, 5]], np.float32)[:, None]
    logical = select_page_indices(scores, batch, budget_tokens=64)  # K = 4
    assert logical.tolist() == [[[0, 1, 6, 7]], [[0, 1, 2, -1]]]
    sparse = select_pages(scores, batch, budget_tokens=64)
    assert sparse.block_tables.tolist() == [[[10, 11, 16, 17]], [[20, 21, 22, -1]]]
    assert sparse.seq_lens.tolist() == [[3 * 16 + 8], [40]]


def test_ties_go_to_the_lower_logical_index():
    batch = DecodeBatch.from_tables([list(range(10))], [10], 1)
    scores = np.array([[[9, 1, 3, 3, 2, 3, 3, 0, 0, 9]]], np.float32)
    assert select_page_indices(scores, batch, 4).tolist() == [[[0, 2, 3, 9]]]


def test_nan_sorts_above_inf_and_minus_zero_below_zero():
    batch = DecodeBatch.from_tables([list(range(6))], [6], 1)
    scores = np.array([[[0, np.inf, np.nan, 0.0, -0.0, 0]]], np.float32)
    assert select_page_indices(scores, batch, 3).tolist() == [[[0, 2, 5]]]
    assert select_page_indices(scores, batch, 5).tolist() == [[[0, 1, 2, 3, 5]]]


def test_compact_tables_lists_the_given_pages():
    batch = DecodeBatch.from_tables([[7, 8, 9]], [35], 16)  # 3 pages, 3 tokens in the last
    logical = np.array([[[0, 2, -1]], [[0, 1, 2]]], np.int32)[:1]
    sparse = compact_tables(batch, logical)
    assert sparse.block_tables.tolist() == [[[7, 9, -1]]] and sparse.seq_lens.tolist() == [[16 + 3]]


@pytest.mark.parametrize(
    "scores, budget, match",
    [
        (np.zeros((1, 1, 2), np.float32), 31, "two pages"),
        (np.zeros((1, 1, 2), np.float32), 0, "positive integer"),
        (np.zeros((1, 1, 2), np.float32), 32.0, "integer"),
        (np.zeros((1, 1, 2), np.float64), 64, "float32"),
        (np.zeros((1, 1, 3), np.float32), 64, "do not match"),
        (np.zeros((2, 1, 2), np.float32), 64, "do not match"),
        (np.zeros((1, 1, 4), np.float32)[:, :, ::2], 64, "contiguous"),
    ],
)
def test_bad_inputs_raise(scores, budget, match):
    batch = DecodeBatch.from_tables([[0, 1]], [20], 16)
    with pytest.raises(KernelInputError, match=match):
        select_pages(scores, batch, budget)


@given(
    seed=st.integers(0, 2**32 - 1),
    Hkv=st.integers(1, 3),
    group=st.sampled_from([1, 2, 4]),
    bs=st.sampled_from([1, 7, 16]),
    variant=st.sampled_from(["one_pass", "split_k"]),
)
def test_every_page_selected_is_dense_attention_bit_for_bit(seed, Hkv, group, bs, variant):
    """Attention over the compacted per-(sequence, KV head) tables of a budget that covers
    every page gives the dense result, bit for bit: sparse attention is dense attention by
    construction when nothing is left out."""
    rng = np.random.default_rng(seed)
    S, D = 2, 32
    lens = rng.integers(1, 300, S).astype(np.int32)
    W = int(-(-lens.max() // bs))
    nb = S * W
    tables = rng.permutation(nb).reshape(S, W).astype(np.int32)
    kc = rng.standard_normal((nb, bs, Hkv, D)).astype(np.float16)
    vc = rng.standard_normal((nb, bs, Hkv, D)).astype(np.float16)
    q = rng.standard_normal((S, Hkv * group, D)).astype(np.float16)
    batch = DecodeBatch(bs, tables, lens, np.zeros(0, np.int64))
    key_min, key_max = page_metadata_from_cache(kc, np.full(nb, bs))
    scores = page_scores(q, key_min, key_max, batch)
    sparse = select_pages(scores, batch, budget_tokens=max(2, W) * bs)
    assert sparse.per_head
    dense = paged_attention(q, kc, vc, batch, D**-0.5, variant, 128)
    out = paged_attention(q, kc, vc, sparse, D**-0.5, variant, 128)
    assert (out.view(np.uint16) == dense.view(np.uint16)).all()
