"""``reshape_and_cache``: write the new tokens' keys and values into the paged cache.

Every decode or prefill step produces, for each new token, a key and a value
per KV head: arrays ``key`` and ``value`` of shape ``[T, num_kv_heads,
head_dim]``. The block manager has already decided where each token lives: its
*slot*, ``slot = block_id * block_size + offset``, given as ``slot_mapping[T]``.
This kernel scatters row ``t`` of ``key``/``value`` to that slot::

    key[t]  (num_kv_heads x head_dim, contiguous)
        |
        v   slot = slot_mapping[t];  block, offset = divmod(slot, block_size)
    key_cache[block, offset, :, :]     (the same num_kv_heads x head_dim row)

In the NHD layout ``[num_blocks, block_size, num_kv_heads, head_dim]`` a slot
is one contiguous row of ``num_kv_heads * head_dim`` elements, so viewing the
cache as ``[num_blocks * block_size, num_kv_heads, head_dim]`` makes the write
a plain indexed assignment. A negative slot marks a padding token: skipped.

It is a pure copy, so bit-exactness is automatic; the GPU version
(``gpu/kernels/reshape_and_cache.cu``) moves 16-byte vectors.
"""

from __future__ import annotations

import numpy as np

from tinyserve_sim.data.validation import check_host_arrays, check_reshape_and_cache, check_writable


def reshape_and_cache(
    key: np.ndarray,
    value: np.ndarray,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    slot_mapping: np.ndarray,
) -> None:
    """Write ``key``/``value`` rows into ``key_cache``/``value_cache`` in place.

    Args:
        key, value: ``[T, num_kv_heads, head_dim]``, the caches' dtype.
        key_cache, value_cache: ``[num_blocks, block_size, num_kv_heads, head_dim]``.
        slot_mapping: int64 ``[T]``; ``-1`` (any negative) skips the token.

    Raises:
        KernelInputError: wrong type/shape/dtype/layout, read-only caches, slot out of
            range, a slot written twice; named, before anything is written.
    """
    check_host_arrays(key=key, value=value, key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping)
    slots = check_reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    check_writable("key_cache", key_cache)
    check_writable("value_cache", value_cache)
    _, _, num_kv_heads, head_dim = key_cache.shape
    keep = slots >= 0
    # A reshape of a C-contiguous array is a view: writing it writes the cache.
    key_cache.reshape(-1, num_kv_heads, head_dim)[slots[keep]] = key[keep]
    value_cache.reshape(-1, num_kv_heads, head_dim)[slots[keep]] = value[keep]
