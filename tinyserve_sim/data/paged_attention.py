"""Paged attention for decode: the NumPy twin of ``gpu/kernels/paged_attention.cu``.

What it computes
----------------
One decode step: each sequence ``s`` has one new query token, ``query[s]`` of
shape ``[Hq, D]``. Query head ``g`` attends to all ``seq_lens[s]`` cached
tokens of KV head ``g // (Hq // Hkv)`` (grouped-query attention)::

    x_t   = scale * (q . k_t)                  one logit per cached token t
    out   = sum_t softmax(x)_t * v_t           shape [D], in the query's dtype

Token ``t`` of sequence ``s`` lives in physical block
``block_tables[s, t // block_size]`` at offset ``t % block_size``. The tables
and lengths come in a :class:`~tinyserve_sim.control.batch.DecodeBatch`. With
a head axis (``block_tables[s, h]``, ``seq_lens[s, h]``: query-aware selection)
KV head ``h`` of sequence ``s`` attends to its own tokens, and everything
below is per (sequence, KV head) row instead of per sequence: the partitions,
their number, the reduce. Shared tables are the special case where every head
of a sequence reads the same row, and give the same bits as that per-head call.

The exact order of operations (the bit-exactness contract)
----------------------------------------------------------
The kernel runs 128 threads per thread block, and the
:class:`~tinyserve_sim.data.geometry.AttentionPlan` fixes how they split the
work. A token's ``D`` elements are read by ``lanes`` threads (a *row*), each
owning whole 16-byte *vectors* of ``vec`` elements: lane ``i`` owns vectors
``i, i + lanes, ...``. The query heads of a GQA group are split into
``head_slices`` slices of ``head_tile`` heads; each slice has ``plan.rows``
rows. Tokens are processed in *chunks* of ``plan.chunk`` (128, 64 or 32); in a
chunk, token ``j`` belongs to row ``j % rows`` of every slice. For one
(sequence, query head) and one *partition* of tokens ``[a, b)``:

1. **Logits.** Each lane accumulates ``part = fma(q[d], k[d], part)`` over
   its own elements, in increasing ``d``, from ``+0``
   (:func:`~tinyserve_sim.data.exact_math.fma_f32`: one rounding per element;
   for float16 inputs the product is exact in float32, so this equals a
   multiply then an add). The ``lanes`` partial sums are added by a
   reduce-scatter butterfly with masks ``lanes/2, lanes/4, ..., 1``
   (:func:`~tinyserve_sim.data.exact_math.halving_sum`: lane ``i`` plus lane
   ``i + lanes/2`` first). Then ``x = dot * scale``.

   **On tensor cores** (``plan.tensor_core_logits``: float16 GQA plans, see
   :func:`~tinyserve_sim.data.geometry.uses_tensor_core_logits`), the dot product is
   instead a chain of ``mma.sync`` m16n8k16 instructions, one per 16 dimensions in
   increasing order from ``+0`` (keys as A, the block's query heads as B), each adding its
   16 exact products and the chain by the measured rule of
   :mod:`~tinyserve_sim.data.tensor_core` (:func:`~tinyserve_sim.data.tensor_core.mma_chain`).
   Then ``x = dot * scale`` as above. Nothing else changes.
2. **Chunk max** ``m_new = fmax(m, max_j x_j)`` (max is exact in any order;
   only the sign of a zero could differ, and no later result can observe it).
3. ``alpha = exp(m - m_new)``, ``p_j = exp(x_j - m_new)`` with the shared exp.
4. **Accumulate per row.** Row ``r`` keeps ``l_r`` and ``acc_r[D]``: first
   ``l_r *= alpha; acc_r *= alpha``, then for its tokens in increasing ``j``:
   ``l_r += p_j; acc_r = fma(p_j, v_j, acc_r)`` (a fused multiply-add: one
   rounding, as the kernel's ``__fmaf_rn``).
5. After the last chunk: ``l`` and ``acc`` are pairwise trees over the rows,
   and the partition's output is ``o = acc / l`` (IEEE division).

**P V on tensor cores** (``plan.tensor_core_values``, on top of the tensor-core logits)
replaces steps 4 and 5. There are no rows; per chunk and query head:

4'. ``l = fma(l, alpha, sum_j p_j)``, the sum taken as the kernel's warp does it: lane
    ``i`` of 32 adds its tokens ``i, i + 32, ...`` in order from ``+0``, then a butterfly
    (:func:`~tinyserve_sim.data.exact_math.pairwise_sum`). Each ``p_j * 2**15`` (exact) is
    split into three float16 parts, ``h1 = f16(p)``, ``h2 = f16(p - h1)``,
    ``h3 = f16(p - h1 - h2)`` (each rest exact in float32; the three add up to ``p * 2**15``
    down to ``2**-25``). Then ``acc *= alpha``, and for every 16 tokens in increasing order
    that hold a real token, for each part in turn: ``acc = mma(v, part, acc)``, one
    ``mma.sync`` step by the measured rule (:func:`~tinyserve_sim.data.tensor_core.mma_steps`;
    padding tokens enter as ``p = 0, v = 0``).
5'. ``o = acc / (l * 2**15)``.

*One pass* uses a single partition ``[0, L)`` and writes ``o`` rounded to the
query's dtype. *Split-K* cuts ``[0, L)`` into partitions of
``partition_size`` tokens (one thread block each; a row of length ``L`` has
``ceil(L / partition_size)`` of them, the grid is sized for the longest row
and the others' extra blocks exit at once), stores ``(o_i, m_i, l_i)``
in float32, and a reduce kernel combines a row's partitions in increasing ``i``::

    gmax = max_i m_i;  w_i = l_i * exp(m_i - gmax)
    num = 0; den = 0;  for i: num = fma(w_i, o_i, num); den += w_i
    out = num / den

That last formula is the one of vLLM's v2 kernel and FlashDecoding
(Dao et al., 2023). The twin below is vectorised over sequences, heads, rows
and head-dim; it loops only where the kernel's sums are sequential.
"""

