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

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.control.checks import INT64_MAX, check_int, is_real, short_repr
from tinyserve_sim.errors import CopyConflictError, KernelInputError

#: Cache element types the kernels are built for.
CACHE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
#: head_dim must be a multiple of this, so that a row is made of 16-byte
#: vectors for float16 (8 elements) and float32 (two 4-element vectors).
HEAD_DIM_MULTIPLE = 8
MAX_HEAD_DIM = 256


#: Largest split-K partition (tokens): it must fit the kernels' int32 token arithmetic.
MAX_PARTITION_SIZE = 1 << 30


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int if it is a positive Python or NumPy integer (not a bool)."""
    return check_int(value, name, 1, INT64_MAX, KernelInputError)


def check_head_dim(head_dim: int) -> None:
    """``head_dim`` is a multiple of :data:`HEAD_DIM_MULTIPLE` in ``8 .. MAX_HEAD_DIM``."""
    if head_dim % HEAD_DIM_MULTIPLE or not 0 < head_dim <= MAX_HEAD_DIM:
        raise KernelInputError(
            f"head_dim must be a multiple of {HEAD_DIM_MULTIPLE} in 8..{MAX_HEAD_DIM}, got {head_dim}"
        )


def cache_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy dtype, if it is one of :data:`CACHE_DTYPES`."""
    try:
        dt = np.dtype(dtype)
    except TypeError:  # not a dtype at all ("foo", 8.0)
        dt = None
    if dt not in CACHE_DTYPES:
        raise KernelInputError(f"dtype must be float16 or float32, got {short_repr(dtype)}")
    return dt


