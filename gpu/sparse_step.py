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

Two schedules run that same work:

* ``schedule="kernels"``: three kernels (four with split-K's reduce), one after the other.
* ``schedule="fused"``: one persistent kernel (``kernels/sparse_decode_step.cu``) whose
  thread blocks take the step's work items in the order :func:`fused_schedule` lays out,
  so that a row is attended as soon as its own selection is done while later rows are still
  being scored. Each item is done by the same device function the separate kernels run, so
  the bits are the same (the attention is always split-K there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cupy as cp
import numpy as np

from tinyserve_sim.control.batch import PAD_BLOCK, DecodeBatch
from tinyserve_sim.control.checks import check_int
from tinyserve_sim.data.geometry import plan_launch
from tinyserve_sim.data.select_pages import selected_lengths
from tinyserve_sim.data.selection_checks import (
    check_metadata_matches_cache,
    check_page_scores,
    pages_in_budget,
)
from tinyserve_sim.data.validation import check_paged_attention, check_scale
from tinyserve_sim.errors import KernelInputError

from . import launchers
from . import selection_launchers as sl
from .build import CTYPE, get_module

#: The fused schedule's item kinds (``kernels/sparse_decode_step.cu``'s SCORE and ATTEND).
SCORE, ATTEND = 0, 1
#: Schedules :func:`prepare_sparse_decode_step` knows.
SCHEDULES = ("kernels", "fused")
#: Thread blocks of the fused kernel per SM (its ``__launch_bounds__``).
FUSED_BLOCKS_PER_SM = 4


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


def fused_schedule(
    num_seqs: int, num_kv_heads: int, score_items: int, attend_items: np.ndarray, head_tiles: int, lag_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """The fused kernel's work list and each row's item counts.

    Rows are (sequence, KV head) pairs in order, ``r = s * Hkv + h``. Each row has
    ``score_items`` runs of pages to score and ``attend_items[s, h]`` split-K partitions to
    attend for each of its ``head_tiles`` head tiles. The list takes row ``r``'s score items,
    then the attend items of row ``r - lag_rows``: a row's attention is queued ``lag_rows``
    rows after its scores, time enough for its selection, and meanwhile other rows' scores
    keep the memory busy. Every row's score items come before its attend items (the kernel's
    deadlock-freedom rests on it).

    Returns:
        work: int32 ``[n, 4]``, rows ``(kind, s, h or x, run or partition)`` with
            ``x = h * head_tiles + tile``.
        row_items: int32 ``[S * Hkv, 2]``: (score items, attend items) of each row.

    >>> work, rows = fused_schedule(1, 2, score_items=2, attend_items=np.array([[1, 2]]), head_tiles=1, lag_rows=1)
    >>> work.tolist()
    [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 1, 1], [1, 0, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]]
    >>> rows.tolist()
    [[2, 1], [2, 2]]
    """
    attend_items = np.asarray(attend_items).reshape(num_seqs, num_kv_heads)
    num_rows = num_seqs * num_kv_heads
    work: list[tuple[int, int, int, int]] = []
    for i in range(num_rows + lag_rows):
        if i < num_rows:  # row i's scores
            s, h = divmod(i, num_kv_heads)
            work.extend((SCORE, s, h, run) for run in range(score_items))
        if i >= lag_rows:  # row i - lag_rows's attention: every head tile, every partition
            s, h = divmod(i - lag_rows, num_kv_heads)
            for tile in range(head_tiles):
                work.extend((ATTEND, s, h * head_tiles + tile, part) for part in range(int(attend_items[s, h])))
    row_items = np.stack(
        [np.full(num_rows, score_items), attend_items.reshape(-1) * head_tiles], axis=1
    ).astype(np.int32)
    return np.asarray(work, dtype=np.int32).reshape(-1, 4), row_items


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
    schedule: str = "kernels",
    lag_rows: int | None = None,
    pages_per_item: int | None = None,
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
        schedule: ``"kernels"`` (one kernel per stage) or ``"fused"`` (one persistent
            kernel; the attention is split-K: ``"auto"`` becomes split-K when it would have
            chosen one pass, and ``"one_pass"`` is refused).
        lag_rows, pages_per_item: the fused schedule's rows between a row's scores and its
            attention (:func:`fused_schedule`), and pages per score item (``None``: the
            defaults, :data:`FUSED_LAG_ROWS` and ``page_scores``' own choice).

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
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise KernelInputError(f"unknown sparse step schedule {schedule!r} ({' or '.join(SCHEDULES)})")
    if schedule == "fused" and variant == "one_pass":
        raise KernelInputError("the fused schedule attends split-K; variant='one_pass' cannot run in it")
    if lag_rows is not None:
        check_int(lag_rows, "lag_rows", 0, 1 << 20, KernelInputError)
    if pages_per_item is not None:
        check_int(pages_per_item, "pages_per_item", 1, 1 << 20, KernelInputError)
    # The attention's plan, from the lengths every selection has (this also checks both arguments).
    plan, variant, partition_size = plan_launch(
        (S, Hq, D), np.dtype(query.dtype), Hkv, selected.seq_lens, variant, partition_size
    )
    if schedule == "fused" and variant == "one_pass":  # auto chose one pass: the split it would take instead
        plan, variant, partition_size = plan_launch(
            (S, Hq, D), np.dtype(query.dtype), Hkv, selected.seq_lens, "split_k", None
        )
    for name, a in (("query", query), ("key_cache", key_cache), ("value_cache", value_cache),
                    ("key_min", key_min), ("key_max", key_max)):
        launchers._device(a, name)  # before anything is allocated on the device
    out = launchers._check_out(out, (S, Hq, D), np.dtype(query.dtype))
    scores = cp.empty((S, Hkv, batch.max_blocks), dtype=np.float32)
    logical = cp.full(selected.block_tables.shape, PAD_BLOCK, dtype=np.int32)
    tables = cp.asarray(selected.block_tables)
    lens = cp.asarray(selected.seq_lens)
    if schedule == "fused":
        launch = _prepare_fused(
            query, key_cache, value_cache, key_min, key_max, batch, selected, budget_tokens, scale, plan,
            partition_size, (scores, logical, tables, lens, out), lag_rows, pages_per_item,
        )
        return SparseDecodeStep((launch,), (scores, logical, tables, lens, out), variant, partition_size)
    score = sl.prepare_page_scores(query, key_min, key_max, batch, out=scores)
    select = sl.prepare_select_pages(scores, batch, budget_tokens, out=(logical, tables, lens))
    attend = launchers.prepare_paged_attention(
        query, key_cache, value_cache, selected, scale, variant, partition_size, out=out, rows=(tables, lens)
    )
    return SparseDecodeStep((score, select, attend), (scores, logical, tables, lens, out), variant, partition_size)


#: The fused schedule's default lag, in rows (measured: kernel notes, session 10).
FUSED_LAG_ROWS = 16


def fused_kernel_name(plan: Any, dtype: Any, group_tile: int) -> str:
    """The instantiation of ``sparse_decode_step_kernel`` for an attention plan and the
    scores' register tile: element type, vector width, lanes, vectors per lane (shared by
    both roles), the scores' group tile, the attention's heads per slice, slices, chunk and
    ``EVEN``."""
    even = plan.num_vecs == plan.lanes * plan.vecs_per_lane
    return (f"sparse_decode_step_kernel<{CTYPE[np.dtype(dtype)]}, {plan.vec}, {plan.lanes}, {plan.vecs_per_lane}, "
            f"{group_tile}, {plan.head_tile}, {plan.head_slices}, {plan.chunk}, {'true' if even else 'false'}>")


def _prepare_fused(
    query: cp.ndarray, key_cache: cp.ndarray, value_cache: cp.ndarray, key_min: cp.ndarray, key_max: cp.ndarray,
    batch: DecodeBatch, selected: DecodeBatch, budget_tokens: int, scale: float, plan: Any, partition_size: int,
    arrays: tuple[cp.ndarray, ...], lag_rows: int | None, pages_per_item: int | None,
) -> Callable[[], None]:
    """The fused kernel's launch: its work list, counters and arguments, built once."""
    scores, logical, tables, lens, out = arrays
    S, Hq, D = (int(x) for x in query.shape)
    Hkv = int(key_min.shape[1])
    G, W = Hq // Hkv, batch.max_blocks
    dtype = np.dtype(query.dtype)
    K = pages_in_budget(budget_tokens, batch.block_size)
    out_width = min(K, W)
    head_tiles = -(-G // (plan.head_tile * plan.head_slices))
    parts = np.maximum(1, -(-selected.seq_lens.astype(np.int64) // partition_size))  # [S, Hkv]
    max_parts = int(parts.max()) if parts.size else 1
    ppi = int(pages_per_item or sl._score_pages_per_block(W, S * Hkv, sl._SCORE_THREADS // plan.lanes))
    score_items = -(-W // ppi)
    lag = FUSED_LAG_ROWS if lag_rows is None else lag_rows
    work, row_items = fused_schedule(S, Hkv, score_items, parts, head_tiles, lag)
    group_tile = sl._group_tile(G, plan.vecs_per_lane * plan.vec)
    name = fused_kernel_name(plan, dtype, group_tile)
    kernel = get_module("sparse_decode_step.cu", (name,)).get_function(name)
    smem = max(plan.shared_memory_bytes, 4 * G * D, 4 * (max_parts + 4))
    kernel.max_dynamic_shared_size_bytes = smem
    num_rows = S * Hkv
    counters = cp.zeros(2 + 3 * num_rows, dtype=np.int32)  # the kernel leaves them at zero
    part_out = cp.empty((S, Hq, max_parts, D), dtype=np.float32)
    part_m = cp.empty((S, Hq, max_parts), dtype=np.float32)
    part_l = cp.empty((S, Hq, max_parts), dtype=np.float32)
    src_tables, src_lens, strides = sl._batch_strides(batch, Hkv)
    n_work = int(work.shape[0])
    sms = int(cp.cuda.Device().attributes["MultiProcessorCount"])
    grid = (max(1, min(n_work, FUSED_BLOCKS_PER_SM * sms)),)
    args = (
        scores, logical, tables, lens, out, part_out, part_m, part_l,
        query, key_cache, value_cache, key_min, key_max, cp.asarray(src_tables), cp.asarray(src_lens),
        cp.asarray(work), cp.asarray(row_items), counters, np.float32(scale),
        *(np.int32(x) for x in strides), np.int32(Hq), np.int32(Hkv), np.int32(D), np.int32(batch.block_size),
        np.int32(W), np.int32(ppi), np.int32(out_width), np.int32(out_width),
        np.int32(partition_size), np.int32(max_parts), np.int32(n_work), np.int32(num_rows),
    )

    def launch(trace: cp.ndarray | None = None) -> None:
        # trace: None (a null pointer: no timeline), or int64 [n_work, 4] (the kernel's header)
        kernel(grid, (sl._SCORE_THREADS,), (*args, np.uint64(0) if trace is None else trace), shared_mem=smem)

    launch.work = work  # type: ignore[attr-defined]  (for the timeline: what each item was)
    launch.grid = grid  # type: ignore[attr-defined]
    return launch
