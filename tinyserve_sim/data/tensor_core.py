"""What one tensor-core instruction computes, bit for bit: Hopper, float16 in, float32 out.

Every kernel of this project runs on the float32 CUDA cores, because a twin has to
reproduce every bit and the PTX ISA specifies neither the order nor the rounding of a
tensor-core ``mma``. This module is the first step out of that corner (the kernel notes'
"Tensor cores: a possible next step"): a NumPy model of one instruction,

    mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32   D = A B + C

(A 16 x 16 float16, B 16 x 8 float16, C and D 16 x 8 float32), checked against the GPU
bit for bit (``tests/gpu/test_gpu_tensor_core.py``). No kernel of the project uses tensor
cores yet; a kernel that does would call :func:`mma_m16n8k16` in its twin at the places
where it issues the instruction, as the twins call ``fma_f32`` today.

**The rule.** Each output is ``d = a[0] b[0] + ... + a[15] b[15] + c``, computed as:

1. Every product is exact (two 11-bit significands make at most 22 bits).
2. Every term gets an exponent from its *exponent fields*, not from its value: a product's
   is ``exp(a) + exp(b)`` (its significand lies in [1, 4), so it may carry one bit above
   that), ``c``'s is ``exp(c)``. Subnormals count with the smallest normal exponent, as
   IEEE-754 encodes them (-14 for float16, -126 for float32).
3. ``E`` is the largest of those exponents over the non-zero terms. Every term is cut
   **toward zero** to a multiple of ``2**(E - 25)``: 25 bits below the place of ``E``.
4. The cut terms are added exactly: a fixed-point sum, so their order does not matter.
5. The sum is rounded once to float32, **toward zero**.

Steps 3 and 5 are why the result is not IEEE-754's: a term far below the largest loses
its low bits before anything is added (in an exact sum they could have carried into the
result), and the last rounding truncates instead of rounding to nearest. So ``mma`` and
the exact sum rounded to nearest disagree in 43% of the outputs of the fit's ``normal``
kind: 91% of those by one ulp, the rest by more where the sum nearly cancels (the cut is
relative to the largest term, not to the result). The model says exactly where.

Where the rule comes from. Fasi, Higham, Mikaitis and Pranesh ("Numerical behavior of
NVIDIA tensor cores", PeerJ Comput. Sci. 7:e330, 2021) found the pattern on the V100,
T4 and A100: exact products, alignment on the largest term, truncation, one
normalisation at the end, rounding toward zero. Khattak and Mikaitis ("Accurate Models
of NVIDIA Tensor Cores", arXiv:2512.07004, 2025) model the H100's units the same way
with a wider window. The details above (the exponent fields, the 25 bits, the 17 terms
in one step) were fitted on an NVIDIA H200 in session 15 (``docs/dev/kernel-notes.md``):
on 1.3 million outputs of seven kinds of inputs, nine window widths, three block sizes and
two cut and rounding modes, this is the one model with no mismatch.

**Special values.** A NaN input, ``inf * 0`` or infinities of both signs give NaN (the
GPU's NaN bits are not part of the model: compare NaNs as NaNs); otherwise an infinite
term gives that infinity. A sum of exactly zero is ``+0``, except that ``-0`` terms
alone (every product and ``c`` a negative zero) give ``-0``.

Only the instruction above is modelled, on SM 9.0 (the H100 and H200 share it). Another
shape, input type or architecture needs its own measurement: the A100's units, for one,
keep fewer bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from tinyserve_sim.errors import KernelInputError

#: Bits kept below the place of the largest term's exponent (step 3).
WINDOW_BITS = 25
#: Products added per instruction, with ``c``, in one step (the ``k`` of m16n8k16).
K = 16


# ------------------------------------------------------------------ the parts of a float
def _split_f16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float16 -> (sign bit, integer significand m, field exponent e): |x| = m * 2**(e - 10)."""
    bits = x.view(np.uint16).astype(np.int64)
    sign, field, fraction = bits >> 15, (bits >> 10) & 0x1F, bits & 0x3FF
    significand = np.where(field == 0, fraction, fraction | 0x400)  # the hidden bit
    exponent = np.where(field == 0, 1, field) - 15  # a subnormal counts as exponent -14
    return sign, significand, exponent


