"""Launchers of the query-aware selection kernels: validate on the host, then launch through CuPy.

Each public function runs the same host checks as its NumPy twin
(``tinyserve_sim.data.selection_checks`` and ``validation``) before anything
touches the device, so a bad input raises
:class:`~tinyserve_sim.errors.KernelInputError` and changes nothing. Big
arrays (keys, caches, metadata, queries, scores) must already be CuPy arrays;
small index arrays (slot mappings, block lists, the batch's tables) are
validated on the host and uploaded. Scalars go to the kernels as ``np.int32``
/ ``np.float32`` (CuPy does not check argument types).

``prepare_*`` splits validation from launching, so that the benchmark times
kernels only: it returns a function that launches (and returns the outputs,
which can be preallocated with ``out=``).

Kernels: ``gpu/kernels/page_metadata.cu`` (reset, update, fused write +
update; the metadata copy is ``copy_blocks.cu`` run on the metadata arrays),
``page_scores.cu``, ``select_pages.cu``, ``seed_heuristics.cu``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cupy as cp
import numpy as np

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.control.checks import check_int
from tinyserve_sim.data.geometry import REFERENCE_SMS, make_plan
from tinyserve_sim.data.seed_heuristics import (
    ANALYSIS_THREADS,
    check_adaptive_cache_management,
    check_cache_selection,
    check_query_analysis,
)
from tinyserve_sim.data.selection_checks import (
    check_block_list,
    check_metadata_matches_cache,
    check_page_metadata,
    check_page_scores,
    check_select_pages,
    check_update_page_metadata,
)
from tinyserve_sim.data.validation import check_block_mapping, check_reshape_and_cache
from tinyserve_sim.errors import KernelInputError

from .build import CTYPE, get_module

#: +inf and -inf of each dtype, as the 32-bit word the reset kernel replicates.
_INF_WORDS = {
    np.dtype(np.float16): (0x7C007C00, 0xFC00FC00),
    np.dtype(np.float32): (0x7F800000, 0xFF800000),
}
#: Register tiles of the page_scores kernel (query heads held per lane); 0 = generic.
SCORE_GROUP_TILES = (0, 1, 2, 4, 8)
#: Threads per page_scores block, and pages each row takes per step (``UN`` in the .cu).
_SCORE_THREADS, _SCORE_UNROLL = 128, 2
#: page_scores blocks one SM holds at once: its 96 registers a thread allow 5 blocks of 128
#: threads (Nsight Compute on an H200, benchmarks/results/h200_s10_ncu_page_scores.log).
_SCORE_BLOCKS_PER_SM = 5
#: The fixed cost of a page_scores block (staging the query, starting the load pipeline), in
#: loop iterations: fitted to h200_s10_page_scores_pages_per_block.log (kernel notes, session 10).
_SCORE_BLOCK_COST_STEPS = 1
#: The most pages per block a caller may ask for (a grid of at least one block per row).
_SCORE_MAX_PAGES_PER_BLOCK_ASKED = 1 << 20
#: Threads per select_pages block: one block per row; must equal NT in select_pages.cu.
_SELECT_THREADS = 512


def _device(a: Any, name: str) -> cp.ndarray:
    if not isinstance(a, cp.ndarray):
        raise KernelInputError(f"{name} must be a cupy.ndarray on the GPU, got {type(a).__name__}")
    return a


def _out(out: Any, name: str, shape: tuple[int, ...], dtype: Any) -> cp.ndarray:
    if out is None:
        return cp.empty(shape, dtype=dtype)
    out = _device(out, name)
    if tuple(out.shape) != shape or out.dtype != np.dtype(dtype) or not out.flags.c_contiguous:
        raise KernelInputError(f"{name} must be a C-contiguous {np.dtype(dtype)} array of shape {shape}")
    return out


def _row_vecs(a: Any) -> int:
    """16-byte vectors in one ``[..., Hkv, D]`` row (Hkv * D elements)."""
    return int(a.shape[-2]) * int(a.shape[-1]) * a.dtype.itemsize // 16


def _threads_for(row_vecs: int) -> int:
    return min(256, max(32, -(-row_vecs // 32) * 32))


# ----------------------------------------------------------------- page metadata
def prepare_reset_page_metadata(blocks: Any, key_min: Any, key_max: Any) -> Callable[[], None]:
    """Validate now; return the launch of ``reset_page_metadata_kernel``."""
    num_blocks = check_page_metadata(key_min, key_max)[0]
    b = check_block_list(blocks, num_blocks)
    _device(key_min, "key_min")
    _device(key_max, "key_max")
    if b.size == 0:
        return lambda: None
    lo, hi = _INF_WORDS[np.dtype(key_min.dtype)]
    row_vecs = _row_vecs(key_min)
    kernel = get_module("page_metadata.cu").get_function("reset_page_metadata_kernel")
    args = (key_min, key_max, cp.asarray(b), np.int32(row_vecs), np.uint32(lo), np.uint32(hi))
    return lambda: kernel((b.size,), (_threads_for(row_vecs),), args)


def reset_page_metadata(blocks: Any, key_min: Any, key_max: Any) -> None:
    """GPU ``reset_page_metadata`` (see the twin)."""
    prepare_reset_page_metadata(blocks, key_min, key_max)()


def _group_by_block(slots: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid tokens grouped by block, in slot-mapping order within a group:
    ``(token_order int32, group_block int64 [U], group_start int32 [U + 1])``."""
    tokens = np.flatnonzero(slots >= 0)
    blocks = slots[tokens] // block_size
    order = np.argsort(blocks, kind="stable")  # stable: slot-mapping order inside a block
    token_order = tokens[order].astype(np.int32)
    group_block, counts = np.unique(blocks[order], return_counts=True)
    group_start = np.concatenate(([0], np.cumsum(counts))).astype(np.int32)
    return token_order, group_block.astype(np.int64), group_start


