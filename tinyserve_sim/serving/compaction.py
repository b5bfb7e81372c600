"""Memory compaction: move live blocks so that the free blocks form one range.

Paging makes compaction unnecessary for *capacity*: any free block can hold
any sequence's next tokens, wherever it sits. It can still be wanted: to
return a contiguous tail of the pool to the system (shrink the cache), to
hand one large contiguous range to another user, or to improve locality.
The seed calls this "intelligent memory compaction" and asks to "only
compact low-importance blocks, preserve frequently accessed data".

The plan
    Let ``F`` be the number of free blocks. After compaction the free blocks
    must be one range ``[s, s + F)``, the *window*. Every live block inside the
    window must move out, into a free block outside it; nothing else moves.
    Whatever ``s`` is, exactly as many live blocks sit in the window as free
    blocks sit outside it, so the plan always exists.

Where to put the window
    ``strategy="low"`` puts it at the top, ``s = N - F``: every live block ends
    in the low ids ``0 .. N-F-1``, the classic compaction.
    ``strategy="weighted"`` (the seed's idea) tries every ``s`` and keeps the
    one whose live blocks have the least total *weight*; ties go to fewer
    moves, then to the highest window. The default weight of a block is its
    reference count: the number of sequences that read it at every decode
    step. A prompt block shared by 8 beams weighs 8 and is left in place if
    any window allows; parked prefix-cache blocks (nobody reads them) weigh 0
    and move first.

What weighting buys
    Moving a block is one block copy, plus a rewrite of every block-table
    entry that points to it (one per sequence sharing it), and the new tables
    must reach the GPU before the sequences' next attention. Keeping heavily
    shared blocks in place cuts the table entries rewritten, and usually the
    copies too (it also searches the windows the ``low`` plan ignores). The
    benchmark and ``docs/claims.md`` show the numbers; the price is that the
    free range is not always at the top of the pool.

The plan is applied with ``BlockManager.move(moves)``: its step's ``copies``
list is what the data plane (``KVCache.copy_blocks``) must apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.control.records import OpRecord
from tinyserve_sim.errors import InvalidArgumentError

#: Where a compaction may put the free range.
STRATEGIES: tuple[str, ...] = ("low", "weighted")


@dataclass(frozen=True)
class CompactionPlan:
    """A compaction plan.

    Attributes:
        moves: ``(src, dst)`` block pairs, for ``BlockManager.move``.
        free_start: the free range after compaction is ``[free_start, free_start + num_free)``.
        num_free: free blocks (the window's length).
        moved_weight: total weight of the blocks that move.
        table_entries: block-table entries rewritten (sum of the moved blocks' reference counts).
    """

    moves: tuple[tuple[int, int], ...]
    free_start: int
    num_free: int
    moved_weight: float
    table_entries: int


def plan_compaction(
    manager: BlockManager, strategy: str = "weighted", weights: Mapping[int, float] | list[float] | None = None
) -> CompactionPlan:
    """Plan a compaction of ``manager``'s pool (changes nothing).

    Args:
        strategy: ``"low"`` (free range at the top) or ``"weighted"`` (the
            window of least weight; see the module doc).
        weights: a weight per block id (a list, or a mapping where missing ids
            weigh 0); default: each block's reference count (its readers per decode step).
    """
    if not isinstance(manager, BlockManager):
        raise InvalidArgumentError(f"manager must be a BlockManager, got {type(manager).__name__}")
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise InvalidArgumentError(f"unknown compaction strategy {strategy!r}; choose one of {STRATEGIES}")
    snap = manager.snapshot()
    n = snap.num_blocks
    free = set(snap.free_queue)  # parked prefix-cache blocks hold data: they count as live
    refs = snap.ref_counts
    if weights is None:
        weight = [float(c) for c in refs]
    elif isinstance(weights, Mapping):
        weight = [float(weights.get(b, 0.0)) for b in range(n)]
    else:
        weight = [float(w) for w in weights]
    num_free = len(free)

    # Prefix sums over block ids: live blocks and their weight in [0, b).
    live_before = [0] * (n + 1)
    weight_before = [0.0] * (n + 1)
    for b in range(n):
        is_live = b not in free
        live_before[b + 1] = live_before[b] + is_live
        weight_before[b + 1] = weight_before[b] + (weight[b] if is_live else 0.0)

    def cost(s: int) -> tuple[float, int, int]:
        end = s + num_free
        return (weight_before[end] - weight_before[s], live_before[end] - live_before[s], -s)

    top = n - num_free
    if strategy == "low":
        start = top
    else:
        start = min(range(top + 1), key=cost)  # least weight, then fewest moves, then highest window

    end = start + num_free
    sources = [b for b in range(start, end) if b not in free]  # live blocks inside the window
    targets = [b for b in range(n) if b in free and not start <= b < end]  # free blocks outside it
    # Lowest targets first: blocks move down where they can.
    moves = tuple(zip(sources, targets))
    return CompactionPlan(
        moves=moves,
        free_start=start,
        num_free=num_free,
        moved_weight=sum(weight[src] for src in sources),
        table_entries=sum(refs[src] for src in sources),
    )


def compact(manager: BlockManager, plan: CompactionPlan | None = None, strategy: str = "weighted") -> OpRecord | None:
    """Apply a plan (or plan one) with ``manager.move``; return the move step.

    Returns ``None`` when nothing has to move (the free blocks already form
    one range). The returned step's ``copies`` are the block copies the data
    plane must apply, e.g. ``kv_cache.copy_blocks(np.array(step.copies))``.
    """
    if plan is None:
        plan = plan_compaction(manager, strategy)
    if not plan.moves:
        return None
    return manager.move(list(plan.moves))


def is_compacted(manager: BlockManager) -> bool:
    """Do the free-queue blocks form one contiguous range of ids?"""
    free = sorted(manager.snapshot().free_queue)
    return not free or free[-1] - free[0] + 1 == len(free)