def _split_f32(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 -> (sign bit, integer significand m, field exponent e): |x| = m * 2**(e - 23)."""
    bits = x.view(np.uint32).astype(np.int64)
    sign, field, fraction = bits >> 31, (bits >> 23) & 0xFF, bits & 0x7FFFFF
    significand = np.where(field == 0, fraction, fraction | 0x800000)
    exponent = np.where(field == 0, 1, field) - 127
    return sign, significand, exponent


def _truncate_to_float32(x: np.ndarray) -> np.ndarray:
    """Round exact float64 values to float32 toward zero."""
    nearest = x.astype(np.float32)
    too_far = np.abs(nearest.astype(np.float64)) > np.abs(x)
    return np.where(too_far, np.nextafter(nearest, np.float32(0)), nearest).astype(np.float32)


# ------------------------------------------------------------------ one output
def _finite_dot(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Steps 1-5 for finite inputs. a, b [N, 16] float16, c [N] float32 -> [N] float32."""
    sa, ma, ea = _split_f16(a)
    sb, mb, eb = _split_f16(b)
    sc, mc, ec = _split_f32(c)
    # Step 1: the exact products, as integers times a power of two. Each float16 is
    # m * 2**(e - 10), so a product is (ma * mb) * 2**(ea + eb - 20).
    product = ma * mb  # at most 22 bits
    # The 17 terms side by side: column 0 is c, columns 1-16 the products.
    sign = np.concatenate([sc[:, None], sa ^ sb], axis=1)
    significand = np.concatenate([mc[:, None], product], axis=1)
    place = np.concatenate([ec[:, None], ea + eb], axis=1)  # step 2: exponent fields
    lowest = np.concatenate([ec[:, None] - 23, ea + eb - 20], axis=1)  # value of bit 0
    # Step 3: the largest place among the non-zero terms, and the unit of the cut.
    nonzero = significand != 0
    top = np.where(nonzero, place, np.iinfo(np.int64).min // 2).max(axis=1)
    unit = top - WINDOW_BITS
    # Cut each term toward zero to a multiple of 2**unit: shift its significand so that
    # its bit 0 lands where it belongs (left: nothing is lost; right: the bits shifted
    # out are dropped). A shift of 62 or more leaves nothing of a 24-bit significand.
    shift = lowest - unit[:, None]
    kept = np.where(
        shift >= 0,
        significand << np.clip(shift, 0, 62),
        significand >> np.clip(-shift, 0, 62),
    )
    # Step 4: the exact fixed-point sum (17 terms of at most 27 bits: no overflow).
    total = np.where(sign == 1, -kept, kept).sum(axis=1)
    # Step 5: total * 2**unit is exact in float64 (at most 32 bits), then toward zero.
    all_zero = ~nonzero.any(axis=1)
    exact = np.ldexp(total.astype(np.float64), np.where(all_zero, 0, unit))
    out = _truncate_to_float32(exact)
    # A zero sum is +0, unless every term is a negative zero.
    only_negative_zeros = all_zero & (sign == 1).all(axis=1)
    return np.where(only_negative_zeros, np.float32(-0.0), out).astype(np.float32)


def mma_dot(a: npt.ArrayLike, b: npt.ArrayLike, c: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """One output of the instruction: ``sum(a[..., k] * b[..., k] for k in range(16)) + c``
    by the rule in the module docstring.

    ``a`` and ``b`` are float16 with a last axis of 16 (a row of A and a column of B),
    ``c`` float32 with the leading shape of ``a``. Returns float32 of that shape.
    """
    a = _as(a, np.float16, "a")
    b = _as(b, np.float16, "b")
    c = _as(c, np.float32, "c")
    if a.ndim < 1 or a.shape[-1] != K:
        raise KernelInputError(f"a must end in an axis of {K} (one row of A), got shape {a.shape}")
    if b.shape != a.shape:
        raise KernelInputError(f"b must have a's shape {a.shape}, got {b.shape}")
    if c.shape != a.shape[:-1]:
        raise KernelInputError(f"c must have shape {a.shape[:-1]} (a's without its last axis), got {c.shape}")
    shape = c.shape
    a2, b2, c1 = a.reshape(-1, K), b.reshape(-1, K), c.reshape(-1)
    finite = np.isfinite(a2).all(axis=1) & np.isfinite(b2).all(axis=1) & np.isfinite(c1)
    out = np.empty(c1.shape, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        out[finite] = _finite_dot(a2[finite], b2[finite], c1[finite])
        if not finite.all():
            # Infinities and NaNs follow IEEE-754: the float64 sum of the exact products
            # (every finite product is far below float64's range) has the right special value.
            special = ~finite
            products = a2[special].astype(np.float64) * b2[special].astype(np.float64)
            out[special] = (products.sum(axis=1) + c1[special]).astype(np.float32)
    return out.reshape(shape)


def check_mma_m16n8k16(a: Any, b_t: Any, c: Any) -> int:
    """Check the dtypes and shapes of one launch (NumPy or CuPy arrays); return the tile count."""
    for name, x, dtype in (("a", a, np.float16), ("b_t", b_t, np.float16), ("c", c, np.float32)):
        if not hasattr(x, "dtype") or not hasattr(x, "shape"):
            raise KernelInputError(f"{name} must be an array, got {type(x).__name__}")
        if x.dtype != dtype:
            raise KernelInputError(f"{name} must be {np.dtype(dtype).name}, got {x.dtype}")
    if a.ndim != 3 or tuple(a.shape[1:]) != (16, 16):
        raise KernelInputError(f"a must have shape [tiles, 16, 16], got {tuple(a.shape)}")
    tiles = int(a.shape[0])
    if tuple(b_t.shape) != (tiles, 8, 16):
        raise KernelInputError(f"b_t must have shape [{tiles}, 8, 16] (B transposed), got {tuple(b_t.shape)}")
    if tuple(c.shape) != (tiles, 16, 8):
        raise KernelInputError(f"c must have shape [{tiles}, 16, 8], got {tuple(c.shape)}")
    return tiles


def mma_m16n8k16(a: npt.ArrayLike, b_t: npt.ArrayLike, c: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The twin of ``gpu/kernels/tensor_core_mma.cu``: ``D = A B + C`` for a stack of tiles.

    ``a`` [tiles, 16, 16] float16 (A, row-major), ``b_t`` [tiles, 8, 16] float16 (B stored
    as its transpose: row ``j`` is column ``j`` of B, as the instruction's ``.col`` reads
    it), ``c`` [tiles, 16, 8] float32. Returns D [tiles, 16, 8] float32, where
    ``D[t, i, j] = mma_dot(a[t, i, :], b_t[t, j, :], c[t, i, j])``.
    """
    a, b_t, c = np.asarray(a), np.asarray(b_t), np.asarray(c)
    tiles = check_mma_m16n8k16(a, b_t, c)
    # Output (i, j) pairs row i of A with row j of B^T.
    rows = np.broadcast_to(a[:, :, None, :], (tiles, 16, 8, 16))
    cols = np.broadcast_to(b_t[:, None, :, :], (tiles, 16, 8, 16))
    return mma_dot(rows, cols, c)


def _as(x: Any, dtype: type, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != dtype:
        raise KernelInputError(f"{what} must be {np.dtype(dtype).name}, got {arr.dtype}")
    return np.asarray(arr, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
