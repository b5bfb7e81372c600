"""The tensor-core model (``tinyserve_sim.data.tensor_core``) on the CPU: against an
independent implementation of its rule in exact rational arithmetic, on hand-worked
examples, and on its input checks. The GPU test (``tests/gpu/test_gpu_tensor_core.py``)
compares it with the hardware."""

from __future__ import annotations

import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tinyserve_sim.data.tensor_core import WINDOW_BITS, mma_chain, mma_dot, mma_m16n8k16, mma_steps
from tinyserve_sim.errors import KernelInputError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tensor_core_strategies import KINDS, dot_rows, draw_tiles


# ------------------------------------------------------------------ the rule, in rationals
def _place(x: float, smallest: int) -> int:
    """The exponent a float's fields encode: floor(log2 |x|), or the smallest normal
    exponent for a subnormal."""
    return max(math.frexp(x)[1] - 1, smallest)


def _float32_toward_zero(s: Fraction) -> np.float32:
    """The float32 nearest to ``s`` on the side of zero, found by stepping, not by formula."""
    y = np.float32(float(s))  # near; then walk to the right side
    while abs(Fraction(float(y))) > abs(s):
        y = np.nextafter(y, np.float32(0))
    while True:
        away = np.nextafter(y, np.float32(math.copysign(np.inf, float(s)) if s != 0 else np.inf))
        if np.isfinite(away) and abs(Fraction(float(away))) <= abs(s):
            y = away
        else:
            return np.float32(y)


def reference_dot(a: np.ndarray, b: np.ndarray, c: np.float32) -> np.float32:
    """The module docstring's five steps, for finite inputs, with Fractions."""
    terms = [(Fraction(float(c)), _place(float(c), -126) if c != 0 else None)]
    for x, y in zip(a.tolist(), b.tolist()):
        p = Fraction(x) * Fraction(y)  # step 1: exact
        terms.append((p, _place(x, -14) + _place(y, -14) if p != 0 else None))  # step 2
    places = [e for _, e in terms if e is not None]
    if not places:  # every term zero: -0 only if all are negative zeros
        negative = math.copysign(1, float(c)) < 0 and all(
            math.copysign(1, x) * math.copysign(1, y) < 0 for x, y in zip(a.tolist(), b.tolist()))
        return np.float32(-0.0 if negative else 0.0)
    unit = Fraction(2) ** (max(places) - WINDOW_BITS)  # step 3
    total = sum(math.trunc(t / unit) * unit for t, _ in terms)  # steps 3 and 4: cut toward zero, add
    if total == 0:
        return np.float32(0.0)
    return _float32_toward_zero(total)  # step 5


def _same(x: np.ndarray, y: np.ndarray) -> bool:
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    return bool(np.all((x.view(np.uint32) == y.view(np.uint32)) | (np.isnan(x) & np.isnan(y))))


@settings(max_examples=400, deadline=None)
@given(dot_rows())
def test_mma_dot_follows_its_rule_in_exact_arithmetic(row):
    a, b, c = row
    got = mma_dot(a, b, np.float32(c))
    want = reference_dot(a, b, np.float32(c))
    assert _same(got, want), f"a={a.tolist()} b={b.tolist()} c={c!r}: twin {got!r}, rule {want!r}"


@pytest.mark.parametrize("kind", KINDS)
def test_mma_m16n8k16_follows_its_rule_on_every_kind(kind):
    a, b_t, c = draw_tiles(kind, 2, np.random.default_rng(7))
    d = mma_m16n8k16(a, b_t, c)
    for i in range(16):
        for j in range(8):
            want = reference_dot(a[1, i], b_t[1, j], c[1, i, j])
            assert _same(d[1, i, j], want), (kind, i, j, d[1, i, j], want)