META_NAMES = tuple(
    f"{kernel}<{t}>"
    for kernel in ("update_page_metadata_kernel", "reshape_and_cache_with_metadata_kernel")
    for t in CTYPE.values()
)


def _grouped_launch(kernel_name: str, slots: np.ndarray, block_size: int, key_min: Any, leading_args: tuple) -> Callable[[], None]:
    """The launch of a metadata kernel of ``page_metadata.cu`` over the blocks that ``slots``
    touch: one thread block per touched block, its tokens in slot-mapping order. The
    kernel's arguments are ``leading_args``, then the grouping (token order, group
    blocks, group starts) and the 16-byte vectors of a metadata row."""
    token_order, group_block, group_start = _group_by_block(slots, block_size)
    if group_block.size == 0:
        return lambda: None
    row_vecs = _row_vecs(key_min)
    name = f"{kernel_name}<{CTYPE[np.dtype(key_min.dtype)]}>"
    kernel = get_module("page_metadata.cu", META_NAMES).get_function(name)
    args = (*leading_args, cp.asarray(token_order), cp.asarray(group_block), cp.asarray(group_start), np.int32(row_vecs))
    return lambda: kernel((group_block.size,), (_threads_for(row_vecs),), args)


def prepare_update_page_metadata(
    key: Any, slot_mapping: Any, key_min: Any, key_max: Any, block_size: int
) -> Callable[[], None]:
    """Validate now; return the launch of ``update_page_metadata_kernel`` (one thread block per touched block)."""
    slots, block_size = check_update_page_metadata(key, slot_mapping, key_min, key_max, block_size)
    for n, a in (("key", key), ("key_min", key_min), ("key_max", key_max)):
        _device(a, n)
    return _grouped_launch("update_page_metadata_kernel", slots, block_size, key_min, (key, key_min, key_max))


def update_page_metadata(key: Any, slot_mapping: Any, key_min: Any, key_max: Any, block_size: int) -> None:
    """GPU ``update_page_metadata`` (see the twin)."""
    prepare_update_page_metadata(key, slot_mapping, key_min, key_max, block_size)()


def prepare_reshape_and_cache_with_metadata(
    key: Any, value: Any, key_cache: Any, value_cache: Any, slot_mapping: Any, key_min: Any, key_max: Any
) -> Callable[[], None]:
    """Validate now; return the launch of the fused write + metadata update."""
    slots = check_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    check_metadata_matches_cache(key_min, key_cache)
    block_size = int(key_cache.shape[1])
    check_update_page_metadata(key, slots, key_min, key_max, block_size)
    for n, a in (("key", key), ("value", value), ("key_cache", key_cache), ("value_cache", value_cache),
                 ("key_min", key_min), ("key_max", key_max)):
        _device(a, n)
    return _grouped_launch(
        "reshape_and_cache_with_metadata_kernel", slots, block_size, key_min,
        (key, value, key_cache, value_cache, cp.asarray(slots), key_min, key_max),
    )


