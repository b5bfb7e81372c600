"""Top-K page selection: which pages each (sequence, KV head) attends to this step.

The NumPy twin of ``gpu/kernels/select_pages.cu``.

The rule
--------
A budget of ``budget_tokens`` tokens pays for ``K = budget_tokens // block_size``
pages (at least 2). For a row (one sequence, one KV head) with ``n`` pages:

* if ``n <= K``, every page is selected (the step is dense attention);
* otherwise the row keeps **page 0** (the attention sink: the first tokens
  draw attention whatever the query, Xiao et al., 2024), the **newest page**
  ``n - 1`` (it holds the token being decoded and its neighbours), and the
  ``K - 2`` pages of ``1 .. n - 2`` with the highest scores
  (:func:`~tinyserve_sim.data.page_scores.page_scores`). Equal scores go to
  the lower logical index.

The selected pages are listed in **logical order** and compacted into a block
table of their own, so the newest, partly filled page comes last and paged
attention reads them as one shorter sequence of
``(k - 1) * block_size + (tokens in the newest page)`` tokens::

    logical pages   0   1   2   3   4   5   6   7      n = 8, K = 4
    scores          -  .9  .1  .7  .3  .2  .8   -
    selected        S   *                   *   N      S sink, N newest,
    table          [b0, b1, b6, b7]                    * top-2 of pages 1..6
    length         3 * 16 + (tokens in page 7)

Scores are compared as float32 *bits* in IEEE total order (``-inf < ... <
-0 < +0 < ... < +inf < NaN``), so even a NaN score selects the same pages on
both backends. The set is defined exactly, so the GPU kernel (a radix select
in shared memory, then a compaction in logical order) reproduces it exactly.
"""

from __future__ import annotations

import numpy as np

from tinyserve_sim.control.batch import PAD_BLOCK, DecodeBatch
from tinyserve_sim.data.selection_checks import (
    check_compact_tables,
    check_select_pages,
    pages_in_budget,
)
from tinyserve_sim.data.validation import positive_int
from tinyserve_sim.errors import KernelInputError


def score_order_keys(scores: np.ndarray) -> np.ndarray:
    """float32 scores as uint32 keys whose unsigned order is IEEE total order.

    A positive float's bits already sort correctly once the sign bit is set;
    a negative float's bits sort backwards, so all of them are flipped.

    >>> k = score_order_keys(np.array([-np.inf, -1.0, -0.0, 0.0, 2.0, np.inf], np.float32))
    >>> bool(np.all(np.diff(k.astype(np.int64)) > 0))
    True
    """
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.uint32)
    negative = (bits >> np.uint32(31)) == 1
    return np.where(negative, ~bits, bits | np.uint32(0x80000000)).astype(np.uint32)


def select_page_indices(scores: np.ndarray, batch: DecodeBatch, budget_tokens: int) -> np.ndarray:
    """The logical indices of the selected pages, per row: int32 ``[S, Hkv, min(K, W)]``.

    Each row lists its pages in increasing order (sink first, newest last),
    padded with ``-1``. See the module doc for the rule.

    Raises:
        KernelInputError: scores not float32 ``[S, Hkv, W]`` matching the batch,
            a budget under two pages, lengths out of range.
    """
    _, lens, K = check_select_pages(scores, batch, budget_tokens)
    S, Hkv, W = scores.shape
    width = min(K, W)
    out = np.full((S, Hkv, width), PAD_BLOCK, dtype=np.int32)
    keys = score_order_keys(scores)
    pages = (lens.astype(np.int64) + batch.block_size - 1) // batch.block_size
    for s in range(S):
        for h in range(Hkv):
            n = int(pages[s, h])
            if n <= K:
                chosen = np.arange(n)
            else:
                middle = np.arange(1, n - 1)
                # Highest key first; np.lexsort sorts by its last key first, and
                # is stable, so equal keys keep increasing index order.
                order = np.lexsort((middle, ~keys[s, h, 1 : n - 1]))
                top = np.sort(middle[order[: K - 2]])
                chosen = np.concatenate(([0], top, [n - 1]))
            out[s, h, : chosen.size] = chosen
    return out


def compact_tables(batch: DecodeBatch, logical: np.ndarray) -> DecodeBatch:
    """The batch restricted to the ``logical`` pages of each row (``[S, Hkv, K']``, ``-1`` padded).

    Returns ``batch.with_head_tables(tables, lens)`` with ``tables[s, h, j] =
    block_tables[s, (h,) logical[s, h, j]]`` and ``lens[s, h] = (k - 1) *
    block_size + (tokens in the row's last page)``. When ``logical`` lists every
    page, the rows are the original tables: dense attention, bit for bit.

    Raises:
        KernelInputError: ``logical`` is not an integer ``[S, Hkv, K']`` array whose rows list
            pages of their sequence in increasing order, then ``-1`` padding; a bad batch.
    """
    tables, lens, logical = check_compact_tables(batch, logical)
    S, Hkv, width = logical.shape
    bs = batch.block_size
    new_tables = np.full((S, Hkv, width), PAD_BLOCK, dtype=np.int32)
    new_lens = np.zeros((S, Hkv), dtype=np.int32)
    for s in range(S):
        for h in range(Hkv):
            row = logical[s, h]
            row = row[row >= 0]
            new_tables[s, h, : row.size] = tables[s, h, row]
            new_lens[s, h] = kept_length(row.size, int(lens[s, h]), bs)
    return batch.with_head_tables(new_tables, new_lens)


