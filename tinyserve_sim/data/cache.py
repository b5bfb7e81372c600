"""The KV cache: two big arrays on a backend, and the data-plane work of an operation.

Layout (NHD, as vLLM's flash backend and FlashInfer)::

    key_cache[num_blocks, block_size, num_kv_heads, head_dim]
    value_cache[...same...]

    block b ─┬─ offset 0:  [head 0: D values][head 1: D values]...[head H-1]
             ├─ offset 1:  [head 0][head 1]...
             └─ offset block_size-1
    slot = b * block_size + offset  (one token's keys for every head, contiguous)

The control plane (:class:`~tinyserve_sim.control.manager.BlockManager`) decides
*where* tokens go and emits a :class:`~tinyserve_sim.control.records.OpRecord`. The data
plane applies it, in the order a server must: first the copy-on-write block
copies (``record.copies``, so that a forked sequence's shared last block is
duplicated before anyone writes into it), then the new tokens' keys and values
through ``record.slot_mapping``. :meth:`KVCache.apply` does exactly that,
on whichever backend the cache lives.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tinyserve_sim.data.backends import Backend, get_backend
from tinyserve_sim.errors import KernelInputError


class KVCache:
    """K and V caches of one layer on a backend ("numpy" or "cupy").

    Args:
        num_blocks, block_size, num_kv_heads, head_dim: the cache shape
            (``head_dim`` a multiple of 8, at most 256).
        dtype: ``np.float16`` (default) or ``np.float32``.
        backend: a backend name or a :class:`~tinyserve_sim.data.backends.Backend`.
        fill: initial value of every element (use the same on two backends
            to compare whole caches).
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: type | np.dtype = np.float16,
        backend: str | Backend = "numpy",
        fill: float = 0.0,
    ) -> None:
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self.block_size = block_size
        self.shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.dtype = np.dtype(dtype)
        self.key_cache = self.backend.full(self.shape, fill, self.dtype)
        self.value_cache = self.backend.full(self.shape, fill, self.dtype)

    def apply(self, record: Any, keys: np.ndarray | None = None, values: np.ndarray | None = None) -> None:
        """Apply an operation record's data-plane work: ``copy_blocks(record.copies)``, then
        ``reshape_and_cache`` of ``keys``/``values`` ``[T, Hkv, D]`` at ``record.slot_mapping``.

        ``keys``/``values`` may be omitted when the operation writes no token."""
        copies = np.asarray(getattr(record, "copies", ()), dtype=np.int64).reshape(-1, 2)
        if copies.shape[0]:
            self.copy_blocks(copies)
        slots = np.ascontiguousarray(np.asarray(record.slot_mapping, dtype=np.int64))
        if slots.size:
            if keys is None or values is None:
                raise KernelInputError(f"the operation writes {slots.size} tokens but no keys/values were given")
            self.reshape_and_cache(keys, values, slots)

    def reshape_and_cache(self, keys: Any, values: Any, slot_mapping: np.ndarray) -> None:
        """Write ``keys``/``values`` ``[T, Hkv, D]`` at ``slot_mapping`` (int64, -1 = skip)."""
        b = self.backend
        b.reshape_and_cache(b.asarray(keys), b.asarray(values), self.key_cache, self.value_cache, slot_mapping)

    def copy_blocks(self, block_mapping: np.ndarray) -> None:
        """Copy whole blocks, ``block_mapping`` int64 ``[P, 2]`` of ``(src, dst)``."""
        self.backend.copy_blocks(self.key_cache, self.value_cache, np.asarray(block_mapping, dtype=np.int64))

    def attention(
        self,
        query: Any,
        block_tables: np.ndarray,
        seq_lens: np.ndarray,
        scale: float | None = None,
        variant: str = "auto",
        partition_size: int = 1024,
    ) -> Any:
        """Decode attention of ``query [S, Hq, D]`` over this cache (see ``paged_attention``).
        ``scale`` defaults to ``1 / sqrt(head_dim)``."""
        if scale is None:
            scale = 1.0 / float(np.sqrt(self.shape[3]))
        b = self.backend
        return b.paged_attention(
            b.asarray(query), self.key_cache, self.value_cache,
            block_tables, seq_lens, scale, variant=variant, partition_size=partition_size,
        )

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of ``(key_cache, value_cache)``."""
        return self.backend.to_numpy(self.key_cache), self.backend.to_numpy(self.value_cache)
