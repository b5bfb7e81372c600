"""Operation records and snapshots: what each operation did, and the state it left.

Every operation of :class:`~tinyserve_sim.control.manager.BlockManager` returns a
:class:`OpRecord`. Nothing is hidden: the blocks it allocated, freed, shared,
copied (copy-on-write) and evicted, the prefix-cache hits, the cache slots the
data plane must write, and the pool's counts afterwards. Print it, draw it,
or assert on it::

    record = manager.append("a", 1)
    assert record.copies == ((3, 7),)   # block 3 was shared: copy it into 7 first
    print(record.explain())

A record is a named tuple: ``record._asdict()`` and ``record._replace(...)``
work, and it cannot be changed after the fact.

A :class:`Snapshot` is a frozen, comparable picture of the whole manager. Two
snapshots are equal exactly when the two states are equal, which is how the
tests check that a failed call changed nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import numpy as np

from tinyserve_sim.control.checks import short_repr
from tinyserve_sim.control.operations import OPERATIONS, format_ids
from tinyserve_sim.errors import (
    InvalidArgumentError,
    InvariantError,
    UnknownSequenceError,
)

#: A sequence id: a string or an integer (anything else is rejected).
SeqId = Union[str, int]


class SlotRun:
    """The slots of ``count`` consecutive tokens, kept compact until someone reads them.

    Token ``i`` of the run sits at position ``first + i`` of the blocks
    ``blocks`` (``first`` is the offset of the first token in ``blocks[0]``),
    so its slot is ``blocks[p // block_size] * block_size + p % block_size``.
    The array is built on the first :meth:`to_array` and kept.
    """

    __slots__ = ("blocks", "first", "count", "block_size", "_array")

    def __init__(self, blocks: tuple[int, ...], first: int, count: int, block_size: int) -> None:
        self.blocks = blocks
        self.first = first
        self.count = count
        self.block_size = block_size
        self._array: np.ndarray | None = None

    def to_array(self) -> np.ndarray:
        """The slots as a read-only int64 array."""
        if self._array is None:
            bs = self.block_size
            positions = np.arange(self.first, self.first + self.count, dtype=np.int64)
            array = np.asarray(self.blocks, dtype=np.int64)[positions // bs] * bs + positions % bs
            array.setflags(write=False)
            self._array = array
        return self._array

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SlotRun):
            return NotImplemented
        return self.to_array().tolist() == other.to_array().tolist()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SlotRun(blocks={self.blocks!r}, first={self.first}, count={self.count}, block_size={self.block_size})"


#: What a record keeps of its slots: nothing, one slot, a list of slots, or a run.
Slots = Union[None, int, list, tuple, SlotRun, np.ndarray]


def slot_array(slots: Slots) -> np.ndarray:
    """A record's slots as a read-only int64 array."""
    if isinstance(slots, SlotRun):
        return slots.to_array()
    if slots is None:
        array = np.empty(0, dtype=np.int64)
    elif isinstance(slots, (int, np.integer)):
        array = np.array([slots], dtype=np.int64)
    else:
        array = np.array(slots, dtype=np.int64).reshape(-1)
    array.setflags(write=False)
    return array


class OpRecord(NamedTuple):
    """What one operation did: a named tuple of plain values (immutable).

    Attributes:
        index: 0-based position of this operation in the manager's history.
        op: the operation's name: ``"add"``, ``"append"``, ``"fork"``, ``"free"``,
            ``"evict"``, ``"move"`` or ``"decode"`` (see
            :data:`~tinyserve_sim.control.operations.OPERATIONS`).
        seq_id: the sequence acted on (the child, for a fork; ``None`` for
            evict, move and decode).
        parent_id: the parent, for a fork.
        seq_ids: the batch of a decode, in order (one new token each); ``()`` otherwise.
        num_new_tokens: tokens this operation added (to ``seq_id``, or in all, for a decode).
        allocated: blocks taken from the pool, in allocation order.
        freed: blocks whose reference count reached 0, in release order.
        cached: those of ``freed`` that stay in the prefix cache (reusable until evicted).
        shared: blocks that gained a user: every block of a fork, every prefix-cache hit.
        copies: ``(src, dst)`` block copies the data plane must do *before* writing:
            copy-on-write for ``append`` and ``decode``, relocations for ``move``.
        evicted: cached free blocks whose content was forgotten so they could be reused.
        cache_hits: blocks reused from the prefix cache (a subset of ``shared``).
        cache_misses: full prompt blocks looked up in the prefix cache and not found.
        slots: the cache slots this operation writes, in compact form: one int for
            one token, a list for a decode (``slots[i]`` is ``seq_ids[i]``'s new
            token), a :class:`SlotRun` for a run of tokens. :attr:`slot_mapping`
            is the same as an int64 array.
        num_free: blocks in the free queue afterwards.
        num_cached_free: cached blocks with reference count 0 afterwards (evictable).
        num_used: blocks with reference count > 0 afterwards.
        block_size: the manager's block size: slot ``s`` is offset ``s % block_size``
            of block ``s // block_size``.

    Records are equal when every field is (slots compared as arrays).
    """

    index: int
    op: str
    seq_id: Optional[SeqId] = None
    parent_id: Optional[SeqId] = None
    seq_ids: tuple[SeqId, ...] = ()
    num_new_tokens: int = 0
    allocated: tuple[int, ...] = ()
    freed: tuple[int, ...] = ()
    cached: tuple[int, ...] = ()
    shared: tuple[int, ...] = ()
    copies: tuple[tuple[int, int], ...] = ()
    evicted: tuple[int, ...] = ()
    cache_hits: tuple[int, ...] = ()
    cache_misses: int = 0
    slots: Slots = None
    num_free: int = 0
    num_cached_free: int = 0
    num_used: int = 0
    block_size: int = 0

    @property
    def slot_mapping(self) -> np.ndarray:
        """int64 cache slot of each token this operation writes, in token order (read-only):
        ``table[t // block_size] * block_size + t % block_size``."""
        return slot_array(self.slots)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OpRecord):
            return NotImplemented
        slots = OpRecord._fields.index("slots")
        return (
            self[:slots] == other[:slots]
            and self[slots + 1 :] == other[slots + 1 :]
            and self.slot_mapping.tolist() == other.slot_mapping.tolist()
        )

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # type: ignore[assignment]  # a decode's slots are a list

    def __repr__(self) -> str:
        shown = []
        for name, value in zip(self._fields, self):
            if name == "slots":
                name, value = "slot_mapping", self.slot_mapping.tolist()
            elif name not in _ALWAYS_SHOWN and value == OpRecord._field_defaults.get(name):
                continue
            shown.append(f"{name}={value!r}")
        return f"OpRecord({', '.join(shown)})"

    def explain(self) -> str:
        """One plain-English line describing the operation (used by the demo and the trace viewer).

        The operation's own class (:data:`~tinyserve_sim.control.operations.OPERATIONS`)
        says what it did; this adds the evictions it caused and the pool's counts.
        """
        operation = OPERATIONS.get(self.op) if isinstance(self.op, str) else None
        if operation is None:
            raise InvalidArgumentError(f"no operation is called {short_repr(self.op)}; known: {list(OPERATIONS)}")
        text = operation.explain(self)
        if self.evicted and self.op != "evict":
            text += f"; evicted cached block(s) {format_ids(self.evicted)} to make room"
        return text + f"  [free {self.num_free}, cached {self.num_cached_free}, used {self.num_used}]"


