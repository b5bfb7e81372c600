"""A float64 reference for paged prefill attention, and the error bound it must meet.

The same question as :mod:`~tinyserve_sim.data.reference` answers for decode:
how far can the float32 kernel (and its twin, which has the same bits) be from
the exact answer? Each prefill row (a new token and a query head) is a decode
row over the keys it sees (``pos + 1`` of them), computed in a different but
equally documented order, so the decode derivation
(``docs/concepts/gpu-validation.md``) applies row by row, with these counts:

* logits: a sequential chain of ``D`` fused multiply-adds, then the scale
  (``gamma(D + 1 + e)``, ``e = 1`` for float32 products, which are rounded
  once by the fma and 0 for float16 ones, which are exact);
* rescalings: one per key tile, at most ``ceil((pos + 1) / 32) + 2``
  (the smallest key tile is 32);
* output sums: each ``p_j v_j`` is rounded by its own fma and then by at most
  every later fma and rescaling, and the normaliser by its tile's tree (at most
  4 sequential adds and 4 butterfly levels) and two operations per later tile:
  ``n_acc = 2 (pos + 1) + 2 n_resc + 16`` covers both;
* underflow: the same absolute terms as for decode (subnormal results of the fused
  multiply-adds, exponentials flushed below the normal range).
* ``P V`` on tensor cores (float16 plans with ``tensor_core_values``): as for decode,
  each instruction errs by at most ``(17 * 2**-25 + 2**-23)`` times its terms' ``m(p_part)
  m(v)`` and its accumulator. Only the instructions whose 16 keys hold a visible one can
  err (the others add exact zeros to an exact accumulator): three per 16 visible keys,
  rounded up, about ``1.97 (pos + 16) u`` of the sum in all, inside the sums' ``2
  gamma(n_acc)`` once ``|v|`` becomes ``m(v)``; and each weight's three float16 parts
  miss it by the decode bound's split loss.
"""

from __future__ import annotations

import numpy as np

from tinyserve_sim.control.prefill_batch import PrefillBatch

# The decode reference's building blocks: the same derivation, applied row by row.
from tinyserve_sim.data.reference import (
    EPS_EXP,
    MIN_CHUNK,
    U32,
    _gamma,
    _logit_underflow,
    _magnitudes,
    _output_rounding,
    _split_loss,
    _weight_and_sum_bound,
)
from tinyserve_sim.data.prefill_plan import prefill_plan_for
from tinyserve_sim.data.prefill_checks import check_paged_prefill_attention
from tinyserve_sim.data.validation import check_host_arrays, check_scale


def _checked(query, key_cache, value_cache, batch, scale) -> float:
    """The twin's checks (the same inputs are accepted); the scale as the kernel gets it."""
    check_host_arrays(query=query, key_cache=key_cache, value_cache=value_cache)
    check_paged_prefill_attention(query, key_cache, value_cache, batch)
    return float(check_scale(scale))


