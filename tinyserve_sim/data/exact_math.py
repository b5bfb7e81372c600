"""Exact float32 arithmetic shared by every kernel twin.

The GPU kernels in ``gpu/kernels/`` and their NumPy twins in this package
promise *bit-identical* results. That is only possible when both sides do the
very same IEEE-754 float32 operations in the very same order. Three things
usually break that promise, and this module removes all three:

1. **The exponential.** CUDA's ``expf`` and ``__expf`` are not correctly
   rounded and differ from NumPy's ``np.exp`` (measured on an H100: 47% of
   inputs differ, by up to 3 and 28 ULP). So neither side uses its library
   exp. Both use :func:`exp_f32`, built only from ``*``, ``+``, ``rint`` and an
   exact power of two assembled from exponent bits. Each of those operations
   is correctly rounded in IEEE-754, so both sides round identically.
2. **Summation order.** Float addition is not associative. Every sum in a
   kernel has a fixed, documented order, and the twin reproduces it:
   sequential sums (:func:`sequential_sum`) for what one thread accumulates,
   and pairwise trees (:func:`pairwise_sum`) for a ``__shfl_xor_sync``
   butterfly, which pairs lane ``i`` with lane ``i ^ 1``, then ``i ^ 2``, ...
   That is exactly a sum of adjacent pairs, repeated.
3. **Fused multiply-add.** ``a * b + c`` may be contracted into one FMA (one
   rounding instead of two). The kernels are compiled with ``--fmad=false``
   (see ``gpu/build.py``), so the compiler never fuses behind our back. Where a
   kernel *wants* a fused multiply-add (it saves an instruction), it writes
   ``__fmaf_rn(a, b, c)`` explicitly, and the twin calls :func:`fma_f32` at the
   same place: an exact emulation of the single rounding, described below.

NumPy pitfall: mixing a float32 array with a Python ``float`` is fine under
NumPy 2's promotion rules, but mixing with a float64 *array* or ``np.float64``
silently computes in float64. Every constant here is an ``np.float32``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tinyserve_sim.control.checks import is_int
from tinyserve_sim.errors import KernelInputError

F32 = np.float32

# Constants as exact float32 values, written in hexadecimal so that the C
# header (gpu/kernels/exact_math.cuh) can spell the very same bits.
LOG2E = F32(float.fromhex("0x1.715476p+0"))  # log2(e) rounded to float32
# Cody-Waite split of ln(2): LN2_HI has 9 significant bits, so k * LN2_HI is
# exact for every |k| <= 128 that we use; LN2_LO carries the remainder.
LN2_HI = F32(float.fromhex("0x1.63p-1"))  # 0.693359375
LN2_LO = F32(float.fromhex("-0x1.bd0106p-13"))  # -2.12194440e-4
# Taylor coefficients 1/k! for k = 7 .. 0 (Horner order), rounded to float32.
# On |r| <= ln(2)/2 the truncation error r^8/8! is below 6e-9, far under the
# float32 rounding error of the evaluation itself.
EXP_POLY = tuple(
    F32(float.fromhex(h))
    for h in (
        "0x1.a01a02p-13",  # 1/5040
        "0x1.6c16c2p-10",  # 1/720
        "0x1.111112p-7",  # 1/120
        "0x1.555556p-5",  # 1/24
        "0x1.555556p-3",  # 1/6
        "0x1.0p-1",  # 1/2
        "0x1.0p+0",  # 1
        "0x1.0p+0",  # 1
    )
)
# exp(x) is flushed to 0 when rint(x * log2 e) < EXP_MIN_K (the result would be
# at or near the subnormal range, where GPU and CPU products can differ), and
# saturates to +inf when it is > EXP_MAX_K.
EXP_MIN_K = -125
EXP_MAX_K = 127


def _as_f32(x: npt.ArrayLike, what: str) -> npt.NDArray[np.float32]:
    """``x`` as a float32 array, or a :class:`~tinyserve_sim.errors.KernelInputError` naming ``what``."""
    try:
        return np.asarray(x, dtype=F32)
    except (TypeError, ValueError):
        raise KernelInputError(f"{what} needs real numbers, got {type(x).__name__}") from None


def _sum_axis(a: npt.ArrayLike, axis: int, what: str, power_of_two: bool) -> npt.NDArray[np.float32]:
    """``a`` as float32 with ``axis`` moved last, after checking that the sum is defined:
    a real array with that axis (for the trees, a power of two long along it; a sequential
    sum of nothing is its starting ``+0.0``)."""
    a = _as_f32(a, what)
    if not is_int(axis) or not -a.ndim <= axis < a.ndim:
        raise KernelInputError(f"{what}: axis {axis!r} is not an axis of an array of {a.ndim} dimensions")
    a = np.moveaxis(a, axis, -1)
    n = a.shape[-1]
    if power_of_two and (n == 0 or n & (n - 1)):
        raise KernelInputError(f"{what} needs a power-of-two length, got {n}")
    return a


def exp_f32(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Deterministic float32 ``exp``, bit-identical to ``ts_exp`` in CUDA.

    Algorithm (each step one correctly rounded float32 operation):

    1. ``k = rint(x * LOG2E)``: the power of two to pull out.
    2. If ``k < -125`` return 0 (flush: never produce a subnormal);
       if ``k > 127`` return +inf.
    3. ``r = fma(-k, LN2_LO, fma(-k, LN2_HI, x))``: Cody-Waite reduction, so that
       ``|r| <~ ln(2)/2``. ``k * LN2_HI`` is exact, so the inner FMA is the same
       value as ``x - k * LN2_HI``; the outer one rounds once.
    4. ``p = exp(r)`` by a degree-7 polynomial in Horner form, each step one
       fused multiply-add ``p = fma(p, r, c)`` (:func:`fma_f32`, as ``__fmaf_rn``
       on the GPU: one rounding, and one instruction instead of two).
    5. ``2**k`` built exactly as the float with biased exponent ``k + 127``;
       return ``p * 2**k`` (always a normal float, so no subnormal rounding).

    NaN maps to NaN, ``-inf`` to 0 and ``+inf`` to ``+inf``.
    Relative error against float64 ``exp``: a few ULP (see the tests).
    Inputs above ~88.4 saturate to +inf slightly earlier than a libm would;
    softmax only ever calls it on values <= 0.
    """
    x = _as_f32(x, "exp_f32")
    with np.errstate(invalid="ignore", over="ignore"):
        kf = np.rint(x * LOG2E)
        r = x - kf * LN2_HI  # the product is exact: the same value as fma(-k, LN2_HI, x)
        r = fma_f32(-kf, LN2_LO, r)
        p = _horner_fma(r)
        # Build 2**k from the exponent bits; k is clipped only to keep the
        # integer conversion defined for lanes that step 2 overrides anyway.
        k_safe = np.where(np.isfinite(kf), np.clip(kf, EXP_MIN_K, EXP_MAX_K), 0)
        two_k = ((k_safe.astype(np.int32) + 127) << 23).view(F32)
        out = p * two_k
    out = np.where(kf < EXP_MIN_K, F32(0.0), out)
    out = np.where(kf > EXP_MAX_K, F32(np.inf), out)
    out = np.where(np.isnan(x), x, out)
    return out.astype(F32, copy=False)


