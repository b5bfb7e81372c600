"""Paged attention for prefill: the NumPy twin of ``gpu/kernels/paged_prefill_attention.cu``.

What it computes
----------------
A prefill step computes many new tokens per sequence at once: a prompt, the
part of a prompt after a prefix-cache hit, or one chunk of a chunked prefill.
Their queries are packed into ``query [T, Hq, D]``; the
:class:`~tinyserve_sim.control.prefill_batch.PrefillBatch` says which rows
belong to which sequence (``query_start_loc``), where each sequence's tokens
live (``block_tables``) and how many tokens it has after the step
(``seq_lens``). Every new token's key and value are already in the cache
(:meth:`KVCache.prefill <tinyserve_sim.data.cache.KVCache.prefill>` writes them first,
as a server does), so the keys are read from the paged cache only: the
cached prefix and the new tokens alike.

New token ``i`` of sequence ``s`` sits at position ``pos = prefix_lens[s] + i``
and query head ``g`` of it attends, causally, to keys ``0 .. pos`` of KV head
``g // (Hq // Hkv)``::

    x_t = scale * (q . k_t)              for t = 0 .. pos
    out = sum_t softmax(x)_t * v_t       [D], in the query's dtype

The exact order of operations (the bit-exactness contract)
----------------------------------------------------------
Every *row* (one new token, one query head) is computed on its own, in the
same order whatever other rows share its thread block; only two numbers of
the :class:`~tinyserve_sim.data.prefill_plan.PrefillPlan` enter it, the key
tile ``BN`` (64, or 32 for head dims above 128) and the 16 column lanes. The
row walks the key tiles ``[c*BN, c*BN + BN)`` for ``c = 0 .. pos // BN``,
starting from ``m = -inf``, ``l = 0``, ``acc = 0``:

1. **Logits.** ``s_j = 0; s_j = fma(q[d], k_j[d], s_j)`` for ``d = 0 .. D-1``
   in increasing order (one rounding per element, as the kernel's
   ``__fmaf_rn``; for float16 inputs the product is exact in float32, so this
   equals a multiply then an add), then ``x_j = s_j * scale``. Keys after the
   row's position (``j > pos``) get ``x_j = -inf``.
2. **Max.** ``m_new = fmax(m, max_j x_j)`` (exact in any order);
   ``alpha = exp(m - m_new)`` with the shared exp
   (:func:`~tinyserve_sim.data.exact_math.exp_f32`; 0 on the first tile).
3. **Probabilities.** ``p_j = exp(x_j - m_new)`` (0 for masked keys).
4. **Normaliser.** Column lane ``c`` (0..15) adds its keys ``c, c + 16, ...``
   in that order from ``+0``; the 16 lane sums are added by a butterfly
   (``__shfl_xor_sync`` with masks 1, 2, 4, 8: the pairwise tree of
   :func:`~tinyserve_sim.data.exact_math.pairwise_sum`). Then
   ``l = l * alpha`` and ``l = l + tile_sum``.
5. **Output.** ``acc = acc * alpha``, then for ``j`` in increasing order
   ``acc = fma(p_j, v_j, acc)`` (one rounding).

Finally ``out = acc / l + 0`` (IEEE division; adding ``+0`` turns a ``-0`` into
``+0`` and changes nothing else, see below), rounded to the query's dtype.

**On tensor cores** (float16; the plan's ``tensor_core_scores`` and ``tensor_core_values``,
both on by default) two steps change:

1'. ``s_j`` is a chain of ``mma.sync`` m16n8k16 over the padded head dim, 16 dims a step,
    from ``+0``, by the measured rule (:func:`~tinyserve_sim.data.tensor_core.mma_chain`).
5'. ``acc = acc * alpha``; each ``p_j * 2**15`` (exact) is split into three float16 parts
    (:func:`~tinyserve_sim.data.tensor_core.float16_parts`); then for every 16 keys of the
    tile in increasing order (all of them: masked keys enter as ``p = 0``), for each part
    in turn, ``acc = mma(part, v, acc)``, one ``mma.sync`` step
    (:func:`~tinyserve_sim.data.tensor_core.accumulate_values`). Finally
    ``out = acc / (l * 2**15) + 0``.

The normaliser (step 4) stays on the CUDA cores either way.

Why the thread block's other rows change nothing: a block walks key tiles up
to its *last* row's position, so an earlier row also sees tiles wholly after
its own position. For that row such a tile is a no-op but for one bit: every
``x_j`` is ``-inf``, so ``m_new = m``, ``alpha = exp(0) = 1`` exactly, every
``p_j`` is 0, ``l * 1 + 0 = l`` and ``fma(0, v_j, acc) = acc`` for the finite
values of real tokens (keys past a sequence's end are read as zeros), *except*
that an accumulator of ``-0`` becomes ``+0`` (``0 * v + (-0) = +0`` for ``v >= 0``).
An accumulator is ``-0`` when every product it has added rounded to zero and one
was negative: a float32 cache with subnormal values does it (``0.03 * -2**-149``
rounds to ``-0``). The sign of a zero is all that differs, and adding ``+0`` to
the output erases it in both the kernel and the twin. Hence a token gets the
same bits whether it is computed alone, in a chunk, or in a whole prompt: the
property the tests and the prefix-caching tutorial rely on.

Why a single new token does not give :func:`~tinyserve_sim.data.paged_attention.paged_attention`'s
bits: the decode kernel splits each key's dot product over ``lanes`` threads
(summed by a butterfly), and its keys over ``rows`` partial accumulators
(summed at the end), because one query row must keep 128 threads busy. Here
a thread computes whole dot products for several rows at once, so each sum
is sequential. Both are within their float64 bounds
(:mod:`~tinyserve_sim.data.prefill_reference`), hence within the sum of the
two bounds of each other.

The twin below is vectorised over the rows that see a tile; it loops over
``D`` for the logits and over the tile's keys for the output, where the
kernel's sums are sequential.
"""

