"""Real servers' batch tensors: vLLM's block tables and FlashInfer's CSR page table, both ways.

A :class:`~tinyserve_sim.control.batch.DecodeBatch` is the simulator's
description of a decode step. Real serving stacks hand their attention kernels
the same facts in their own shapes:

**vLLM** (:func:`to_vllm`) pads every sequence's table to one width::

    block_tables  int32 [S, max_blocks]   row s: sequence s's blocks, then VLLM_PAD_BLOCK
    seq_lens      int32 [S]
    slot_mapping  int64 [T]               the slot of each token written this step; -1 pads

**FlashInfer** (:func:`to_flashinfer`) concatenates the tables instead
(compressed sparse rows) and stores how full each last page is::

    kv_indptr         int32 [S + 1]   sequence s's pages are kv_indices[kv_indptr[s]:kv_indptr[s+1]]
    kv_indices        int32 [nnz]     every sequence's pages, concatenated
    kv_last_page_len  int32 [S]       tokens in each last page, 1..page_size

so that ``seq_len = (pages - 1) * page_size + kv_last_page_len``. For example::

    >>> from tinyserve_sim import BlockManager
    >>> from tinyserve_sim.control.batch import DecodeBatch
    >>> m = BlockManager(num_blocks=8, block_size=4)
    >>> _ = m.add("a", 6); _ = m.fork("a", "b"); _ = m.append("b", 1)
    >>> batch = DecodeBatch.from_manager(m)
    >>> v = to_vllm(batch)
    >>> v.block_tables, v.seq_lens, v.slot_mapping
    (array([[0, 1],
           [0, 2]], dtype=int32), array([6, 7], dtype=int32), array([ 5, 10]))
    >>> f = to_flashinfer(batch)
    >>> f.kv_indptr, f.kv_indices, f.kv_last_page_len
    (array([0, 2, 4], dtype=int32), array([0, 1, 0, 2], dtype=int32), array([2, 3], dtype=int32))

Going the other way, :func:`from_flashinfer` and :func:`from_vllm` build a
:class:`~tinyserve_sim.control.manager.BlockManager` holding those sequences
(reference counts = how many sequences point at each page), after checking
every array: a malformed table raises
:class:`~tinyserve_sim.errors.PageTableError` naming the field and the
position, and nothing is built.

The caches' layouts (FlashInfer's ``[num_pages, 2, page_size, Hkv, D]``, NHD or
HND) are the data plane's business: :mod:`tinyserve_sim.data.layouts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinyserve_sim.control.batch import DecodeBatch, pack_block_tables
from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.control.records import SeqId
from tinyserve_sim.errors import InvalidArgumentError, PageTableError

#: What fills vLLM's block tables past a sequence's last block. vLLM allocates its
#: block table zero-filled and clears a finished row back to 0 (``vllm/v1/worker/
#: block_table.py``); its v1 KV-cache manager reserves block 0 as a null block, so a
#: stray read lands there. Kernels never read these entries.
VLLM_PAD_BLOCK = 0
#: A padding token's slot (vLLM's ``PAD_SLOT_ID``): ``reshape_and_cache`` skips it.
VLLM_PAD_SLOT = -1
#: The largest id an int32 page table can hold.
_INT32_MAX = int(np.iinfo(np.int32).max)


# ------------------------------------------------------------------- exports
@dataclass(frozen=True, eq=False)
class VllmBatch:
    """A decode batch as vLLM's attention metadata holds it (see the module doc).

    Attributes:
        block_size: tokens per block.
        block_tables: int32 ``[S, max_blocks]``, padded with ``pad_block``.
        seq_lens: int32 ``[S]``.
        slot_mapping: int64 ``[T]``, padded with :data:`VLLM_PAD_SLOT`.
        pad_block: the padding value of ``block_tables``.
    """

    block_size: int
    block_tables: np.ndarray
    seq_lens: np.ndarray
    slot_mapping: np.ndarray
    pad_block: int = VLLM_PAD_BLOCK

    def arrays(self) -> dict[str, np.ndarray]:
        """The three arrays by name (what ``np.savez`` writes)."""
        return {"block_tables": self.block_tables, "seq_lens": self.seq_lens, "slot_mapping": self.slot_mapping}


@dataclass(frozen=True, eq=False)
class FlashInferBatch:
    """A decode batch as FlashInfer's paged-KV wrappers take it (see the module doc).

    Attributes:
        page_size: tokens per page (the simulator's block size).
        kv_indptr: int32 ``[S + 1]``, starting at 0.
        kv_indices: int32 ``[kv_indptr[-1]]``.
        kv_last_page_len: int32 ``[S]``, each in ``1 .. page_size``.
    """

    page_size: int
    kv_indptr: np.ndarray
    kv_indices: np.ndarray
    kv_last_page_len: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """The three arrays by name (what ``np.savez`` writes)."""
        return {"kv_indptr": self.kv_indptr, "kv_indices": self.kv_indices, "kv_last_page_len": self.kv_last_page_len}

    @property
    def seq_lens(self) -> np.ndarray:
        """int32 ``[S]``: ``(pages - 1) * page_size + kv_last_page_len``."""
        pages = np.diff(self.kv_indptr)
        return ((pages - 1) * self.page_size + self.kv_last_page_len).astype(np.int32)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _check_exportable(batch: DecodeBatch, target: str) -> None:
    """A batch a real server's tables can describe: shared tables, real lengths, real block ids."""
    if not isinstance(batch, DecodeBatch):
        raise InvalidArgumentError(f"expected a DecodeBatch, got {type(batch).__name__}")
    if batch.per_head:
        raise InvalidArgumentError(
            f"{target}'s page tables have no KV-head axis: export the batch before query-aware selection"
        )
    for s in range(batch.num_seqs):
        length = int(batch.seq_lens[s])
        if not 1 <= length <= batch.max_blocks * batch.block_size:
            raise InvalidArgumentError(f"batch.seq_lens[{s}] = {length} is not in 1..{batch.max_blocks * batch.block_size}")
        used = batch.blocks_used(s)
        if used.size and int(used.min()) < 0:
            raise InvalidArgumentError(f"batch.block_tables[{s}] has a padding entry among its {used.size} used blocks")


def to_vllm(
    batch: DecodeBatch,
    max_blocks: int | None = None,
    pad_block: int = VLLM_PAD_BLOCK,
    num_tokens: int | None = None,
) -> VllmBatch:
    """vLLM's ``block_tables``, ``seq_lens`` and ``slot_mapping`` for ``batch``.

    Args:
        batch: a batch with one table per sequence.
        max_blocks: the tables' width (default: the widest table; vLLM uses
            ``ceil(max_model_len / block_size)``).
        pad_block: what fills the tables past each sequence's blocks
            (default :data:`VLLM_PAD_BLOCK`, as vLLM; the simulator's own is -1).
        num_tokens: pad ``slot_mapping`` with -1 up to this many tokens (CUDA
            graphs run fixed-size batches).
    """
    _check_exportable(batch, "vLLM")
    tables = pack_block_tables([batch.blocks_used(s) for s in range(batch.num_seqs)], max_blocks)
    tables[tables == -1] = pad_block
    slots = batch.slot_mapping.astype(np.int64)
    if num_tokens is not None:
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < slots.size:
            raise InvalidArgumentError(f"num_tokens must be an int >= the {slots.size} tokens written, got {num_tokens!r}")
        slots = np.concatenate([slots, np.full(num_tokens - slots.size, VLLM_PAD_SLOT, np.int64)])
    slots = np.where(slots < 0, VLLM_PAD_SLOT, slots)
    return VllmBatch(batch.block_size, _readonly(tables), _readonly(batch.seq_lens.copy()), _readonly(slots), pad_block)


def to_flashinfer(batch: DecodeBatch) -> FlashInferBatch:
    """FlashInfer's CSR page table (``kv_indptr``, ``kv_indices``, ``kv_last_page_len``) for ``batch``."""
    _check_exportable(batch, "FlashInfer")
    pages = [batch.blocks_used(s) for s in range(batch.num_seqs)]
    indptr = np.zeros(batch.num_seqs + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(p) for p in pages])
    if indptr[-1] > _INT32_MAX:
        raise InvalidArgumentError(f"{indptr[-1]} pages in all do not fit FlashInfer's int32 kv_indptr")
    indices = np.concatenate(pages).astype(np.int32) if pages else np.empty(0, np.int32)
    # The last page holds the rest: a full last page holds page_size tokens, never 0.
    last = (batch.seq_lens.astype(np.int64) - 1) % batch.block_size + 1
    return FlashInferBatch(
        batch.block_size, _readonly(indptr.astype(np.int32)), _readonly(indices), _readonly(last.astype(np.int32))
    )


