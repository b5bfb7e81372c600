"""What each block is, for drawing: owned by one sequence, shared, cached and free, or free."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from tinyserve_sim.control.records import SeqId, Snapshot


class BlockKind(str, Enum):
    """The four states a physical block is drawn in."""

    OWNED = "owned"  # used by exactly one sequence
    SHARED = "shared"  # reference count > 1 (fork, prefix hit)
    CACHED = "cached"  # free, but keeps its content for a prefix hit until evicted
    FREE = "free"  # in the free queue


@dataclass(frozen=True)
class BlockInfo:
    """How to draw one block: its kind, reference count and (for owned blocks) its owner."""

    block: int
    kind: BlockKind
    ref: int
    owner: SeqId | None


def classify_blocks(snap: Snapshot) -> list[BlockInfo]:
    """One :class:`BlockInfo` per physical block, indexed by block id."""
    owner: dict[int, SeqId] = {}
    for seq in snap.sequences:
        for block in seq.block_table:
            owner.setdefault(block, seq.seq_id)
    parked = set(snap.evictable)
    infos = []
    for block, ref in enumerate(snap.ref_counts):
        if ref > 1:
            kind = BlockKind.SHARED
        elif ref == 1:
            kind = BlockKind.OWNED
        elif block in parked:
            kind = BlockKind.CACHED
        else:
            kind = BlockKind.FREE
        infos.append(BlockInfo(block, kind, ref, owner.get(block) if ref == 1 else None))
    return infos


class SequenceColors:
    """A colour per sequence that stays the same in every picture of a trace.

    The first time a sequence is seen it takes the lowest colour index that no
    *live* sequence holds, and keeps it for as long as it lives, whatever
    starts or finishes around it. (A colour by position among the live
    sequences would change as soon as an earlier sequence finished.)

    >>> colors = SequenceColors()
    >>> colors.assign(["a", "b"])
    {'a': 0, 'b': 1}
    >>> colors.assign(["b", "c"])   # a finished: b keeps 1, c takes the free 0
    {'b': 1, 'c': 0}
    """

    def __init__(self) -> None:
        self._index: dict[SeqId, int] = {}

    def assign(self, live: Iterable[SeqId]) -> dict[SeqId, int]:
        """The colour index of each live sequence, assigning new ones as described above."""
        live = list(live)
        alive = set(live)
        for seq_id in list(self._index):
            if seq_id not in alive:  # finished: its colour may be given to a newcomer
                del self._index[seq_id]
        for seq_id in live:
            if seq_id not in self._index:
                taken = set(self._index.values())
                self._index[seq_id] = next(i for i in range(len(taken) + 1) if i not in taken)
        return {seq_id: self._index[seq_id] for seq_id in live}


# Every picture and terminal view of one manager shares its colours (tutorials draw a
# manager many times); the entry goes away with the manager.
_MANAGER_COLORS: "weakref.WeakKeyDictionary[object, SequenceColors]" = weakref.WeakKeyDictionary()


def colors_for(state: object, colors: SequenceColors | None = None) -> SequenceColors:
    """The :class:`SequenceColors` to draw ``state`` with: ``colors`` if given, else the manager's own."""
    if colors is not None:
        return colors
    if isinstance(state, Snapshot):  # no identity to remember: positions among the live sequences
        return SequenceColors()
    try:
        return _MANAGER_COLORS.setdefault(state, SequenceColors())
    except TypeError:  # not weak-referenceable
        return SequenceColors()


def sequence_colors(snap: Snapshot, colors: SequenceColors | None = None) -> dict[SeqId, int]:
    """A colour index per live sequence of ``snap``, stable across snapshots that share ``colors``."""
    return (colors or SequenceColors()).assign(seq.seq_id for seq in snap.sequences)
