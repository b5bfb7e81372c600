"""The seed's heuristics as meant: query analysis (a scalar spec bit for bit, float64 within a
bound, the buckets), cache selection (the formula in float32, grants 0..4), adaptive management
(bounded steps of one), errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyserve_sim.data import (
    adaptive_cache_management,
    cache_selection,
    query_analysis,
)
from tinyserve_sim.data.seed_heuristics import ANALYSIS_THREADS, MAX_ALLOCATION
from tinyserve_sim.errors import KernelInputError

F32 = np.float32


def spec_complexity(row: np.ndarray) -> np.float32:
    """Scalar float32, literally from the docstring: 128 strided sequential sums, a pairwise tree, a division."""
    parts = [F32(0)] * ANALYSIS_THREADS
    for d, x in enumerate(row):
        x = F32(x)
        parts[d % ANALYSIS_THREADS] = F32(parts[d % ANALYSIS_THREADS] + F32(x * x))
    while len(parts) > 1:
        parts = [F32(parts[i] + parts[i + 1]) for i in range(0, len(parts), 2)]
    return F32(parts[0] / F32(len(row)))


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 5),
    hidden=st.sampled_from([1, 7, 128, 300, 1024]),
    dtype=st.sampled_from([np.float16, np.float32]),
    scale=st.sampled_from([0.01, 0.5, 1.0, 100.0]),
)
def test_query_analysis(seed, n, hidden, dtype, scale):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((n, hidden)) * scale).astype(dtype)
    c, r = query_analysis(q, 0.2, 0.5)
    assert c.dtype == np.float32 and r.dtype == np.int32 and c.shape == r.shape == (n,)
    for i in range(n):
        assert c[i].view(np.uint32) == spec_complexity(q[i]).view(np.uint32)
        exact = math.fsum(float(x) ** 2 for x in q[i].astype(np.float64)) / hidden
        assert abs(float(c[i]) - exact) <= (hidden + 2) * 2.0**-24 * exact * 1.01  # gamma(n) bound
        assert r[i] == (2 if c[i] > F32(0.5) else 1 if c[i] > F32(0.2) else 0)


def test_query_analysis_buckets_by_hand():
    q = np.array([[1.0, 1.0], [0.5, -0.5], [0.25, 0.25], [0.0, 0.0]], np.float32)
    c, r = query_analysis(q)
    assert c.tolist() == [1.0, 0.25, 0.0625, 0.0] and r.tolist() == [2, 1, 0, 0]
    assert query_analysis(q, low_threshold=0.0, high_threshold=0.1)[1].tolist() == [2, 2, 1, 0]


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 50),
    threshold=st.floats(-1, 3, width=32),
)
def test_cache_selection(seed, n, threshold):
    rng = np.random.default_rng(seed)
    c = (rng.random(n) * 2).astype(np.float32)
    r = rng.integers(0, 3, n).astype(np.int32)
    h = rng.integers(-50, 500, n).astype(np.int32)
    score, granted = cache_selection(c, r, h, threshold)
    for i in range(n):  # the seed's C expression, one float32 operation at a time
        s = F32(F32(F32(c[i] * F32(0.4)) + F32(F32(r[i]) * F32(0.3))) + F32(F32(F32(h[i]) / F32(100)) * F32(0.3)))
        assert score[i].view(np.uint32) == s.view(np.uint32)
        thr = F32(threshold)
        expect = min(int(r[i]) + 1, 4) if s > thr else 1 if s > F32(thr * F32(0.5)) else 0
        assert granted[i] == expect
    assert ((granted >= 0) & (granted <= MAX_ALLOCATION)).all()


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 60),
    hit_threshold=st.floats(0, 1, width=32),
    freq_threshold=st.integers(0, 40),
)
def test_adaptive_cache_management(seed, n, hit_threshold, freq_threshold):
    rng = np.random.default_rng(seed)
    hit = rng.random(n).astype(np.float32)
    freq = rng.integers(0, 60, n).astype(np.int32)
    alloc = rng.integers(0, MAX_ALLOCATION + 1, n).astype(np.int32)
    before = alloc.copy()
    new = adaptive_cache_management(hit, freq, alloc, hit_threshold, freq_threshold)
    assert (alloc == before).all()  # inputs untouched
    assert new.dtype == np.int32 and ((new >= 0) & (new <= MAX_ALLOCATION)).all()
    assert (np.abs(new - alloc) <= 1).all()
    up = (hit < F32(hit_threshold)) & (freq > freq_threshold)
    down = ~up & (hit > F32(hit_threshold) * F32(1.5)) & (freq < freq_threshold * 0.5)
    assert (new[up] == np.minimum(alloc[up] + 1, 4)).all()
    assert (new[down] == np.maximum(alloc[down] - 1, 0)).all()
    assert (new[~up & ~down] == alloc[~up & ~down]).all()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: query_analysis(np.zeros((2, 3, 4), np.float16)), "positions, hidden"),
        (lambda: query_analysis(np.zeros((2, 4), np.float64)), "float16/float32"),
        (lambda: query_analysis(np.zeros((2, 4), np.float16), 0.6, 0.5), "above"),
        (lambda: query_analysis(np.zeros((2, 4), np.float16), np.nan, 0.5), "finite"),
        (lambda: cache_selection(np.zeros(2, np.float32), np.zeros(3, np.int32), np.zeros(2, np.int32), 1.0), "entries"),
        (lambda: cache_selection(np.zeros(1, np.float32), np.array([3], np.int32), np.zeros(1, np.int32), 1.0), "0, 1 or 2"),
        (lambda: cache_selection(np.zeros(1, np.float64), np.zeros(1, np.int32), np.zeros(1, np.int32), 1.0), "float32"),
        (lambda: adaptive_cache_management(np.zeros(1, np.float32), np.zeros(1, np.int32), np.array([5], np.int32), 0.5, 3), "0..4"),
        (lambda: adaptive_cache_management(np.zeros(1, np.float32), np.zeros(1, np.int32), np.zeros(1, np.int32), 0.5, 2.5), "integer"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(KernelInputError, match=match):
        call()
