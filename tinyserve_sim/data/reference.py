"""A float64 reference for paged attention, and the error bound it must meet.

The twins are bit-identical to the kernels, so they share every rounding
error. This module answers the other question: how far can those float32
results be from the exact answer? :func:`reference_paged_attention` computes
attention in float64 from the same (exactly representable) inputs, and
:func:`attention_error_bound` gives, per output element, a bound that the
float32 kernels provably stay within (given the measured accuracy of the
shared exp). ``docs/concepts/gpu-validation.md`` derives it; in short:

* ``u = 2**-24`` (float32 unit roundoff), ``gamma(n) = n*u / (1 - n*u)``.
* Logit error: ``Delta_t = |scale| * gamma(n_dot + 1) * sum_d |q_d k_td| + u*|x_t|``,
  with ``n_dot = D`` (sequential terms per lane plus the butterfly depth).
* Weight error before normalisation: each token's exp chain (its own exp and
  up to ``n_resc`` rescalings by ``alpha``) is off by a relative
  ``eps_t = (n_resc + 1) * (EPS_EXP + u * (m - x_t)) + 2u``, where
  ``EPS_EXP`` bounds the exp's own relative error and ``u*(m - x_t)`` its
  argument's rounding.
* With ``hi_t = e^{Delta_t} (1 + eps_t)`` and ``lo_t = e^{-Delta_t} (1 - eps_t)``,
  the normalised weights satisfy ``|w'_t / w_t - 1| <= r_t =
  max(hi_t / sum_s w_s lo_s - 1, 1 - lo_t / sum_s w_s hi_s)``.
* Output: ``|out - ref| <= sum_t w_t r_t |v_t| + gamma(n_acc) * sum_t w'_t |v_t| * 2 + u|ref|``,
  plus the final rounding to the output dtype (half an ULP: ``2**-11`` for
  float16, ``u`` for float32, relative; ``2**-25`` absolute for fp16 subnormals).
* Underflow, which the relative terms above do not see (they hold for results in
  float32's normal range): a fused multiply-add or a product whose result is
  subnormal is off by up to ``ETA = 2**-150`` *absolute*, and the exponential
  returns 0 below ``FLUSH = 2**-126``. So every logit's ``Delta_t`` gains
  ``(|scale| (D + 2) + 1) ETA``, and the output ``2 (n_acc + 2) ETA`` (the sums'
  roundings; the normaliser is at least 1) plus ``FLUSH (sum_t |v_t| + L |ref|)``
  (tokens whose weight was flushed, and what they leave out of the normaliser).
  Negligible for values of ordinary size; what bounds the error when the values
  themselves are subnormal (a float32 cache holding ``2**-140``-sized numbers).
"""

from __future__ import annotations

import math

import numpy as np

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data.geometry import MIN_PARTITION_SIZE, SHORTEST_PARTITION
from tinyserve_sim.data.tensor_core import exponent_fields
from tinyserve_sim.data.validation import (
    check_host_arrays,
    check_paged_attention,
    check_partition_size,
    check_scale,
)
from tinyserve_sim.errors import KernelInputError

U32 = 2.0**-24
#: The smallest chunk any plan uses (geometry.make_plan): the most rescalings a partition can see.
MIN_CHUNK = 32
#: Bound on the relative error of exp_f32 (measured maximum over 4 million
#: inputs: 7.9e-8 with its fused multiply-adds, 1.0e-7 before; see
#: tests/data/test_exact_math.py, which asserts it).
EPS_EXP = 2.5e-7
#: The largest absolute error of a float32 product or fused multiply-add whose result is
#: subnormal (half the smallest subnormal; sums that land there are exact).
ETA32 = 2.0**-150
#: Below the smallest normal float32 the shared exponential returns 0 (exact_math.exp_f32).
FLUSH_EXP = 2.0**-126


def _gamma(n: float) -> float:
    return n * U32 / (1.0 - n * U32)


def _logit_underflow(scale64: float, head_dim: int) -> float:
    """Absolute error a logit can gain from subnormal results in its dot product (one
    ``ETA32`` per fused multiply-add, then the scale) and from the scaling itself."""
    return (abs(scale64) * (head_dim + 2) + 1) * ETA32


