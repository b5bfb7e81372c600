"""Launchers: validate on the host, then launch the CUDA kernels through CuPy.

Every public function here first runs the same checks as the NumPy twin
(``tinyserve_sim.data.validation``): dtypes, shapes, C-contiguity, block ids and
slots in range, sequence lengths within the tables' capacity, copy conflicts.
Only then does it launch, so a bad input is a Python exception, never an
out-of-bounds access on the device. Scalars are passed as ``np.int32`` /
``np.int64`` / ``np.float32``: CuPy does not check kernel argument types.

``prepare_paged_attention`` splits validation from launching, so that the
benchmark times kernels only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cupy as cp
import numpy as np

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data.geometry import (
    MAX_GRID_YZ,
    NUM_THREADS,
    partition_count,
    plan_launch,
)
from tinyserve_sim.data.validation import (
    check_block_mapping,
    check_caches,
    check_paged_attention,
    check_reshape_and_cache,
    check_scale,
)
from tinyserve_sim.errors import BackendUnavailableError, KernelInputError

from .build import CTYPE as _CTYPE
from .build import get_module, paged_attention_kernel_name, paged_attention_names


def _device(a: Any, name: str) -> cp.ndarray:
    """Big arrays must already live on the GPU (no silent host-to-device copies)."""
    if not isinstance(a, cp.ndarray):
        raise KernelInputError(f"{name} must be a cupy.ndarray on the GPU, got {type(a).__name__}")
    return a


def _index(a: Any) -> cp.ndarray:
    """A validated host index array, uploaded (or kept, if already on the GPU)."""
    return a if isinstance(a, cp.ndarray) else cp.asarray(a)


#: Compute capabilities whose tensor cores ``tinyserve_sim.data.tensor_core`` models bit for bit.
MODELLED_TENSOR_CORES = ("90",)


def require_modelled_tensor_cores() -> None:
    """A plan with tensor-core arithmetic (decode logits and P V, prefill scores) promises
    the twin's bits only where the tensor cores' rounding has been measured (SM 9.0: H100,
    H200); elsewhere, refuse rather than differ. No usable device at all is refused too."""
    try:
        cc = cp.cuda.Device().compute_capability
    except cp.cuda.runtime.CUDARuntimeError as err:
        raise BackendUnavailableError(f"no usable CUDA device for a tensor-core plan: {err}") from None
    if cc not in MODELLED_TENSOR_CORES:
        raise BackendUnavailableError(
            f"this plan computes on tensor cores, whose rounding is modelled for SM 9.0 "
            f"(H100, H200) only; this GPU is SM {cc[:-1]}.{cc[-1]}")


def _check_out(out: Any, shape: tuple[int, ...], dtype: np.dtype) -> cp.ndarray:
    if out is None:
        return cp.empty(shape, dtype=dtype)
    out = _device(out, "out")
    if tuple(out.shape) != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise KernelInputError(f"out must be a C-contiguous {dtype} array of shape {shape}")
    return out


def _rows_like(a: Any, host: np.ndarray, name: str) -> cp.ndarray:
    """A device array standing in for the host array ``host``: same shape, int32, C-contiguous."""
    a = _device(a, name)
    if tuple(a.shape) != host.shape or a.dtype != np.int32 or not a.flags.c_contiguous:
        raise KernelInputError(f"{name} must be a C-contiguous int32 device array of shape {host.shape}")
    return a


# ------------------------------------------------------------ reshape_and_cache
def prepare_reshape_and_cache(
    key: Any, value: Any, key_cache: Any, value_cache: Any, slot_mapping: Any
) -> Callable[[], None]:
    """Validate now; return a function that launches ``reshape_and_cache``."""
    slots = check_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    for n, a in (("key", key), ("value", value), ("key_cache", key_cache), ("value_cache", value_cache)):
        _device(a, n)
    num_tokens = int(key.shape[0])
    if num_tokens == 0:
        return lambda: None
    row_vecs = key.shape[1] * key.shape[2] * key.dtype.itemsize // 16
    threads = min(256, max(32, -(-row_vecs // 32) * 32))
    kernel = get_module("reshape_and_cache.cu").get_function("reshape_and_cache_kernel")
    args = (key, value, key_cache, value_cache, _index(slots), np.int32(num_tokens), np.int32(row_vecs), np.int32(1))
    return lambda: kernel((num_tokens,), (threads,), args)


def reshape_and_cache(key: Any, value: Any, key_cache: Any, value_cache: Any, slot_mapping: Any) -> None:
    """GPU ``reshape_and_cache`` (see the twin for semantics)."""
    prepare_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)()


# ------------------------------------------------------------------ copy_blocks
COPY_THREADS = 128  #: threads per thread block of copy_blocks_kernel (see its header)


def prepare_copy_blocks(key_cache: Any, value_cache: Any, block_mapping: Any) -> Callable[[], None]:
    """Validate now (conflicts raise ``CopyConflictError``); return the launch."""
    num_blocks, block_size, heads, head_dim = check_caches(key_cache, value_cache)
    mapping = check_block_mapping(block_mapping, num_blocks)
    _device(key_cache, "key_cache")
    _device(value_cache, "value_cache")
    pairs = mapping.shape[0]
    if pairs == 0:
        return lambda: None
    block_vecs = block_size * heads * head_dim * key_cache.dtype.itemsize // 16
    # Enough pieces per pair that even a few copies fill 132 SMs: 8 blocks of 128 threads
    # each (the 1,024 threads per SM of the earlier 4 blocks of 256), no piece under 1,024
    # vectors. (Measured at 8,192 pairs, where this is one piece per pair.)
    pieces = max(1, min(-(-block_vecs // 1024), -(-1056 // pairs)))
    kernel = get_module("copy_blocks.cu").get_function("copy_blocks_kernel")
    mapping_d = _index(mapping)
    # One launch per 65,535 pairs (CUDA's gridDim.y limit); the pairs are
    # independent, so cutting the list changes nothing.
    launches = [
        ((pieces, min(MAX_GRID_YZ, pairs - first)), (key_cache, value_cache, mapping_d[first:], np.int64(block_vecs)))
        for first in range(0, pairs, MAX_GRID_YZ)
    ]

    def launch() -> None:
        for grid, args in launches:
            kernel(grid, (COPY_THREADS,), args)

    return launch


def copy_blocks(key_cache: Any, value_cache: Any, block_mapping: Any) -> None:
    """GPU ``copy_blocks``; conflicting mappings raise ``CopyConflictError`` first."""
    prepare_copy_blocks(key_cache, value_cache, block_mapping)()


# -------------------------------------------------------------- paged_attention
def prepare_paged_attention(
    query: Any,
    key_cache: Any,
    value_cache: Any,
    batch: DecodeBatch,
    scale: float,
    variant: str = "auto",
    partition_size: int | None = None,
    out: Any = None,
    rows: tuple[cp.ndarray, cp.ndarray] | None = None,
) -> Callable[[], cp.ndarray]:
    """Validate everything now (and upload the batch's tables once); return a function
    that launches and returns ``out``.

    ``rows``: int32 device arrays of the batch's table and length shapes, read instead of an
    upload of ``batch``'s, that another kernel fills before each launch (``select_pages``
    does, in :mod:`~tinyserve_sim.gpu.sparse_step`). ``batch`` is then the promise: it is
    validated and planned as usual, and the caller guarantees that every launch finds in
    ``rows`` valid block ids and the same lengths (a selection's lengths are known in
    advance: :func:`~tinyserve_sim.data.select_pages.selected_lengths`).
    """
    _, lens_h = check_paged_attention(query, key_cache, value_cache, batch)
    scale32 = check_scale(scale)
    S, Hq, D = (int(x) for x in query.shape)
    _, block_size, Hkv, _ = (int(x) for x in key_cache.shape)
    dtype = np.dtype(query.dtype)
    plan, variant, partition_size = plan_launch((S, Hq, D), dtype, Hkv, lens_h, variant, partition_size)
    for n, a in (("query", query), ("key_cache", key_cache), ("value_cache", value_cache)):
        _device(a, n)
    out = _check_out(out, (S, Hq, D), dtype)
    if rows is None:
        tables_d, lens_d = _index(batch.block_tables), _index(batch.seq_lens)
    else:
        tables_d = _rows_like(rows[0], batch.block_tables, "rows[0] (the tables)")
        lens_d = _rows_like(rows[1], batch.seq_lens, "rows[1] (the lengths)")
    if S == 0:
        return lambda: out
    if plan.tensor_core_logits:
        require_modelled_tensor_cores()
    module = get_module("paged_attention.cu", paged_attention_names(plan, dtype))
    t = _CTYPE[dtype]
    split = variant == "split_k"
    main = module.get_function(paged_attention_kernel_name(plan, dtype, split))
    # The batch's own arrays: [S, W] and [S] (shared tables) or [S, Hkv, W] and
    # [S, Hkv] (one per KV head); the kernel finds a (sequence, KV head)'s row
    # through the two strides.
    seq_stride, head_stride = (np.int32(x) for x in batch.row_strides(Hkv))
    smem = plan.shared_memory_bytes
    # Allow the kernel its dynamic shared memory, whatever the amount: CUDA's default limit
    # (48 KiB) counts the static arrays too, so a plan of exactly 48 KiB needs the opt-in.
    main.max_dynamic_shared_size_bytes = smem
    max_parts = partition_count(int(lens_h.max()), partition_size) if split else 1
    if split:
        part_out = cp.empty((S, Hq, max_parts, D), dtype=np.float32)
        part_m = cp.empty((S, Hq, max_parts), dtype=np.float32)
        part_l = cp.empty((S, Hq, max_parts), dtype=np.float32)
        reduce = module.get_function(f"paged_attention_reduce_kernel<{t}>")
    else:
        part_out = part_m = part_l = cp.empty((1,), dtype=np.float32)  # unused
    args = (
        out, part_out, part_m, part_l, query, key_cache, value_cache, tables_d, lens_d, scale32,
        np.int32(Hq), np.int32(Hkv), np.int32(D), np.int32(block_size), np.int32(batch.max_blocks),
        seq_stride, head_stride, np.int32(partition_size), np.int32(max_parts),
    )
    grid = plan.grid(S, Hq, Hkv, max_parts)

    def launch() -> cp.ndarray:
        main(grid, (NUM_THREADS,), args, shared_mem=smem)
        if split:
            reduce(
                (Hq, S), (NUM_THREADS,),
                (out, part_out, part_m, part_l, lens_d, np.int32(Hq), np.int32(Hkv), np.int32(D),
                 seq_stride, head_stride, np.int32(partition_size), np.int32(max_parts)),
                shared_mem=4 * (max_parts + 4),  # + 4: slack for vectorised reads of w_s
            )
        return out

    return launch


def paged_attention(
    query: Any,
    key_cache: Any,
    value_cache: Any,
    batch: DecodeBatch,
    scale: float,
    variant: str = "auto",
    partition_size: int | None = None,
    out: Any = None,
) -> cp.ndarray:
    """GPU paged attention (decode), bit-identical to ``tinyserve_sim.data.paged_attention``."""
    return prepare_paged_attention(query, key_cache, value_cache, batch, scale, variant, partition_size, out)()