# ------------------------------------------------------------------- imports
def _int_vector(field: str, a: Any) -> np.ndarray:
    """A 1-D integer array (from a list, NumPy or anything with ``.get()``), as int64."""
    try:
        arr = np.asarray(a.get() if hasattr(a, "get") else a)
    except Exception:  # noqa: BLE001 - ragged, objects: one clear error
        raise PageTableError(f"{field} must be a 1-D integer array, got {type(a).__name__}", field) from None
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise PageTableError(f"{field} must be a 1-D integer array, got {arr.dtype} {arr.shape}", field)
    return arr.astype(np.int64)


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _seq_ids(seq_ids: Sequence[SeqId] | None, count: int) -> list[SeqId]:
    if seq_ids is None:
        return list(range(count))
    try:
        ids = list(seq_ids)
        unique = len(set(ids)) == count
    except TypeError:  # not iterable, or an unhashable id
        unique = False
        ids = []
    if len(ids) != count or not unique:
        raise InvalidArgumentError(f"seq_ids must name each of the {count} sequences once, got {seq_ids!r}")
    return ids


def _build(
    tables: list[list[int]], lens: list[int], block_size: int, num_blocks: int,
    seq_ids: Sequence[SeqId] | None, policy: str,
) -> BlockManager:
    ids = _seq_ids(seq_ids, len(tables))
    return BlockManager.from_block_tables(
        num_blocks, block_size, {seq: (table, n) for seq, table, n in zip(ids, tables, lens)}, policy=policy
    )