# ------------------------------------------------------------------ worked by hand
def _row(products: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros(16, np.float16)
    b = np.zeros(16, np.float16)
    for k, (x, y) in enumerate(products):
        a[k], b[k] = x, y
    return a, b


def test_small_terms_are_cut_before_they_are_added():
    # c = 1 sets E = 0, so the unit is 2**-25. Four products of 3 * 2**-27 = 0.75 units
    # are each cut to 0: d = 1. Exactly, they add 3 * 2**-25 = 0.75 ulp of 1.0, which
    # one rounding of the exact sum to nearest would turn into 1 + 2**-23.
    a, b = _row([(3 * 2.0**-14, 2.0**-13)] * 4)
    assert mma_dot(a, b, np.float32(1.0)) == np.float32(1.0)
    # The same 3 * 2**-25, as one product of kept bits, survives the cut...
    a, b = _row([(3 * 2.0**-13, 2.0**-12)])
    # ...and the final rounding toward zero takes 1 + 0.75 ulp down to 1.
    assert mma_dot(a, b, np.float32(1.0)) == np.float32(1.0)
    # One ulp's worth of kept bits is kept whole: 1 + 2**-23.
    a, b = _row([(2.0**-11, 2.0**-12)])
    assert mma_dot(a, b, np.float32(1.0)) == np.nextafter(np.float32(1.0), np.float32(2.0))


def test_the_exponent_fields_not_the_value_set_the_window():
    # Two products of 1.5 * 1.5 = 2.25: the fields say exponent 0 (a significand in [1, 4)
    # may carry a bit), so the unit is 2**-25, not the 2**-24 that a window placed by the
    # value 2.25 (exponent 1) would give. A term of 2**-25 survives: 4.5 + 2**-25 rounds
    # toward zero to 4.5 in float32 anyway, so look at it through a cancellation instead.
    a, b = _row([(1.5, 1.5), (-1.5, 1.5), (2.0**-13, 2.0**-12)])
    assert mma_dot(a, b, np.float32(0.0)) == np.float32(2.0**-25)


def test_integers_are_exact_and_order_does_not_matter():
    a, b_t, c = draw_tiles("ints", 4, np.random.default_rng(3))
    d = mma_m16n8k16(a, b_t, c)
    exact = np.einsum("tik,tjk->tij", a.astype(np.float64), b_t.astype(np.float64)) + c
    assert np.array_equal(d, exact.astype(np.float32))
    rng = np.random.default_rng(4)
    a, b_t, c = draw_tiles("anybits", 4, rng)
    order = rng.permutation(16)
    assert _same(mma_m16n8k16(a[..., order], b_t[..., order], c), mma_m16n8k16(a, b_t, c))


def test_special_values_follow_ieee():
    a, b = _row([(1.0, 1.0), (np.inf, 2.0)])
    assert mma_dot(a, b, np.float32(3.0)) == np.inf
    a, b = _row([(np.inf, 1.0), (-np.inf, 1.0)])
    assert np.isnan(mma_dot(a, b, np.float32(0.0)))
    a, b = _row([(np.inf, 0.0)])
    assert np.isnan(mma_dot(a, b, np.float32(0.0)))
    a, b = _row([(1.0, 1.0)])
    assert mma_dot(a, b, np.float32(-np.inf)) == -np.inf
    # Zeros: a zero sum is +0; only negative zeros everywhere give -0.
    a, b = _row([(1.0, 1.0)])
    assert np.signbit(mma_dot(a, b, np.float32(-1.0))) == False
    a, b = _row([])
    b[:] = np.float16(-0.0)
    a[:] = np.float16(1.0)
    assert np.signbit(mma_dot(a, b, np.float32(-0.0)))
    assert not np.signbit(mma_dot(a, b, np.float32(0.0)))


@pytest.mark.parametrize("factor", [2.0, -3.0, 2.0**-14, 2.0**-20, 65504.0, 1.0])
@pytest.mark.parametrize("c", [0.0, -0.0, 1.5, -(2.0**-140)])
def test_zero_products_with_any_other_factor_are_zero_terms(factor, c):
    # A product with a zero factor is a zero term, whatever the other factor's exponent:
    # d is c itself (a zero c gives +0, or -0 when every term is a negative zero).
    a = np.full(16, factor, np.float16)
    b = np.where(np.arange(16) % 2 == 0, np.float16(0.0), np.float16(-0.0))
    want = reference_dot(a, b, np.float32(c))
    got = mma_dot(a, b, np.float32(c))
    assert _same(got, want) and _same(mma_chain(a[None], b[None]), np.float32(0.0)), (got, want)
    assert _same(got, np.float32(c) if c != 0 else np.float32(0.0))


# ------------------------------------------------------------------ chains
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2**32 - 1), st.sampled_from(["normal", "spread", "subnormal", "prob"]))
def test_mma_chain_is_a_loop_of_mma_dot(steps, seed, kind):
    # Keys [3, 1, 5, D] against queries [1, 4, 1, D]: the broadcast a kernel's twin uses.
    rng = np.random.default_rng(seed)
    a = draw_tiles(kind, steps, rng)[0].reshape(-1)[: 15 * 16 * steps].reshape(3, 1, 5, 16 * steps)
    b = draw_tiles(kind, steps, rng)[0].reshape(-1)[: 4 * 16 * steps].reshape(1, 4, 1, 16 * steps)
    big_a, big_b = np.broadcast_arrays(a, b)
    d = np.zeros(big_a.shape[:-1], np.float32)
    for s in range(steps):
        d = mma_dot(big_a[..., 16 * s : 16 * s + 16], big_b[..., 16 * s : 16 * s + 16], d)
    assert _same(mma_chain(a, b), d)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(0, 2**32 - 1), st.sampled_from(["normal", "spread", "subnormal", "prob"]),
       st.sampled_from([0.0, 1.0, -3e5, np.inf, np.nan]))
