"""The GPU's sparse decode step (``tinyserve_sim.gpu.sparse_step``): score, select and attend
with the selection's tables never leaving the device.

* CPU: the step refuses bad inputs on the host, before anything is allocated or launched.
* GPU (marker ``gpu``): each stage's output equals the twins' ``page_scores`` ->
  ``select_pages`` -> ``paged_attention`` bit for bit (raw bits), on short rows
  (Hypothesis) and on rows long enough for split-K; the step replays from a CUDA graph
  with the same bits.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cupy", reason="the launchers need CuPy importable (no GPU needed for the host checks)")

from gpu_helpers import GPU_SETTINGS, assert_bits_equal
from hypothesis import given
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


def _twin(case: ScoreCase, value_cache: np.ndarray, budget: int):
    """The step as the twins compute it: scores, logical pages, compacted batch, output."""
    scores = page_scores(case.query, case.key_min, case.key_max, case.batch)
    logical = select_page_indices(scores, case.batch, budget)
    sparse = select_pages(scores, case.batch, budget)
    scale = case.query.shape[2] ** -0.5
    out = paged_attention(case.query, case.key_cache, value_cache, sparse, scale)
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
        ({}, "must be a cupy.ndarray"),  # valid host inputs stop only at the device check
    ],
)
def test_the_step_checks_everything_on_the_host_first(change, match):
    args = _host_args()
    args.update(change)
    with pytest.raises(KernelInputError, match=match):
        sparse_step.prepare_sparse_decode_step(**args)


# ======================================================================= GPU
def _run(case: ScoreCase, value_cache: np.ndarray, budget: int):
    import cupy as cp

    d = [cp.asarray(a) for a in (case.query, case.key_cache, value_cache, case.key_min, case.key_max)]
    out = cp.full(case.query.shape, np.nan, dtype=case.query.dtype)  # poisoned: every element must be written
    step = sparse_step.prepare_sparse_decode_step(*d, case.batch, budget, case.query.shape[2] ** -0.5, out=out)
    step.scores.fill(np.nan)
    step.tables.fill(-7)
    got = step()
    cp.cuda.get_current_stream().synchronize()
    return step, got


def _check(case: ScoreCase, value_cache: np.ndarray, budget: int) -> None:
    scores, logical, sparse, out = _twin(case, value_cache, budget)
    step, got = _run(case, value_cache, budget)
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
    _check(case, value_cache, budget)


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
@pytest.mark.parametrize("seed, budget", [(1, 1000), (2, 3200), (3, 256)])
def test_long_rows_give_the_twins_bits(seed, budget):
    """6 sequences of ~4,000 tokens at budgets of 1/4, 4/5 and 1/16: the attention runs
    split-K or one pass, as ``auto`` decides on the selected lengths."""
    case, vc = _long_case(S=6, pages=250, bs=16, Hkv=2, G=4, seed=seed)
    _check(case, vc, budget)


@pytest.mark.gpu
def test_the_step_replays_from_a_cuda_graph_with_the_same_bits():
    import cupy as cp

    case, vc = _long_case(S=4, pages=120, bs=16, Hkv=2, G=4, seed=5)
    *_, want = _twin(case, vc, 640)
    d = [cp.asarray(a) for a in (case.query, case.key_cache, vc, case.key_min, case.key_max)]
    with cp.cuda.Stream(non_blocking=True) as stream:
        step = sparse_step.prepare_sparse_decode_step(*d, case.batch, 640, 128**-0.5)
        step()
        stream.synchronize()
        step.out.fill(np.nan)
        stream.begin_capture()
        step()
        graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
    assert_bits_equal(step.out.get(), want)
