"""The shared exact-math helpers: exp accuracy and special values, summation trees."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tinyserve_sim.data.exact_math import (
    exp_f32,
    halving_sum,
    pairwise_sum,
    sequential_sum,
)
from tinyserve_sim.data.reference import EPS_EXP

F32 = np.float32


def test_exp_relative_error_is_within_the_bound_used_by_the_error_analysis():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-86, 88, 2_000_000), rng.uniform(-20, 0, 2_000_000)]).astype(F32)
    y = exp_f32(x).astype(np.float64)
    ref = np.exp(x.astype(np.float64))
    rel = np.abs(y - ref) / ref
    assert rel.max() < EPS_EXP  # measured ~1.0e-7; the bound uses 2.5e-7
    assert rel.max() > 0  # it is an approximation: this test can fail if the check is vacuous


def test_exp_special_values_and_flush():
    x = np.array([0.0, -0.0, np.nan, -np.inf, np.inf, -87.0, -100.0, 89.0], dtype=F32)
    y = exp_f32(x)
    assert y[0] == 1 and y[1] == 1 and np.isnan(y[2]) and y[3] == 0 and y[4] == np.inf
    assert y[5] == 0 and y[6] == 0  # rint(x * log2 e) < -125: flushed, never subnormal
    assert y[7] == np.inf
    tiny = exp_f32(np.linspace(-90, -80, 10001, dtype=F32))
    assert ((tiny == 0) | (tiny >= np.finfo(F32).tiny)).all()


def test_exp_is_monotone_on_a_dense_grid():
    x = np.linspace(-30, 30, 200001, dtype=F32)
    assert (np.diff(exp_f32(x)) >= 0).all()


def _pairwise_reference(values: list[float]) -> np.float32:
    vals = [F32(v) for v in values]
    while len(vals) > 1:
        vals = [F32(vals[i] + vals[i + 1]) for i in range(0, len(vals), 2)]
    return vals[0]


@given(arrays(F32, st.sampled_from([1, 2, 4, 8, 16, 32]), elements=st.floats(-1e4, 1e4, width=32)))
def test_pairwise_sum_is_the_adjacent_pair_tree(a):
    assert pairwise_sum(a) == _pairwise_reference(list(a))


@given(arrays(F32, st.sampled_from([1, 2, 4, 8, 16, 32]), elements=st.floats(-1e4, 1e4, width=32)))
def test_halving_sum_is_the_pairwise_tree_over_bit_reversed_lanes(a):
    n = a.size
    bits = max(n.bit_length() - 1, 0)
    rev = [int(format(i, f"0{bits}b")[::-1], 2) if bits else 0 for i in range(n)]
    assert halving_sum(a) == _pairwise_reference(list(a[rev]))


@given(arrays(F32, st.integers(0, 40), elements=st.floats(-1e4, 1e4, width=32)))
def test_sequential_sum_adds_left_to_right_from_zero(a):
    acc = F32(0)
    for v in a:
        acc = F32(acc + v)
    assert sequential_sum(a) == acc