_ALWAYS_SHOWN = ("index", "op", "seq_id", "num_free", "num_cached_free", "num_used")

#: ``new_record(OpRecord, values)``: an ``OpRecord`` from all its values as one tuple,
#: in field order (it is ``tuple.__new__``). ``OpRecord(...)`` with keywords is for
#: people; the manager makes a record for every token it appends and uses this, which
#: costs a fifth as much.
new_record = tuple.__new__


@dataclass(frozen=True)
class SequenceState:
    """One sequence, frozen: its id, token count, block table and full-block hashes."""

    seq_id: SeqId
    num_tokens: int
    block_table: tuple[int, ...]
    block_hashes: tuple[int, ...]
    tail_tokens: tuple[int, ...] | None


@dataclass(frozen=True)
class Snapshot:
    """The manager's whole state, frozen and comparable with ``==``."""

    num_blocks: int
    block_size: int
    policy: str
    prefix_caching: bool
    op_index: int
    ref_counts: tuple[int, ...]
    free_queue: tuple[int, ...]
    evictable: tuple[int, ...]
    cached: tuple[tuple[int, int], ...]  # sorted (block, hash) pairs
    sequences: tuple[SequenceState, ...]
    cache_hits: int
    cache_misses: int
    evictions: int
    evictor: str = "lru"

    def check(self) -> None:
        """Raise :class:`~tinyserve_sim.errors.InvariantError` unless this state is consistent.

        * every block's reference count is the number of table entries pointing at it;
        * the free blocks are exactly the blocks with count 0, each either in the free
          queue or parked in the prefix cache, once;
        * every table has ``ceil(num_tokens / block_size)`` blocks, and cached blocks are full;
        * when a sequence's content is known (prefix caching), each full block is hashed once
          and the tail holds the tokens of the partly filled last block.
        """
        users = Counter(block for seq in self.sequences for block in seq.block_table)
        for block, count in enumerate(self.ref_counts):
            if count != users.get(block, 0):
                raise InvariantError(f"block {block}: ref count {count} but {users.get(block, 0)} table entries")
        free, parked = self.free_queue, self.evictable
        if len(set(free)) != len(free):
            raise InvariantError("a block appears twice in the free queue")
        if set(free) & set(parked):
            raise InvariantError("a block is both in the free queue and parked in the prefix cache")
        idle = {block for block, count in enumerate(self.ref_counts) if count == 0}
        if set(free) | set(parked) != idle or len(free) + len(parked) != len(idle):
            raise InvariantError("the free blocks (queue + cached) are not exactly the blocks with ref count 0")
        cached = dict(self.cached)
        for seq in self.sequences:
            full, partial = divmod(seq.num_tokens, self.block_size)
            if len(seq.block_table) != full + (partial > 0):
                raise InvariantError(
                    f"{seq.seq_id!r}: {len(seq.block_table)} blocks for {seq.num_tokens} tokens "
                    f"(expected {full + (partial > 0)})"
                )
            for i, block in enumerate(seq.block_table):
                if block in cached and seq.num_tokens < (i + 1) * self.block_size:
                    raise InvariantError(f"{seq.seq_id!r}: cached block {block} is not full")
            if seq.tail_tokens is not None and (
                not self.prefix_caching or len(seq.block_hashes) != full or len(seq.tail_tokens) != partial
            ):
                raise InvariantError(
                    f"{seq.seq_id!r}: {len(seq.block_hashes)} block hashes and {len(seq.tail_tokens)} tail tokens "
                    f"for {seq.num_tokens} tokens"
                )

    def table(self, seq_id: SeqId) -> tuple[int, ...]:
        """The block table of one sequence in this snapshot."""
        for seq in self.sequences:
            if type(seq.seq_id) is type(seq_id) and seq.seq_id == seq_id:
                return seq.block_table
        raise UnknownSequenceError(f"unknown sequence {short_repr(seq_id)} in this snapshot")
