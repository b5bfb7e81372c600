"""Host-side checks shared by the NumPy twins and the GPU launchers.

A CUDA kernel trusts its arguments: a wrong shape or an out-of-range block id
becomes an out-of-bounds access, not an exception. So every launcher (and, for
identical behaviour, every twin) calls these checks first. They look only at
``.shape``, ``.dtype`` and ``.flags`` of the big arrays, so they work for NumPy
and CuPy arrays alike; the small index arrays (slot mapping, block tables,
sequence lengths, copy lists) are inspected by value, on the host.

Every failure raises :class:`~tinyserve_sim.errors.KernelInputError` (or its
subclass :class:`~tinyserve_sim.errors.CopyConflictError`) with a message that
names the argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tinyserve_sim.errors import CopyConflictError, KernelInputError

#: Cache element types the kernels are built for.
CACHE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
#: head_dim must be a multiple of this, so that a row is made of 16-byte
#: vectors for float16 (8 elements) and float32 (two 4-element vectors).
HEAD_DIM_MULTIPLE = 8
MAX_HEAD_DIM = 256


def to_host(a: Any) -> np.ndarray:
    """Return a NumPy copy of a NumPy or CuPy array (``.get()`` for CuPy)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get"):
        return a.get()
    return np.asarray(a)


def _check_contiguous(name: str, a: Any) -> None:
    if not a.flags.c_contiguous:
        raise KernelInputError(f"{name} must be C-contiguous (the kernel ignores strides)")


def _check_dtype(name: str, a: Any, allowed: tuple[np.dtype, ...]) -> None:
    if np.dtype(a.dtype) not in allowed:
        names = ", ".join(str(d) for d in allowed)
        raise KernelInputError(f"{name} has dtype {a.dtype}; expected one of: {names}")


def check_caches(key_cache: Any, value_cache: Any) -> tuple[int, int, int, int]:
    """Check a K/V cache pair; return ``(num_blocks, block_size, num_kv_heads, head_dim)``."""
    for name, c in (("key_cache", key_cache), ("value_cache", value_cache)):
        if c.ndim != 4:
            raise KernelInputError(
                f"{name} must have 4 dims [num_blocks, block_size, num_kv_heads, head_dim], "
                f"got shape {tuple(c.shape)}"
            )
        _check_dtype(name, c, CACHE_DTYPES)
        _check_contiguous(name, c)
    if key_cache.shape != value_cache.shape or key_cache.dtype != value_cache.dtype:
        raise KernelInputError(
            f"key_cache {tuple(key_cache.shape)} {key_cache.dtype} and value_cache "
            f"{tuple(value_cache.shape)} {value_cache.dtype} must match"
        )
    num_blocks, block_size, num_kv_heads, head_dim = (int(s) for s in key_cache.shape)
    if min(num_blocks, block_size, num_kv_heads) < 1:
        raise KernelInputError(f"cache shape {tuple(key_cache.shape)} has an empty dimension")
    if head_dim % HEAD_DIM_MULTIPLE or not 0 < head_dim <= MAX_HEAD_DIM:
        raise KernelInputError(
            f"head_dim must be a multiple of {HEAD_DIM_MULTIPLE} in 8..{MAX_HEAD_DIM}, got {head_dim}"
        )
    return num_blocks, block_size, num_kv_heads, head_dim


def check_reshape_and_cache(
    key: Any, value: Any, key_cache: Any, value_cache: Any, slot_mapping: Any
) -> np.ndarray:
    """Check ``reshape_and_cache`` inputs; return the slot mapping on the host (int64)."""
    num_blocks, block_size, num_kv_heads, head_dim = check_caches(key_cache, value_cache)
    for name, a in (("key", key), ("value", value)):
        if a.ndim != 3 or tuple(a.shape[1:]) != (num_kv_heads, head_dim):
            raise KernelInputError(
                f"{name} must have shape [T, {num_kv_heads}, {head_dim}], got {tuple(a.shape)}"
            )
        if a.dtype != key_cache.dtype:
            raise KernelInputError(f"{name} dtype {a.dtype} differs from the cache's {key_cache.dtype}")
        _check_contiguous(name, a)
    if key.shape != value.shape:
        raise KernelInputError(f"key {tuple(key.shape)} and value {tuple(value.shape)} differ")
    _check_dtype("slot_mapping", slot_mapping, (np.dtype(np.int64),))
    slots = to_host(slot_mapping)
    if slots.shape != (key.shape[0],):
        raise KernelInputError(f"slot_mapping must have shape [{key.shape[0]}], got {slots.shape}")
    real = slots[slots >= 0]
    capacity = num_blocks * block_size
    if real.size and int(real.max()) >= capacity:
        raise KernelInputError(f"slot {int(real.max())} is out of range (cache holds {capacity} slots)")
    if np.unique(real).size != real.size:
        raise KernelInputError("slot_mapping writes one slot twice in a single launch")
    return np.ascontiguousarray(slots)


