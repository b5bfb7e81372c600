"""One query-aware decode step on the GPU, with no trip through the host: score, select, attend.

::

    page_scores ──> select_pages ──> paged_attention
    [S, Hkv, W]     tables [S, Hkv, K'],   reads those tables where they lie
                    lens   [S, Hkv]

``select_pages`` writes its compacted tables straight into the arrays that the attention
kernel reads, so the step needs no copy and no synchronisation with Python, and it can be
captured in a CUDA graph like the dense step (a server decodes that way: vLLM captures its
decode steps). The attention is validated and planned (variant, split-K partition, grid)
before anything runs, from the lengths that *every* selection of this batch has
(:func:`~tinyserve_sim.data.select_pages.selected_lengths`): which pages a row keeps
depends on the scores, how many does not.

Bits: the three launches are the twins' three functions, and the attention's plan is the
one the twin makes from the same lengths, so the step's output is
``paged_attention(query, key_cache, value_cache, select_pages(page_scores(query, key_min,
key_max, batch), batch, budget_tokens), scale)`` bit for bit (a GPU test checks every stage).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cupy as cp
import numpy as np

from tinyserve_sim.control.batch import PAD_BLOCK, DecodeBatch
from tinyserve_sim.data.geometry import plan_launch
from tinyserve_sim.data.select_pages import selected_lengths
from tinyserve_sim.data.selection_checks import (
    check_metadata_matches_cache,
    check_page_scores,
    pages_in_budget,
)
from tinyserve_sim.data.validation import check_paged_attention, check_scale

from . import launchers
from . import selection_launchers as sl


class SparseDecodeStep:
    """A prepared sparse decode step: call it to launch its three kernels; it returns ``out``.

    After a launch (and a synchronisation) every stage's output can be read:

    Attributes:
        scores: float32 ``[S, Hkv, W]``, each page's score (``page_scores``).
        logical: int32 ``[S, Hkv, K']``, the selected logical pages, ``-1`` padded.
        tables: int32 ``[S, Hkv, K']``, the selected physical blocks (what attention reads).
        lens: int32 ``[S, Hkv]``, the selected lengths (the same at every step).
        out: ``[S, Hq, D]``, the attention output, in the query's dtype.
        variant, partition_size: the attention's launch (``paged_attention``'s ``auto``
            rule on the selected lengths, unless given).
    """

    def __init__(
        self,
        launches: tuple[Callable[[], object], ...],
        arrays: tuple[cp.ndarray, cp.ndarray, cp.ndarray, cp.ndarray, cp.ndarray],
        variant: str,
        partition_size: int,
    ) -> None:
        self._launches = launches
        self.scores, self.logical, self.tables, self.lens, self.out = arrays
        self.variant, self.partition_size = variant, partition_size

    def __call__(self) -> cp.ndarray:
        for launch in self._launches:  # scores, then selection, then attention: one stream
            launch()
        return self.out


def selected_batch(batch: DecodeBatch, num_kv_heads: int, budget_tokens: int) -> DecodeBatch:
    """A stand-in for every selection of ``batch``: per-head tables ``[S, Hkv, K']`` holding
    each row's first ``min(n, K)`` blocks (valid ids) and the selected lengths. The
    attention is validated and planned on it; the selection kernel writes the real tables."""
    K = pages_in_budget(budget_tokens, batch.block_size)
    width = min(K, batch.max_blocks)
    tables, _ = batch.head_tables(num_kv_heads)
    lens = selected_lengths(batch, num_kv_heads, budget_tokens)
    pages = -(-lens // batch.block_size)  # pages each row keeps
    keep = np.arange(width) < pages[..., None]
    stand_in = np.where(keep, tables[..., :width], PAD_BLOCK).astype(np.int32)
    return batch.with_head_tables(stand_in, lens)


def prepare_sparse_decode_step(
    query: Any,
    key_cache: Any,
    value_cache: Any,
    key_min: Any,
    key_max: Any,
    batch: DecodeBatch,
    budget_tokens: int,
    scale: float,
    variant: str = "auto",
    partition_size: int | None = None,
    out: Any = None,
) -> SparseDecodeStep:
    """Validate everything now; return the step (call it to launch).

    Args:
        query: ``[S, Hq, D]`` on the GPU, in the cache dtype.
        key_cache, value_cache: ``[num_blocks, block_size, Hkv, D]``.
        key_min, key_max: the page metadata ``[num_blocks, Hkv, D]``.
        batch: the step's batch.
        budget_tokens: tokens each (sequence, KV head) may read (``select_pages``' budget).
        scale: the softmax scale.
        variant, partition_size: as for ``paged_attention`` (``"auto"``: chosen from the
            selected lengths, as the twin chooses them).
        out: optional ``[S, Hq, D]`` output.

    Raises:
        KernelInputError: anything the three kernels' own checks refuse; nothing has
            been allocated on the device or launched then.
    """
    # Every host check of the three kernels first: nothing is allocated or compiled before.
    check_page_scores(query, key_min, key_max, batch)
    S, Hq, D = (int(x) for x in query.shape)
    Hkv = int(key_min.shape[1])
    selected = selected_batch(batch, Hkv, budget_tokens)
    check_paged_attention(query, key_cache, value_cache, selected)
    check_metadata_matches_cache(key_min, key_cache)
    check_scale(scale)
    # The attention's plan, from the lengths every selection has (this also checks both arguments).
    _, variant, partition_size = plan_launch((S, Hq, D), np.dtype(query.dtype), Hkv, selected.seq_lens, variant, partition_size)
    for name, a in (("query", query), ("key_cache", key_cache), ("value_cache", value_cache),
                    ("key_min", key_min), ("key_max", key_max)):
        launchers._device(a, name)  # before anything is allocated on the device
    out = launchers._check_out(out, (S, Hq, D), np.dtype(query.dtype))
    scores = cp.empty((S, Hkv, batch.max_blocks), dtype=np.float32)
    logical = cp.full(selected.block_tables.shape, PAD_BLOCK, dtype=np.int32)
    tables = cp.asarray(selected.block_tables)
    lens = cp.asarray(selected.seq_lens)
    score = sl.prepare_page_scores(query, key_min, key_max, batch, out=scores)
    select = sl.prepare_select_pages(scores, batch, budget_tokens, out=(logical, tables, lens))
    attend = launchers.prepare_paged_attention(
        query, key_cache, value_cache, selected, scale, variant, partition_size, out=out, rows=(tables, lens)
    )
    return SparseDecodeStep((score, select, attend), (scores, logical, tables, lens, out), variant, partition_size)
