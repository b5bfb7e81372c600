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

With ``page_metadata=True`` the cache also keeps, for query-aware selection,
the channel-wise minimum and maximum of the keys of every block and KV head
(:mod:`~tinyserve_sim.data.page_metadata`), and ``apply`` keeps it exact:
blocks freshly taken from the pool are reset to empty, copy-on-write copies
copy it, and every write folds the new keys in (fused into the write, or as
a second kernel: ``metadata_update="fused"`` or ``"separate"``, same bits).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tinyserve_sim.data.backends import Backend, get_backend
from tinyserve_sim.data.validation import check_reshape_and_cache
from tinyserve_sim.errors import KernelInputError

#: How ``reshape_and_cache`` keeps the page metadata up to date.
METADATA_UPDATES = ("fused", "separate")


class KVCache:
    """K and V caches of one layer on a backend ("numpy" or "cupy").

    Args:
        num_blocks, block_size, num_kv_heads, head_dim: the cache shape
            (``head_dim`` a multiple of 8, at most 256).
        dtype: ``np.float16`` (default) or ``np.float32``.
        backend: a backend name or a :class:`~tinyserve_sim.data.backends.Backend`.
        fill: initial value of every element (use the same on two backends
            to compare whole caches).
        page_metadata: also keep ``key_min``/``key_max`` ``[num_blocks, Hkv, D]``
            (every block empty at first: ``+inf``/``-inf``).
        metadata_update: ``"fused"`` (one kernel writes the tokens and updates
            the metadata) or ``"separate"`` (``reshape_and_cache``, then
            ``update_page_metadata``); both give the same bits.
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
        page_metadata: bool = False,
        metadata_update: str = "fused",
    ) -> None:
        if metadata_update not in METADATA_UPDATES:
            raise KernelInputError(f"metadata_update must be one of {METADATA_UPDATES}, got {metadata_update!r}")
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self.block_size = block_size
        self.shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.dtype = np.dtype(dtype)
        self.key_cache = self.backend.full(self.shape, fill, self.dtype)
        self.value_cache = self.backend.full(self.shape, fill, self.dtype)
        self.metadata_update = metadata_update
        #: Page metadata (``None`` unless ``page_metadata=True``).
        self.key_min: Any = None
        self.key_max: Any = None
        if page_metadata:
            meta_shape = (num_blocks, num_kv_heads, head_dim)
            self.key_min = self.backend.full(meta_shape, np.inf, self.dtype)
            self.key_max = self.backend.full(meta_shape, -np.inf, self.dtype)

    @property
    def has_page_metadata(self) -> bool:
        """True when this cache keeps ``key_min``/``key_max``."""
        return self.key_min is not None

    def apply(self, record: Any, keys: np.ndarray | None = None, values: np.ndarray | None = None) -> None:
        """Apply an operation record's data-plane work: ``copy_blocks(record.copies)``, then
        ``reshape_and_cache`` of ``keys``/``values`` ``[T, Hkv, D]`` at ``record.slot_mapping``.

        ``keys``/``values`` may be omitted when the operation writes no token.

        With page metadata, the blocks the record allocated (other than
        copy-on-write destinations, which receive their source's metadata)
        are reset to empty between the copies and the writes. The keys and
        values are checked before anything changes."""
        copies = np.asarray(getattr(record, "copies", ()), dtype=np.int64).reshape(-1, 2)
        slots = np.ascontiguousarray(np.asarray(record.slot_mapping, dtype=np.int64))
        if slots.size:
            if keys is None or values is None:
                raise KernelInputError(f"the operation writes {slots.size} tokens but no keys/values were given")
            b = self.backend
            keys, values = b.asarray(keys), b.asarray(values)
            check_reshape_and_cache(keys, values, self.key_cache, self.value_cache, slots)
        if copies.shape[0]:
            self.copy_blocks(copies)
        if self.has_page_metadata:
            destinations = set(copies[:, 1].tolist())
            fresh = [blk for blk in getattr(record, "allocated", ()) if blk not in destinations]
            if fresh:
                self.backend.reset_page_metadata(np.asarray(fresh, dtype=np.int64), self.key_min, self.key_max)
        if slots.size:
            self.reshape_and_cache(keys, values, slots)

    def reshape_and_cache(self, keys: Any, values: Any, slot_mapping: np.ndarray) -> None:
        """Write ``keys``/``values`` ``[T, Hkv, D]`` at ``slot_mapping`` (int64, -1 = skip)."""
        b = self.backend
        keys, values = b.asarray(keys), b.asarray(values)
        if not self.has_page_metadata:
            b.reshape_and_cache(keys, values, self.key_cache, self.value_cache, slot_mapping)
        elif self.metadata_update == "fused":
            b.reshape_and_cache_with_metadata(
                keys, values, self.key_cache, self.value_cache, slot_mapping, self.key_min, self.key_max
            )
        else:
            check_reshape_and_cache(keys, values, self.key_cache, self.value_cache, slot_mapping)
            b.reshape_and_cache(keys, values, self.key_cache, self.value_cache, slot_mapping)
            b.update_page_metadata(keys, slot_mapping, self.key_min, self.key_max, self.block_size)

    def copy_blocks(self, block_mapping: np.ndarray) -> None:
        """Copy whole blocks, ``block_mapping`` int64 ``[P, 2]`` of ``(src, dst)`` (and their metadata)."""
        mapping = np.asarray(block_mapping, dtype=np.int64)
        self.backend.copy_blocks(self.key_cache, self.value_cache, mapping)
        if self.has_page_metadata:
            self.backend.copy_page_metadata(self.key_min, self.key_max, mapping)

    def page_scores(self, query: Any, batch: Any) -> Any:
        """Each page's score for ``query [S, Hq, D]`` (see ``page_scores``): float32 ``[S, Hkv, W]``."""
        if not self.has_page_metadata:
            raise KernelInputError("this cache keeps no page metadata (create it with page_metadata=True)")
        b = self.backend
        return b.page_scores(b.asarray(query), self.key_min, self.key_max, batch)

    def metadata_to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of ``(key_min, key_max)``."""
        if not self.has_page_metadata:
            raise KernelInputError("this cache keeps no page metadata (create it with page_metadata=True)")
        return self.backend.to_numpy(self.key_min), self.backend.to_numpy(self.key_max)

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