def _horner_fma(r: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``EXP_POLY`` at ``r`` in Horner form, ``p = fma(p, r, c)`` per step: :func:`fma_f32`'s
    arithmetic, with its check for the rare double-rounding suspects gathered over all steps.

    Each step is ``p * r + c`` in float64 (the product of two float32 values is exact there),
    rounded to float32. That is the correctly rounded FMA unless the float64 sum sits exactly
    on a float32 tie (see :func:`fma_f32`); its other suspect, a result in float32's
    subnormal range, cannot occur: every ``p`` of this polynomial on ``|r| <= 0.35`` lies
    between about 1e-3 and 2. The rare elements that hit a tie at any step are redone
    with :func:`fma_f32` step by step. The same bits, at about half the cost of calling it
    seven times.
    """
    shape = np.shape(r)
    r = np.atleast_1d(r)
    r64 = r.astype(np.float64)
    p = np.full(r.shape, EXP_POLY[0], dtype=np.float64)  # float32 values, held in float64
    suspects = np.zeros(r.shape, dtype=bool)
    for c in EXP_POLY[1:]:
        s = p * r64 + np.float64(c)
        suspects |= _on_float32_tie(s)
        p = s.astype(F32).astype(np.float64)
    out = p.astype(F32)
    if suspects.any():
        rr = r[suspects]
        exact = np.full(rr.shape, EXP_POLY[0], dtype=F32)
        for c in EXP_POLY[1:]:
            exact = fma_f32(exact, rr, c)
        out[suspects] = exact
    return out.reshape(shape)


def fma_f32(a: npt.ArrayLike, b: npt.ArrayLike, c: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Fused multiply-add ``a * b + c`` with ONE rounding to float32, bit-identical to CUDA's ``__fmaf_rn``.

    NumPy has no float32 FMA, and computing in float64 and rounding to float32
    is *not* enough: that rounds twice (first to 53 bits, then to 24), and the
    first rounding can land exactly on a float32 tie and tip the second one the
    wrong way. Round-to-odd removes the problem (Boldo and Melquiond, "Emulation
    of FMA and correctly rounded sums: proved algorithms using rounding to odd",
    IEEE Trans. Computers 57(4), 2008): if the first rounding is *to odd* in a
    format with at least 24 + 2 bits, the second rounding, to nearest even,
    gives the correctly rounded result. Step by step, on float64:

    1. ``p = a * b``: exact (24 + 24 significant bits fit in 53, and no float32
       product over- or underflows float64).
    2. ``s = p + c``, rounded to nearest, and ``e``, the exact error of that
       addition, by TwoSum (Knuth): ``s + e == p + c`` exactly.
    3. Round to odd: if ``e != 0`` (``s`` is inexact) and the last bit of ``s``'s
       significand is 0, move ``s`` one unit in the last place towards ``e``.
       Now ``s`` is the exact sum rounded to odd.
    4. Round ``s`` to float32 (to nearest even): the correctly rounded FMA,
       overflow to infinity and float32 subnormals included.

    Worked example: ``a = b = 1 + 2**-12`` and ``c = -(1 + 2**-11)``, all float32.
    Exactly, ``a*b = 1 + 2**-11 + 2**-24``, so ``a*b + c = 2**-24``: the FMA
    returns ``5.96e-08``. Rounded twice, ``a*b`` first becomes the float32
    ``1 + 2**-11`` (``2**-24`` is half a unit in the last place, a tie, and the
    tie goes to the even neighbour), and then ``+ c`` gives ``0``.

    >>> a = np.float32(1 + 2**-12); c = np.float32(-(1 + 2**-11))
    >>> float(fma_f32(a, a, c)) == 2**-24, float(a * a + c)
    (True, 0.0)

    Special values follow IEEE: NaN in, NaN out; ``inf * 0`` is NaN; an infinite
    ``c`` or product passes through. Broadcasting as NumPy does.

    Steps 2 and 3 only matter when ``s`` is inexact *and* sits exactly on a
    float32 tie (the 29 bits below a float32 significand read ``1000...0``), or
    when the result is in float32's subnormal range, where the tie sits lower.
    That is rare (about one sum in 2**29), so the work is done in two passes:
    ``s = p + c`` for every element, and the exact TwoSum and round-to-odd only
    for the suspects. Cheaper, and the same bits.
    """
    a64 = np.asarray(a, dtype=F32).astype(np.float64)
    b64 = np.asarray(b, dtype=F32).astype(np.float64)
    with np.errstate(invalid="ignore"):
        return add_exact_product(a64 * b64, c)  # the product is exact in float64


def add_exact_product(p: npt.NDArray[np.float64], c: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``p + c`` rounded once to float32, where ``p`` is an *exact* product of two float32 values
    held in float64 and ``c`` is a float32: the second half of :func:`fma_f32`.

    A twin that multiplies the same operands many times converts them to
    float64 once and calls this with ``p = a64 * b64``.
    """
    c64 = np.asarray(c, dtype=F32).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        s = p + c64
        # (|s| - 1) as unsigned: below the smallest normal float32 but not zero.
        tiny = ((s.view(np.int64) & _ABS_BITS) - 1).view(np.uint64) < _TINY_BITS
        suspects = _on_float32_tie(s) | tiny
        if suspects.any():
            s, p, c64 = (np.atleast_1d(x) for x in np.broadcast_arrays(s, p, c64))
            pick = np.atleast_1d(suspects)
            s = s.copy()
            s[pick] = _round_to_odd_sum(p[pick], c64[pick])
            s = s.reshape(suspects.shape)
        return s.astype(F32)


# Bit patterns of a float64 used by fma_f32: its 29 lowest significand bits, their value on a
# float32 tie, the sign mask, and (smallest normal float32 as float64 bits) - 1.
_LOW_29_BITS = np.int64((1 << 29) - 1)
_TIE_29_BITS = np.int64(1 << 28)
_ABS_BITS = np.int64(0x7FFF_FFFF_FFFF_FFFF)
_TINY_BITS = np.uint64(int(np.float64(2.0**-126).view(np.int64)) - 1)


def _on_float32_tie(s: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Where a float64 sits exactly halfway between two float32 neighbours (its 29 bits below
    a float32 significand read ``1000...0``): the one place where rounding an inexact float64
    sum to float32 can differ from rounding the exact sum."""
    return (s.view(np.int64) & _LOW_29_BITS) == _TIE_29_BITS


def _round_to_odd_sum(p: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``p + c`` (float64 arrays) rounded to odd: the exact sum if it is a float64, else the odd one
    of its two float64 neighbours. Special values pass through as IEEE addition gives them."""
    s = p + c
    # TwoSum (Knuth): e is the exact rounding error of s, without comparing magnitudes.
    p_part = s - c
    e = (p - p_part) + (c - (s - p_part))
    bits = s.view(np.int64)
    # An inexact s with an even last bit moves one ulp towards e: +1 on the bit pattern when e
    # and s have the same sign, -1 otherwise (s is never 0 here: a nonzero exact sum never rounds
    # to 0 in float64). NaN or infinite sums are left alone (e is NaN there).
    fix = (np.abs(e) > 0) & np.isfinite(s) & ((bits & 1) == 0)
    step = np.where((e > 0) == (s > 0), 1, -1)
    return np.where(fix, bits + step, bits).view(np.float64)


def pairwise_sum(a: npt.NDArray[np.float32], axis: int = -1) -> npt.NDArray[np.float32]:
    """Sum along ``axis`` as a ``__shfl_xor_sync`` butterfly does.

    The axis length must be a power of two. Level 1 adds elements ``(0,1)``,
    ``(2,3)``, ...; level 2 adds the results pairwise again; and so on. A
    butterfly over lanes with masks 1, 2, 4, ... computes exactly this tree
    (each lane adds its partner's value; float addition is commutative, so
    both partners get identical bits).
    """
    a = _sum_axis(a, axis, "pairwise_sum", power_of_two=True)
    while a.shape[-1] > 1:
        a = a[..., 0::2] + a[..., 1::2]
    return a[..., 0]


def sequential_sum(a: npt.NDArray[np.float32], axis: int = -1) -> npt.NDArray[np.float32]:
    """Sum along ``axis`` strictly left to right, starting from ``+0.0``.

    This is what one GPU thread does with ``acc = 0; for (...) acc += x;``.
    (``np.sum`` would use its own pairwise blocking, a different order.)
    """
    a = _sum_axis(a, axis, "sequential_sum", power_of_two=False)
    acc = np.zeros(a.shape[:-1], dtype=F32)
    for i in range(a.shape[-1]):
        acc = acc + a[..., i]
    return acc


def halving_sum(a: npt.NDArray[np.float32], axis: int = -1) -> npt.NDArray[np.float32]:
    """Sum along ``axis`` as a butterfly with *descending* masks does.

    The axis length must be a power of two ``n``. Level 1 adds element ``i``
    to element ``i + n/2``; level 2 adds ``i`` and ``i + n/4`` of the result;
    and so on. A ``__shfl_xor_sync`` butterfly (or reduce-scatter) over masks
    ``n/2, n/4, ..., 1`` computes exactly this tree. It equals
    :func:`pairwise_sum` over the bit-reversed order of the elements.
    """
    a = _sum_axis(a, axis, "halving_sum", power_of_two=True)
    while a.shape[-1] > 1:
        half = a.shape[-1] // 2
        a = a[..., :half] + a[..., half:]
    return a[..., 0]