def kept_length(pages: np.ndarray | int, lens: np.ndarray | int, block_size: int) -> np.ndarray | int:
    """Tokens in ``pages`` kept pages of rows of ``lens`` tokens, the newest page among them:
    ``(pages - 1) * block_size + (tokens in the newest page)``, 0 for no page (elementwise).

    >>> kept_length(np.array([4, 3, 0]), 120, 16).tolist()   # the newest of 8 pages holds 8 tokens
    [56, 40, 0]
    """
    newest = lens - (lens - 1) // block_size * block_size  # tokens in the newest page, 1..bs
    return np.where(np.asarray(pages) > 0, (np.asarray(pages) - 1) * block_size + newest, 0)[()]


def selected_lengths(batch: DecodeBatch, num_kv_heads: int, budget_tokens: int) -> np.ndarray:
    """The lengths ``[S, Hkv]`` any selection of this batch at this budget has, before scoring.

    The rule fixes how many pages a row keeps (``min(n, K)``) and that the newest page is
    one of them, so a row's selected length, ``(min(n, K) - 1) * block_size + (tokens in
    the newest page)``, does not depend on the scores; only *which* pages does. The GPU's
    sparse step (:mod:`tinyserve_sim.gpu.sparse_step`) plans its attention with these
    lengths before the selection kernel runs.

    >>> batch = DecodeBatch.from_tables([[10, 11, 12, 13, 14, 15, 16, 17], [3]], [120, 5], block_size=16)
    >>> selected_lengths(batch, 1, budget_tokens=64).tolist()    # 3 * 16 + 8; 5 (one page, kept)
    [[56], [5]]
    """
    if not isinstance(batch, DecodeBatch):
        raise KernelInputError(f"batch must be a DecodeBatch, got {type(batch).__name__}")
    _, lens = batch.head_tables(positive_int("num_kv_heads", num_kv_heads))
    return selected_lengths_of(lens, batch.block_size, budget_tokens)


def selected_lengths_of(lens: np.ndarray, block_size: int, budget_tokens: int) -> np.ndarray:
    """:func:`selected_lengths` for rows of ``lens`` tokens (any shape), without a batch.

    >>> selected_lengths_of(np.array([40, 100]), 16, budget_tokens=48).tolist()   # 3 pages each at most
    [40, 36]
    """
    K = pages_in_budget(budget_tokens, block_size)
    try:
        lens = np.asarray(lens)
    except (ValueError, TypeError):  # a ragged list
        raise KernelInputError(f"lengths must be an array of non-negative integers, got {type(lens).__name__}") from None
    if lens.dtype.kind not in "iu" or (lens.size and lens.min() < 0):
        raise KernelInputError(f"lengths must be non-negative integers, got {lens.dtype} {lens.ravel()[:4].tolist()}")
    lens = lens.astype(np.int64)
    pages = -(-lens // block_size)
    return np.asarray(kept_length(np.minimum(pages, K), lens, block_size), dtype=np.int32)


def select_pages(scores: np.ndarray, batch: DecodeBatch, budget_tokens: int) -> DecodeBatch:
    """Select the top pages of each (sequence, KV head) and return the compacted batch.

    Args:
        scores: float32 ``[S, Hkv, W]`` from :func:`~tinyserve_sim.data.page_scores.page_scores`.
        batch: the step's batch (tables ``[S, W]`` or ``[S, Hkv, W]``).
        budget_tokens: tokens each row may read; ``K = budget_tokens // block_size`` pages, >= 2.

    Returns:
        ``batch.with_head_tables(tables [S, Hkv, min(K, W)], lens [S, Hkv])``: each row
        lists its selected physical blocks in logical order, the newest page last.

    >>> import numpy as np
    >>> from tinyserve_sim.control.batch import DecodeBatch
    >>> batch = DecodeBatch.from_tables([[10, 11, 12, 13, 14, 15, 16, 17]], [120], block_size=16)
    >>> scores = np.array([[[0, .9, .1, .7, .3, .2, .8, 0]]], np.float32)
    >>> sparse = select_pages(scores, batch, budget_tokens=64)    # K = 4 pages
    >>> sparse.block_tables, sparse.seq_lens                      # 3 * 16 + 8 tokens
    (array([[[10, 11, 16, 17]]], dtype=int32), array([[56]], dtype=int32))
    """
    return compact_tables(batch, select_page_indices(scores, batch, budget_tokens))
