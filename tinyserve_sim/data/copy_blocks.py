"""``copy_blocks``: many whole-block copies in one launch (copy-on-write).

When two sequences share a physical block (after ``fork``, or prefix
caching) and one of them must write into it, the block manager gives the
writer a fresh block and records a ``(src, dst)`` copy. A server gathers all
copies of a step into one ``block_mapping`` of shape ``[P, 2]`` (int64) and
applies them before writing the new tokens::

    key_cache[dst] = key_cache[src]      value_cache[dst] = value_cache[src]
    (a whole [block_size, num_kv_heads, head_dim] block each)

On the GPU the P copies run at the same time, in no fixed order. So a launch
must not write one destination twice, nor read a block that the same launch
writes (its result would depend on timing). Both are rejected up front with
:class:`~tinyserve_sim.errors.CopyConflictError`, by the twin too, so that the
two backends accept exactly the same inputs.
"""

from __future__ import annotations

import numpy as np

from tinyserve_sim.data.validation import check_block_mapping, check_caches, check_host_arrays, check_writable


def copy_blocks(key_cache: np.ndarray, value_cache: np.ndarray, block_mapping: np.ndarray) -> None:
    """Copy block ``src`` to block ``dst`` in both caches, for every row of ``block_mapping``.

    Raises:
        KernelInputError: bad types/shapes/dtypes, read-only caches, block id out of range.
        CopyConflictError: a destination written twice, or a block both read and written.
    """
    check_host_arrays(key_cache=key_cache, value_cache=value_cache, block_mapping=block_mapping)
    num_blocks = check_caches(key_cache, value_cache)[0]
    m = check_block_mapping(block_mapping, num_blocks)
    check_writable("key_cache", key_cache)
    check_writable("value_cache", value_cache)
    if m.shape[0] == 0:
        return
    # Fancy indexing on the right makes a copy first, like the GPU reading
    # every source before any destination changes (they never overlap anyway).
    key_cache[m[:, 1]] = key_cache[m[:, 0]]
    value_cache[m[:, 1]] = value_cache[m[:, 0]]