from __future__ import annotations

import numpy as np

from tinyserve_sim.data.exact_math import add_exact_product, exp_f32, fma_f32, halving_sum, pairwise_sum
from tinyserve_sim.data.geometry import (
    AttentionPlan,
    Variant,
    partition_count,
    plan_launch,
)
from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data.tensor_core import PART_SCALE, accumulate_values, mma_chain
from tinyserve_sim.data.validation import check_host_arrays, check_paged_attention, check_scale

F32 = np.float32


def _lane_dots(q: np.ndarray, k: np.ndarray, plan: AttentionPlan) -> np.ndarray:
    """Step 1 on CUDA cores: per-lane sequential partial sums, then a butterfly.

    ``q`` [S, Hkv, G, D] and ``k`` [S, Hkv, CH, D] float32 -> ``q . k`` [S, Hkv, G, CH].
    """
    S, Hkv, G, D = q.shape
    lanes, vec = plan.lanes, plan.vec
    # A float16 x float16 product is exact in float32 (22 significant bits), so for float16 caches
    # the kernel's fused multiply-add rounds exactly like a multiply then an add, and the twin may
    # use the cheaper form. For float32 it must emulate the single rounding.
    exact_products = vec == 8
    lane_ids = np.arange(lanes)
    part = np.zeros((S, Hkv, G, k.shape[2], lanes), dtype=F32)
    for i in range(plan.vecs_per_lane):
        vec_id = lane_ids + i * lanes
        owned = vec_id < plan.num_vecs  # lanes past the end own nothing here
        for e in range(vec):
            d = np.minimum(vec_id * vec + e, D - 1)
            qd, kd = q[:, :, :, None, d], k[:, :, None, :, d]  # [S,Hkv,G,1,lanes], [S,Hkv,1,CH,lanes]
            if exact_products:
                part = np.where(owned, part + qd * kd, part)
            else:
                part = np.where(owned, fma_f32(qd, kd, part), part)
    return halving_sum(part, axis=-1)  # reduce-scatter butterfly


def _tensor_core_dots(q16: np.ndarray, k16: np.ndarray) -> np.ndarray:
    """Step 1 on tensor cores (``plan.tensor_core_logits``): ``q . k`` as the kernel's chain
    of ``mma.sync`` m16n8k16 (:func:`~tinyserve_sim.data.tensor_core.mma_chain`), dims
    ``16s .. 16s + 15`` at step ``s``, from ``+0``.

    ``q16`` [S, Hkv, G, D] and ``k16`` [S, Hkv, CH, D] float16 -> [S, Hkv, G, CH] float32.
    """
    return mma_chain(k16[:, :, None, :, :], q16[:, :, :, None, :])  # keys as A, queries as B


