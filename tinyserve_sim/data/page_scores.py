"""Page scores: for a query, an upper bound on ``q . k`` over each page's tokens.

The NumPy twin of ``gpu/kernels/page_scores.cu``.

What it computes
----------------
For one query vector ``q`` and a page whose keys lie, channel by channel,
between ``key_min`` and ``key_max`` (:mod:`~tinyserve_sim.data.page_metadata`),
no key ``k`` of the page can give a larger dot product than::

    bound(q, page) = sum_d max(q_d * key_min_d, q_d * key_max_d)

because each term ``q_d * k_d`` is largest at one end of ``[min_d, max_d]``:
the top end when ``q_d > 0``, the bottom end when ``q_d < 0`` (Quest, Tang et
al., ICML 2024). The kernel computes the same maximum by looking at the sign::

    term_d = q_d * key_max_d   if q_d > 0
             q_d * key_min_d   if q_d < 0
             0                 if q_d == 0

which rounds exactly like the ``max`` form (rounding is monotonic), needs one
product instead of two, and gives an empty page (``+inf``, ``-inf``) the
bound ``-inf``, the maximum over no tokens.

**Grouped-query attention.** A KV head serves ``G = Hq / Hkv`` query heads.
The page's score for the KV head is the **maximum of the group's bounds**::

    score[s, h, p] = max over g in the group of bound(q_g, page p of head h)

so it is still an upper bound for every query head of the group: a page that
any of them may attend to strongly ranks high. (A sum or mean of the bounds
would let several lukewarm heads outvote one head that needs the page.) The
selection stays per (sequence, KV head): the group reads one set of pages,
which is what paged attention reads anyway (K and V are shared by the group).

Pages past a row's length get ``-inf``.

The exact order of operations (the bit-exactness contract)
----------------------------------------------------------
The kernel reads a page's metadata row like paged attention reads a key row
(:func:`~tinyserve_sim.data.geometry.make_plan`): ``lanes`` threads, lane
``i`` owning the 16-byte vectors ``i, i + lanes, ...``. For each query head
``g`` of the group:

1. each lane sums its own terms sequentially, in increasing ``d``, from ``+0``,
   each by one fused multiply-add ``part = fma(q_d, max_d or min_d, part)``
   (one rounding, :func:`~tinyserve_sim.data.exact_math.fma_f32`; the kernel's
   explicit ``__fmaf_rn``), or ``part = part + 0`` where ``q_d`` is 0. For
   float16 inputs the product is exact in float32, so the FMA equals a multiply
   then an add, and the twin computes it that way (faster, the same bits);
2. the ``lanes`` partial sums are added by a butterfly with masks
   ``1, 2, 4, ...`` (:func:`~tinyserve_sim.data.exact_math.pairwise_sum`);
3. the score is the ``fmax`` of the group's totals (exact in any order).

The query is converted to float32 exactly; a float16 product is exact in
float32, a float32 product rounds once. Keys are assumed finite (an infinite
key would make ``inf - inf`` possible, and NaN has no defined bits).
"""

from __future__ import annotations

import math

import numpy as np

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data.exact_math import fma_f32, pairwise_sum
from tinyserve_sim.data.geometry import make_plan
from tinyserve_sim.data.selection_checks import check_page_scores

F32 = np.float32


