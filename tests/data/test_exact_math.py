"""The shared exact-math helpers: exp accuracy and special values, summation trees."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tinyserve_sim.data.exact_math import (
    exp_f32,
    fma_f32,
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
    assert rel.max() < EPS_EXP  # measured ~7.9e-8; the bound uses 2.5e-7
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


# ----------------------------------------------------------------------------- fma_f32
def _round_to_f32(x: Fraction) -> float:
    """The float32 nearest to the exact rational ``x`` (ties to even), overflow to inf, subnormals kept."""
    if x == 0:
        return 0.0
    sign = -1 if x < 0 else 1
    m = abs(x)
    e = m.numerator.bit_length() - m.denominator.bit_length()  # 2**e <= m < 2**(e+2)
    if Fraction(2) ** e > m:
        e -= 1
    quantum = Fraction(2) ** (max(e, -126) - 23)  # a unit in the last place of m's binade
    q = m / quantum
    n = q.numerator // q.denominator
    rest = q - n
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and n % 2 == 1):
        n += 1
    value = n * quantum
    if value >= Fraction(2) ** 128:
        return sign * math.inf
    return sign * float(value)


def _exact_fma(a: np.float32, b: np.float32, c: np.float32) -> float:
    if not (np.isfinite(a) and np.isfinite(b) and np.isfinite(c)):
        return float(np.float64(a) * np.float64(b) + np.float64(c))  # IEEE special cases, exact in float64
    product = Fraction(float(a)) * Fraction(float(b))
    exact = product + Fraction(float(c))
    if exact == 0:
        # Round to nearest: an exact zero is +0, unless both terms are zeros of the same negative sign.
        negative_product = np.signbit(a) != np.signbit(b)
        return -0.0 if (product == 0 and c == 0 and negative_product and np.signbit(c)) else 0.0
    return _round_to_f32(exact)


def _same_bits(x: np.float32, y: float) -> bool:
    return np.float32(x).view(np.uint32) == np.float32(y).view(np.uint32) or (np.isnan(x) and np.isnan(y))


f32s = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)


@st.composite
def near_cancellation(draw):
    """c close to -a*b, so that the exact sum keeps only the low bits of the product."""
    a, b = draw(f32s), draw(f32s)
    with np.errstate(over="ignore"):  # a product past float32's range: c is inf, left as it is
        c = -np.float32(np.float64(a) * np.float64(b))
    ulps = draw(st.integers(-3, 3))
    if np.isfinite(c) and ulps:
        c = np.nextafter(c, np.float32(np.inf) if ulps > 0 else np.float32(-np.inf), dtype=np.float32)
    return np.float32(a), np.float32(b), np.float32(c)


@st.composite
def fp16_and_probability_operands(draw):
    """The kernel's PV product: a probability p in [0, 1] times a float16 value, plus an accumulator."""
    p = np.float32(draw(st.floats(0, 1, width=32)))
    v = np.float32(np.float16(draw(st.floats(-65504, 65504, width=16))))
    acc = np.float32(draw(f32s.filter(lambda x: abs(x) < 1e30)))
    return p, v, acc


@example((np.float32(1 + 2**-12), np.float32(1 + 2**-12), np.float32(-(1 + 2**-11))))  # the docstring's tie
@example((np.float32(2**-75), np.float32(2**-75), np.float32(0)))  # a subnormal result
@example((np.float32(3e38), np.float32(2), np.float32(-3e38)))  # product overflows float32, sum does not
@example((np.float32(3.4e38), np.float32(1.0000001), np.float32(3.4e38)))  # overflow to +inf
@example((np.float32(-0.0), np.float32(1), np.float32(-0.0)))  # signed zeros
@given(st.tuples(f32s, f32s, f32s) | near_cancellation() | fp16_and_probability_operands())
def test_fma_f32_is_the_correctly_rounded_fused_multiply_add(abc):
    a, b, c = (np.float32(x) for x in abc)
    with np.errstate(over="ignore"):
        got = fma_f32(a, b, c)
    assert _same_bits(got, _exact_fma(a, b, c)), (a, b, c, got)