def from_flashinfer(
    kv_indptr: Any,
    kv_indices: Any,
    kv_last_page_len: Any,
    page_size: int,
    num_pages: int,
    seq_lens: Any = None,
    seq_ids: Sequence[SeqId] | None = None,
    policy: str = "fifo",
) -> BlockManager:
    """A block manager holding the sequences of a FlashInfer CSR page table.

    ``num_pages`` is the size of the page pool (the manager's ``num_blocks``).
    ``seq_lens``, if given, must agree with the page counts and last-page
    lengths. Sequences get the ids ``seq_ids`` (default ``0 .. S-1``).

    Raises:
        PageTableError: ``kv_indptr`` not starting at 0, decreasing, or not
            ending at ``len(kv_indices)``; a sequence without pages; a page id
            outside ``0 .. num_pages-1`` or repeated within a sequence; a
            last-page length outside ``1 .. page_size``; a ``seq_lens`` entry
            that contradicts the page count. Its ``field`` and ``index`` say
            where; nothing is built.

    >>> m = from_flashinfer([0, 2, 3], [5, 1, 5], [3, 4], page_size=4, num_pages=8)
    >>> [(m.block_table(s), m.num_tokens(s)) for s in m.seq_ids()], m.pool.ref_count(5)
    ([((5, 1), 7), ((5,), 4)], 2)
    """
    page_size = _positive("page_size", page_size)
    num_pages = _positive("num_pages", num_pages)
    indptr = _int_vector("kv_indptr", kv_indptr)
    indices = _int_vector("kv_indices", kv_indices)
    last = _int_vector("kv_last_page_len", kv_last_page_len)
    if indptr.size == 0:
        raise PageTableError("kv_indptr is empty: it has S + 1 entries, starting with 0", "kv_indptr")
    if indptr[0] != 0:
        raise PageTableError(f"kv_indptr[0] is {indptr[0]}, not 0", "kv_indptr", 0)
    drops = np.flatnonzero(np.diff(indptr) < 0)
    if drops.size:
        i = int(drops[0]) + 1
        raise PageTableError(f"kv_indptr is not monotone: kv_indptr[{i}] = {indptr[i]} < kv_indptr[{i - 1}] = {indptr[i - 1]}", "kv_indptr", i)
    S = indptr.size - 1
    if indptr[-1] != indices.size:
        raise PageTableError(f"kv_indptr[{S}] = {indptr[-1]} but kv_indices has {indices.size} entries", "kv_indptr", S)
    if last.size != S:
        raise PageTableError(f"kv_last_page_len has {last.size} entries for {S} sequences", "kv_last_page_len")
    outside = np.flatnonzero((indices < 0) | (indices >= num_pages))
    if outside.size:
        j = int(outside[0])
        raise PageTableError(f"kv_indices[{j}] = {indices[j]} is outside 0..{num_pages - 1}", "kv_indices", j)
    bad_last = np.flatnonzero((last < 1) | (last > page_size))
    if bad_last.size:
        i = int(bad_last[0])
        raise PageTableError(f"kv_last_page_len[{i}] = {last[i]} is outside 1..{page_size}", "kv_last_page_len", i)
    tables: list[list[int]] = []
    for s in range(S):
        a, b = int(indptr[s]), int(indptr[s + 1])
        if a == b:
            raise PageTableError(
                f"sequence {s} has no page (kv_indptr[{s}] = kv_indptr[{s + 1}] = {a}) but kv_last_page_len[{s}] = {last[s]}",
                "kv_indptr", s + 1,
            )
        pages = indices[a:b].tolist()
        seen: set[int] = set()
        for j, page in enumerate(pages):
            if page in seen:
                raise PageTableError(f"kv_indices[{a + j}] = {page} repeats a page of sequence {s}", "kv_indices", a + j)
            seen.add(page)
        tables.append(pages)
    lens = [(len(t) - 1) * page_size + int(n) for t, n in zip(tables, last)]
    if seq_lens is not None:
        given = _int_vector("seq_lens", seq_lens)
        if given.size != S:
            raise PageTableError(f"seq_lens has {given.size} entries for {S} sequences", "seq_lens")
        for s in range(S):
            if given[s] != lens[s]:
                raise PageTableError(
                    f"seq_lens[{s}] = {given[s]} contradicts the page table: {len(tables[s])} pages with "
                    f"{last[s]} tokens in the last make {lens[s]}",
                    "seq_lens", s,
                )
    return _build(tables, lens, page_size, num_pages, seq_ids, policy)


