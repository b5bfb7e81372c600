"""What one tensor-core instruction computes, bit for bit: Hopper, float16 in, float32 out.

The kernels of this project ran on the float32 CUDA cores only, because a twin has to
reproduce every bit and the PTX ISA specifies neither the order nor the rounding of a
tensor-core ``mma``. This module is the way out of that corner (the kernel notes'
"Tensor cores: a possible next step"): a NumPy model of one instruction,

    mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32   D = A B + C

(A 16 x 16 float16, B 16 x 8 float16, C and D 16 x 8 float32), checked against the GPU
bit for bit (``tests/gpu/test_gpu_tensor_core.py``). The decode kernel's logits use it:
``gpu/kernels/paged_attention.cu`` issues a chain of these instructions over the head dim
for plans with ``tensor_core_logits`` (float16 GQA), and its twin calls :func:`mma_chain`
at the same place, as the twins call ``fma_f32`` for every ``__fmaf_rn``.

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
of 168 models (windows of 23 to 40 bits, places by exponent fields or by value, blocks of
16, 8 or 4 products, cuts toward zero or down, rounding toward zero or to nearest), this is
the one with no mismatch on 420,000 outputs of seven kinds of inputs (the next best misses
34,373). The GPU test then compared it with 8.2 million more, and a Hypothesis search.

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


# ------------------------------------------------------------------ the rule
#: The place of a zero factor: so far below every real place (at least -126) that a product
#: with a zero factor, whatever the other factor's place, stays below ``_ANY_REAL_PLACE``.
_NO_PLACE = -(2**20)
_ANY_REAL_PLACE = -(2**19)


def exponent_fields(x: np.ndarray, smallest: int) -> np.ndarray:
    """Step 2: the exponent a float's fields encode, floor(log2 |x|), or ``smallest`` (the
    smallest normal exponent) for a subnormal; ``_NO_PLACE`` for a zero (so that a product
    with a zero factor has a place below every real one). ``x`` is float64 holding float16
    or float32 values exactly. Returns int32."""
    places = np.maximum(np.frexp(x)[1] - 1, smallest).astype(np.int32)
    return np.where(x != 0, places, np.int32(_NO_PLACE))


def _cut_and_add(products: np.ndarray, places: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Steps 3-5 for finite terms. ``products`` [..., k] float64 (exact), ``places`` [..., k]
    their exponent fields (below ``_ANY_REAL_PLACE`` where a product is zero), ``c`` [...] float32.

    Everything is exact in float64: a term cut to a multiple of ``2**unit`` is an integer
    times ``2**unit`` of at most 27 bits, and 17 of them add up to at most 32 bits.
    """
    return _cut_and_add_below(products, places.max(axis=-1), c)


