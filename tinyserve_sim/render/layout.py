"""What each block is, for drawing: owned by one sequence, shared, cached and free, or free."""

from __future__ import annotations

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


def sequence_colors(snap: Snapshot) -> dict[SeqId, int]:
    """A stable colour index per live sequence (its position among live sequences)."""
    return {seq.seq_id: i for i, seq in enumerate(snap.sequences)}
