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
"""

from __future__ import annotations

import math

import numpy as np



#: The smallest chunk any plan uses: the most rescalings a partition can see.
MIN_CHUNK = 32

U32 = 2.0**-24
#: Bound on the relative error of exp_f32 (measured maximum over 4 million
#: inputs: 1.0e-7; see tests/data/test_exact_math.py, which asserts it).
EPS_EXP = 2.5e-7


def _gamma(n: float) -> float:
    return n * U32 / (1.0 - n * U32)


def _sequence_kv(key_cache: np.ndarray, value_cache: np.ndarray, table: np.ndarray, length: int):
    """The sequence's keys and values, gathered into contiguous float64 ``[L, Hkv, D]``."""
    block_size = key_cache.shape[1]
    t = np.arange(length)
    blocks, offsets = table[t // block_size], t % block_size
    return key_cache[blocks, offsets].astype(np.float64), value_cache[blocks, offsets].astype(np.float64)


def reference_paged_attention(
    query: np.ndarray,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    block_tables: np.ndarray,
    seq_lens: np.ndarray,
    scale: float,
) -> np.ndarray:
    """Exact-as-float64 decode attention; returns float64 ``[S, Hq, D]``.

    ``scale`` is first rounded to float32, as the kernels receive it."""
    scale64 = float(np.float32(scale))
    S, Hq, D = query.shape
    Hkv = key_cache.shape[2]
    group = Hq // Hkv
    out = np.empty((S, Hq, D), dtype=np.float64)
    for s in range(S):
        k, v = _sequence_kv(key_cache, value_cache, block_tables[s], int(seq_lens[s]))
        for g in range(Hq):
            x = (k[:, g // group, :] @ query[s, g].astype(np.float64)) * scale64
            w = np.exp(x - x.max())
            out[s, g] = (w / w.sum()) @ v[:, g // group, :]
    return out


def attention_error_bound(
    query: np.ndarray,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    block_tables: np.ndarray,
    seq_lens: np.ndarray,
    scale: float,
    partition_size: int = 1024,
) -> np.ndarray:
    """Per-element bound on ``|kernel output - reference|``, float64 ``[S, Hq, D]``.

    Valid for both variants (the split-K reduce is counted in ``n_resc`` and
    ``n_acc``), any chunk size >= 32 and any partition size >= 64 (a multiple of 64)."""
    scale64 = float(np.float32(scale))
    S, Hq, D = query.shape
    Hkv = key_cache.shape[2]
    group = Hq // Hkv
    out_rel, out_abs = (2.0**-11, 2.0**-25) if query.dtype == np.float16 else (U32, 2.0**-149)
    prod_err = 0 if query.dtype == np.float16 else 1  # fp16 x fp16 products are exact in fp32
    bound = np.empty((S, Hq, D), dtype=np.float64)
    for s in range(S):
        length = int(seq_lens[s])
        k, v = _sequence_kv(key_cache, value_cache, block_tables[s], length)
        n_chunks = math.ceil(length / MIN_CHUNK)
        n_parts = math.ceil(length / partition_size)
        n_resc = n_chunks + 2
        n_acc = 2 * length + 2 * n_resc + n_parts + 16
        for g in range(Hq):
            q = query[s, g].astype(np.float64)
            kh, vh = k[:, g // group, :], v[:, g // group, :]
            x = (kh @ q) * scale64
            delta = abs(scale64) * _gamma(D + 1 + prod_err) * (np.abs(kh) @ np.abs(q)) + U32 * np.abs(x)
            w = np.exp(x - x.max())
            w /= w.sum()
            eps = (n_resc + 1) * (EPS_EXP + U32 * (x.max() - x)) + 2 * U32
            hi = np.exp(delta) * (1 + eps)
            lo = np.exp(-delta) * np.maximum(1 - eps, 0.0)
            z_hi, z_lo = w @ hi, w @ lo
            r = np.maximum(hi / z_lo - 1.0, 1.0 - lo / z_hi)
            abs_v = np.abs(vh)
            ref = w @ vh
            weight_err = (w * r) @ abs_v
            sum_err = 2 * _gamma(n_acc) * ((w * (1 + r)) @ abs_v) + U32 * np.abs(ref)
            e = weight_err + sum_err
            bound[s, g] = e * (1 + out_rel) + out_rel * np.abs(ref) + out_abs
    return bound
