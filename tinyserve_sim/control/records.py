"""Operation records and snapshots: what each operation did, and the state it left.

Every operation of :class:`~tinyserve_sim.control.manager.BlockManager` returns a
:class:`OpRecord`. Nothing is hidden: the blocks it allocated, freed, shared,
copied (copy-on-write) and evicted, the prefix-cache hits, the cache slots the
data plane must write, and the pool's counts afterwards. Print it, draw it,
or assert on it::

    record = manager.append("a", 1)
    assert record.copies == ((3, 7),)   # block 3 was shared: copy it into 7 first
    print(record.explain())

A :class:`Snapshot` is a frozen, comparable picture of the whole manager. Two
snapshots are equal exactly when the two states are equal, which is how the
tests check that a failed call changed nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Union

import numpy as np

from tinyserve_sim.control.checks import short_repr
from tinyserve_sim.control.operations import OPERATIONS, format_ids
from tinyserve_sim.errors import UnknownSequenceError

#: A sequence id: a string or an integer (anything else is rejected).
SeqId = Union[str, int]


class SlotRun(NamedTuple):
    """The slots of ``count`` consecutive tokens, kept compact until someone reads them.

    Token ``i`` of the run sits at position ``first + i`` of the blocks
    ``blocks`` (``first`` is the offset of the first token in ``blocks[0]``),
    so its slot is ``blocks[p // block_size] * block_size + p % block_size``.
    """

    blocks: tuple[int, ...]
    first: int
    count: int
    block_size: int

    def to_array(self) -> np.ndarray:
        bs = self.block_size
        positions = np.arange(self.first, self.first + self.count, dtype=np.int64)
        return np.asarray(self.blocks, dtype=np.int64)[positions // bs] * bs + positions % bs


def _slot_array(slots: Any) -> np.ndarray:
    """A read-only int64 array from what a record keeps: nothing, one slot, a list, or a :class:`SlotRun`."""
    if slots is None:
        array = np.empty(0, dtype=np.int64)
    elif isinstance(slots, SlotRun):
        array = slots.to_array()
    elif isinstance(slots, int):
        array = np.array([slots], dtype=np.int64)
    else:
        array = np.array(slots, dtype=np.int64).reshape(-1)
    array.setflags(write=False)
    return array


class OpRecord:
    """What one operation did.

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
        slot_mapping: int64 cache slot of each token this operation writes, in token
            order (for a decode: the new token of ``seq_ids[i]`` at position ``i``):
            ``table[t // block_size] * block_size + t % block_size``. Built when first
            read, then kept; read-only.
        num_free: blocks in the free queue afterwards.
        num_cached_free: cached blocks with reference count 0 afterwards (evictable).
        num_used: blocks with reference count > 0 afterwards.
        block_size: the manager's block size, so that ``slot // block_size`` names a slot's block.

    The manager never changes a record after returning it; treat it as
    read-only. Two records are equal when every field is.
    """

    __slots__ = (
        "index", "op", "seq_id", "parent_id", "seq_ids", "num_new_tokens", "allocated", "freed", "cached",
        "shared", "copies", "evicted", "cache_hits", "cache_misses", "_slots", "num_free", "num_cached_free",
        "num_used", "block_size",
    )  # fmt: skip

    def __init__(
        self,
        index: int,
        op: str,
        seq_id: SeqId | None = None,
        *,
        parent_id: SeqId | None = None,
        seq_ids: tuple[SeqId, ...] = (),
        num_new_tokens: int = 0,
        allocated: tuple[int, ...] = (),
        freed: tuple[int, ...] = (),
        cached: tuple[int, ...] = (),
        shared: tuple[int, ...] = (),
        copies: tuple[tuple[int, int], ...] = (),
        evicted: tuple[int, ...] = (),
        cache_hits: tuple[int, ...] = (),
        cache_misses: int = 0,
        slot_mapping: np.ndarray | SlotRun | list[int] | int | None = None,
        num_free: int = 0,
        num_cached_free: int = 0,
        num_used: int = 0,
        block_size: int = 0,
    ) -> None:
        # Plain assignments: a record is built on every operation, so it must be cheap.
        self.index = index
        self.op = op
        self.seq_id = seq_id
        self.parent_id = parent_id
        self.seq_ids = seq_ids
        self.num_new_tokens = num_new_tokens
        self.allocated = allocated
        self.freed = freed
        self.cached = cached
        self.shared = shared
        self.copies = copies
        self.evicted = evicted
        self.cache_hits = cache_hits
        self.cache_misses = cache_misses
        self._slots = slot_mapping  # turned into an array when first read
        self.num_free = num_free
        self.num_cached_free = num_cached_free
        self.num_used = num_used
        self.block_size = block_size

    @property
    def slot_mapping(self) -> np.ndarray:
        slots = self._slots
        if type(slots) is not np.ndarray:
            slots = self._slots = _slot_array(slots)
        return slots

    def _fields(self) -> dict[str, Any]:
        """Every field, in the documented order."""
        names = [name for name in self.__slots__ if name != "_slots"]
        out = {name: getattr(self, name) for name in names}
        out["slot_mapping"] = self.slot_mapping.tolist()
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OpRecord):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # equal records need not be the same object

    def __repr__(self) -> str:
        defaults = {"parent_id": None, "seq_ids": (), "num_new_tokens": 0, "cache_misses": 0, "slot_mapping": [],
                    "block_size": 0}
        shown = []
        for name, value in self._fields().items():
            if name in ("index", "op", "seq_id", "num_free", "num_cached_free", "num_used") or (
                value != defaults.get(name, ())
            ):
                shown.append(f"{name}={value!r}")
        return f"OpRecord({', '.join(shown)})"

    def explain(self) -> str:
        """One plain-English line describing the operation (used by the demo and the trace viewer).

        The operation's own class (:data:`~tinyserve_sim.control.operations.OPERATIONS`)
        says what it did; this adds the evictions it caused and the pool's counts.
        """
        text = OPERATIONS[self.op].explain(self)
        if self.evicted and self.op != "evict":
            text += f"; evicted cached block(s) {format_ids(self.evicted)} to make room"
        return text + f"  [free {self.num_free}, cached {self.num_cached_free}, used {self.num_used}]"


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

    def table(self, seq_id: SeqId) -> tuple[int, ...]:
        """The block table of one sequence in this snapshot."""
        for seq in self.sequences:
            if type(seq.seq_id) is type(seq_id) and seq.seq_id == seq_id:
                return seq.block_table
        raise UnknownSequenceError(f"unknown sequence {short_repr(seq_id)} in this snapshot")