def test_mma_steps_is_a_loop_of_mma_dot_from_its_accumulator(steps, seed, kind, special):
    # Values [2, 1, 3, K] against probabilities' parts [1, 4, 1, K] from accumulators [2, 4, 3]:
    # the broadcast of the decode twin's P V; one accumulator may be special.
    rng = np.random.default_rng(seed)
    a = draw_tiles(kind, steps, rng)[0].reshape(-1)[: 6 * 16 * steps].reshape(2, 1, 3, 16 * steps)
    b = draw_tiles(kind, steps, rng)[0].reshape(-1)[: 4 * 16 * steps].reshape(1, 4, 1, 16 * steps)
    c = (rng.standard_normal((2, 4, 3)) * 100).astype(np.float32)
    c[0, 0, 0] = special
    big_a, big_b = np.broadcast_arrays(a, b)
    d = c.copy()
    for s in range(steps):
        d = mma_dot(big_a[..., 16 * s : 16 * s + 16], big_b[..., 16 * s : 16 * s + 16], d)
    assert _same(mma_steps(a, b, c), d)
    if special == 0.0:
        assert _same(mma_steps(a, b, np.zeros((), np.float32)), mma_chain(a, b))


def test_mma_steps_takes_special_inputs_as_mma_dot_does():
    a = np.ones((3, 32), np.float16)
    a[1, 5], a[2, 20] = np.inf, np.nan
    b = np.full((1, 32), 0.5, np.float16)
    got = mma_steps(a, b, np.float32(1.0))
    assert got[0] == 17.0 and got[1] == np.inf and np.isnan(got[2])


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (np.zeros((2, 24), np.float16), np.zeros((2, 24), np.float16), "multiple of 16"),
        (np.zeros((2, 16), np.float16), np.zeros((3, 16), np.float16), "broadcast"),
        (np.full((1, 16), np.inf, np.float16), np.zeros((1, 16), np.float16), "finite"),
        (np.zeros((1, 16), np.float32), np.zeros((1, 16), np.float16), "float16"),
    ],
)
def test_mma_chain_refuses_what_it_cannot_model(a, b, message):
    with pytest.raises(KernelInputError, match=message):
        mma_chain(a, b)


