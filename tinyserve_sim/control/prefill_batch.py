"""The prefill batch: what the control plane hands the data plane for a step that computes
*many* new tokens per sequence (a prompt, or a chunk of one).

A decode step computes one token per sequence (:class:`~tinyserve_sim.control.batch.DecodeBatch`).
A prefill step computes a run of new tokens per sequence, packed one after the
other into a single query tensor ``[T, Hq, D]``: sequence ``s`` owns query rows
``query_start_loc[s] .. query_start_loc[s + 1] - 1`` (vLLM's ``query_start_loc``,
FlashInfer's ``qo_indptr``, FlashAttention's ``cu_seqlens_q``). Those tokens are
the *last* ``query_lens[s]`` of the sequence's ``seq_lens[s]`` tokens; the
``prefix_lens[s] = seq_lens[s] - query_lens[s]`` tokens before them are already
in the cache (a prefix-cache hit, or the earlier chunks of a chunked prefill)
and are only *read*. Query token ``i`` of sequence ``s`` sits at position
``prefix_lens[s] + i`` and attends to keys ``0 .. prefix_lens[s] + i`` (causal).

``block_tables``
    int32 ``[S, W]``: the physical blocks of each sequence, in logical order,
    padded with :data:`~tinyserve_sim.control.batch.PAD_BLOCK`.
``seq_lens``
    int32 ``[S]``: tokens of each sequence *after* this step (prefix + new).
``query_start_loc``
    int32 ``[S + 1]``: where each sequence's new tokens start in the packed
    query; ``query_start_loc[0] == 0`` and ``query_start_loc[-1] == T``.
``slot_mapping``
    int64 ``[T]``: the cache slot each new token's key and value are written to
    (empty when unknown).

Built from a manager right after an ``add`` that hit the prefix cache
(4-token blocks; the first two blocks of ``b``'s prompt were cached by ``a``)::

    >>> from tinyserve_sim import BlockManager
    >>> m = BlockManager(num_blocks=8, block_size=4, prefix_caching=True)
    >>> _ = m.add("a", list(range(10)))
    >>> step = m.add("b", list(range(8)) + [42, 43, 44])
    >>> batch = PrefillBatch.from_records(m, [step])
    >>> batch.seq_lens, batch.query_start_loc, batch.prefix_lens
    (array([11], dtype=int32), array([0, 3], dtype=int32), array([8], dtype=int32))
    >>> batch.positions()                  # the three new tokens' positions
    array([ 8,  9, 10])

Like a decode batch it is immutable (its arrays are read-only copies), and its
constructor checks the *structure* only; whether the block ids fit a cache is
checked by the data plane, which knows the cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyserve_sim.control.batch import (
    INT32_MAX,
    DecodeBatch,
    check_manager,
    int_array,
    pack_block_tables,
    seq_id_list,
)
from tinyserve_sim.control.checks import (
    INT64_MAX,
    INT64_MIN,
    check_block_size,
    check_row_ids,
)
from tinyserve_sim.control.checks import frozen as _frozen
from tinyserve_sim.control.checks import host_array as _host_array
from tinyserve_sim.control.checks import no_slots as _no_slots
from tinyserve_sim.control.records import OpRecord, SeqId
from tinyserve_sim.errors import InvalidArgumentError

if TYPE_CHECKING:
    from tinyserve_sim.control.manager import BlockManager



def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidArgumentError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


@dataclass(frozen=True, eq=False)
class PrefillBatch:
    """One prefill step's block tables, total lengths, query offsets and slot mapping (module doc).

    Build it with :meth:`from_records` (right after the manager's ``add`` or
    ``append`` calls of the step), :meth:`from_manager` (say how many new
    tokens each sequence has), :meth:`from_tables` (ragged lists), or the
    constructor (arrays), which checks shapes, dtypes and the offsets, and
    freezes the arrays.

    Attributes:
        block_size: tokens per block.
        block_tables: int32 ``[S, W]``.
        seq_lens: int32 ``[S]``, each at least 1: tokens after the step.
        query_start_loc: int32 ``[S + 1]``, from 0, non-decreasing; sequence
            ``s`` has ``query_start_loc[s + 1] - query_start_loc[s]`` new
            tokens, at most ``seq_lens[s]``.
        slot_mapping: int64 ``[T]`` (or empty): where the new tokens are written.
        seq_ids: the sequences, in row order (empty when unknown).
    """

    block_size: int
    block_tables: np.ndarray
    seq_lens: np.ndarray
    query_start_loc: np.ndarray
    slot_mapping: np.ndarray = field(default_factory=_no_slots)
    seq_ids: tuple[SeqId, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_size", check_block_size(self.block_size))
        tables = _host_array("block_tables", self.block_tables)
        lens = _host_array("seq_lens", self.seq_lens)
        starts = _host_array("query_start_loc", self.query_start_loc)
        slots = _host_array("slot_mapping", self.slot_mapping)
        if tables.dtype != np.int32 or tables.ndim != 2:
            raise InvalidArgumentError(f"block_tables must be int32 [S, W], got {tables.dtype} {tables.shape}")
        S = tables.shape[0]
        if lens.dtype != np.int32 or lens.shape != (S,):
            raise InvalidArgumentError(f"seq_lens must be int32 of shape ({S},), got {lens.dtype} {lens.shape}")
        if starts.dtype != np.int32 or starts.shape != (S + 1,):
            raise InvalidArgumentError(
                f"query_start_loc must be int32 of shape ({S + 1},), got {starts.dtype} {starts.shape}"
            )
        if starts[0] != 0 or (S and bool((np.diff(starts) < 0).any())):
            raise InvalidArgumentError(f"query_start_loc must start at 0 and never decrease, got {starts.tolist()[:8]}")
        if S and int(lens.min()) < 1:
            raise InvalidArgumentError(f"seq_lens[{int(lens.argmin())}] is {int(lens.min())}: every length must be at least 1")
        query_lens = np.diff(starts.astype(np.int64))
        over = np.flatnonzero(query_lens > lens)
        if over.size:
            s = int(over[0])
            raise InvalidArgumentError(
                f"sequence {s} has {int(query_lens[s])} new tokens but only {int(lens[s])} tokens in all"
            )
        if slots.dtype != np.int64 or slots.ndim != 1 or slots.size not in (0, int(starts[-1])):
            raise InvalidArgumentError(
                f"slot_mapping must be int64 [{int(starts[-1])}] (one slot per new token) or empty, "
                f"got {slots.dtype} {slots.shape}"
            )
        ids = check_row_ids(self.seq_ids, S)
        object.__setattr__(self, "block_tables", _frozen(tables))
        object.__setattr__(self, "seq_lens", _frozen(lens))
        object.__setattr__(self, "query_start_loc", _frozen(starts))
        object.__setattr__(self, "slot_mapping", _frozen(slots))
        object.__setattr__(self, "seq_ids", ids)

    # ------------------------------------------------------------ building
    @classmethod
    def from_tables(
        cls,
        tables: Sequence[Sequence[int]],
        seq_lens: Sequence[int],
        query_lens: Sequence[int],
        block_size: int,
        slot_mapping: Sequence[int] = (),
    ) -> PrefillBatch:
        """A batch from ragged block tables, total lengths and new-token counts (no manager).

        >>> b = PrefillBatch.from_tables([[4, 2], [7]], seq_lens=[6, 3], query_lens=[2, 3], block_size=4)
        >>> b.query_start_loc, b.prefix_lens
        (array([0, 2, 5], dtype=int32), array([4, 0], dtype=int32))
        """
        packed = pack_block_tables(tables)
        lens = int_array("seq_lens", seq_lens, 1, INT32_MAX, np.int32)
        qlens = int_array("query_lens", query_lens, 0, INT32_MAX, np.int64)
        for name, a in (("seq_lens", lens), ("query_lens", qlens)):
            if len(a) != len(packed):
                raise InvalidArgumentError(f"{name} must list one integer per table ({len(packed)}), got {len(a)}")
        starts = np.zeros(len(packed) + 1, dtype=np.int64)
        starts[1:] = np.cumsum(qlens)
        if starts[-1] > INT32_MAX:
            raise InvalidArgumentError(f"the query_lens add up to {int(starts[-1]):,} tokens, more than int32 holds")
        slots = int_array("slot_mapping", slot_mapping, INT64_MIN, INT64_MAX, np.int64)
        return cls(block_size, packed, lens, starts.astype(np.int32), slots)

    @classmethod
    def from_manager(
        cls,
        manager: BlockManager,
        query_lens: Mapping[SeqId, int] | None = None,
        seq_ids: Sequence[SeqId] | None = None,
    ) -> PrefillBatch:
        """The batch of ``seq_ids`` (default: the keys of ``query_lens``, else every live
        sequence) in ``manager``'s current state, whose last ``query_lens[seq]`` tokens
        are the ones to compute (default: all of them, a prefill without any prefix).

        >>> from tinyserve_sim import BlockManager
        >>> m = BlockManager(num_blocks=8, block_size=4)
        >>> _ = m.add("a", 6)
        >>> PrefillBatch.from_manager(m, {"a": 2}).slot_mapping      # tokens 4 and 5
        array([4, 5])
        """
        check_manager(manager)
        if query_lens is not None and not isinstance(query_lens, Mapping):
            raise InvalidArgumentError(f"query_lens must map a seq id to a token count, got {type(query_lens).__name__}")
        if seq_ids is not None:
            ids = seq_id_list(seq_ids)
        elif query_lens is not None:
            ids = list(query_lens)
        else:
            ids = manager.seq_ids()
        tables = [manager.block_table(seq) for seq in ids]  # raises UnknownSequenceError first (an unhashable id too)
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError("a sequence appears twice in one prefill batch")
        lens = [manager.num_tokens(seq) for seq in ids]
        qlens = []
        for seq, n in zip(ids, lens):
            q = n if query_lens is None or seq not in query_lens else _count(f"query_lens[{seq!r}]", query_lens[seq])
            if q > n:
                raise InvalidArgumentError(f"{seq!r} has {n} tokens; {q} of them cannot be new")
            qlens.append(q)
        slots = [manager.slot_mapping(seq, n - q, n) for seq, n, q in zip(ids, lens, qlens)]
        batch = cls.from_tables(
            tables, lens, qlens, manager.block_size,
            np.concatenate(slots) if slots else _no_slots(),
        )
        return cls(batch.block_size, batch.block_tables, batch.seq_lens, batch.query_start_loc, batch.slot_mapping, tuple(ids))

    @classmethod
    def from_records(cls, manager: BlockManager, records: Sequence[OpRecord]) -> PrefillBatch:
        """The batch that computes what ``records`` wrote: one row per record, in order.

        Each record is an ``add`` or an ``append`` of a different live sequence,
        and ``manager`` is in the state right after them (no later operation on
        those sequences): the tokens to compute are exactly the tokens the record
        writes (``record.slot_mapping``). For an ``add`` that hit the prefix cache
        those are the prompt tokens *after* the cached blocks; for an ``append``
        (the next chunk of a chunked prefill) all of its tokens.
        """
        # One record or several (an OpRecord is itself a named tuple: test for the record first).
        if isinstance(records, OpRecord):
            recs = [records]
        elif isinstance(records, (list, tuple)):
            recs = list(records)
        else:
            raise InvalidArgumentError(f"records must be an OpRecord or a list of them, got {type(records).__name__}")
        query_lens: dict[SeqId, int] = {}
        for rec in recs:
            if not isinstance(rec, OpRecord):
                raise InvalidArgumentError(f"records must be OpRecords, got {type(rec).__name__}")
            if rec.op not in ("add", "append"):
                raise InvalidArgumentError(
                    f"a prefill batch is built from add or append records, got {rec.op!r}"
                )
            if rec.seq_id in query_lens:
                raise InvalidArgumentError(f"two records of {rec.seq_id!r} in one prefill batch")
            query_lens[rec.seq_id] = int(np.asarray(rec.slot_mapping).size)
        batch = cls.from_manager(manager, query_lens)
        # The manager must still be where the records left it: same slots for the same tokens.
        for rec, (a, b) in zip(recs, zip(batch.query_start_loc[:-1], batch.query_start_loc[1:])):
            if not np.array_equal(np.asarray(rec.slot_mapping), batch.slot_mapping[a:b]):
                raise InvalidArgumentError(
                    f"record {rec.index} ({rec.op} {rec.seq_id!r}) no longer matches the manager's state "
                    "(build the batch right after the step's operations)"
                )
        return batch

    # ------------------------------------------------------------- queries
    @property
    def num_seqs(self) -> int:
        return int(self.block_tables.shape[0])

    @property
    def num_query_tokens(self) -> int:
        """``T``: new tokens of all sequences together (rows of the packed query)."""
        return int(self.query_start_loc[-1])

    @property
    def max_blocks(self) -> int:
        """``W``, the width of a table row."""
        return int(self.block_tables.shape[1])

    @property
    def query_lens(self) -> np.ndarray:
        """int32 ``[S]``: new tokens of each sequence."""
        return np.diff(self.query_start_loc).astype(np.int32)

    @property
    def prefix_lens(self) -> np.ndarray:
        """int32 ``[S]``: tokens already in the cache before this step (read, not computed)."""
        return (self.seq_lens - self.query_lens).astype(np.int32)

    def seq_index(self) -> np.ndarray:
        """int64 ``[T]``: the sequence (row) of each new token."""
        return np.repeat(np.arange(self.num_seqs), self.query_lens)

    def positions(self) -> np.ndarray:
        """int64 ``[T]``: each new token's position in its sequence (it sees keys ``0 .. position``)."""
        seq = self.seq_index()
        offset = np.arange(self.num_query_tokens) - self.query_start_loc[seq]
        return (self.prefix_lens[seq] + offset).astype(np.int64)

    def causal_pairs(self) -> np.ndarray:
        """int64 ``[S]``: (query token, key token) pairs each sequence's attention computes, per
        query head: ``sum over its new tokens of (position + 1)``."""
        q = self.query_lens.astype(np.int64)
        p = self.prefix_lens.astype(np.int64)
        return q * p + q * (q + 1) // 2

    def as_decode_batch(self) -> DecodeBatch:
        """The same tables and total lengths as a :class:`DecodeBatch` (for the exports to
        real servers' page tables, and to run decode attention on the same state)."""
        return DecodeBatch(self.block_size, self.block_tables, self.seq_lens, seq_ids=self.seq_ids)