def check_block_mapping(block_mapping: Any, num_blocks: int) -> np.ndarray:
    """Check a ``copy_blocks`` list of ``(src, dst)`` pairs; return it on the host.

    Rejected (``CopyConflictError``): a destination written twice, and a block
    that is both read and written by the same launch (including ``src == dst``),
    because the copies run in parallel, in no particular order.
    """
    _check_dtype("block_mapping", block_mapping, (np.dtype(np.int64),))
    m = to_host(block_mapping)
    if m.ndim != 2 or m.shape[1] != 2:
        raise KernelInputError(f"block_mapping must have shape [P, 2], got {m.shape}")
    if m.size and (int(m.min()) < 0 or int(m.max()) >= num_blocks):
        raise KernelInputError(f"block_mapping has a block id outside 0..{num_blocks - 1}")
    src, dst = m[:, 0], m[:, 1]
    if np.unique(dst).size != dst.size:
        raise CopyConflictError("block_mapping writes the same destination block twice")
    both = np.intersect1d(src, dst)
    if both.size:
        raise CopyConflictError(
            f"block {int(both[0])} is both a source and a destination in one launch"
        )
    return np.ascontiguousarray(m)


def check_paged_attention(
    query: Any,
    key_cache: Any,
    value_cache: Any,
    block_tables: Any,
    seq_lens: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Check paged-attention inputs; return ``(block_tables, seq_lens)`` on the host."""
    num_blocks, block_size, num_kv_heads, head_dim = check_caches(key_cache, value_cache)
    if query.ndim != 3 or query.shape[2] != head_dim:
        raise KernelInputError(f"query must have shape [S, Hq, {head_dim}], got {tuple(query.shape)}")
    if query.dtype != key_cache.dtype:
        raise KernelInputError(f"query dtype {query.dtype} differs from the cache's {key_cache.dtype}")
    _check_contiguous("query", query)
    num_seqs, num_heads = int(query.shape[0]), int(query.shape[1])
    if num_heads < 1 or num_heads % num_kv_heads:
        raise KernelInputError(
            f"num query heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})"
        )
    _check_dtype("block_tables", block_tables, (np.dtype(np.int32),))
    _check_dtype("seq_lens", seq_lens, (np.dtype(np.int32),))
    tables, lens = to_host(block_tables), to_host(seq_lens)
    if tables.ndim != 2 or tables.shape[0] != num_seqs:
        raise KernelInputError(f"block_tables must have shape [{num_seqs}, max_blocks], got {tables.shape}")
    if lens.shape != (num_seqs,):
        raise KernelInputError(f"seq_lens must have shape [{num_seqs}], got {lens.shape}")
    if num_seqs and int(lens.min()) < 1:
        raise KernelInputError("every sequence length must be at least 1")
    capacity = tables.shape[1] * block_size
    if num_seqs and int(lens.max()) > capacity:
        raise KernelInputError(
            f"a sequence of {int(lens.max())} tokens does not fit a table of "
            f"{tables.shape[1]} blocks of {block_size}"
        )
    used = np.arange(tables.shape[1])[None, :] < ((lens[:, None] + block_size - 1) // block_size)
    ids = tables[used]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_blocks):
        raise KernelInputError(f"block_tables uses a block id outside 0..{num_blocks - 1}")
    return np.ascontiguousarray(tables), np.ascontiguousarray(lens)


def check_scale(scale: float) -> np.float32:
    """The softmax scale, as the float32 the kernel receives; must be finite."""
    s = np.float32(scale)
    if not np.isfinite(s):
        raise KernelInputError(f"scale must be finite, got {scale}")
    return s