def from_vllm(
    block_tables: Any,
    seq_lens: Any,
    block_size: int,
    num_blocks: int,
    seq_ids: Sequence[SeqId] | None = None,
    policy: str = "fifo",
) -> BlockManager:
    """A block manager holding the sequences of vLLM-style padded block tables.

    Row ``s`` uses its first ``ceil(seq_lens[s] / block_size)`` entries; the
    rest is padding, whatever its value.

    Raises:
        PageTableError: a table that is not 2-D integer, a length outside
            ``1 .. max_blocks * block_size``, a used entry outside
            ``0 .. num_blocks-1`` or repeated in its row; ``field`` and
            ``index`` say where; nothing is built.
    """
    block_size = _positive("block_size", block_size)
    num_blocks = _positive("num_blocks", num_blocks)
    try:
        tables = np.asarray(block_tables.get() if hasattr(block_tables, "get") else block_tables)
    except Exception:  # noqa: BLE001
        raise PageTableError(f"block_tables must be a 2-D integer array, got {type(block_tables).__name__}", "block_tables") from None
    if tables.ndim != 2 or (tables.size and tables.dtype.kind not in "iu"):
        raise PageTableError(f"block_tables must be a 2-D integer array, got {tables.dtype} {tables.shape}", "block_tables")
    lens = _int_vector("seq_lens", seq_lens)
    if lens.size != tables.shape[0]:
        raise PageTableError(f"seq_lens has {lens.size} entries for {tables.shape[0]} table rows", "seq_lens")
    width = tables.shape[1]
    rows: list[list[int]] = []
    for s in range(tables.shape[0]):
        if not 1 <= lens[s] <= width * block_size:
            raise PageTableError(f"seq_lens[{s}] = {lens[s]} is not in 1..{width * block_size}", "seq_lens", s)
        used = tables[s, : -(-int(lens[s]) // block_size)].astype(np.int64).tolist()
        seen: set[int] = set()
        for j, block in enumerate(used):
            if not 0 <= block < num_blocks:
                raise PageTableError(f"block_tables[{s}, {j}] = {block} is outside 0..{num_blocks - 1}", "block_tables", (s, j))
            if block in seen:
                raise PageTableError(f"block_tables[{s}, {j}] = {block} repeats a block of row {s}", "block_tables", (s, j))
            seen.add(block)
        rows.append(used)
    return _build(rows, [int(n) for n in lens], block_size, num_blocks, seq_ids, policy)