def _magnitudes(x: np.ndarray, float16: bool) -> np.ndarray:
    """``|x|``, or for float16 values ``max(|x|, 2**e)`` with ``e`` the exponent x's fields encode
    (-14 for a subnormal): what bounds a logit's error on tensor cores too.

    On CUDA cores a logit's dot product errs by at most ``gamma_{D+1} * sum_d |q_d k_d|``. On
    tensor cores (float16 plans with ``tensor_core_logits``), each of the ``D / 16`` instructions
    cuts its 17 terms below ``2**(E - 25)`` (E: the largest exponent field, so ``2**E`` is at most
    the largest ``m(q_d) m(k_d)`` or the running sum) and truncates once: at most
    ``(17 * 2**-25 + 2**-23) * sum_d m(q_d) m(k_d)`` per instruction, ``0.66 D u`` in all, inside
    ``gamma_{D+1}`` (``u = 2**-24``). The exponent field exceeds ``|x|`` only for a subnormal,
    which is where ``sum |q k|`` alone would not do; elsewhere ``m(x) = |x|`` and nothing changes.
    """
    a = np.abs(x)
    if not float16:
        return a
    return np.maximum(a, np.ldexp(1.0, exponent_fields(a, -14)))  # a zero's field gives 2**-2**20 = 0


