"""The GPU's sparse decode step (``tinyserve_sim.gpu.sparse_step``): score, select and attend
with the selection's tables never leaving the device.

* CPU: the step refuses bad inputs on the host, before anything is allocated or launched.
* CPU: the fused schedule's work list holds every item once, a row's scores before its
  attention (what the persistent kernel's deadlock-freedom rests on).
* GPU (marker ``gpu``): each stage's output equals the twins' ``page_scores`` ->
  ``select_pages`` -> ``paged_attention`` bit for bit (raw bits), on short rows
  (Hypothesis) and on rows long enough for split-K, with both schedules (three kernels, or
  one persistent kernel); the step replays from a CUDA graph with the same bits (the fused
  kernel's counters reset themselves between replays).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cupy", reason="the launchers need CuPy importable (no GPU needed for the host checks)")

from gpu_helpers import GPU_SETTINGS, assert_bits_equal
from hypothesis import given, settings
from hypothesis import strategies as st
from selection_strategies import ScoreCase, score_cases
from tinyserve_sim.gpu import sparse_step

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data import (
    page_metadata_from_cache,
    page_scores,
    paged_attention,
    select_page_indices,
    select_pages,
)
from tinyserve_sim.errors import KernelInputError


def _twin(case: ScoreCase, value_cache: np.ndarray, budget: int, variant: str = "auto", partition_size=None):
    """The step as the twins compute it: scores, logical pages, compacted batch, output."""
    scores = page_scores(case.query, case.key_min, case.key_max, case.batch)
    logical = select_page_indices(scores, case.batch, budget)
    sparse = select_pages(scores, case.batch, budget)
    scale = case.query.shape[2] ** -0.5
    out = paged_attention(case.query, case.key_cache, value_cache, sparse, scale, variant, partition_size)
    return scores, logical, sparse, out


def _host_args(seed: int = 0):
    rng = np.random.default_rng(seed)
    kc = rng.standard_normal((6, 4, 2, 8)).astype(np.float16)
    vc = rng.standard_normal(kc.shape).astype(np.float16)
    kmin, kmax = page_metadata_from_cache(kc, np.full(6, 4))
    q = rng.standard_normal((2, 4, 8)).astype(np.float16)
    batch = DecodeBatch.from_tables([[0, 1, 2], [3, 4, 5]], [12, 9], block_size=4)
    return {"query": q, "key_cache": kc, "value_cache": vc, "key_min": kmin, "key_max": kmax, "batch": batch,
            "budget_tokens": 8, "scale": 0.35}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"variant": "fast"}, "unknown paged_attention variant"),
        ({"partition_size": 48}, "partition_size"),
        ({"budget_tokens": 7}, "less than two pages"),
        ({"query": np.zeros((2, 4, 8), np.float32)}, "dtype|float16"),
        ({"batch": DecodeBatch.from_tables([[0, 1, 2]], [12], block_size=4)}, "1 sequences, the query 2"),
        ({"batch": DecodeBatch.from_tables([[0, 1, 9], [3, 4, 5]], [12, 9], block_size=4)}, "= 9 is a block id outside 0..5"),
        ({"value_cache": np.zeros((6, 4, 2, 16), np.float16)}, "value_cache"),
        ({"key_cache": np.zeros((6, 4, 16), np.float16)}, "key_cache"),
        ({"scale": float("nan")}, "scale"),
        ({"batch": DecodeBatch.from_tables([[0, 1], [3, 4]], [8, 8], block_size=2)}, "does not fit a table of 2 blocks of 2"),
        ({"schedule": "eager"}, "unknown sparse step schedule"),
        ({"schedule": "fused", "variant": "one_pass"}, "split-K"),
        ({"schedule": "fused", "lag_rows": -1}, "lag_rows"),
        ({"schedule": "fused", "pages_per_item": 0}, "pages_per_item"),
        ({"schedule": "fused", "lag_rows": True}, "lag_rows"),
        ({}, "must be a cupy.ndarray"),  # valid host inputs stop only at the device check
        ({"schedule": "fused"}, "must be a cupy.ndarray"),
    ],
)
def test_the_step_checks_everything_on_the_host_first(change, match):
    args = _host_args()
    args.update(change)
    with pytest.raises(KernelInputError, match=match):
        sparse_step.prepare_sparse_decode_step(**args)


@settings(max_examples=200, deadline=None)
@given(
    seqs=st.integers(1, 5), heads=st.integers(1, 4), score_items=st.integers(1, 6), tiles=st.integers(1, 3),
    lag=st.integers(0, 30), data=st.data(),
)
def test_the_fused_work_list_puts_each_rows_scores_before_its_attention(seqs, heads, score_items, tiles, lag, data):
    parts = np.array(data.draw(st.lists(st.integers(1, 5), min_size=seqs * heads, max_size=seqs * heads))).reshape(seqs, heads)
    work, row_items = sparse_step.fused_schedule(seqs, heads, score_items, parts, tiles, lag)
    # Every item once: the scores' runs of every row, each partition of each head tile.
    want = {(sparse_step.SCORE, s, h, r) for s in range(seqs) for h in range(heads) for r in range(score_items)}
    want |= {(sparse_step.ATTEND, s, h * tiles + t, p) for s in range(seqs) for h in range(heads)
             for t in range(tiles) for p in range(parts[s, h])}
    got = [tuple(int(v) for v in w) for w in work]
    assert len(got) == len(set(got)) and set(got) == want
    # The counts the kernel compares with, and each row's last score before its first attend.
    for s in range(seqs):
        for h in range(heads):
            rows = [i for i, w in enumerate(got) if w[1] == s and (w[2] == h if w[0] == sparse_step.SCORE else w[2] // tiles == h)]
            kinds = [got[i][0] for i in rows]
            assert row_items[s * heads + h].tolist() == [kinds.count(sparse_step.SCORE), kinds.count(sparse_step.ATTEND)]
            assert kinds == sorted(kinds)  # SCORE (0) items, then ATTEND (1) items


# ======================================================================= GPU
def _run(case: ScoreCase, value_cache: np.ndarray, budget: int, **schedule):
    import cupy as cp

    d = [cp.asarray(a) for a in (case.query, case.key_cache, value_cache, case.key_min, case.key_max)]
    out = cp.full(case.query.shape, np.nan, dtype=case.query.dtype)  # poisoned: every element must be written
    step = sparse_step.prepare_sparse_decode_step(*d, case.batch, budget, case.query.shape[2] ** -0.5, out=out, **schedule)
    step.scores.fill(np.nan)
    step.tables.fill(-7)
    got = step()
    cp.cuda.get_current_stream().synchronize()
    return step, got


def _check(case: ScoreCase, value_cache: np.ndarray, budget: int, **schedule) -> None:
    step, got = _run(case, value_cache, budget, **schedule)
    # The twins with the step's attention launch (auto's choice, or split-K in the fused schedule).
    scores, logical, sparse, out = _twin(case, value_cache, budget, step.variant, step.partition_size)
    assert got is step.out
    assert_bits_equal(step.scores.get(), scores)
    assert_bits_equal(step.logical.get(), logical)
    assert_bits_equal(step.tables.get(), sparse.block_tables)
    assert_bits_equal(step.lens.get(), sparse.seq_lens)
    assert_bits_equal(got.get(), out)


@pytest.mark.gpu
@GPU_SETTINGS
@given(case=score_cases(max_pages=40), data=st.data())
def test_the_step_is_the_twins_bit_for_bit(case: ScoreCase, data):
    bs, W = case.batch.block_size, case.batch.max_blocks
    budget = data.draw(st.integers(2 * bs, (W + 2) * bs), label="budget")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    value_cache = rng.standard_normal(case.key_cache.shape).astype(case.key_cache.dtype)
    schedule = data.draw(st.sampled_from(["kernels", "fused"]), label="schedule")
    extra = {}
    if schedule == "fused":  # any lag and any run of pages give the same bits
        extra = {"lag_rows": data.draw(st.integers(0, 12), label="lag_rows"),
                 "pages_per_item": data.draw(st.integers(1, 48), label="pages_per_item")}
    _check(case, value_cache, budget, schedule=schedule, **extra)


def _long_case(S: int, pages: int, bs: int, Hkv: int, G: int, seed: int) -> tuple[ScoreCase, np.ndarray]:
    rng = np.random.default_rng(seed)
    nb, D = S * pages, 128
    kc = rng.standard_normal((nb, bs, Hkv, D)).astype(np.float16)
    vc = rng.standard_normal(kc.shape).astype(np.float16)
    kmin, kmax = page_metadata_from_cache(kc, np.full(nb, bs))
    tables = rng.permutation(nb).reshape(S, pages).astype(np.int32)
    lens = rng.integers((pages - 1) * bs + 1, pages * bs + 1, size=S).astype(np.int32)
    q = rng.standard_normal((S, Hkv * G, D)).astype(np.float16)
    return ScoreCase(q, kc, kmin, kmax, DecodeBatch(bs, tables, lens)), vc


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", ["kernels", "fused"])
@pytest.mark.parametrize("seed, budget", [(1, 1000), (2, 3200), (3, 256)])
def test_long_rows_give_the_twins_bits(seed, budget, schedule):
    """6 sequences of ~4,000 tokens at budgets of 1/4, 4/5 and 1/16: the attention runs
    split-K or one pass, as ``auto`` decides on the selected lengths (split-K when fused)."""
    case, vc = _long_case(S=6, pages=250, bs=16, Hkv=2, G=4, seed=seed)
    _check(case, vc, budget, schedule=schedule)


@pytest.mark.gpu
@pytest.mark.parametrize("lag_rows", [0, 3, 1000])
def test_the_fused_step_at_the_benchmarks_shape(lag_rows):
    """8 sequences of 2,048 pages x 8 KV heads (GQA-4) at a 1/8 budget, as bench_selection runs
    it (fewer tokens per page: 4), for a lag of 0, a few rows and every row."""
    case, vc = _long_case(S=8, pages=2048, bs=4, Hkv=8, G=4, seed=11)
    _check(case, vc, 1024, schedule="fused", lag_rows=lag_rows)


@pytest.mark.gpu
def test_the_step_replays_from_a_cuda_graph_with_the_same_bits():
    import cupy as cp

    case, vc = _long_case(S=4, pages=120, bs=16, Hkv=2, G=4, seed=5)
    d = [cp.asarray(a) for a in (case.query, case.key_cache, vc, case.key_min, case.key_max)]
    for schedule in ("kernels", "fused"):
        with cp.cuda.Stream(non_blocking=True) as stream:
            step = sparse_step.prepare_sparse_decode_step(*d, case.batch, 640, 128**-0.5, schedule=schedule)
            *_, want = _twin(case, vc, 640, step.variant, step.partition_size)
            step()
            stream.synchronize()
            stream.begin_capture()
            step()
            graph = stream.end_capture()
            for _ in range(3):  # replays: the fused kernel must find its counters back at zero
                step.out.fill(np.nan)
                graph.launch(stream)
                stream.synchronize()
                assert_bits_equal(step.out.get(), want)