def _cut_and_add_below(products: np.ndarray, top_product: np.ndarray, c: np.ndarray) -> np.ndarray:
    """:func:`_cut_and_add` with the products' largest place given (``top_product`` [...]),
    as :func:`mma_step` finds it from its operands' places. Written for speed (the twins run
    it once per instruction of every chain): the fewest NumPy calls that follow the rule."""
    c64 = c.astype(np.float64)
    # Step 3: the largest place. Where every term is zero there is none: any unit then
    # gives a zero sum (the floor keeps 2**-unit finite).
    top = np.maximum(np.maximum(top_product, exponent_fields(c64, -126)), _ANY_REAL_PLACE // 1024)
    to_units = np.ldexp(1.0, WINDOW_BITS - top)  # 2**-unit: scaling by it is exact
    # Step 3: cut toward zero (trunc) in units of 2**unit; step 4: the exact sum. (+ 0.0:
    # a sum of cut terms that are all -0.0 is a zero sum, +0.)
    scaled = products * to_units[..., None]
    total = np.trunc(scaled, out=scaled).sum(axis=-1)
    total += np.trunc(c64 * to_units) + 0.0
    total /= to_units
    out = _truncate_to_float32(total)  # step 5: exact, then toward zero
    if not out.all():  # a zero sum is +0, unless every term is a negative zero
        zero_terms = (products == 0).all(axis=-1) & (c64 == 0)
        only_negative_zeros = zero_terms & np.signbit(products).all(axis=-1) & np.signbit(c64)
        out = np.where(only_negative_zeros, np.float32(-0.0), out).astype(np.float32)
    return out


#: float64's significand bits below float32's: clearing them truncates toward zero.
_BELOW_FLOAT32 = np.int64((1 << 29) - 1)


def _truncate_to_float32(x: np.ndarray) -> np.ndarray:
    """Round exact float64 values to float32 toward zero."""
    x = np.asarray(x, dtype=np.float64)
    if not x.flags.c_contiguous:
        x = x.copy()
    # Clear the 29 significand bits float32 does not have (toward zero), then convert: exact
    # where the cleared value lies in float32's normal range.
    cleared = (x.view(np.int64) & ~_BELOW_FLOAT32).view(np.float64)
    out = cleared.astype(np.float32)
    magnitude = np.abs(cleared)
    outside = magnitude < 2.0**-126  # zeros, and subnormals (float32 keeps fewer bits there)
    outside |= magnitude > np.finfo(np.float32).max  # beyond the largest float32
    if outside.any():  # step back from the nearest float32 wherever it lies beyond x
        nearest = x[outside].astype(np.float32)
        too_far = np.abs(nearest.astype(np.float64)) > np.abs(x[outside])
        out[outside] = np.where(too_far, np.nextafter(nearest, np.float32(0)), nearest)
    return out


def _products_and_places(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 and the products' part of step 2: exact products (float64: 22 bits) and the
    sums of their factors' exponent fields. ``a`` and ``b`` float64, broadcastable."""
    return a * b, exponent_fields(a, -14) + exponent_fields(b, -14)


def _specials(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Rows with an infinity or a NaN: IEEE-754's special value. The float64 sum of the
    exact products (every finite one far below float64's range) has it."""
    with np.errstate(invalid="ignore", over="ignore"):
        products = a.astype(np.float64) * b.astype(np.float64)
        return (products.sum(axis=-1) + c).astype(np.float32)


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
    products, places = _products_and_places(a2[finite].astype(np.float64), b2[finite].astype(np.float64))
    out[finite] = _cut_and_add(products, places, c1[finite])
    if not finite.all():
        out[~finite] = _specials(a2[~finite], b2[~finite], c1[~finite])
    return out.reshape(shape)


def mma_chain(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """A chain of instructions along a long axis, as a kernel issues them: the dot product
    of ``a`` and ``b`` (float16, last axis a multiple of 16, other axes broadcast) as
    ``d = mma_dot(a[..., 16s:16s+16], b[..., 16s:16s+16], d)`` for ``s = 0, 1, ...`` from
    ``d = +0``.

    The same values as that loop of :func:`mma_dot`, computed without materialising the
    broadcast inputs, and with the exponent fields worked out once per input. Finite inputs
    only (a kernel's keys and queries); returns float32 of the broadcast leading shape.
    """
    return _chain(_as(a, np.float16, "a"), _as(b, np.float16, "b"), np.float32(0.0), finite_only=True)


def mma_steps(a: npt.ArrayLike, b: npt.ArrayLike, c: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """A chain that starts from an accumulator: ``d = c``, then
    ``d = mma_dot(a[..., 16s:16s+16], b[..., 16s:16s+16], d)`` for ``s = 0, 1, ...``.

    ``a`` and ``b`` float16 with the same last axis (a multiple of 16), ``c`` float32; the
    leading axes of all three broadcast together. Special values are allowed (the steps
    that meet one take :func:`mma_dot`'s path for them). The decode kernel's ``P V`` on
    tensor cores is such a chain per 16 tokens: ``a`` the values (16 tokens of one dim),
    ``b`` one float16 part of the probabilities, ``c`` the running output.
    """
    return _chain(_as(a, np.float16, "a"), _as(b, np.float16, "b"), _as(c, np.float32, "c"), finite_only=False)


def _chain(a: np.ndarray, b: np.ndarray, c: np.ndarray, finite_only: bool) -> npt.NDArray[np.float32]:
    """The body of :func:`mma_chain` (``finite_only``: refuse special values) and
    :func:`mma_steps`, on arrays of the right dtypes. Each operand is converted to float64
    and checked for special values once, for the whole chain."""
    if a.ndim < 1 or b.ndim < 1 or a.shape[-1] != b.shape[-1] or a.shape[-1] % K:
        raise KernelInputError(f"a and b must end in the same axis, a multiple of {K}, got {a.shape} and {b.shape}")
    try:
        shape = np.broadcast_shapes(a.shape[:-1], b.shape[:-1], c.shape)
    except ValueError:
        raise KernelInputError(f"a, b and c must broadcast together, got {a.shape}, {b.shape} and {c.shape}") from None
    d = np.array(np.broadcast_to(c, shape), dtype=np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)  # exact
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        if finite_only:
            raise KernelInputError("mma_chain takes finite inputs only (mma_dot takes special values too)")
        for step in range(a.shape[-1] // K):  # the slow path, element by element of the rule
            k = slice(K * step, K * step + K)
            d = mma_dot(np.broadcast_to(a[..., k], shape + (K,)), np.broadcast_to(b[..., k], shape + (K,)), d)
        return d
    pa, pb = _operand(a64), _operand(b64)
    for step in range(a.shape[-1] // K):
        k = slice(K * step, K * step + K)
        finite = np.isfinite(d)
        new = mma_step(pa, pb, step, np.where(finite, d, np.float32(0)))
        if not finite.all():  # an infinite or NaN accumulator stays as IEEE-754 has it
            new = np.where(finite, new, _specials(np.broadcast_to(a[..., k], shape + (K,)),
                                                  np.broadcast_to(b[..., k], shape + (K,)), d))
        d = new
    return d


def prepare_operand(x: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """A finite float16 operand as :func:`mma_step` takes it: its values in float64 and
    their exponent fields (step 2), worked out once for a whole chain.

    Raises:
        KernelInputError: not float16, no last axis of a multiple of 16, or not finite.
    """
    x = _as(x, np.float16, "operand")
    if x.ndim < 1 or x.shape[-1] % K:
        raise KernelInputError(f"operand must end in an axis of a multiple of {K}, got shape {x.shape}")
    x64 = x.astype(np.float64)
    if not np.isfinite(x64).all():
        raise KernelInputError("prepare_operand takes finite values only (mma_steps takes special values too)")
    return _operand(x64)


def _operand(x64: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`prepare_operand` on values already checked and converted to float64."""
    return x64, exponent_fields(x64, -14)


def mma_step(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], step: int,
             c: np.ndarray) -> npt.NDArray[np.float32]:
    """Instruction ``step`` of a chain over two operands from :func:`prepare_operand`
    (broadcast together, the same last axis), onto ``c`` (finite float32): the same values as
    :func:`mma_steps` over that 16-wide slice, for the twins' inner loops. The step's exact
    products and their largest place are made for this step alone (a whole chain's at once
    would be ``n / 16`` times the memory, and slower).

    Raises:
        KernelInputError: operands of different lengths, operands and ``c`` that do not
            broadcast, or a step that is not an integer of the chain.
    """
    if a[0].shape[-1] != b[0].shape[-1]:
        raise KernelInputError(f"the operands must end in the same axis, got {a[0].shape} and {b[0].shape}")
    try:
        np.broadcast_shapes(a[0].shape[:-1], b[0].shape[:-1], np.shape(c))
    except ValueError:
        raise KernelInputError(f"the operands and c must broadcast together, got {a[0].shape}, {b[0].shape} "
                               f"and {np.shape(c)}") from None
    steps = a[0].shape[-1] // K
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < steps:
        raise KernelInputError(f"step must be in 0..{steps - 1}, got {step}")
    k = slice(K * step, K * step + K)
    top = (a[1][..., k] + b[1][..., k]).max(axis=-1)
    return _cut_and_add_below(a[0][..., k] * b[0][..., k], top, c)


# ------------------------------------------------------------------ P V on tensor cores
#: The probabilities' scale before their split into float16 parts: ``p <= 1``, so
#: ``p * 2**15`` stays below float16's largest value, 65504, and the scale is exact.
PART_SCALE = np.float32(2.0**15)


def float16_parts(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``p * 2**15`` (float32) as three float16 parts, each the rest so far rounded to
    nearest: ``h1 = f16(p)``, ``h2 = f16(p - h1)``, ``h3 = f16(p - h1 - h2)`` (each rest
    exact in float32). They add up to ``p * 2**15`` exactly from ``p = 2**-16`` up, and
    within ``2**-25`` below it: ``P V`` on tensor cores takes a probability as three
    float16 operands, so that no new rounding enters (the kernels do the same steps)."""
    ps = p * PART_SCALE
    h1 = ps.astype(np.float16)
    r1 = ps - h1.astype(np.float32)
    h2 = r1.astype(np.float16)
    h3 = (r1 - h2.astype(np.float32)).astype(np.float16)
    return h1, h2, h3


def accumulate_values(acc: np.ndarray, p: np.ndarray, v16: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``acc + P V`` over one tile of keys as the kernels' tensor cores add it: for every
    16 keys in increasing order that the kernel runs, and each part of
    :func:`float16_parts` in turn, one ``mma.sync`` step (``acc = mma(v, part, acc)``).

    ``acc`` [R, H, G, D] float32, already rescaled; ``p`` [R, H, G, W] float32 (0 where a key
    is masked or padding); ``v16`` [R, H, W, D] float16 (0 at padding); ``W`` a multiple of
    16; ``groups`` [R, H]: how many 16-key groups of the tile each (R, H) runs (the decode
    kernel skips the groups without a real token; the prefill kernel runs them all). The
    operands are converted, and their exponent fields found, once per tile, not per step.
    Returns the new ``acc`` (the result is ``acc * 2**15`` scaled: divide by ``l * 2**15``).

    Raises:
        KernelInputError: arrays of other dtypes or shapes than the above.
    """
    _check_values_step(acc, p, v16, groups)
    v_t = np.swapaxes(v16, -1, -2)[:, :, None]  # [R, H, 1, D, W]: V^T, one operand
    if not np.isfinite(v_t).all():  # a cache holding inf or NaN: the rule's slow path
        for grp in range(p.shape[-1] // K):
            k = slice(K * grp, K * grp + K)
            live = (groups > grp)[:, :, None, None]
            for part in float16_parts(p):
                acc = np.where(live, mma_steps(v_t[..., k], part[:, :, :, None, k], acc), acc)
        return acc
    a = prepare_operand(v_t)
    parts = [prepare_operand(part[:, :, :, None, :]) for part in float16_parts(p)]
    for grp in range(p.shape[-1] // K):
        every_row = bool((groups > grp).all())
        live = (groups > grp)[:, :, None, None]
        for part in parts:  # h1, h2, h3: one instruction each
            step = mma_step(a, part, grp, acc)
            acc = step if every_row else np.where(live, step, acc)
    return acc


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


def _check_values_step(acc: Any, p: Any, v16: Any, groups: Any) -> None:
    """:func:`accumulate_values`'s arguments, named when wrong (before any work)."""
    for name, x, dtype in (("acc", acc, np.float32), ("p", p, np.float32), ("v16", v16, np.float16)):
        if not isinstance(x, np.ndarray) or x.dtype != dtype or x.ndim != 4:
            got = f"{x.dtype} with shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
            raise KernelInputError(f"{name} must be a 4-d {np.dtype(dtype).name} array, got {got}")
    R, H, G, D = acc.shape
    W = p.shape[-1]
    if p.shape != (R, H, G, W) or W % K or v16.shape != (R, H, W, D):
        raise KernelInputError(f"acc {acc.shape}, p {p.shape} and v16 {v16.shape} must be [R, H, G, D], "
                               f"[R, H, G, W] and [R, H, W, D] with W a multiple of {K}")
    if not isinstance(groups, np.ndarray) or groups.shape != (R, H) or groups.dtype.kind not in "iu":
        raise KernelInputError(f"groups must be an integer array of shape {(R, H)}, got {groups!r:.80}")


def _as(x: Any, dtype: type, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != dtype:
        raise KernelInputError(f"{what} must be {np.dtype(dtype).name}, got {arr.dtype}")
    return np.asarray(arr, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