from __future__ import annotations

import numpy as np

from tinyserve_sim.control.prefill_batch import PrefillBatch
from tinyserve_sim.data.exact_math import add_exact_product, exp_f32, fma_f32, pairwise_sum, sequential_sum
from tinyserve_sim.data.prefill_checks import check_paged_prefill_attention
from tinyserve_sim.data.prefill_plan import check_prefill_launch_limits, prefill_plan_for, work_items
from tinyserve_sim.data.tensor_core import PART_SCALE, accumulate_values, mma_chain
from tinyserve_sim.data.validation import check_host_arrays, check_scale

F32 = np.float32


def _gather_tile(cache: np.ndarray, tables: np.ndarray, lens: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Keys ``keys [BN]`` of every sequence, float32 ``[S, BN, Hkv, D]``; keys past a
    sequence's end are zeros (the kernel never reads them)."""
    block_size = cache.shape[1]
    exists = keys[None, :] < lens[:, None]  # [S, BN]
    safe = np.where(exists, keys[None, :], 0)  # token 0 always has a real block
    blocks = np.take_along_axis(tables, safe // block_size, axis=1)
    tile = cache[blocks, safe % block_size].astype(F32)  # [S, BN, Hkv, D]
    return np.where(exists[:, :, None, None], tile, F32(0))


def _tensor_core_scores(q16: np.ndarray, k_tile: np.ndarray, padded_dim: int) -> np.ndarray:
    """``q . k`` of every row against every key of a tile as the kernel's tensor-core chain:
    ``q16 [R, Hkv, G, D]`` float16, ``k_tile [R, BN, Hkv, D]`` float32 (float16 values)
    -> float32 ``[R, Hkv, G, BN]`` (:func:`~tinyserve_sim.data.tensor_core.mma_chain`,
    both padded with zeros to ``padded_dim``)."""
    R, Hkv, G, D = q16.shape
    BN = k_tile.shape[1]
    q_pad = np.zeros((R, Hkv, G, 1, padded_dim), np.float16)
    q_pad[..., 0, :D] = q16
    k_pad = np.zeros((R, Hkv, 1, BN, padded_dim), np.float16)
    k_pad[:, :, 0, :, :D] = k_tile.transpose(0, 2, 1, 3).astype(np.float16)  # exact
    return mma_chain(q_pad, k_pad)


def paged_prefill_attention(
    query: np.ndarray,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    batch: PrefillBatch,
    scale: float,
) -> np.ndarray:
    """Causal attention of a prefill step's new tokens over a paged KV cache, bit-identical
    to the CUDA kernel.

    Args:
        query: ``[T, Hq, D]``, float16 or float32 (the caches' dtype); the new
            tokens of every sequence, packed in the batch's order.
        key_cache, value_cache: ``[num_blocks, block_size, Hkv, D]``, holding
            the cached prefix *and* the new tokens' keys and values.
        batch: the :class:`~tinyserve_sim.control.prefill_batch.PrefillBatch`
            (block tables, total lengths, query offsets); its slot mapping is not read.
        scale: softmax scale (usually ``1 / sqrt(D)``), used as float32.

    Returns:
        ``[T, Hq, D]`` in the query's dtype.

    Raises:
        KernelInputError: any bad argument, named, before any work.
    """
    check_host_arrays(query=query, key_cache=key_cache, value_cache=value_cache)
    tables, lens, starts = check_paged_prefill_attention(query, key_cache, value_cache, batch)
    scale32 = check_scale(scale)
    T, Hq, D = query.shape
    Hkv = key_cache.shape[2]
    G = Hq // Hkv
    plan = prefill_plan_for(D, query.dtype)
    check_prefill_launch_limits(T, Hq, Hkv, len(work_items(starts, lens, G, plan.row_tile)))
    if T == 0:
        return np.empty_like(query)
    BN, lanes = plan.key_tile, plan.column_lanes
    # float16 x float16 is exact in float32: the kernel's fma rounds like a multiply then an add.
    exact_products = key_cache.dtype == np.float16
    q = query.astype(F32).reshape(T, Hkv, G, D)
    q16 = query.reshape(T, Hkv, G, D)  # the tensor-core path's operands stay float16
    seq = batch.seq_index()  # [T]
    pos = batch.positions()  # [T]
    m = np.full((T, Hkv, G), -np.inf, dtype=F32)
    l = np.zeros((T, Hkv, G), dtype=F32)
    acc = np.zeros((T, Hkv, G, D), dtype=F32)
    for c in range(int(pos.max()) // BN + 1):
        keys = c * BN + np.arange(BN)
        rows = np.flatnonzero(pos >= c * BN)  # the tokens whose causal window reaches this tile
        k_tile = _gather_tile(key_cache, tables, lens, keys)  # [S, BN, Hkv, D]
        v_tile = _gather_tile(value_cache, tables, lens, keys)
        s_r = seq[rows]
        if plan.tensor_core_scores:
            # 1'. logits on tensor cores: for each (row, key), a chain of mma.sync m16n8k16
            # over the padded head dim, 16 dims a step, from +0 (the kernel's padding dims
            # are zeros on both sides: the steps they fill keep the chain's value).
            s = _tensor_core_scores(q16[rows], k_tile[s_r], plan.padded_dim)
        else:
            # 1. logits: one sequential (fused) multiply-add chain per (row, key), over d.
            s = np.zeros((rows.size, Hkv, G, BN), dtype=F32)
            for d in range(D):
                qd = q[rows, :, :, d][..., None]  # [R, Hkv, G, 1]
                kd = k_tile[s_r, :, :, d].transpose(0, 2, 1)[:, :, None, :]  # [R, Hkv, 1, BN]
                s = s + qd * kd if exact_products else fma_f32(qd, kd, s)
        visible = keys[None, :] <= pos[rows, None]  # [R, BN]
        x = np.where(visible[:, None, None, :], s * scale32, F32(-np.inf))
        # 2.-3. running max, rescale factor, probabilities (exp(-inf) = 0 for masked keys).
        m_old = m[rows]
        with np.errstate(invalid="ignore"):
            m_new = np.fmax(m_old, np.fmax.reduce(x, axis=-1))
            alpha = exp_f32(m_old - m_new)
            p = exp_f32(x - m_new[..., None])  # [R, Hkv, G, BN]
        # 4. normaliser: lane c sums keys c, c+16, ... in order; a butterfly adds the 16 lanes.
        lane_sums = sequential_sum(p.reshape(*p.shape[:-1], BN // lanes, lanes), axis=-2)
        l[rows] = l[rows] * alpha + pairwise_sum(lane_sums, axis=-1)
        a = acc[rows] * alpha[..., None]
        if plan.tensor_core_values:
            # 5'. output on tensor cores: per 16 keys of the tile, in order, and per float16
            # part of p * 2**15, one mma.sync step onto the rescaled output (every group of
            # the tile: the kernel runs them all, masked keys as p = 0).
            v16 = v_tile[s_r].transpose(0, 2, 1, 3).astype(np.float16)  # [R, Hkv, BN, D]: exact
            a = accumulate_values(a, p, v16, np.full((rows.size, Hkv), BN // 16))
        else:
            # 5. output: one fused multiply-add per key, in key order. p_j * v_j is exact in
            # float64, so convert once and round each sum once (add_exact_product).
            p64 = p.astype(np.float64)
            v64 = v_tile.astype(np.float64)  # [S, BN, Hkv, D]
            for j in range(BN):
                a = add_exact_product(p64[:, :, :, j, None] * v64[s_r, j][:, :, None, :], a)
        acc[rows] = a
        m[rows] = m_new
    # 6. (or 6'.) out = acc / l (acc / (l * 2**15)), + 0: -0 -> +0, as the kernel (the docstring says why)
    norm = l * PART_SCALE if plan.tensor_core_values else l
    with np.errstate(invalid="ignore", divide="ignore"):
        out = acc / norm[..., None] + F32(0)
    return out.reshape(T, Hq, D).astype(query.dtype)
