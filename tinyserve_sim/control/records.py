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

from dataclasses import dataclass, field
from typing import Union

import numpy as np

#: A sequence id: a string or an integer (anything else is rejected).
SeqId = Union[str, int]

#: The operations a record can describe.
OPS: tuple[str, ...] = ("add", "append", "fork", "free", "evict", "move")


def _empty_slots() -> np.ndarray:
    return np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class OpRecord:
    """What one operation did.

    Attributes:
        index: 0-based position of this operation in the manager's history.
        op: ``"add"``, ``"append"``, ``"fork"``, ``"free"``, ``"evict"`` or ``"move"``.
        seq_id: the sequence acted on (the child, for a fork; ``None`` for evict).
        parent_id: the parent, for a fork.
        num_new_tokens: tokens this operation added to the sequence.
        allocated: blocks taken from the pool, in allocation order.
        freed: blocks whose reference count reached 0, in release order.
        cached: those of ``freed`` that stay in the prefix cache (reusable until evicted).
        shared: blocks that gained a user: every block of a fork, every prefix-cache hit.
        copies: ``(src, dst)`` block copies the data plane must do *before* writing:
            copy-on-write for ``append``, relocations for ``move``.
        evicted: cached free blocks whose content was forgotten so they could be reused.
        cache_hits: blocks reused from the prefix cache (a subset of ``shared``).
        cache_misses: full prompt blocks looked up in the prefix cache and not found.
        slot_mapping: int64 cache slot of each token this operation writes, in token
            order: ``table[t // block_size] * block_size + t % block_size``.
        num_free: blocks in the free queue afterwards.
        num_cached_free: cached blocks with reference count 0 afterwards (evictable).
        num_used: blocks with reference count > 0 afterwards.
    """

    index: int
    op: str
    seq_id: SeqId | None
    parent_id: SeqId | None = None
    num_new_tokens: int = 0
    allocated: tuple[int, ...] = ()
    freed: tuple[int, ...] = ()
    cached: tuple[int, ...] = ()
    shared: tuple[int, ...] = ()
    copies: tuple[tuple[int, int], ...] = ()
    evicted: tuple[int, ...] = ()
    cache_hits: tuple[int, ...] = ()
    cache_misses: int = 0
    slot_mapping: np.ndarray = field(default_factory=_empty_slots, compare=False, repr=False)
    num_free: int = 0
    num_cached_free: int = 0
    num_used: int = 0

    def explain(self) -> str:
        """One plain-English line describing the operation (used by the demo and the trace viewer)."""
        who = f"{self.seq_id!r}"
        if self.op == "add":
            text = f"add {who}: {self.num_new_tokens} prompt tokens"
            if self.cache_hits:
                text += f", {len(self.cache_hits)} block(s) reused from the prefix cache {_ids(self.cache_hits)}"
            text += f"; allocated {_ids(self.allocated)}" if self.allocated else "; nothing allocated"
        elif self.op == "append":
            text = f"append {self.num_new_tokens} token(s) to {who}"
            for src, dst in self.copies:
                text += f"; block {src} is shared, so copy-on-write into block {dst}"
            fresh = [b for b in self.allocated if b not in {dst for _, dst in self.copies}]
            if fresh:
                text += f"; new block(s) {_ids(fresh)}"
            if not self.allocated:
                text += "; fits in the last block"
        elif self.op == "fork":
            text = f"fork {self.parent_id!r} -> {who}: share {len(self.shared)} block(s) {_ids(self.shared)}, nothing copied"
        elif self.op == "free":
            text = f"free {who}: {len(self.freed)} block(s) returned {_ids(self.freed)}"
            if self.cached:
                text += f", of which {_ids(self.cached)} stay cached"
        elif self.op == "move":
            text = f"move {len(self.copies)} block(s): " + ", ".join(f"{s}->{d}" for s, d in self.copies[:6])
            if len(self.copies) > 6:
                text += ", ..."
        else:
            text = f"evict {len(self.evicted)} cached block(s) {_ids(self.evicted)}"
        if self.evicted and self.op != "evict":
            text += f"; evicted cached block(s) {_ids(self.evicted)} to make room"
        return text + f"  [free {self.num_free}, cached {self.num_cached_free}, used {self.num_used}]"


def _ids(blocks: tuple[int, ...] | list[int]) -> str:
    if len(blocks) > 8:
        return "[" + ", ".join(map(str, blocks[:4])) + f", ... {len(blocks) - 6} more ..., " + ", ".join(
            map(str, blocks[-2:])
        ) + "]"
    return "[" + ", ".join(map(str, blocks)) + "]"


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

    def table(self, seq_id: SeqId) -> tuple[int, ...]:
        """The block table of one sequence in this snapshot."""
        for seq in self.sequences:
            if seq.seq_id == seq_id:
                return seq.block_table
        raise KeyError(seq_id)
