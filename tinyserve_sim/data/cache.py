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

A prefill step (many new tokens per sequence: a prompt, the rest of one after a
prefix-cache hit, a chunk) is :meth:`KVCache.prefill`: the same two steps for the
step's records, then causal attention of the new tokens over their sequences'
blocks, cached prefix included (:mod:`~tinyserve_sim.data.paged_prefill_attention`),
and a :class:`~tinyserve_sim.data.prefill_step.PrefillStep` that says what was
computed and what the prefix cache saved.

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

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.control.checks import is_real
from tinyserve_sim.control.prefill_batch import PrefillBatch
from tinyserve_sim.data.backends import Backend, get_backend
from tinyserve_sim.data.prefill_checks import check_paged_prefill_attention
from tinyserve_sim.data.prefill_step import PrefillStep, prefill_work
from tinyserve_sim.data.selection_checks import check_block_list
from tinyserve_sim.data.validation import (
    cache_dtype,
    check_block_mapping,
    check_head_dim,
    check_reshape_and_cache,
    check_scale,
    index_array,
    positive_int,
)
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

    Raises:
        KernelInputError: an impossible shape, dtype or fill, or a cache too
            large to allocate; named, before anything is allocated.
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
        shape = (
            positive_int("num_blocks", num_blocks),
            positive_int("block_size", block_size),
            positive_int("num_kv_heads", num_kv_heads),
            positive_int("head_dim", head_dim),
        )
        check_head_dim(shape[3])
        dt = cache_dtype(dtype)
        if not is_real(fill):
            raise KernelInputError(f"fill must be a real number, got {type(fill).__name__}")
        nbytes = 2 * int(np.prod(shape, dtype=object)) * dt.itemsize
        if metadata_update not in METADATA_UPDATES:
            raise KernelInputError(f"metadata_update must be one of {METADATA_UPDATES}, got {metadata_update!r}")
        if isinstance(backend, str):
            backend = get_backend(backend)  # BackendUnavailableError names what is missing
        elif not isinstance(backend, Backend):
            raise KernelInputError(f"backend must be 'numpy', 'cupy' or a Backend, got {type(backend).__name__}")
        self.backend = backend
        self.block_size = shape[1]
        self.shape = shape
        self.dtype = dt
        try:
            self.key_cache = self.backend.full(self.shape, fill, self.dtype)
            self.value_cache = self.backend.full(self.shape, fill, self.dtype)
        except (MemoryError, ValueError, OverflowError) as exc:
            raise KernelInputError(
                f"a cache of shape {shape} ({nbytes / 2**30:.3g} GiB for K and V) cannot be allocated: {exc}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - e.g. cupy's OutOfMemoryError
            if "memory" not in type(exc).__name__.lower():
                raise
            raise KernelInputError(
                f"a cache of shape {shape} ({nbytes / 2**30:.3g} GiB for K and V) does not fit the device: {exc}"
            ) from None
        self.metadata_update = metadata_update
        #: Page metadata (``None`` unless ``page_metadata=True``).
        self.key_min: Any = None
        self.key_max: Any = None
        if page_metadata:
            meta_shape = (shape[0], shape[2], shape[3])
            self.key_min = self.backend.full(meta_shape, np.inf, self.dtype)
            self.key_max = self.backend.full(meta_shape, -np.inf, self.dtype)

    @property
    def has_page_metadata(self) -> bool:
        """True when this cache keeps ``key_min``/``key_max``."""
        return self.key_min is not None

    def apply(self, record: Any, keys: Any = None, values: Any = None) -> None:
        """Apply an operation record's data-plane work: ``copy_blocks(record.copies)``, then
        ``reshape_and_cache`` of ``keys``/``values`` ``[T, Hkv, D]`` at ``record.slot_mapping``.

        ``keys``/``values`` may be omitted when the operation writes no token.
        Everything is checked before the first copy, so a refused call changes nothing.

        With page metadata, the blocks the record allocated (other than
        copy-on-write destinations, which receive their source's metadata)
        are reset to empty between the copies and the writes."""
        copies, allocated, slots = self._record_parts(record)
        if slots.size:
            if keys is None or values is None:
                raise KernelInputError(f"the operation writes {slots.size} tokens but no keys/values were given")
            keys, values = self._on_backend("keys", keys), self._on_backend("values", values)
            # Check the writes before the copies run: a refused call must change nothing.
            check_reshape_and_cache(keys, values, self.key_cache, self.value_cache, slots)
        if copies.shape[0]:
            self.copy_blocks(copies)
        if self.has_page_metadata:
            destinations = set(copies[:, 1].tolist())
            fresh = [blk for blk in allocated.tolist() if blk not in destinations]
            if fresh:
                self.backend.reset_page_metadata(np.asarray(fresh, dtype=np.int64), self.key_min, self.key_max)
        if slots.size:
            self.reshape_and_cache(keys, values, slots)

    def _record_parts(self, record: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A record's ``copies`` ``[P, 2]``, ``allocated`` ``[B]`` and ``slot_mapping`` ``[T]``
        as int64 host arrays, each checked against this cache (block ids in range, no copy
        conflict). Writes nothing: :meth:`apply` calls it before its first write."""
        if not hasattr(record, "slot_mapping"):
            raise KernelInputError(f"record must be an OpRecord (with copies and a slot_mapping), got {type(record).__name__}")
        copies = index_array("record.copies", getattr(record, "copies", ()), "[P, 2]")
        if copies.size == 0:
            copies = copies.reshape(0, 2)
        if copies.ndim != 2 or copies.shape[1] != 2:
            raise KernelInputError(f"record.copies must be (src, dst) pairs, got shape {copies.shape}")
        try:
            check_block_mapping(copies, self.shape[0])
        except KernelInputError as exc:  # the same error (CopyConflictError stays one), naming the record
            raise type(exc)(f"record.copies: {exc}") from None
        allocated = index_array("record.allocated", getattr(record, "allocated", ()), "[B]")
        check_block_list(allocated, self.shape[0], "record.allocated")
        slots = index_array("record.slot_mapping", record.slot_mapping, "[T]")
        return copies, allocated, slots

    def _on_backend(self, name: str, a: Any) -> Any:
        try:
            return self.backend.asarray(a)
        except Exception:  # noqa: BLE001 - ragged lists, objects: one clear error
            raise KernelInputError(f"{name} must be an array [T, Hkv, D], got {type(a).__name__}") from None

    def reshape_and_cache(self, keys: Any, values: Any, slot_mapping: Any) -> None:
        """Write ``keys``/``values`` ``[T, Hkv, D]`` at ``slot_mapping`` (integers, negative = skip),
        and fold the keys into the page metadata if the cache keeps it."""
        b = self.backend
        slots = index_array("slot_mapping", slot_mapping, "[T]")
        keys, values = self._on_backend("keys", keys), self._on_backend("values", values)
        if not self.has_page_metadata:
            b.reshape_and_cache(keys, values, self.key_cache, self.value_cache, slots)
        elif self.metadata_update == "fused":
            b.reshape_and_cache_with_metadata(keys, values, self.key_cache, self.value_cache, slots, self.key_min, self.key_max)
        else:
            check_reshape_and_cache(keys, values, self.key_cache, self.value_cache, slots)
            b.reshape_and_cache(keys, values, self.key_cache, self.value_cache, slots)
            b.update_page_metadata(keys, slots, self.key_min, self.key_max, self.block_size)

    def copy_blocks(self, block_mapping: Any) -> None:
        """Copy whole blocks, ``block_mapping`` ``[P, 2]`` of ``(src, dst)`` integers (and their metadata)."""
        mapping = index_array("block_mapping", block_mapping, "[P, 2]")
        self.backend.copy_blocks(self.key_cache, self.value_cache, mapping)
        if self.has_page_metadata:
            self.backend.copy_page_metadata(self.key_min, self.key_max, mapping)

    def page_scores(self, query: Any, batch: Any) -> Any:
        """Each page's score for ``query [S, Hq, D]`` (see ``page_scores``): float32 ``[S, Hkv, W]``."""
        if not self.has_page_metadata:
            raise KernelInputError("this cache keeps no page metadata (create it with page_metadata=True)")
        return self.backend.page_scores(self._on_backend("query", query), self.key_min, self.key_max, batch)

    def metadata_to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of ``(key_min, key_max)``."""
        if not self.has_page_metadata:
            raise KernelInputError("this cache keeps no page metadata (create it with page_metadata=True)")
        return self.backend.to_numpy(self.key_min), self.backend.to_numpy(self.key_max)

    def attention(
        self,
        query: Any,
        batch: DecodeBatch,
        scale: float | None = None,
        variant: str = "auto",
        partition_size: int | None = None,
    ) -> Any:
        """Decode attention of ``query [S, Hq, D]`` over this cache, for the sequences
        of ``batch`` (see ``paged_attention``). ``scale`` defaults to ``1 / sqrt(head_dim)``."""
        if scale is None:
            scale = 1.0 / float(np.sqrt(self.shape[3]))
        b = self.backend
        return b.paged_attention(
            self._on_backend("query", query), self.key_cache, self.value_cache,
            batch, scale, variant=variant, partition_size=partition_size,
        )

    def prefill_attention(self, query: Any, batch: PrefillBatch, scale: float | None = None) -> Any:
        """Causal attention of a prefill step's new tokens ``query [T, Hq, D]`` over this cache
        (see ``paged_prefill_attention``); their keys and values must already be written.
        ``scale`` defaults to ``1 / sqrt(head_dim)``."""
        if scale is None:
            scale = 1.0 / float(np.sqrt(self.shape[3]))
        return self.backend.paged_prefill_attention(
            self._on_backend("query", query), self.key_cache, self.value_cache, batch, scale
        )

    def prefill(
        self,
        records: Any,
        batch: PrefillBatch,
        query: Any,
        keys: Any,
        values: Any,
        scale: float | None = None,
    ) -> PrefillStep:
        """One prefill step, as a server runs it: apply the step's records (their
        copy-on-write copies, then the new tokens' ``keys``/``values`` ``[T, Hkv, D]``),
        then compute the new tokens' attention over their sequences' blocks, cached
        prefix included.

        Args:
            records: the step's ``add``/``append`` record (or a list of them), in
                the batch's order; their slot mappings, concatenated, are the batch's.
            batch: the step's :class:`~tinyserve_sim.control.prefill_batch.PrefillBatch`
                (``PrefillBatch.from_records(manager, records)``).
            query: ``[T, Hq, D]``, the new tokens' queries, packed in the batch's order.
            keys, values: ``[T, Hkv, D]``, the new tokens' keys and values.
            scale: softmax scale, ``1 / sqrt(head_dim)`` by default.

        Returns:
            A :class:`~tinyserve_sim.data.prefill_step.PrefillStep`: the output
            ``[T, Hq, D]`` and, per sequence, the tokens read from the cache
            (and from the prefix cache) and the attention work done and saved.

        Raises:
            KernelInputError: a record, the batch or an array does not fit; checked
                before the first write, so a refused call changes nothing.
        """
        # One record, or several (an OpRecord is itself a named tuple: test for the record first).
        recs = [records] if hasattr(records, "slot_mapping") else list(records) if isinstance(records, (list, tuple)) else [records]
        for rec in recs:
            if not hasattr(rec, "slot_mapping"):
                raise KernelInputError(f"records must be OpRecords, got {type(rec).__name__}")
        slots = [index_array("record.slot_mapping", rec.slot_mapping, "[T]") for rec in recs]
        all_slots = np.concatenate(slots) if slots else np.empty(0, np.int64)
        if not isinstance(batch, PrefillBatch):
            raise KernelInputError(f"batch must be a PrefillBatch, got {type(batch).__name__}")
        if not np.array_equal(all_slots, batch.slot_mapping):
            raise KernelInputError(
                "the records' slot mappings, concatenated, differ from batch.slot_mapping "
                "(build the batch with PrefillBatch.from_records(manager, records))"
            )
        keys, values = self._on_backend("keys", keys), self._on_backend("values", values)
        query = self._on_backend("query", query)
        # Every check before the first write: the writes, the attention's inputs, the copies.
        check_reshape_and_cache(keys, values, self.key_cache, self.value_cache, all_slots)
        check_paged_prefill_attention(query, self.key_cache, self.value_cache, batch)
        check_scale(1.0 if scale is None else scale)
        for rec in recs:
            self._record_parts(rec)  # copies and allocated blocks
        start = 0
        for rec, s in zip(recs, slots):
            part = slice(start, start + s.size)
            self.apply(rec, keys[part], values[part])
            start += s.size
        output = self.prefill_attention(query, batch, scale)
        return PrefillStep(output, prefill_work(recs, batch), int(query.shape[1]), self.shape[3])

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of ``(key_cache, value_cache)``."""
        return self.backend.to_numpy(self.key_cache), self.backend.to_numpy(self.value_cache)