def _head_kv(key_cache: np.ndarray, value_cache: np.ndarray, table: np.ndarray, length: int, head: int):
    """One KV head's keys and values along one table row, gathered into contiguous float64 ``[L, D]``."""
    block_size = key_cache.shape[1]
    t = np.arange(length)
    blocks, offsets = table[t // block_size], t % block_size
    return (
        key_cache[blocks, offsets, head].astype(np.float64),
        value_cache[blocks, offsets, head].astype(np.float64),
    )


def _checked(query, key_cache, value_cache, batch, scale) -> tuple[np.ndarray, np.ndarray, float]:
    """The twin's checks (the same inputs are accepted); every head's tables and lengths, the scale."""
    check_host_arrays(query=query, key_cache=key_cache, value_cache=value_cache)
    tables, lens = check_paged_attention(query, key_cache, value_cache, batch)
    return tables, lens, float(check_scale(scale))


def reference_paged_attention(
    query: np.ndarray,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    batch: DecodeBatch,
    scale: float,
) -> np.ndarray:
    """Exact-as-float64 decode attention; returns float64 ``[S, Hq, D]``.

    Takes the twin's arguments (a per-head batch too: query head ``g`` reads
    the row of KV head ``g // (Hq / Hkv)``). ``scale`` is first rounded to
    float32, as the kernels receive it."""
    tables, lens, scale64 = _checked(query, key_cache, value_cache, batch, scale)
    S, Hq, D = query.shape
    Hkv = key_cache.shape[2]
    group = Hq // Hkv
    out = np.empty((S, Hq, D), dtype=np.float64)
    for s in range(S):
        for h in range(Hkv):
            k, v = _head_kv(key_cache, value_cache, tables[s, h], int(lens[s, h]), h)
            for g in range(h * group, (h + 1) * group):
                x = (k @ query[s, g].astype(np.float64)) * scale64
                w = np.exp(x - x.max())
                out[s, g] = (w / w.sum()) @ v
    return out


def _weight_and_sum_bound(
    x: np.ndarray,  # [G, L] float64 logits (exact), one row per query head
    delta: np.ndarray,  # [G, L] bound on each computed logit's absolute error
    eps: np.ndarray,  # [G, L] bound on each unnormalised weight's relative error
    vh: np.ndarray,  # [L, D] float64 values
    gamma_acc: float,  # gamma(n) of the output's sums
    u_div: float,  # the final division's unit roundoff
    out_rel: float,
    out_abs: float,
    n_acc: float | np.ndarray = 0.0,  # roundings in the output's sums (their underflow term)
    sum_v: np.ndarray | None = None,  # [L, D] what bounds |v| in the sums' error (default |v|)
    split_loss: float | np.ndarray = 0.0,  # absolute error of each weight's float16 parts (P V on tensor cores)
) -> np.ndarray:
    """The bound on ``|out - ref|`` (``[G, D]``) from per-token logit and weight errors (module doc)."""
    w = np.exp(x - x.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    hi = np.exp(delta) * (1 + eps)
    lo = np.exp(-delta) * np.maximum(1 - eps, 0.0)
    z_hi = (w * hi).sum(axis=1, keepdims=True)
    z_lo = (w * lo).sum(axis=1, keepdims=True)
    r = np.maximum(hi / z_lo - 1.0, 1.0 - lo / z_hi)
    abs_v = np.abs(vh)
    ref = w @ vh
    weight_err = (w * r) @ abs_v
    mag_v = abs_v if sum_v is None else sum_v
    sum_err = 2 * gamma_acc * ((w * (1 + r)) @ mag_v) + u_div * np.abs(ref)
    # Underflow (module doc): the sums' subnormal roundings, and the flushed weights.
    seen = np.isfinite(x)  # keys a row sees (prefill masks the others with -inf)
    underflow = 2 * (np.asarray(n_acc, dtype=np.float64).reshape(-1, 1) + 2) * ETA32 + FLUSH_EXP * (
        seen.astype(np.float64) @ abs_v + seen.sum(axis=1, keepdims=True) * np.abs(ref)
    )
    seen_v = np.isfinite(x).astype(np.float64) @ mag_v
    e = weight_err + sum_err + underflow + split_loss * seen_v
    return e * (1 + out_rel) + out_rel * np.abs(ref) + out_abs


def _output_rounding(dtype: np.dtype) -> tuple[float, float]:
    """Relative and absolute error of rounding a float32 result to ``dtype`` (half an ULP)."""
    return (2.0**-11, 2.0**-25) if dtype == np.float16 else (U32, 2.0**-149)


def _rows(query, key_cache, value_cache, tables, lens, scale64):
    """For every (sequence, KV head): its query heads' slice, exact logits ``[G, L]``,
    ``sum_d m(q_d) m(k_td)`` ``[G, L]`` (:func:`_magnitudes`: ``|q_d k_td|`` but for float16
    subnormals) and values ``[L, D]`` (one gather per row)."""
    S, Hq, _ = query.shape
    Hkv = key_cache.shape[2]
    group = Hq // Hkv
    float16 = query.dtype == np.float16
    for s, h in np.ndindex(S, Hkv):
        length = int(lens[s, h])
        kh, vh = _head_kv(key_cache, value_cache, tables[s, h], length, h)
        q = query[s, h * group : (h + 1) * group].astype(np.float64)  # [G, D]
        abs_qk = _magnitudes(q, float16) @ _magnitudes(kh, float16).T
        yield s, slice(h * group, (h + 1) * group), length, (q @ kh.T) * scale64, abs_qk, vh


def attention_error_bound(
    query: np.ndarray,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    batch: DecodeBatch,
    scale: float,
    partition_size: int | None = None,
) -> np.ndarray:
    """Per-element bound on ``|kernel output - reference|``, float64 ``[S, Hq, D]``.

    Valid for both variants (the split-K reduce is counted in ``n_resc`` and
    ``n_acc``), any plan's chunk (>= :data:`MIN_CHUNK` tokens) and any partition size
    (a multiple of 64) of at least ``partition_size``; ``None`` stands for the shortest
    that ``variant="auto"`` may choose (:data:`SHORTEST_PARTITION`). With a per-head batch the counts
    follow each (sequence, KV head) row's own length."""
    tables, lens, scale64 = _checked(query, key_cache, value_cache, batch, scale)
    partition_size = check_partition_size(SHORTEST_PARTITION if partition_size is None else partition_size, MIN_PARTITION_SIZE)
    S, Hq, D = query.shape
    out_rel, out_abs = _output_rounding(query.dtype)
    float16 = query.dtype == np.float16
    prod_err = 0 if float16 else 1  # fp16 x fp16 products are exact in fp32
    bound = np.empty((S, Hq, D), dtype=np.float64)
    for s, heads, length, x, abs_qk, vh in _rows(query, key_cache, value_cache, tables, lens, scale64):
        n_resc = math.ceil(length / MIN_CHUNK) + 2  # the most rescalings any plan's chunk gives
        n_acc = 2 * length + 2 * n_resc + math.ceil(length / partition_size) + 16
        delta = abs(scale64) * _gamma(D + 1 + prod_err) * abs_qk + U32 * np.abs(x) + _logit_underflow(scale64, D)
        eps = (n_resc + 1) * (EPS_EXP + U32 * (x.max(axis=1, keepdims=True) - x)) + 2 * U32
        # P V on tensor cores (float16 GQA plans, tensor_core_values): each instruction errs
        # by at most (17 * 2**-25 + 2**-23) times its terms' m(p_part) m(v) and its
        # accumulator, three per 16 tokens: 1.97 L u of the sum in all, inside the sums'
        # 2 gamma(n_acc) once |v| becomes m(v) (float16 subnormals). The three float16
        # parts of p * 2**15 miss it by at most 2**-25 (2**-40 of p), and a subnormal part
        # counts as 2**-14 in m: SPLIT_LOSS per token, with room.
        bound[s, heads] = _weight_and_sum_bound(x, delta, eps, vh, _gamma(n_acc), U32, out_rel, out_abs, n_acc,
                                                sum_v=_magnitudes(vh, float16), split_loss=_split_loss(float16, n_acc))
    return bound


def _split_loss(float16: bool, n_acc: float | np.ndarray) -> float | np.ndarray:
    """Per token: what the float16 parts of a weight (``tensor_core_values``) add to the
    output's error, relative to ``m(v)``: ``2**-40`` for the split, and ``2**-28`` (two
    subnormal parts counted as ``2**-14`` each: ``2**-13`` of ``p * 2**15``, ``2**-28`` of
    ``p``) times the sums' error factor."""
    return 2.0**-40 + 2.0**-28 * 2 * _gamma(n_acc) if float16 else 0.0


#: Assumed relative error of an external kernel's exponential (``exp2`` through
#: PTX ``ex2.approx.f32``, documented at 2 ULP, i.e. 2**-22 relative; twice that
#: here for margin). ``tests/gpu/test_third_party_kernels.py`` measures it on the GPU.
EPS_EXP_EXTERNAL = 2.0**-21
#: Unit roundoff assumed for an external kernel's float32 sums: twice IEEE's,
#: so that tensor-core accumulation (which may truncate) is covered.
U_EXTERNAL = 2.0**-23


def external_kernel_error_bound(
    query: np.ndarray,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    batch: DecodeBatch,
    scale: float,
    tokens_per_rescale: int = 1,
    probability_rounding: float = 2.0**-11,
) -> np.ndarray:
    """A bound on ``|output - reference|`` for a decode-attention kernel that is *not* this
    project's (FlashInfer, PyTorch's FlexAttention...), float64 ``[S, Hq, D]``.

    Their order of operations is unknown, so the bound assumes only what such
    kernels do (see ``docs/how-to/export-to-a-server.md``):

    * logits ``q . k`` summed in float32 in any order, with unit roundoff
      :data:`U_EXTERNAL`, each product rounded once and the query possibly
      pre-scaled by a constant (``gamma(D + 2)``), then up to three roundings of
      ``x`` (the scale, ``log2 e``, a folded constant);
    * an exponential with relative error at most :data:`EPS_EXP_EXTERNAL`;
    * an online softmax that rescales at most once per ``tokens_per_rescale``
      tokens, plus at most one merge of partial states per such tile
      (split-KV): ``n_resc = 2 * ceil(L / tokens_per_rescale) + 2``;
    * probabilities rounded by a relative ``probability_rounding`` before the
      ``P . V`` product (``2**-11``: float16, as FlexAttention and tensor-core
      paths do; ``0`` where they stay in float32);
    * ``P . V`` and the normaliser summed in float32 in any order, one division
      (possibly approximate, within 2 ULP), and the output rounded to the query's dtype.

    The bound then follows as for :func:`attention_error_bound` (module doc).
    Two kernels that each meet their bound agree within the sum of the two.
    """
    if isinstance(tokens_per_rescale, bool) or not isinstance(tokens_per_rescale, int) or tokens_per_rescale < 1:
        raise KernelInputError(f"tokens_per_rescale must be a positive integer, got {tokens_per_rescale!r}")
    if not 0.0 <= float(probability_rounding) < 0.5:
        raise KernelInputError(f"probability_rounding must be in [0, 0.5), got {probability_rounding!r}")
    tables, lens, scale64 = _checked(query, key_cache, value_cache, batch, scale)
    S, Hq, D = query.shape
    u = U_EXTERNAL
    out_rel, out_abs = _output_rounding(query.dtype)
    eta = float(probability_rounding)
    n_dot = D + 2  # D terms, each product rounded once, plus a query pre-scaled by a constant
    bound = np.empty((S, Hq, D), dtype=np.float64)
    for s, heads, length, x, abs_qk, vh in _rows(query, key_cache, value_cache, tables, lens, scale64):
        n_resc = 2 * math.ceil(length / tokens_per_rescale) + 2
        n_acc = 2 * length + 2 * n_resc + 16
        delta = abs(scale64) * (n_dot * u / (1 - n_dot * u)) * abs_qk + 3 * u * np.abs(x) + _logit_underflow(scale64, D)
        eps = (n_resc + 1) * (EPS_EXP_EXTERNAL + u * (x.max(axis=1, keepdims=True) - x)) + 2 * u
        # The probability's rounding before P.V is one more relative error on each weight.
        eps = eps + eta + eps * eta
        gamma_acc = n_acc * u / (1 - n_acc * u)
        # The final division may be an approximate one (2 ULP, e.g. __fdividef): 2u.
        bound[s, heads] = _weight_and_sum_bound(x, delta, eps, vh, gamma_acc, 2 * u, out_rel, out_abs, n_acc)
    return bound