def _rows(query, key_cache, value_cache, batch: PrefillBatch, scale64: float):
    """For every (sequence, KV head) with new tokens: the query rows' index arrays, the
    exact logits ``[R, L]`` (masked keys ``-inf``), ``sum_d |q_d k_td|`` ``[R, L]``,
    each row's number of visible keys ``[R]`` and the values ``[L, D]`` (float64)."""
    tables, lens, starts = batch.block_tables, batch.seq_lens, batch.query_start_loc
    _, Hq, _ = query.shape
    _, block_size, Hkv, _ = key_cache.shape
    group = Hq // Hkv
    prefix = batch.prefix_lens
    for s in range(batch.num_seqs):
        a, b = int(starts[s]), int(starts[s + 1])
        if a == b:
            continue
        length = int(lens[s])
        t = np.arange(length)
        blocks, offsets = tables[s, t // block_size], t % block_size
        visible = np.arange(b - a) + int(prefix[s]) + 1  # keys seen by each new token
        mask = t[None, :] < visible[:, None]  # [q, L]
        for h in range(Hkv):
            kh = key_cache[blocks, offsets, h].astype(np.float64)
            vh = value_cache[blocks, offsets, h].astype(np.float64)
            q = query[a:b, h * group : (h + 1) * group].astype(np.float64)  # [q, G, D]
            x = np.einsum("qgd,ld->qgl", q, kh) * scale64
            # sum_d m(q_d) m(k_d): |q k| but for float16 subnormals (reference._magnitudes), so
            # that the logit term holds for the tensor-core scores (float16, the default) too.
            f16 = query.dtype == np.float16
            abs_qk = np.einsum("qgd,ld->qgl", _magnitudes(q, f16), _magnitudes(kh, f16))
            m = np.broadcast_to(mask[:, None, :], x.shape)
            n = np.broadcast_to(visible[:, None], x.shape[:2])
            yield (
                (slice(a, b), slice(h * group, (h + 1) * group)),
                np.where(m, x, -np.inf).reshape(-1, length),
                np.where(m, abs_qk, 0.0).reshape(-1, length),
                n.reshape(-1),
                vh,
            )


def reference_paged_prefill_attention(
    query: np.ndarray,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    batch: PrefillBatch,
    scale: float,
) -> np.ndarray:
    """Exact-as-float64 causal prefill attention; returns float64 ``[T, Hq, D]``.

    Takes the twin's arguments; ``scale`` is first rounded to float32, as the kernel receives it."""
    scale64 = _checked(query, key_cache, value_cache, batch, scale)
    T, Hq, D = query.shape
    out = np.empty((T, Hq, D), dtype=np.float64)
    for where, x, _, _, vh in _rows(query, key_cache, value_cache, batch, scale64):
        w = np.exp(x - x.max(axis=1, keepdims=True))
        out[where] = ((w / w.sum(axis=1, keepdims=True)) @ vh).reshape(out[where].shape)
    return out


def prefill_error_bound(
    query: np.ndarray,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    batch: PrefillBatch,
    scale: float,
) -> np.ndarray:
    """Per-element bound on ``|kernel output - reference|``, float64 ``[T, Hq, D]`` (module doc)."""
    scale64 = _checked(query, key_cache, value_cache, batch, scale)
    T, Hq, D = query.shape
    out_rel, out_abs = _output_rounding(query.dtype)
    prod_err = 0 if query.dtype == np.float16 else 1  # fp16 x fp16 products are exact in fp32
    values_on_tensor_cores = prefill_plan_for(D, query.dtype).tensor_core_values
    bound = np.empty((T, Hq, D), dtype=np.float64)
    for where, x, abs_qk, visible, vh in _rows(query, key_cache, value_cache, batch, scale64):
        seen = np.isfinite(x)
        n_resc = np.ceil(visible / MIN_CHUNK) + 2  # [R]
        n_acc = 2 * visible + 2 * n_resc + 16
        delta = np.where(
            seen,
            abs(scale64) * _gamma(D + 1 + prod_err) * abs_qk + U32 * np.abs(np.where(seen, x, 0)) + _logit_underflow(scale64, D),
            0.0,
        )
        gap = x.max(axis=1, keepdims=True) - np.where(seen, x, 0)
        eps = np.where(seen, (n_resc[:, None] + 1) * (EPS_EXP + U32 * gap) + 2 * U32, 0.0)
        gamma_acc = (n_acc * U32 / (1 - n_acc * U32))[:, None]
        # P V on tensor cores (the module doc's last item), as in the decode bound: |v| -> m(v),
        # and each weight's split loss; both are |v| and 0 when P V is on CUDA cores.
        split_loss = np.reshape(_split_loss(values_on_tensor_cores, n_acc), (-1, 1))  # [R, 1]
        b = _weight_and_sum_bound(np.where(seen, x, -np.inf), delta, eps, vh, gamma_acc, U32, out_rel, out_abs, n_acc,
                                  sum_v=_magnitudes(vh, values_on_tensor_cores), split_loss=split_loss)
        bound[where] = b.reshape(bound[where].shape)
    return bound