def reshape_and_cache_with_metadata(
    key: Any, value: Any, key_cache: Any, value_cache: Any, slot_mapping: Any, key_min: Any, key_max: Any
) -> None:
    """GPU ``reshape_and_cache_with_metadata`` (see the twin)."""
    prepare_reshape_and_cache_with_metadata(key, value, key_cache, value_cache, slot_mapping, key_min, key_max)()


def prepare_copy_page_metadata(key_min: Any, key_max: Any, block_mapping: Any) -> Callable[[], None]:
    """Validate now (conflicts raise ``CopyConflictError``); return the launch: the
    ``copy_blocks`` kernel run on the two metadata arrays (a block row of metadata is
    ``Hkv * D`` elements, a whole number of 16-byte vectors)."""
    num_blocks = check_page_metadata(key_min, key_max)[0]
    mapping = check_block_mapping(block_mapping, num_blocks)
    _device(key_min, "key_min")
    _device(key_max, "key_max")
    pairs = mapping.shape[0]
    if pairs == 0:
        return lambda: None
    kernel = get_module("copy_blocks.cu").get_function("copy_blocks_kernel")
    args = (key_min, key_max, cp.asarray(mapping), np.int64(_row_vecs(key_min)))
    return lambda: kernel((1, pairs), (_threads_for(_row_vecs(key_min)),), args)


def copy_page_metadata(key_min: Any, key_max: Any, block_mapping: Any) -> None:
    """GPU ``copy_page_metadata`` (see the twin)."""
    prepare_copy_page_metadata(key_min, key_max, block_mapping)()


# ------------------------------------------------------------------- page scores
def page_scores_names(dtype: Any, lanes: int, vecs_per_lane: int) -> tuple[str, ...]:
    """The page_scores kernels of one (dtype, lanes, vecs_per_lane): every register tile."""
    dtype = np.dtype(dtype)
    vec = 16 // dtype.itemsize
    return tuple(
        f"page_scores_kernel<{CTYPE[dtype]}, {vec}, {lanes}, {vecs_per_lane}, {gq}>" for gq in SCORE_GROUP_TILES
    )


def all_page_scores_names() -> tuple[str, ...]:
    """Every instantiation a valid head_dim (8..256, step 8) and dtype can need."""
    names: dict[str, None] = {}
    for dtype in CTYPE:
        for head_dim in range(8, 257, 8):
            plan = make_plan(head_dim, dtype, 1)
            names.update(dict.fromkeys(page_scores_names(dtype, plan.lanes, plan.vecs_per_lane)))
    return tuple(names)


def _group_tile(group: int, elements_per_lane: int) -> int:
    """The register tile for a GQA group: the smallest of 1, 2, 4, 8 that holds it, or 0 (generic)."""
    for gq in SCORE_GROUP_TILES[1:]:
        if group <= gq and gq * elements_per_lane <= 64:
            return gq
    return 0


