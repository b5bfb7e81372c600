"""Page metadata: the channel-wise minimum and maximum of the keys in each block.

Query-aware selection (Quest, Tang et al., ICML 2024) decides which pages of
the cache a query needs *without reading their keys*. It reads a small summary
of each page instead: for every physical block ``b`` and KV head ``h``, the
smallest and the largest value each key channel ``d`` takes over the tokens
stored there::

    key_min[b, h, d] = min over the block's tokens t of key_cache[b, t, h, d]
    key_max[b, h, d] = max over ...

    block b, head h           key_min[b, h]    key_max[b, h]
     token 0: [ 0.5 -1.0  2.0]
     token 1: [-0.3  0.2  1.0]   [-0.3 -1.0 1.0]  [0.5 0.2 2.0]
     token 2: [ 0.1  0.0  1.5]

With 16-token pages the summary is 2 rows per 16, an eighth of the keys (a
sixteenth of keys and values together). :mod:`~tinyserve_sim.data.page_scores`
turns it into an upper bound on ``q . k`` for every page.

The metadata arrays are ``[num_blocks, num_kv_heads, head_dim]``, in the
cache's dtype: a minimum is one of the values, so no rounding is involved and
both backends hold the very same bits. Two details make that exact:

* An **empty** block has ``key_min = +inf`` and ``key_max = -inf`` (the
  neutral elements of min and max), which is what :func:`reset_page_metadata`
  writes when a block is (re)allocated.
* ``min(-0.0, +0.0)`` is not fixed by IEEE 754 (NumPy and CUDA may return
  either), so a zero result is always stored as ``+0.0``. NaN keys are
  ignored (``fmin``/``fmax`` semantics).

Keeping it up to date is the data plane's job, on every write
(:meth:`tinyserve_sim.data.cache.KVCache.apply` does all three):

1. a block taken from the pool is reset (:func:`reset_page_metadata`);
2. a copy-on-write copy copies its metadata too (:func:`copy_page_metadata`);
3. every token written folds its key into its block's metadata
   (:func:`update_page_metadata`, or fused with the write itself in
   :func:`reshape_and_cache_with_metadata`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tinyserve_sim.data.reshape_and_cache import reshape_and_cache
from tinyserve_sim.data.selection_checks import (
    check_block_list,
    check_metadata_matches_cache,
    check_page_metadata,
    check_update_page_metadata,
)
from tinyserve_sim.data.validation import (
    cache_dtype,
    check_block_mapping,
    check_head_dim,
    check_host_arrays,
    check_reshape_and_cache,
    check_writable,
    index_array,
    positive_int,
)
from tinyserve_sim.errors import KernelInputError


def empty_page_metadata(
    num_blocks: int, num_kv_heads: int, head_dim: int, dtype: type | np.dtype = np.float16
) -> tuple[np.ndarray, np.ndarray]:
    """New host metadata for a cache where every block is empty: ``(+inf..., -inf...)``.

    The arguments follow the cache's rules (:class:`~tinyserve_sim.data.cache.KVCache`):
    positive integers, ``head_dim`` a multiple of 8 up to 256, float16 or float32;
    anything else is a :class:`~tinyserve_sim.errors.KernelInputError`.

    >>> key_min, key_max = empty_page_metadata(2, 1, 8)
    >>> key_min[0, 0, :3], key_max[0, 0, :3]
    (array([inf, inf, inf], dtype=float16), array([-inf, -inf, -inf], dtype=float16))
    """
    shape = (
        positive_int("num_blocks", num_blocks),
        positive_int("num_kv_heads", num_kv_heads),
        positive_int("head_dim", head_dim),
    )
    check_head_dim(shape[2])
    dt = cache_dtype(dtype)
    try:
        return np.full(shape, np.inf, dtype=dt), np.full(shape, -np.inf, dtype=dt)
    except (MemoryError, ValueError) as exc:
        raise KernelInputError(f"page metadata of shape {shape} cannot be allocated: {exc}") from None


def _check_writable_metadata(key_min: np.ndarray, key_max: np.ndarray) -> None:
    """The twins write the metadata in place: it must be writable."""
    check_writable("key_min", key_min)
    check_writable("key_max", key_max)


def _positive_zero(a: np.ndarray) -> np.ndarray:
    """``a`` with every zero written as ``+0.0`` (in place; returns ``a``)."""
    a[a == 0] = 0
    return a


def reset_page_metadata(blocks: np.ndarray, key_min: np.ndarray, key_max: np.ndarray) -> None:
    """Mark ``blocks`` (int64 ``[B]``, repeats allowed) empty: ``key_min = +inf``, ``key_max = -inf``.

    Called for every block freshly taken from the pool, before tokens are
    written into it: whatever it held before belongs to a sequence that is gone.

    Raises:
        KernelInputError: not NumPy arrays, bad metadata shape/dtype, read-only
            metadata, a block id out of range.
    """
    check_host_arrays(blocks=blocks, key_min=key_min, key_max=key_max)
    num_blocks = check_page_metadata(key_min, key_max)[0]
    b = check_block_list(blocks, num_blocks)
    _check_writable_metadata(key_min, key_max)
    key_min[b] = np.inf
    key_max[b] = -np.inf


def update_page_metadata(
    key: np.ndarray, slot_mapping: np.ndarray, key_min: np.ndarray, key_max: np.ndarray, block_size: int
) -> None:
    """Fold the keys written at ``slot_mapping`` into their blocks' minimum and maximum, in place.

    Args:
        key: ``[T, num_kv_heads, head_dim]``, the keys that
            :func:`~tinyserve_sim.data.reshape_and_cache.reshape_and_cache` writes.
        slot_mapping: int64 ``[T]``; token ``t`` lands in block
            ``slot_mapping[t] // block_size``; a negative slot is padding (skipped).
        key_min, key_max: ``[num_blocks, num_kv_heads, head_dim]``, the key's dtype.
        block_size: tokens per block (the metadata itself does not record it).

    The GPU kernel gives each touched block one thread block, which folds that
    block's tokens in slot-mapping order; min and max are exact, so any order
    gives the same values (zeros are stored as ``+0.0``, see the module doc).

    Raises:
        KernelInputError: not NumPy arrays, shapes/dtypes, read-only metadata, a slot
            out of range or written twice.
    """
    check_host_arrays(key=key, slot_mapping=slot_mapping, key_min=key_min, key_max=key_max)
    slots, block_size = check_update_page_metadata(key, slot_mapping, key_min, key_max, block_size)
    _check_writable_metadata(key_min, key_max)
    keep = slots >= 0
    if not keep.any():
        return
    blocks = slots[keep] // block_size
    # ufunc.at is unbuffered: a block that receives several tokens folds every one.
    np.fmin.at(key_min, blocks, key[keep])
    np.fmax.at(key_max, blocks, key[keep])
    touched = np.unique(blocks)
    key_min[touched] = _positive_zero(key_min[touched])
    key_max[touched] = _positive_zero(key_max[touched])


def copy_page_metadata(key_min: np.ndarray, key_max: np.ndarray, block_mapping: np.ndarray) -> None:
    """``key_min[dst] = key_min[src]`` (and ``key_max``) for every ``(src, dst)`` row of ``block_mapping``.

    The companion of :func:`~tinyserve_sim.data.copy_blocks.copy_blocks`: a
    copy-on-write copy duplicates the block's keys, so its summary is the same.
    Same mapping rules (int64 ``[P, 2]``, no destination twice, no block both
    read and written: :class:`~tinyserve_sim.errors.CopyConflictError`).
    On the GPU it is the very ``copy_blocks`` kernel, run on the metadata arrays.
    """
    check_host_arrays(key_min=key_min, key_max=key_max, block_mapping=block_mapping)
    num_blocks = check_page_metadata(key_min, key_max)[0]
    m = check_block_mapping(block_mapping, num_blocks)
    _check_writable_metadata(key_min, key_max)
    if m.shape[0]:
        key_min[m[:, 1]] = key_min[m[:, 0]]
        key_max[m[:, 1]] = key_max[m[:, 0]]


def reshape_and_cache_with_metadata(
    key: np.ndarray,
    value: np.ndarray,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    slot_mapping: np.ndarray,
    key_min: np.ndarray,
    key_max: np.ndarray,
) -> None:
    """``reshape_and_cache`` and ``update_page_metadata`` in one kernel (the fused variant).

    The fused GPU kernel reads each new key once, for both the write and the
    metadata; the twin simply does the two steps (the results are exact, so
    the order cannot matter). Every input is checked before anything changes.
    """
    check_host_arrays(key=key, value=value, key_cache=key_cache, value_cache=value_cache,
                      slot_mapping=slot_mapping, key_min=key_min, key_max=key_max)
    slots = check_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    check_metadata_matches_cache(key_min, key_cache)
    check_update_page_metadata(key, slots, key_min, key_max, int(key_cache.shape[1]))
    check_writable("key_cache", key_cache)
    check_writable("value_cache", value_cache)
    _check_writable_metadata(key_min, key_max)
    reshape_and_cache(key, value, key_cache, value_cache, slots)
    update_page_metadata(key, slots, key_min, key_max, int(key_cache.shape[1]))


def page_metadata_from_cache(key_cache: np.ndarray, block_fill: Any) -> tuple[np.ndarray, np.ndarray]:
    """The metadata recomputed from scratch: min and max over the first ``block_fill[b]`` tokens of
    every block ``b`` (``+inf``/``-inf`` where ``block_fill[b] == 0``).

    Not a kernel: the definition the incremental updates must agree with (the
    tests compare the two after random traces), and a way to inspect a cache.

    Raises:
        KernelInputError: ``key_cache`` is not a ``[num_blocks, block_size, Hkv, D]``
            host cache, or ``block_fill`` is not ``num_blocks`` integers in ``0..block_size``.

    >>> kc = np.zeros((1, 2, 1, 8), np.float32)           # one block of two tokens
    >>> kc[0, :, 0, :2] = [[1.0, -2.0], [3.0, 0.5]]
    >>> key_min, key_max = page_metadata_from_cache(kc, [2])
    >>> key_min[0, 0, :2], key_max[0, 0, :2]
    (array([ 1., -2.], dtype=float32), array([3. , 0.5], dtype=float32))
    """
    check_host_arrays(key_cache=key_cache)
    if key_cache.ndim != 4:
        raise KernelInputError(
            f"key_cache must have 4 dims [num_blocks, block_size, num_kv_heads, head_dim], got shape {key_cache.shape}"
        )
    num_blocks, block_size, num_kv_heads, head_dim = key_cache.shape
    key_min, key_max = empty_page_metadata(num_blocks, num_kv_heads, head_dim, key_cache.dtype)
    fill = index_array("block_fill", block_fill, f"[{num_blocks}]")
    if fill.shape != (num_blocks,):
        raise KernelInputError(f"block_fill must hold one token count per block ({num_blocks}), got {fill.size}")
    if fill.size and not 0 <= int(fill.min()) <= int(fill.max()) <= block_size:
        bad = int(fill.min()) if fill.min() < 0 else int(fill.max())
        raise KernelInputError(f"block_fill must be in 0..{block_size} (tokens per block), got {bad}")
    for b in range(num_blocks):
        n = int(fill[b])
        if n:
            # Folded into the empty summary, so that a channel of NaN keys stays +-inf.
            key_min[b] = _positive_zero(np.fmin(key_min[b], np.fmin.reduce(key_cache[b, :n], axis=0)))
            key_max[b] = _positive_zero(np.fmax(key_max[b], np.fmax.reduce(key_cache[b, :n], axis=0)))
    return key_min, key_max
