"""The batch description: what the control plane hands the data plane for one decode step.

After the scheduler has run a step's operations, the attention kernels need to
know, for each sequence of the batch, where its tokens live. That is all a
:class:`DecodeBatch` holds, as the int arrays a kernel reads:

``block_tables``
    int32 ``[S, W]``: row ``s`` lists the physical blocks of sequence ``s`` in
    logical order; entries past ``ceil(seq_lens[s] / block_size)`` are
    :data:`PAD_BLOCK` and are never read. With query-aware selection each KV
    head of a sequence attends to its own pages, and the tables get a head
    axis: int32 ``[S, Hkv, W]``.
``seq_lens``
    int32 ``[S]`` (or ``[S, Hkv]`` with a head axis): the tokens each row attends to.
``slot_mapping``
    int64 ``[T]``: the cache slot of every token written in this step,
    ``table[t // block_size] * block_size + t % block_size``; ``-1`` is padding
    and is skipped.

For example, two sequences in a pool of 4-token blocks::

    >>> from tinyserve_sim import BlockManager
    >>> m = BlockManager(num_blocks=8, block_size=4)
    >>> _ = m.add("a", 6); _ = m.add("b", 3)
    >>> batch = DecodeBatch.from_manager(m)
    >>> batch.block_tables
    array([[ 0,  1],
           [ 2, -1]], dtype=int32)
    >>> batch.seq_lens, batch.slot_mapping      # each sequence's newest token
    (array([6, 3], dtype=int32), array([ 5, 10]))

A batch is immutable (its arrays are read-only copies), so it can be handed to
the NumPy twins and the GPU launchers alike and compared afterwards. Its
constructor checks only the *structure* (dtypes, shapes); whether the block ids
fit a particular cache is checked by the data plane, which knows the cache
(:func:`~tinyserve_sim.data.validation.check_paged_attention`), and by the
exports to real servers' formats (:mod:`~tinyserve_sim.control.formats`).

One design covers both kinds of tables: the kernels read the table of
(sequence ``s``, KV head ``h``) at row ``s * seq_stride + h * head_stride`` of
the flattened tables, with ``(seq_stride, head_stride) = (1, 0)`` for shared
tables and ``(Hkv, 1)`` for per-head ones (:meth:`DecodeBatch.row_strides`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyserve_sim.control.checks import (
    INT64_MAX,
    INT64_MIN,
    check_block_size,
    check_int,
    check_row_ids,
    short_repr,
)
from tinyserve_sim.control.checks import frozen as _frozen
from tinyserve_sim.control.checks import host_array as _host_array
from tinyserve_sim.control.checks import no_slots as _no_slots
from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.control.records import SeqId
from tinyserve_sim.errors import InvalidArgumentError

if TYPE_CHECKING:
    from tinyserve_sim.control.formats import FlashInferBatch, VllmBatch

#: Value of the unused entries of a block table (never read by a kernel).
PAD_BLOCK = -1
#: The range of the int32 arrays (block tables, lengths).
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def int_array(name: str, values: Any, low: int, high: int, dtype: type) -> np.ndarray:
    """``values`` (a list or array of integers) as a 1-D ``dtype`` array, if every value is in
    ``low .. high``; else :class:`InvalidArgumentError` naming ``name``. The range is checked
    before the cast, so nothing is rounded or wraps around (a bool is not an integer here).

    >>> int_array("seq_lens", [2**32 + 1], 1, INT32_MAX, np.int32)
    Traceback (most recent call last):
    ...
    tinyserve_sim.errors.InvalidArgumentError: seq_lens must be in 1..2,147,483,647, got 4,294,967,297
    """
    a = _host_array(name, values)
    if a.ndim != 1:
        raise InvalidArgumentError(f"{name} must be a 1-D list of integers, got {short_repr(values)}")
    if not a.size:
        return a.astype(dtype)
    if a.dtype.kind not in "iu" and not (a.dtype == object and all(_is_integer(v) for v in a)):
        raise InvalidArgumentError(f"{name} must hold integers, got {short_repr(values)}")
    lo, hi = int(a.min()), int(a.max())
    if lo < low or hi > high:
        raise InvalidArgumentError(f"{name} must be in {low:,}..{high:,}, got {lo if lo < low else hi:,}")
    return a.astype(dtype)


def _is_integer(value: object) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def seq_id_list(seq_ids: object) -> list[SeqId]:
    """``seq_ids`` (a list, tuple or other iterable of sequence ids, not a str) as a list."""
    if isinstance(seq_ids, (str, bytes)) or not isinstance(seq_ids, Iterable):
        raise InvalidArgumentError(f"seq_ids must be a list of sequence ids, got {short_repr(seq_ids)}")
    try:
        return list(seq_ids)
    except TypeError:  # iterable in name only (a 0-d NumPy array)
        raise InvalidArgumentError(f"seq_ids must be a list of sequence ids, got {short_repr(seq_ids)}") from None


def check_manager(manager: object) -> BlockManager:
    """``manager`` if it is a :class:`~tinyserve_sim.control.manager.BlockManager`."""
    if not isinstance(manager, BlockManager):
        raise InvalidArgumentError(f"manager must be a BlockManager, got {type(manager).__name__}")
    return manager


def pack_block_tables(tables: Sequence[Sequence[int]], max_blocks: int | None = None) -> np.ndarray:
    """Stack ragged block tables into a C-contiguous int32 ``[S, max_blocks]`` array, padded with -1.

    >>> pack_block_tables([(4, 2), (7,)])
    array([[ 4,  2],
           [ 7, -1]], dtype=int32)
    """
    if isinstance(tables, (str, bytes)) or not isinstance(tables, (Sequence, np.ndarray)):
        raise InvalidArgumentError(f"tables must be a list of block tables (lists of block ids), got {short_repr(tables)}")
    rows = [int_array(f"block table {i}", table, INT32_MIN, INT32_MAX, np.int32) for i, table in enumerate(tables)]
    width = max((row.size for row in rows), default=0)
    max_blocks = max(width, 1) if max_blocks is None else check_int(max_blocks, "max_blocks", 1, INT32_MAX)
    if width > max_blocks:
        raise InvalidArgumentError(f"a block table has {width} entries, more than max_blocks={max_blocks}")
    return _pack_rows(rows, max_blocks)


def _pack_rows(rows: Sequence[Sequence[int]], max_blocks: int) -> np.ndarray:
    """The packing itself, for rows already known to be int32 block ids that fit ``max_blocks``."""
    out = np.full((len(rows), max_blocks), PAD_BLOCK, dtype=np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@dataclass(frozen=True, eq=False)
class DecodeBatch:
    """One decode step's block tables, sequence lengths and slot mapping (see the module doc).

    Build it with :meth:`from_manager` (the usual way), :meth:`from_tables`
    (ragged lists), or the constructor (arrays); the constructor checks shapes
    and dtypes and freezes the arrays.

    Attributes:
        block_size: tokens per block.
        block_tables: int32 ``[S, W]``, or ``[S, Hkv, W]`` with a head axis.
        seq_lens: int32 ``[S]``, or ``[S, Hkv]`` with a head axis.
        slot_mapping: int64 ``[T]``, the slots written in this step (``-1``: padding).
        seq_ids: the sequences, in row order (empty when unknown).
    """

    block_size: int
    block_tables: np.ndarray
    seq_lens: np.ndarray
    slot_mapping: np.ndarray = field(default_factory=_no_slots)
    seq_ids: tuple[SeqId, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_size", check_block_size(self.block_size))
        tables = _host_array("block_tables", self.block_tables)
        lens = _host_array("seq_lens", self.seq_lens)
        slots = _host_array("slot_mapping", self.slot_mapping)
        if tables.dtype != np.int32 or tables.ndim not in (2, 3):
            raise InvalidArgumentError(
                f"block_tables must be int32 [S, W] or [S, Hkv, W], got {tables.dtype} {tables.shape}"
            )
        if tables.ndim == 3 and tables.shape[1] < 1:
            raise InvalidArgumentError(f"per-head block_tables need at least one KV head, got shape {tables.shape}")
        if lens.dtype != np.int32 or lens.shape != tables.shape[:-1]:
            raise InvalidArgumentError(
                f"seq_lens must be int32 of shape {tables.shape[:-1]}, got {lens.dtype} {lens.shape}"
            )
        if slots.dtype != np.int64 or slots.ndim != 1:
            raise InvalidArgumentError(f"slot_mapping must be int64 [T], got {slots.dtype} {slots.shape}")
        ids = check_row_ids(self.seq_ids, tables.shape[0])
        object.__setattr__(self, "block_tables", _frozen(tables))
        object.__setattr__(self, "seq_lens", _frozen(lens))
        object.__setattr__(self, "slot_mapping", _frozen(slots))
        object.__setattr__(self, "seq_ids", ids)

    # ------------------------------------------------------------ building
    @classmethod
    def from_manager(
        cls,
        manager: BlockManager,
        seq_ids: Sequence[SeqId] | None = None,
        slot_mapping: np.ndarray | Sequence[int] | None = None,
    ) -> DecodeBatch:
        """The batch of ``seq_ids`` (default: every live sequence) in ``manager``'s current state.

        ``slot_mapping`` defaults to the slot of each sequence's newest token,
        the one a decode step has just written. Pass a step's
        ``record.slot_mapping`` to describe exactly what that step wrote.
        """
        check_manager(manager)
        ids = manager.seq_ids() if seq_ids is None else seq_id_list(seq_ids)
        tables = [manager.block_table(seq) for seq in ids]  # raises UnknownSequenceError first
        lens = [manager.num_tokens(seq) for seq in ids]
        if slot_mapping is None:
            bs = manager.block_size
            slot_mapping = [table[(n - 1) // bs] * bs + (n - 1) % bs for table, n in zip(tables, lens)]
        return cls(
            manager.block_size,
            _pack_rows(tables, max(1, max(map(len, tables), default=0))),  # a manager's tables need no checks
            np.asarray(lens, dtype=np.int32),
            int_array("slot_mapping", slot_mapping, INT64_MIN, INT64_MAX, np.int64),
            tuple(ids),
        )

    @classmethod
    def from_tables(
        cls,
        tables: Sequence[Sequence[int]],
        seq_lens: Sequence[int],
        block_size: int,
        slot_mapping: Sequence[int] = (),
    ) -> DecodeBatch:
        """A batch from ragged block tables and lengths (no manager needed).

        Checked before anything is cast: block ids and lengths must fit int32
        (lengths from 1), slots int64; a value that would wrap around is refused.

        >>> DecodeBatch.from_tables([[4, 2], [7]], [5, 1], block_size=4).block_tables
        array([[ 4,  2],
               [ 7, -1]], dtype=int32)
        """
        packed = pack_block_tables(tables)
        lens = int_array("seq_lens", seq_lens, 1, INT32_MAX, np.int32)
        if len(lens) != len(packed):
            raise InvalidArgumentError(f"seq_lens must list one length per table ({len(packed)}), got {len(lens)}")
        return cls(block_size, packed, lens, int_array("slot_mapping", slot_mapping, INT64_MIN, INT64_MAX, np.int64))

    def with_head_tables(self, block_tables: np.ndarray, seq_lens: np.ndarray) -> DecodeBatch:
        """The same batch with one table per (sequence, KV head): ``[S, Hkv, W]`` and ``[S, Hkv]``.

        Query-aware selection returns its choice this way: each row lists the
        selected pages of one head, compacted, the newest (partly filled) page last.
        """
        tables = _host_array("block_tables", block_tables)
        if tables.ndim != 3 or tables.shape[0] != self.num_seqs:
            raise InvalidArgumentError(
                f"per-head block_tables must have shape [{self.num_seqs}, Hkv, W], got {tables.shape}"
            )
        return DecodeBatch(self.block_size, tables, seq_lens, self.slot_mapping, self.seq_ids)

    def broadcast_heads(self, num_kv_heads: int) -> DecodeBatch:
        """This batch with a head axis where every KV head gets its sequence's full table.

        The kernels give it exactly the bits of the shared-table batch (a tested property).

        >>> b = DecodeBatch.from_tables([[4, 2]], [5], block_size=4).broadcast_heads(2)
        >>> b.block_tables.shape, b.seq_lens.tolist()
        ((1, 2, 2), [[5, 5]])
        """
        tables, lens = self.head_tables(num_kv_heads)
        return self.with_head_tables(np.ascontiguousarray(tables), np.ascontiguousarray(lens))

    # ------------------------------------------------------------- exports
    def to_vllm(self, **options: Any) -> VllmBatch:
        """vLLM's ``block_tables``/``seq_lens``/``slot_mapping``: :func:`~tinyserve_sim.control.formats.to_vllm`."""
        from tinyserve_sim.control.formats import to_vllm

        return to_vllm(self, **options)

    def to_flashinfer(self) -> FlashInferBatch:
        """FlashInfer's CSR page table: :func:`~tinyserve_sim.control.formats.to_flashinfer`."""
        from tinyserve_sim.control.formats import to_flashinfer

        return to_flashinfer(self)

    # ------------------------------------------------------------- queries
    @property
    def num_seqs(self) -> int:
        return int(self.block_tables.shape[0])

    @property
    def per_head(self) -> bool:
        """True when every KV head of a sequence has its own table."""
        return self.block_tables.ndim == 3

    @property
    def max_blocks(self) -> int:
        """``W``, the width of a table row."""
        return int(self.block_tables.shape[-1])

    def row_strides(self, num_kv_heads: int) -> tuple[int, int]:
        """``(seq_stride, head_stride)``: (sequence ``s``, KV head ``h``) reads table row
        ``s * seq_stride + h * head_stride`` of the tables flattened to ``[rows, W]``
        (and the length at the same index of the flattened lengths).

        >>> DecodeBatch.from_tables([[0]], [1], 4).row_strides(8)
        (1, 0)
        """
        return (num_kv_heads, 1) if self.per_head else (1, 0)

    def blocks_used(self, row: int, head: int | None = None) -> np.ndarray:
        """The blocks row ``row`` (of head ``head`` with a head axis) really uses:
        its first ``ceil(seq_len / block_size)`` table entries."""
        row = check_int(row, "row", 0, self.num_seqs - 1)
        if self.per_head != (head is not None):
            tables = "one table per KV head: name the head" if self.per_head else "one table per sequence: name no head"
            raise InvalidArgumentError(f"the batch has {tables}, got head={short_repr(head)}")
        if head is not None:
            head = check_int(head, "head", 0, self.block_tables.shape[1] - 1)
        table = self.block_tables[row] if head is None else self.block_tables[row, head]
        length = int(self.seq_lens[row] if head is None else self.seq_lens[row, head])
        return table[: -(-length // self.block_size)]

    def head_tables(self, num_kv_heads: int) -> tuple[np.ndarray, np.ndarray]:
        """Tables ``[S, Hkv, W]`` and lengths ``[S, Hkv]`` for every KV head (a read-only broadcast
        when the batch has no head axis: every head reads its sequence's table)."""
        num_kv_heads = check_int(num_kv_heads, "num_kv_heads", 1, INT32_MAX)
        if self.per_head:
            if self.block_tables.shape[1] != num_kv_heads:
                raise InvalidArgumentError(
                    f"the batch has tables for {self.block_tables.shape[1]} KV heads, not {num_kv_heads}"
                )
            return self.block_tables, self.seq_lens
        S, W = self.block_tables.shape
        return (
            np.broadcast_to(self.block_tables[:, None, :], (S, num_kv_heads, W)),
            np.broadcast_to(self.seq_lens[:, None], (S, num_kv_heads)),
        )