# ------------------------------------------------------------------ the float64 bound
from tinyserve_sim.data.reference import _gamma, _logit_underflow, _magnitudes  # noqa: E402


def _chain_error_and_bounds(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """|mma_chain - exact| and the two candidate bounds: gamma_{D+1} times sum |a b|, and
    times sum m(a) m(b) (reference._magnitudes), each plus the underflow term."""
    D = a.shape[-1]
    exact = sum(Fraction(float(x)) * Fraction(float(y)) for x, y in zip(a.tolist(), b.tolist()))
    error = abs(Fraction(float(mma_chain(a, b))) - exact)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    tiny = _logit_underflow(1.0, D)
    plain = _gamma(D + 1) * float(np.abs(a64) @ np.abs(b64)) + tiny
    fields = _gamma(D + 1) * float(_magnitudes(a64, True) @ _magnitudes(b64, True)) + tiny
    return float(error), plain, fields


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([16, 64, 128, 256]), st.integers(0, 2**32 - 1),
       st.sampled_from(["normal", "spread", "subnormal", "prob", "anybits"]))
def test_a_chain_errs_within_the_decode_bounds_logit_term(D, seed, kind):
    # attention_error_bound's logit term, gamma_{D+1} * sum_d m(q_d) m(k_d), holds for the
    # tensor-core chain (the derivation is in reference._magnitudes).
    rng = np.random.default_rng(seed)
    a = draw_tiles(kind, D // 16, rng)[0].reshape(-1)[:D]
    b = draw_tiles(kind, D // 16, rng)[0].reshape(-1)[-D:]
    with np.errstate(over="ignore"):
        if not np.isfinite(a.astype(np.float64) @ b.astype(np.float64)):
            return
    error, _, bound = _chain_error_and_bounds(a, b)
    assert error <= bound, (error, bound)


def test_subnormal_factors_need_their_exponent_fields_in_the_bound():
    # A subnormal query element (2**-24, exponent field -14) against a key of 2**15 sets the
    # window at 2**1, so fifteen products of 1.5 * 2**-26 are cut to nothing: an error of
    # 22.5 * 2**-26, far above gamma_{17} * sum |q k| (about 2**-9 * 17 * 2**-24), and
    # inside gamma_{17} * sum m(q) m(k) (2 * 17 * 2**-24).
    a = np.array([2.0**-24] + [1.5 * 2.0**-13] * 15, np.float16)
    b = np.array([2.0**15] + [2.0**-13] * 15, np.float16)
    error, plain, fields = _chain_error_and_bounds(a, b)
    assert error == 22.5 * 2.0**-26
    assert plain < error <= fields


# ------------------------------------------------------------------ the fit that found the rule
def test_the_fit_script_singles_out_the_rule_on_the_models_own_outputs(tmp_path, capsys):
    # benchmarks/experiments/mma_probe.py fit, on outputs made by the model instead of a GPU:
    # its family must contain the rule (no mismatch) and tell it from every other member.
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "experiments" / "mma_probe.py"
    spec = importlib.util.spec_from_file_location("mma_probe_under_test", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    rng = np.random.default_rng(9)
    for kind in KINDS:
        a, b_t, c = draw_tiles(kind, 4, rng)
        np.savez_compressed(tmp_path / f"mma_{kind}.npz", A=a, Bt=b_t, C=c, D=mma_m16n8k16(a, b_t, c))
    probe.fit(tmp_path, 512)
    best = capsys.readouterr().out.strip().splitlines()[-1]
    assert best.startswith("fewest mismatches: [(0, '25 fields 16 tz rz'), (") and "(0, " not in best[40:]


def test_the_fit_script_refuses_a_folder_without_data_in_one_line(tmp_path):
    import subprocess

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "experiments" / "mma_probe.py"
    for args in (["fit", str(tmp_path)], ["fit", str(tmp_path), "--limit", "-1"]):
        res = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].endswith("must be a positive integer, got '-1'")


# ------------------------------------------------------------------ input checks
@pytest.mark.parametrize(
    ("a", "b_t", "c", "names"),
    [
        (np.zeros((1, 16, 16), np.float32), np.zeros((1, 8, 16), np.float16), np.zeros((1, 16, 8), np.float32), "a must be float16"),
        (np.zeros((1, 16, 16), np.float16), np.zeros((1, 16, 8), np.float16), np.zeros((1, 16, 8), np.float32), "b_t must have shape"),
        (np.zeros((1, 16, 16), np.float16), np.zeros((1, 8, 16), np.float16), np.zeros((1, 16, 8), np.float64), "c must be float32"),
        (np.zeros((2, 16, 8), np.float16), np.zeros((2, 8, 16), np.float16), np.zeros((2, 16, 8), np.float32), "a must have shape"),
        (np.zeros((2, 16, 16), np.float16), np.zeros((2, 8, 16), np.float16), np.zeros((1, 16, 8), np.float32), "c must have shape"),
        ([[1.0]], np.zeros((1, 8, 16), np.float16), np.zeros((1, 16, 8), np.float32), "a must be float16"),
    ],
)
def test_bad_inputs_raise_a_kernel_input_error(a, b_t, c, names):
    with pytest.raises(KernelInputError, match=names):
        mma_m16n8k16(a, b_t, c)


@given(st.sampled_from([(15,), (4, 17), ()]))
def test_mma_dot_needs_rows_of_16(shape):
    with pytest.raises(KernelInputError):
        mma_dot(np.zeros(shape, np.float16), np.zeros(shape, np.float16), np.zeros(shape[:-1], np.float32))


@settings(max_examples=300, deadline=None)
@given(st.floats(-3.4e38, 3.4e38, allow_nan=False) | st.floats(-2.0**-120, 2.0**-120))
@example(x=2.0**-126 - 2.0**-150)  # just below the smallest normal: must not round up to it
@example(x=float(np.nextafter(2.0**-126, 0.0)))
@example(x=-(2.0**-126) + 2.0**-160)
@example(x=float(np.finfo(np.float32).max) * (1 + 2.0**-30))
def test_the_last_rounding_is_toward_zero_to_float32(x):
    # Step 5 on its own: the float32 of largest magnitude not beyond x, with x's sign,
    # in the normal range, among the subnormals and at the edges.
    from tinyserve_sim.data.tensor_core import _truncate_to_float32

    r = _truncate_to_float32(np.array([x]))[0]
    assert abs(float(r)) <= abs(x) and (r == 0 or np.signbit(r) == np.signbit(x))
    with np.errstate(over="ignore"):  # past the largest float32, the next one away is inf
        away = np.nextafter(r, np.float32(np.copysign(np.inf, x)))
    assert abs(float(away)) > abs(x)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(0, 2**32 - 1), st.sampled_from(sorted(KINDS)))
def test_the_twins_fast_path_is_mma_steps(steps, seed, kind):
    # prepare_operand + mma_step (the twins' P V loop, accumulate_values) against
    # mma_steps, step by step from a nonzero accumulator, on every kind of input.
    from tinyserve_sim.data.tensor_core import mma_step, prepare_operand

    rng = np.random.default_rng(seed)
    a = draw_tiles(kind, steps, rng)[0].reshape(-1)[: 6 * 16 * steps].reshape(2, 1, 3, 16 * steps)
    b = draw_tiles(kind, steps, rng)[0].reshape(-1)[: 4 * 16 * steps].reshape(1, 4, 1, 16 * steps)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return  # the fast path takes finite operands; mma_steps has the rest
    d = (rng.standard_normal((2, 4, 3)) * 10).astype(np.float32)
    want = d.copy()
    pa, pb = prepare_operand(a), prepare_operand(b)
    for s in range(steps):
        d = mma_step(pa, pb, s, d)
        want = mma_steps(a[..., 16 * s : 16 * s + 16], b[..., 16 * s : 16 * s + 16], want)
        assert _same(d, want)


@pytest.mark.parametrize(
    ("operand", "message"),
    [(np.zeros(16, np.float32), "float16"), (np.zeros(24, np.float16), "multiple of 16"),
     (np.full(16, np.inf, np.float16), "finite")],
)
def test_the_fast_path_refuses_what_it_cannot_take(operand, message):
    from tinyserve_sim.data.tensor_core import prepare_operand

    with pytest.raises(KernelInputError, match=message):
        prepare_operand(operand)


def test_the_fast_path_refuses_mismatched_operands_and_steps():
    from tinyserve_sim.data.tensor_core import mma_step, prepare_operand

    a, b = prepare_operand(np.ones((2, 32), np.float16)), prepare_operand(np.ones((3, 32), np.float16))
    c = np.zeros(2, np.float32)
    with pytest.raises(KernelInputError, match="broadcast"):
        mma_step(a, b, 0, c)
    with pytest.raises(KernelInputError, match="same axis"):
        mma_step(a, prepare_operand(np.ones((2, 16), np.float16)), 0, c)
    ones = prepare_operand(np.ones((1, 32), np.float16))
    for step in (-1, 2):
        with pytest.raises(KernelInputError, match="step must be in 0..1"):
            mma_step(a, ones, step, c)
    assert mma_step(a, ones, 1, c).tolist() == [16.0, 16.0]


def test_the_fast_path_refuses_a_bad_step_or_accumulator():
    from tinyserve_sim.data.tensor_core import mma_step, prepare_operand

    a = prepare_operand(np.ones((2, 32), np.float16))
    with pytest.raises(KernelInputError, match="step must be"):
        mma_step(a, a, 1.5, np.zeros(2, np.float32))
    with pytest.raises(KernelInputError, match="step must be"):
        mma_step(a, a, True, np.zeros(2, np.float32))
    with pytest.raises(KernelInputError, match="broadcast"):
        mma_step(a, a, 0, np.zeros(3, np.float32))
    assert mma_step(a, a, np.int64(1), np.zeros(2, np.float32)).tolist() == [16.0, 16.0]


def _values_step_args():
    acc = np.zeros((2, 1, 3, 8), np.float32)
    p = np.full((2, 1, 3, 32), 0.5, np.float32)
    v16 = np.ones((2, 1, 32, 8), np.float16)
    return acc, p, v16, np.full((2, 1), 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [(lambda a: (a[0].astype(np.float64), *a[1:]), "acc must be a 4-d float32"),
     (lambda a: (a[0], a[1][..., :24], a[2], a[3]), "multiple of 16"),
     (lambda a: (a[0], a[1], a[2][:, :, :16], a[3]), r"\[R, H, W, D\]"),
     (lambda a: (a[0], a[1], a[2].tolist(), a[3]), "v16 must be a 4-d float16 array, got list"),
     (lambda a: (a[0], a[1], a[2], np.full((2, 1), 2.0)), "groups must be an integer array"),
     (lambda a: (a[0], a[1], a[2], np.full((1, 2), 2)), "groups must be an integer array")],
)
def test_accumulate_values_names_a_bad_argument(change, message):
    from tinyserve_sim.data.tensor_core import accumulate_values

    with pytest.raises(KernelInputError, match=message):
        accumulate_values(*change(_values_step_args()))


def test_accumulate_values_adds_p_v_on_good_arguments():
    # p = 0.5 (one float16 part), v = 1: each of the 32 keys adds 0.5 * 2**15 to every output.
    from tinyserve_sim.data.tensor_core import PART_SCALE, accumulate_values

    out = accumulate_values(*_values_step_args())
    assert out.dtype == np.float32 and out.shape == (2, 1, 3, 8)
    assert np.all(out == 32 * 0.5 * float(PART_SCALE))