def page_scores(query: np.ndarray, key_min: np.ndarray, key_max: np.ndarray, batch: DecodeBatch) -> np.ndarray:
    """Each page's score for each (sequence, KV head): an upper bound on the group's ``q . k``.

    Args:
        query: ``[S, Hq, D]``, the metadata's dtype (one decode query per sequence).
        key_min, key_max: ``[num_blocks, Hkv, D]``, the cache's page metadata.
        batch: the step's :class:`~tinyserve_sim.control.batch.DecodeBatch`: page ``p`` of
            row ``(s, h)`` is block ``block_tables[s, (h,) p]``; a row has
            ``ceil(seq_lens[s(, h)] / block_size)`` pages.

    Returns:
        float32 ``[S, Hkv, W]`` (``W = batch.max_blocks``); ``-inf`` past a row's pages.

    Raises:
        KernelInputError: shapes/dtypes, lengths, block ids out of range.

    >>> import numpy as np
    >>> from tinyserve_sim.control.batch import DecodeBatch
    >>> key_min = np.array([[[-1.0] * 8], [[0.0] * 8]], np.float32)   # 2 blocks, 1 head, D = 8
    >>> key_max = np.array([[[2.0] * 8], [[0.5] * 8]], np.float32)
    >>> q = np.array([[[1.0, -1.0, 0, 0, 0, 0, 0, 0]]], np.float32)
    >>> batch = DecodeBatch.from_tables([[0, 1]], [20], block_size=16)
    >>> page_scores(q, key_min, key_max, batch)     # 1*2 + (-1)*(-1) = 3, then 1*0.5 + (-1)*0
    array([[[3. , 0.5]]], dtype=float32)
    """
    tables, lens = check_page_scores(query, key_min, key_max, batch)
    S, Hq, D = query.shape
    Hkv = key_min.shape[1]
    W = tables.shape[-1]
    G = Hq // Hkv
    plan = make_plan(D, key_min.dtype, G)
    lanes, vec = plan.lanes, plan.vec
    pages = (lens.astype(np.int64) + batch.block_size - 1) // batch.block_size  # [S, Hkv]
    valid = np.arange(W)[None, None, :] < pages[..., None]  # [S, Hkv, W]
    blocks = np.where(valid, tables, 0)
    heads = np.arange(Hkv)[None, :, None]
    lo = key_min[blocks, heads].astype(F32)  # [S, Hkv, W, D]
    hi = key_max[blocks, heads].astype(F32)
    q = query.astype(F32).reshape(S, Hkv, G, D)
    # A float16 product is exact in float32: there fma(q, x, part) is part + q * x.
    exact_products = np.dtype(query.dtype).itemsize <= 2
    part = np.zeros((S, Hkv, G, W, lanes), dtype=F32)
    lane_ids = np.arange(lanes)
    for i in range(plan.vecs_per_lane):
        vec_id = lane_ids + i * lanes
        owned = vec_id < plan.num_vecs  # lanes past the end own nothing here
        for e in range(vec):
            d = np.minimum(vec_id * vec + e, D - 1)
            qd = q[:, :, :, None, d]  # [S, Hkv, G, 1, lanes]
            # The end of [min_d, max_d] that maximises q_d * k_d (0 where q_d is 0 or NaN).
            nonzero = (qd > 0) | (qd < 0)
            end = np.where(qd > 0, hi[:, :, None, :, d], np.where(qd < 0, lo[:, :, None, :, d], F32(0)))
            with np.errstate(invalid="ignore"):  # 0 * inf in the branches np.where discards
                if exact_products:
                    step = part + np.where(nonzero, qd * end, F32(0))
                else:
                    step = np.where(nonzero, fma_f32(qd, end, part), part + F32(0))
            part = np.where(owned, step, part)
    totals = pairwise_sum(part, axis=-1)  # [S, Hkv, G, W]: the butterfly over lanes
    scores = np.fmax.reduce(totals, axis=2)  # the group's maximum
    return np.where(valid, scores, F32(-np.inf)).astype(F32)


def page_scores_reference(
    query: np.ndarray, key_min: np.ndarray, key_max: np.ndarray, batch: DecodeBatch
) -> np.ndarray:
    """The same bound in float64, written as the ``max`` of the two products (``[S, Hkv, W]``).

    Not a kernel: what the float32 scores approximate, and what the tests hold
    against the true maximum of ``q . k`` over each page's tokens. Every
    product of two float16/float32 values is exact in float64, and the sum is
    :func:`math.fsum` (correctly rounded), so the result is the exact bound
    rounded once: rounding is monotonic, so it is never below the exactly
    rounded ``q . k`` of any token of the page.
    """
    tables, lens = check_page_scores(query, key_min, key_max, batch)
    S, Hq, D = query.shape
    Hkv = key_min.shape[1]
    G = Hq // Hkv
    W = tables.shape[-1]
    pages = (lens.astype(np.int64) + batch.block_size - 1) // batch.block_size
    valid = np.arange(W)[None, None, :] < pages[..., None]
    blocks = np.where(valid, tables, 0)
    heads = np.arange(Hkv)[None, :, None]
    lo = key_min[blocks, heads].astype(np.float64)[:, :, None]  # [S, Hkv, 1, W, D]
    hi = key_max[blocks, heads].astype(np.float64)[:, :, None]
    q = query.astype(np.float64).reshape(S, Hkv, G, 1, D)
    terms = np.maximum(q * lo, q * hi)  # [S, Hkv, G, W, D], exact products
    bound = np.apply_along_axis(math.fsum, -1, terms).max(axis=2) if terms.size else terms.sum(axis=-1).max(axis=2)
    return np.where(valid, bound, -np.inf)