def _lane_then_butterfly_sum(p: np.ndarray, chunk: int) -> np.ndarray:
    """Step 4''s sum of a chunk's ``p`` [..., W] (W <= chunk): lane ``i`` of 32 adds tokens
    ``i, i + 32, ...`` in order, then a butterfly over the lanes."""
    padded = np.zeros(p.shape[:-1] + (chunk,), dtype=F32)
    padded[..., : p.shape[-1]] = p
    lanes = np.zeros(p.shape[:-1] + (32,), dtype=F32)
    for i in range(chunk // 32):
        lanes = lanes + padded[..., 32 * i : 32 * i + 32]
    return pairwise_sum(lanes, axis=-1)


def _partition(
    q: np.ndarray,  # [S, Hkv, G, D] float32
    kc: np.ndarray,  # [num_blocks * block_size, Hkv, D] cache dtype
    vc: np.ndarray,
    tables: np.ndarray,  # [S, Hkv, max_blocks] int32: the table of every (sequence, KV head)
    block_size: int,
    start: np.ndarray,  # [S, Hkv] first token of the partition
    end: np.ndarray,  # [S, Hkv] one past its last token (end <= start: empty)
    scale: np.float32,
    plan: AttentionPlan,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One partition per (sequence, KV head): returns ``o [S,Hkv,G,D]``, ``m`` and ``l`` ``[S,Hkv,G]``."""
    S, Hkv, G, D = q.shape
    rows = plan.rows
    q16 = q.astype(np.float16) if plan.tensor_core_logits else None  # exact: the query was float16
    m = np.full((S, Hkv, G), -np.inf, dtype=F32)
    l_tc = np.zeros((S, Hkv, G), dtype=F32)  # tensor_core_values: one normaliser and output per head
    acc_tc = np.zeros((S, Hkv, G, D), dtype=F32)
    l_rows = np.zeros((S, Hkv, G, rows), dtype=F32)
    acc = np.zeros((S, Hkv, G, rows, D), dtype=F32)
    chunk = plan.chunk
    longest = int(max(0, (end - start).max(initial=0)))
    n_chunks = (longest + chunk - 1) // chunk
    seqs = np.arange(S)[:, None, None]
    heads = np.arange(Hkv)[None, :, None]
    # A chunk's token slots that any row can fill, rounded up to whole steps of the rows
    # (16-token groups for P V on tensor cores): the rest would be padding in every row
    # (logit -inf, p 0, no add), so leaving them out changes no value and spares the work
    # on short sequences.
    step = 16 if plan.tensor_core_values else rows
    for c in range(n_chunks):
        width = min(chunk, -(-(longest - c * chunk) // step) * step)
        j = np.arange(width)
        t = start[..., None] + c * chunk + j  # [S, Hkv, CH]
        valid = t < end[..., None]
        active = valid.any(axis=-1)  # [S, Hkv]: the kernel runs this chunk at all
        t_safe = np.where(valid, t, 0)  # token 0 always has a real block
        slots = tables[seqs, heads, t_safe // block_size] * block_size + t_safe % block_size  # [S, Hkv, CH]
        k = kc[slots, heads]  # [S, Hkv, CH, D] in the cache's dtype: KV head h reads its own row
        v = vc[slots, heads]
        if plan.tensor_core_logits:
            # 1'. logits on tensor cores: one mma.sync per 16 dims, a chain from +0 in
            # increasing steps; each output adds its 16 products and the chain by mma_dot.
            x = _tensor_core_dots(q16, k) * scale
        else:
            x = _lane_dots(q, k.astype(F32), plan) * scale
        x = np.where(valid[:, :, None, :], x, F32(-np.inf))
        # 2.-3. running max, rescale factor, probabilities.
        with np.errstate(invalid="ignore"):
            m_new = np.fmax(m, np.fmax.reduce(x, axis=-1))
            alpha = exp_f32(m - m_new)
            p = np.where(valid[:, :, None, :], exp_f32(x - m_new[..., None]), F32(0))
        act = active[:, :, None]
        if plan.tensor_core_values:
            # 4'. on tensor cores: the normaliser per head, then P V by mma steps.
            l_tc = np.where(act, fma_f32(l_tc, alpha, _lane_then_butterfly_sum(p, chunk)), l_tc)
            v16 = np.where(valid[..., None], v, np.float16(0))  # the cache is float16
            groups = -(-valid.sum(axis=-1) // 16)
            acc_tc = np.where(act[..., None], accumulate_values(acc_tc * alpha[..., None], p, v16, groups), acc_tc)
            m = np.where(act, m_new, m)
            continue
        # 4. per-row sequential accumulation, rows vectorised.
        l_new = l_rows * alpha[..., None]
        acc_new = acc * alpha[..., None, None]
        # acc = fma(p_j, v_j, acc): p_j * v_j is exact in float64, so convert both once per chunk
        # and round each sum once (add_exact_product, the second half of fma_f32).
        p64, v64 = p.astype(np.float64), v.astype(np.float64)  # exact: v is float16 or float32
        for kk in range(width // rows):
            jj = slice(kk * rows, (kk + 1) * rows)  # this step's token of every row
            ok = valid[:, :, None, jj]  # [S,Hkv,1,rows]
            l_new = np.where(ok, l_new + p[:, :, :, jj], l_new)
            acc_fma = add_exact_product(p64[:, :, :, jj, None] * v64[:, :, None, jj, :], acc_new)
            acc_new = np.where(ok[..., None], acc_fma, acc_new)  # [S,Hkv,G,rows,D]
        l_rows = np.where(act[..., None], l_new, l_rows)
        acc = np.where(act[..., None, None], acc_new, acc)
        m = np.where(act, m_new, m)
    if plan.tensor_core_values:  # 5'.
        with np.errstate(invalid="ignore", divide="ignore"):
            return acc_tc / (l_tc * PART_SCALE)[..., None], m, l_tc
    # 5. combine the rows with a butterfly, then divide.
    l_tot = pairwise_sum(l_rows, axis=-1)
    acc_tot = pairwise_sum(acc, axis=3)
    with np.errstate(invalid="ignore", divide="ignore"):
        o = acc_tot / l_tot[..., None]
    return o, m, l_tot


def paged_attention(
    query: np.ndarray,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    batch: DecodeBatch,
    scale: float,
    variant: Variant = "auto",
    partition_size: int | None = None,
) -> np.ndarray:
    """Decode attention over a paged KV cache, bit-identical to the CUDA kernels.

    Args:
        query: ``[S, Hq, D]``, float16 or float32 (the caches' dtype).
        key_cache, value_cache: ``[num_blocks, block_size, Hkv, D]``.
        batch: where each sequence's tokens live: block tables ``[S, W]``
            (or ``[S, Hkv, W]``, one per KV head) and lengths ``[S]`` (or
            ``[S, Hkv]``), each in ``1 .. W * block_size``; its block size must
            be the cache's. Its slot mapping is not read.
        scale: softmax scale (usually ``1 / sqrt(D)``), used as float32.
        variant: ``"one_pass"``, ``"split_k"`` or ``"auto"`` (:func:`choose_split`).
        partition_size: split-K partition length, a positive multiple of 64; ``None``
            lets :func:`choose_split` choose it for the shapes (with ``"auto"`` or ``"split_k"``).

    Returns:
        ``[S, Hq, D]`` in the query's dtype.

    Raises:
        KernelInputError: any bad argument, named, before any work.
    """
    check_host_arrays(query=query, key_cache=key_cache, value_cache=value_cache)
    tables, lens = check_paged_attention(query, key_cache, value_cache, batch)
    scale32 = check_scale(scale)
    S, Hq, D = query.shape
    _, block_size, Hkv, _ = key_cache.shape
    G = Hq // Hkv
    plan, variant, partition_size = plan_launch((S, Hq, D), key_cache.dtype, Hkv, lens, variant, partition_size)
    q = query.astype(F32).reshape(S, Hkv, G, D)
    kc = key_cache.reshape(-1, Hkv, D)
    vc = value_cache.reshape(-1, Hkv, D)
    lens64 = lens.astype(np.int64)  # [S, Hkv]
    if S == 0:
        return np.empty_like(query)
    if variant == "one_pass":
        o, _, _ = _partition(q, kc, vc, tables, block_size, np.zeros_like(lens64), lens64, scale32, plan)
        return o.reshape(S, Hq, D).astype(query.dtype)
    # Split-K: row (s, h) has ceil(lens[s, h] / partition_size) partitions; the
    # loop runs to the longest row's count, and `live` masks the rest out.
    n_parts = partition_count(int(lens64.max()), partition_size)
    num = np.zeros((S, Hkv, G, D), dtype=F32)
    den = np.zeros((S, Hkv, G), dtype=F32)
    parts = []
    for i in range(n_parts):
        start = np.full_like(lens64, i * partition_size)
        end = np.minimum(start + partition_size, lens64)
        parts.append((start < lens64, *_partition(q, kc, vc, tables, block_size, start, end, scale32, plan)))
    gmax = np.full((S, Hkv, G), -np.inf, dtype=F32)
    for live, _, m_i, _ in parts:
        gmax = np.where(live[..., None], np.fmax(gmax, m_i), gmax)
    for live, o_i, m_i, l_i in parts:
        with np.errstate(invalid="ignore"):
            w = l_i * exp_f32(m_i - gmax)
        ok = live[..., None]
        num = np.where(ok[..., None], fma_f32(w[..., None], o_i, num), num)
        den = np.where(ok, den + w, den)
    return (num / den[..., None]).reshape(S, Hq, D).astype(query.dtype)