def index_array(name: str, a: Any, shape_hint: str) -> np.ndarray:
    """A small host index array (int64), from an array or a list of integers.

    Integers only (no floats, no bools), none too large for int64, so nothing is
    rounded or wraps around; ``shape_hint`` (``"[T]"``) completes the message."""
    try:
        arr = np.asarray(a.get() if hasattr(a, "get") else a)
    except Exception:  # noqa: BLE001 - ragged lists, objects: one clear error
        raise KernelInputError(f"{name} must be an integer array {shape_hint}, got {type(a).__name__}") from None
    if arr.size and arr.dtype.kind not in "iu":
        raise KernelInputError(f"{name} must hold integers {shape_hint}, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise KernelInputError(f"{name} holds a value too large for int64")
    return np.ascontiguousarray(arr.astype(np.int64))


def check_array(name: str, a: Any) -> None:
    """``a`` must be an array (NumPy or CuPy): something with a shape, a dtype and flags."""
    if not all(hasattr(a, attr) for attr in ("shape", "dtype", "ndim", "flags")):
        raise KernelInputError(f"{name} must be a NumPy or CuPy array, got {type(a).__name__}")


def check_host_arrays(**arrays: Any) -> None:
    """The NumPy twins compute on the host: every named argument must be a ``numpy.ndarray``."""
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise KernelInputError(
                f"{name} must be a numpy.ndarray (the NumPy twin runs on the host), got {type(a).__name__}"
            )


def check_writable(name: str, a: Any) -> None:
    """An array a kernel writes into must be writable (NumPy's read-only flag)."""
    if not getattr(a.flags, "writeable", True):
        raise KernelInputError(f"{name} is read-only; the kernel writes into it")


def to_host(a: Any) -> np.ndarray:
    """Return a NumPy copy of a NumPy or CuPy array (``.get()`` for CuPy)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get"):
        return a.get()
    return np.asarray(a)


def check_contiguous(name: str, a: Any) -> None:
    """A kernel reads an array as flat memory: it must be C-contiguous."""
    if not a.flags.c_contiguous:
        raise KernelInputError(f"{name} must be C-contiguous (the kernel ignores strides)")


def check_query(query: Any, key_cache: Any, num_kv_heads: int, head_dim: int, rows: str) -> tuple[int, int]:
    """An attention query: ``[rows, Hq, head_dim]`` in the cache's dtype, C-contiguous, with
    ``Hq`` a positive multiple of ``num_kv_heads``. Returns ``(rows, Hq)``; ``rows`` names
    the first axis in messages (``S`` sequences for decode, ``T`` tokens for prefill)."""
    check_array("query", query)
    if query.ndim != 3 or query.shape[2] != head_dim:
        raise KernelInputError(f"query must have shape [{rows}, Hq, {head_dim}], got {tuple(query.shape)}")
    if query.dtype != key_cache.dtype:
        raise KernelInputError(f"query dtype {query.dtype} differs from the cache's {key_cache.dtype}")
    check_contiguous("query", query)
    num_rows, num_heads = int(query.shape[0]), int(query.shape[1])
    if num_heads < 1 or num_heads % num_kv_heads:
        raise KernelInputError(
            f"num query heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})"
        )
    return num_rows, num_heads


def check_batch_kind(batch: Any, kind: type, block_size: int) -> None:
    """``batch`` is a ``kind`` (``DecodeBatch`` or ``PrefillBatch``) whose tables count blocks
    of the cache's ``block_size``."""
    if not isinstance(batch, kind):
        raise KernelInputError(f"batch must be a {kind.__name__} ({kind.__module__}), got {type(batch).__name__}")
    if batch.block_size != block_size:
        raise KernelInputError(
            f"batch: its tables count blocks of {batch.block_size} tokens, the cache's blocks hold {block_size}"
        )


def check_positive_lengths(batch: Any) -> None:
    """Every row of a decode batch holds at least one token (``seq_lens`` ``[S]`` or ``[S, Hkv]``)."""
    lens = batch.seq_lens
    if lens.size and int(lens.min()) < 1:
        where = [int(i) for i in np.unravel_index(int(lens.argmin()), lens.shape)]
        raise KernelInputError(f"batch.seq_lens{where} is {int(lens.min())}: every length must be at least 1")


def check_rows_fit(batch: Any, num_blocks: int) -> None:
    """Every row of a batch's tables holds its sequence: no length exceeds the row's
    ``max_blocks * block_size`` tokens, and every block a row uses (its first
    ``ceil(len / block_size)`` entries) is a block of a cache of ``num_blocks``.
    Works for lengths ``[S]`` and ``[S, Hkv]``; the message names the first culprit."""
    lens, tables, bs = batch.seq_lens, batch.block_tables, batch.block_size
    capacity = batch.max_blocks * bs
    if lens.size and int(lens.max()) > capacity:
        where = [int(i) for i in np.unravel_index(int(lens.argmax()), lens.shape)]
        raise KernelInputError(
            f"batch.seq_lens{where}: a sequence of {int(lens.max())} tokens does not fit a table of "
            f"{batch.max_blocks} blocks of {bs}"
        )
    used = np.arange(batch.max_blocks) < ((lens[..., None].astype(np.int64) + bs - 1) // bs)
    ids = tables[used]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_blocks):
        bad = np.argwhere(used & ((tables < 0) | (tables >= num_blocks)))[0]
        raise KernelInputError(
            f"batch.block_tables{bad.tolist()} = {int(tables[tuple(bad)])} is a block id outside 0..{num_blocks - 1}"
        )


def check_slots(slots: np.ndarray, capacity: int, holder: str) -> None:
    """The valid slots of a slot mapping (``-1`` is padding) lie below ``capacity`` and are
    distinct (two tokens of one launch must not write one slot). ``holder`` says what
    holds the slots, for the message (``"cache holds"``)."""
    real = slots[slots >= 0]
    if real.size and int(real.max()) >= capacity:
        raise KernelInputError(f"slot {int(real.max())} is out of range ({holder} {capacity} slots)")
    if np.unique(real).size != real.size:
        raise KernelInputError("slot_mapping writes one slot twice in a single launch")


def _check_dtype(name: str, a: Any, allowed: tuple[np.dtype, ...]) -> None:
    check_array(name, a)
    try:
        dtype = np.dtype(a.dtype)
    except TypeError:  # a dtype NumPy does not know (another library's)
        dtype = None
    if dtype not in allowed:
        names = ", ".join(str(d) for d in allowed)
        raise KernelInputError(f"{name} has dtype {a.dtype}; expected one of: {names}")


def check_caches(key_cache: Any, value_cache: Any) -> tuple[int, int, int, int]:
    """Check a K/V cache pair; return ``(num_blocks, block_size, num_kv_heads, head_dim)``."""
    for name, c in (("key_cache", key_cache), ("value_cache", value_cache)):
        check_array(name, c)
        if c.ndim != 4:
            raise KernelInputError(
                f"{name} must have 4 dims [num_blocks, block_size, num_kv_heads, head_dim], "
                f"got shape {tuple(c.shape)}"
            )
        _check_dtype(name, c, CACHE_DTYPES)
        check_contiguous(name, c)
    if key_cache.shape != value_cache.shape or key_cache.dtype != value_cache.dtype:
        raise KernelInputError(
            f"key_cache {tuple(key_cache.shape)} {key_cache.dtype} and value_cache "
            f"{tuple(value_cache.shape)} {value_cache.dtype} must match"
        )
    num_blocks, block_size, num_kv_heads, head_dim = (int(s) for s in key_cache.shape)
    if min(num_blocks, block_size, num_kv_heads) < 1:
        raise KernelInputError(f"cache shape {tuple(key_cache.shape)} has an empty dimension")
    check_head_dim(head_dim)
    return num_blocks, block_size, num_kv_heads, head_dim


def check_reshape_and_cache(
    key: Any, value: Any, key_cache: Any, value_cache: Any, slot_mapping: Any
) -> np.ndarray:
    """Check ``reshape_and_cache`` inputs; return the slot mapping on the host (int64)."""
    num_blocks, block_size, num_kv_heads, head_dim = check_caches(key_cache, value_cache)
    for name, a in (("key", key), ("value", value)):
        check_array(name, a)
        if a.ndim != 3 or tuple(a.shape[1:]) != (num_kv_heads, head_dim):
            raise KernelInputError(
                f"{name} must have shape [T, {num_kv_heads}, {head_dim}], got {tuple(a.shape)}"
            )
        if a.dtype != key_cache.dtype:
            raise KernelInputError(f"{name} dtype {a.dtype} differs from the cache's {key_cache.dtype}")
        check_contiguous(name, a)
    if key.shape != value.shape:
        raise KernelInputError(f"key {tuple(key.shape)} and value {tuple(value.shape)} differ")
    _check_dtype("slot_mapping", slot_mapping, (np.dtype(np.int64),))
    slots = to_host(slot_mapping)
    if slots.ndim != 1:
        raise KernelInputError(f"slot_mapping must be 1-D [T], got shape {slots.shape}")
    if slots.shape[0] != key.shape[0]:
        raise KernelInputError(
            f"key and value hold {key.shape[0]} tokens but slot_mapping has {slots.shape[0]} slots"
        )
    check_slots(slots, num_blocks * block_size, "cache holds")
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
    batch: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Check paged-attention inputs; return every KV head's tables ``[S, Hkv, W]`` and
    lengths ``[S, Hkv]`` on the host (read-only broadcasts when the batch shares
    one table per sequence).

    The batch must come from a pool of the cache's block size, hold one row per
    query, and (with a head axis) one table per KV head; every length is at
    least 1 and fits its row; every block a row uses is a block of the cache.
    """
    num_blocks, block_size, num_kv_heads, head_dim = check_caches(key_cache, value_cache)
    num_seqs, _ = check_query(query, key_cache, num_kv_heads, head_dim, "S")
    check_batch_kind(batch, DecodeBatch, block_size)
    if batch.num_seqs != num_seqs:
        raise KernelInputError(f"batch has {batch.num_seqs} sequences but query has {num_seqs} rows")
    if batch.per_head and batch.block_tables.shape[1] != num_kv_heads:
        raise KernelInputError(
            f"batch.block_tables has tables for {batch.block_tables.shape[1]} KV heads, "
            f"the cache has {num_kv_heads}"
        )
    tables, lens = batch.head_tables(num_kv_heads)
    check_positive_lengths(batch)
    check_rows_fit(batch, num_blocks)
    return tables, lens


def check_scale(scale: Any) -> np.float32:
    """The softmax scale, as the float32 the kernel receives; must be a finite real number."""
    if not is_real(scale):
        raise KernelInputError(f"scale must be a real number, got {type(scale).__name__}")
    with np.errstate(over="ignore"):
        s = np.float32(scale)
    if not np.isfinite(s):
        raise KernelInputError(f"scale must be finite as a float32, got {scale}")
    return s


def check_partition_size(partition_size: Any, multiple: int) -> int:
    """A split-K partition: a positive multiple of ``multiple`` tokens, at most :data:`MAX_PARTITION_SIZE`."""
    if (
        isinstance(partition_size, bool)
        or not isinstance(partition_size, (int, np.integer))
        or not multiple <= partition_size <= MAX_PARTITION_SIZE
        or partition_size % multiple
    ):
        raise KernelInputError(
            f"partition_size must be a positive multiple of {multiple} (at most {MAX_PARTITION_SIZE}), "
            f"got {partition_size!r}"
        )
    return int(partition_size)