@pytest.mark.parametrize("scale", [-100, -40, 0, 30, 100])
@pytest.mark.parametrize("sign", [1, -1])
def test_fma_f32_rounds_once_where_float64_lands_on_a_float32_tie(scale, sign):
    # a*b = 2**-24 + 2**-60 exactly, so a*b + 1 = 1 + 2**-24 + 2**-60. float64 rounds that to
    # 1 + 2**-24, exactly halfway between two float32 values, and the tie then goes down to 1:
    # computing in float64 and rounding gives 1.0. The correctly rounded answer is 1 + 2**-23.
    # Only the round-to-odd step gets this right (scaled and mirrored to other binades).
    a = np.float32(sign * (1 + 2**-12) * 2.0 ** (scale - 24))
    b = np.float32(1 - 4095 * 2**-24)
    c = np.float32(sign * 2.0**scale)
    expected = _exact_fma(a, b, c)
    assert expected == sign * (1 + 2**-23) * 2.0**scale
    assert np.float32(np.float64(a) * np.float64(b) + np.float64(c)) != expected  # double rounding fails
    assert _same_bits(fma_f32(a, b, c), expected)


def test_fma_f32_rounds_once_on_a_tie_in_the_float32_subnormal_range():
    # The same trap below the smallest normal float32, where the tie sits at half of 2**-149:
    # exactly, a*b + c = 2**-127 + 2**-150 + 2**-186; float64 drops the 2**-186 and leaves a tie.
    a = np.float32((1 + 2**-12) * 2.0**-75)
    b = np.float32((1 - 4095 * 2**-24) * 2.0**-75)
    c = np.float32(2.0**-127)
    expected = _exact_fma(a, b, c)
    assert expected == 2.0**-127 + 2.0**-149
    assert np.float32(np.float64(a) * np.float64(b) + np.float64(c)) != expected
    assert _same_bits(fma_f32(a, b, c), expected)


def test_fma_f32_special_values_and_broadcasting():
    inf, nan = np.float32(np.inf), np.float32(np.nan)
    got = fma_f32(np.array([inf, 0, nan, 1, inf], F32), np.array([0, inf, 1, 1, 1], F32),
                  np.array([1, 1, 1, inf, -inf], F32))
    assert np.isnan(got[0]) and np.isnan(got[1]) and np.isnan(got[2]) and got[3] == inf and np.isnan(got[4])
    out = fma_f32(np.ones((3, 1), F32), np.arange(4, dtype=F32), F32(0.5))
    assert out.shape == (3, 4) and out.dtype == F32 and (out == np.arange(4) + 0.5).all()


def test_fma_f32_differs_from_two_roundings_where_it_must():
    # A test that can fail: on random probability-times-fp16 products the single rounding must differ from
    # multiply-then-add somewhere (otherwise fma_f32 would be a plain multiply-add in disguise).
    rng = np.random.default_rng(1)
    p = rng.random(100_000).astype(F32)
    v = rng.standard_normal(100_000).astype(np.float16).astype(F32)
    acc = (rng.standard_normal(100_000) * 10).astype(F32)
    fused, twice = fma_f32(p, v, acc), acc + p * v
    differ = fused != twice
    assert 0 < differ.mean() < 0.5
    exact = [_exact_fma(p[i], v[i], acc[i]) for i in np.flatnonzero(differ)[:200]]
    assert all(_same_bits(fused[i], x) for i, x in zip(np.flatnonzero(differ)[:200], exact))


def test_exp_polynomial_is_seven_fused_multiply_adds():
    """exp_f32's Horner steps (fast float64 evaluation, tie suspects redone) equal seven fma_f32
    calls bit for bit: on random reduced arguments, and on ones whose float64 sum lands exactly
    on a float32 tie at some step (found by search), which take the redo path."""
    from tinyserve_sim.data.exact_math import EXP_POLY, _horner_fma

    rng = np.random.default_rng(3)
    ties = np.array([2.0**-24, 2.0**-23, 2.0**-11, -(2.0**-25), -(2.0**-24), -(2.0**-12)], dtype=F32)
    for r in (rng.uniform(-0.35, 0.35, 200_000).astype(F32), ties, ties[2]):
        want = np.full(np.shape(r), EXP_POLY[0], dtype=F32)
        for c in EXP_POLY[1:]:
            want = fma_f32(want, r, c)
        got = _horner_fma(np.asarray(r))
        assert got.shape == np.shape(r)
        assert (np.asarray(got).view(np.uint32) == np.asarray(want).view(np.uint32)).all()