def _batch_strides(batch: DecodeBatch, num_kv_heads: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """The batch's tables and lengths as stored (no broadcast copy), and their strides in elements:
    ``(table_seq, table_head, lens_seq, lens_head)``; a head stride of 0 when there is no head axis."""
    W = batch.max_blocks
    if batch.per_head:
        return batch.block_tables, batch.seq_lens, (num_kv_heads * W, W, num_kv_heads, 1)
    return batch.block_tables, batch.seq_lens, (W, 0, 1, 0)


def prepare_page_scores(
    query: Any, key_min: Any, key_max: Any, batch: DecodeBatch, out: Any = None, pages_per_block: int | None = None
) -> Callable[[], cp.ndarray]:
    """Validate now; return a function that launches ``page_scores_kernel`` and returns the scores
    (float32 ``[S, Hkv, W]``, in ``out`` if given)."""
    check_page_scores(query, key_min, key_max, batch)
    if pages_per_block is not None:
        check_int(pages_per_block, "pages_per_block", 1, _SCORE_MAX_PAGES_PER_BLOCK_ASKED, KernelInputError)
    for n, a in (("query", query), ("key_min", key_min), ("key_max", key_max)):
        _device(a, n)
    S, Hq, D = (int(x) for x in query.shape)
    Hkv = int(key_min.shape[1])
    W = batch.max_blocks
    scores = _out(out, "out", (S, Hkv, W), np.float32)
    if S == 0:
        return lambda: scores
    dtype = np.dtype(query.dtype)
    G = Hq // Hkv
    plan = make_plan(D, dtype, G)
    gq = _group_tile(G, plan.vecs_per_lane * plan.vec)
    names = page_scores_names(dtype, plan.lanes, plan.vecs_per_lane)
    kernel = get_module("page_scores.cu", names).get_function(
        f"page_scores_kernel<{CTYPE[dtype]}, {plan.vec}, {plan.lanes}, {plan.vecs_per_lane}, {gq}>"
    )
    smem = 4 * G * D
    kernel.max_dynamic_shared_size_bytes = smem  # always, as paged_attention's launcher does
    tables, lens, strides = _batch_strides(batch, Hkv)
    slots = _SCORE_BLOCKS_PER_SM * REFERENCE_SMS  # the GPU variant="auto" assumes (any other only runs slower)
    ppb = int(pages_per_block or _score_pages_per_block(W, S * Hkv, _SCORE_THREADS // plan.lanes, slots))
    args = (
        scores, query, key_min, key_max, cp.asarray(tables), cp.asarray(lens), *(np.int32(x) for x in strides),
        np.int32(Hq), np.int32(Hkv), np.int32(D), np.int32(batch.block_size), np.int32(W), np.int32(ppb),
    )
    grid = (-(-W // ppb), Hkv, S)

    def launch() -> cp.ndarray:
        kernel(grid, (_SCORE_THREADS,), args, shared_mem=smem)
        return scores

    return launch


def _score_pages_per_block(width: int, rows: int, page_rows: int, slots: int) -> int:
    """Pages per page_scores block, for ``rows`` (sequence, KV head) rows of ``width`` pages
    and ``slots`` blocks in one wave of the GPU (SMs x :data:`_SCORE_BLOCKS_PER_SM`).

    A block walks its pages in a chain of loop iterations, each covering two steps of
    ``_SCORE_UNROLL`` pages for each of its ``page_rows`` rows, and its loads wait on the
    previous iteration's: a block's time is its iterations (plus a fixed cost,
    :data:`_SCORE_BLOCK_COST_STEPS`), and a grid's is that times its waves, rounded up. Cut
    each row into R runs of equal length, for the R of least estimated time (the fewest
    blocks on a tie). Measured on an H200 (kernel notes, session 10), 2,048 pages x 64
    rows: 205 pages a block, 640 blocks in one wave, 29.0 us (256 pages and 512 blocks:
    31.0 us; 192 pages and 704 blocks, a second wave: 38.1 us); 512 pages x 64 rows: 64
    pages a block (12.0 us; 52 pages, the same iterations in more blocks: 13.0 us).

    >>> _score_pages_per_block(2048, 64, 8, 660), _score_pages_per_block(512, 64, 8, 660)
    (205, 64)
    >>> _score_pages_per_block(3, 1, 8, 660), _score_pages_per_block(2048, 1, 8, 660)   # short rows, one row
    (3, 32)
    """
    step = 2 * _SCORE_UNROLL * page_rows  # pages one loop iteration covers
    best: tuple[int, int] | None = None   # (estimated time, runs)
    for runs in range(1, -(-width // step) + 1):  # no run shorter than one iteration's pages
        pages = -(-width // runs)
        waves = -(-rows * runs // slots)
        time = waves * (-(-pages // step) + _SCORE_BLOCK_COST_STEPS)
        if best is None or time < best[0]:
            best = (time, runs)
    assert best is not None  # width >= 1: at least one run
    return -(-width // best[1])


def page_scores(query: Any, key_min: Any, key_max: Any, batch: DecodeBatch, out: Any = None) -> cp.ndarray:
    """GPU ``page_scores``, bit-identical to the twin: float32 ``[S, Hkv, W]``."""
    return prepare_page_scores(query, key_min, key_max, batch, out)()


# ------------------------------------------------------------------ select pages
def prepare_select_pages(
    scores: Any, batch: DecodeBatch, budget_tokens: int, out: tuple[Any, Any, Any] | None = None
) -> Callable[[], tuple[cp.ndarray, cp.ndarray, cp.ndarray]]:
    """Validate now; return a function that launches ``select_pages_kernel`` and returns
    ``(logical [S, Hkv, K'], tables [S, Hkv, K'], lens [S, Hkv])`` int32 device arrays
    (``K' = min(K, W)``; in ``out`` if given)."""
    _, _, K = check_select_pages(scores, batch, budget_tokens)
    _device(scores, "scores")
    S, Hkv, W = (int(x) for x in scores.shape)
    width = min(K, W)
    given = out if out is not None else (None, None, None)
    logical = _out(given[0], "out[0]", (S, Hkv, width), np.int32)
    tables_out = _out(given[1], "out[1]", (S, Hkv, width), np.int32)
    lens_out = _out(given[2], "out[2]", (S, Hkv), np.int32)
    if S == 0:
        return lambda: (logical, tables_out, lens_out)
    tables, lens, strides = _batch_strides(batch, Hkv)
    kernel = get_module("select_pages.cu").get_function("select_pages_kernel")
    args = (
        logical, tables_out, lens_out, scores, cp.asarray(tables), cp.asarray(lens),
        *(np.int32(x) for x in strides), np.int32(Hkv), np.int32(W), np.int32(batch.block_size),
        np.int32(width), np.int32(width),  # K > W selects every page, as K = W does (and fits an int32)
    )

    def launch() -> tuple[cp.ndarray, cp.ndarray, cp.ndarray]:
        kernel((Hkv, S), (_SELECT_THREADS,), args)
        return logical, tables_out, lens_out

    return launch


def select_pages(
    scores: Any, batch: DecodeBatch, budget_tokens: int, out: tuple[Any, Any, Any] | None = None
) -> tuple[cp.ndarray, cp.ndarray, cp.ndarray]:
    """GPU ``select_pages``: ``(logical, tables, lens)`` on the device, equal to the twin's
    ``select_page_indices`` and the compacted batch's ``block_tables`` / ``seq_lens``."""
    return prepare_select_pages(scores, batch, budget_tokens, out)()


# ------------------------------------------------------------- seed heuristics
#: The template instantiations of seed_heuristics.cu (one module for all three kernels).
SEED_NAMES = tuple(f"query_analysis_kernel<{t}>" for t in CTYPE.values())


def query_analysis(queries: Any, low_threshold: float = 0.2, high_threshold: float = 0.5) -> tuple[cp.ndarray, cp.ndarray]:
    """GPU ``query_analysis``: ``(complexity float32 [N], requirement int32 [N])``."""
    lo, hi = check_query_analysis(queries, low_threshold, high_threshold)
    _device(queries, "queries")
    N, hidden = (int(x) for x in queries.shape)
    complexity = cp.empty(N, dtype=np.float32)
    requirement = cp.empty(N, dtype=np.int32)
    if N:
        kernel = get_module("seed_heuristics.cu", SEED_NAMES).get_function(
            f"query_analysis_kernel<{CTYPE[np.dtype(queries.dtype)]}>"
        )
        kernel((N,), (ANALYSIS_THREADS,), (complexity, requirement, queries, np.int32(hidden), lo, hi))
    return complexity, requirement


def cache_selection(
    complexity: Any, requirement: Any, history: Any, threshold: float
) -> tuple[cp.ndarray, cp.ndarray]:
    """GPU ``cache_selection``: ``(score float32 [N], granted int32 [N])``."""
    thr = check_cache_selection(complexity, requirement, history, threshold)
    for n, a in (("complexity", complexity), ("requirement", requirement), ("history", history)):
        _device(a, n)
    N = int(complexity.shape[0])
    score = cp.empty(N, dtype=np.float32)
    granted = cp.empty(N, dtype=np.int32)
    if N:
        kernel = get_module("seed_heuristics.cu", SEED_NAMES).get_function("cache_selection_kernel")
        kernel((-(-N // 256),), (256,), (score, granted, complexity, requirement, history, np.int32(N), thr))
    return score, granted


def adaptive_cache_management(
    hit_rates: Any, access_frequencies: Any, allocation: Any, hit_rate_threshold: float, frequency_threshold: int
) -> cp.ndarray:
    """GPU ``adaptive_cache_management``: the new allocation, int32 ``[B]``."""
    thr, fthr = check_adaptive_cache_management(
        hit_rates, access_frequencies, allocation, hit_rate_threshold, frequency_threshold
    )
    for n, a in (("hit_rates", hit_rates), ("access_frequencies", access_frequencies), ("allocation", allocation)):
        _device(a, n)
    B = int(hit_rates.shape[0])
    new = cp.empty(B, dtype=np.int32)
    if B:
        kernel = get_module("seed_heuristics.cu", SEED_NAMES).get_function("adaptive_cache_management_kernel")
        kernel(
            (-(-B // 256),), (256,),
            (new, hit_rates, access_frequencies, allocation, np.int32(B), thr, np.int32(fthr)),
        )
    return new
