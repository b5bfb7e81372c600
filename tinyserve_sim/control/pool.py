"""The block pool: physical KV blocks, their reference counts, and the free queue.

A paged KV cache cuts GPU memory into ``num_blocks`` equal *blocks*, each
holding the keys and values of ``block_size`` tokens. The pool knows nothing
about sequences or bytes; it only answers three questions:

* which blocks are free, and in which order will they be handed out?
* how many users (block-table entries) does each block have?
* which blocks did an allocation or a release touch?

The order of the free queue is a *policy* (a small class from the registry
:data:`~tinyserve_sim.control.policies.POLICIES`), and it decides which block
ids come out of :meth:`BlockPool.allocate`:

``"fifo"``
    A queue, as in vLLM's current KV-cache manager. It starts as
    ``[0, 1, ..., N-1]``; allocation takes from the head, release appends to
    the tail. The manager releases a finished sequence's blocks *tail first*
    (last logical block first), so the blocks least likely to be shared again
    are reused first. Example with 4 blocks: allocate 2 -> ``[0, 1]``;
    release ``[1, 0]`` -> queue ``[2, 3, 1, 0]``; allocate 3 -> ``[2, 3, 1]``.

``"lifo"``
    A stack, as in vLLM's original (2023) block manager. It starts as
    ``[0, 1, ..., N-1]`` with the *top at the end*, so the first allocation
    returns the highest id. Example with 4 blocks: allocate 2 -> ``[3, 2]``;
    release ``[2, 3]`` -> stack ``[0, 1, 2, 3]``; allocate 3 -> ``[3, 2, 1]``.

Reference counts live in a plain list (one small int per block), so a pool of
a million blocks costs a few tens of megabytes; a pool may have at most
:data:`MAX_NUM_BLOCKS` blocks.

The public methods check their arguments and change nothing when they raise.
The :class:`~tinyserve_sim.control.manager.BlockManager` coordinates the pool
with the prefix cache (a block whose count reaches 0 may be parked in the
cache instead of queued), so it uses the underscore methods, which do not
check: they are private to the control plane.
"""

from __future__ import annotations

from collections.abc import Iterable

from tinyserve_sim.control.checks import INT64_MAX, check_int, short_repr
from tinyserve_sim.control.policies import POLICIES, FreeQueue, free_queue_class
from tinyserve_sim.errors import (
    BlockIdError,
    ConfigError,
    DoubleFreeError,
    InvalidArgumentError,
    OutOfBlocksError,
)

__all__ = ["MAX_NUM_BLOCKS", "POLICIES", "BlockPool"]

#: The largest pool: 2**22 = 4,194,304 blocks (about 45 bytes each: 190 MB at the limit).
MAX_NUM_BLOCKS = 1 << 22


class BlockPool:
    """Physical blocks with reference counts and a free queue.

    Args:
        num_blocks: how many physical blocks exist (ids ``0 .. num_blocks-1``),
            at most :data:`MAX_NUM_BLOCKS`.
        policy: the free-queue order, a name from
            :data:`~tinyserve_sim.control.policies.POLICIES` (``"fifo"`` or ``"lifo"``).

    A block is *free* when its reference count is 0. Free blocks wait in the
    free queue, unless a prefix cache has parked them (see
    :class:`tinyserve_sim.control.prefix_cache.PrefixCache`).
    """

    def __init__(self, num_blocks: int, policy: str = "fifo") -> None:
        num_blocks = check_int(num_blocks, "num_blocks", 1, MAX_NUM_BLOCKS, ConfigError)
        self.queue: FreeQueue = free_queue_class(policy)(num_blocks)
        self.num_blocks = num_blocks
        self.policy: str = policy
        self._ref: list[int] = [0] * num_blocks

    # ----------------------------------------------------------------- queries
    @property
    def num_free(self) -> int:
        """Blocks waiting in the free queue (ready to allocate without evicting)."""
        return len(self.queue)

    def ref_count(self, block: int) -> int:
        """How many block-table entries point at ``block``."""
        self.check_id(block)
        return self._ref[block]

    def ref_counts(self) -> list[int]:
        """A copy of every block's reference count, indexed by block id."""
        return list(self._ref)

    def free_queue(self) -> list[int]:
        """The free blocks in the order :meth:`allocate` would hand them out."""
        return self.queue.order()

    def check_id(self, block: object) -> None:
        """Raise :class:`BlockIdError` unless ``block`` is a valid block id."""
        if type(block) is not int or not 0 <= block < self.num_blocks:
            raise BlockIdError(f"block id {short_repr(block)} is out of range 0..{self.num_blocks - 1}")

    # ------------------------------------------------------ public, checked
    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks from the free queue and give each a reference count of 1.

        Raises:
            OutOfBlocksError: fewer than ``n`` blocks are free. Nothing changes.
        """
        n = check_int(n, "the number of blocks to allocate", 0, INT64_MAX)
        if n > len(self.queue):
            raise OutOfBlocksError(
                f"out of blocks: need {n}, only {len(self.queue)} free", needed=n, available=len(self.queue)
            )
        return [self._pop() for _ in range(n)]

    def release(self, blocks: Iterable[int]) -> list[int]:
        """Count each block down once; those reaching 0 join the free queue, in order.

        Returns the blocks that reached 0. The whole call is checked first, so a
        double free raises :class:`DoubleFreeError` and changes nothing.
        """
        blocks = self._checked_ids(blocks)
        pending: dict[int, int] = {}
        for block in blocks:
            pending[block] = pending.get(block, 0) + 1
            if pending[block] > self._ref[block]:
                raise DoubleFreeError(
                    f"double free: block {block} has reference count {self._ref[block]}, "
                    f"released {pending[block]} time(s)"
                )
        reached_zero = self._decref(blocks)
        for block in reached_zero:
            self._push(block)
        return reached_zero

    def incref(self, block: int) -> None:
        """One more block-table entry points at ``block`` (fork, prefix-cache hit).

        Only a block in use can gain a user this way: a free block is handed
        out by :meth:`allocate` or :meth:`take`, which take it out of the queue.
        """
        self.check_id(block)
        if self._ref[block] == 0:
            raise InvalidArgumentError(f"block {block} is free; allocate or take it instead of incref")
        self._ref[block] += 1

    def take(self, blocks: Iterable[int]) -> None:
        """Remove these particular blocks from the free queue and give each a count of 1.

        Used to move data into chosen blocks (compaction). Costs one pass over the
        queue. Raises :class:`BlockIdError` and changes nothing if any block is not free.
        """
        wanted = set(self._checked_ids(blocks))
        queued = set(self.queue.order()) if wanted else set()
        for block in sorted(wanted):
            if block not in queued:
                raise BlockIdError(f"block {block} is not in the free queue")
        self.queue.discard(wanted)
        for block in wanted:
            self._ref[block] = 1

    def _checked_ids(self, blocks: Iterable[int]) -> list[int]:
        """``blocks`` as a list of valid block ids, or :class:`InvalidArgumentError`/:class:`BlockIdError`."""
        if isinstance(blocks, (str, bytes)) or not isinstance(blocks, Iterable):
            raise InvalidArgumentError(f"expected a list of block ids, got {short_repr(blocks)}")
        blocks = list(blocks)
        for block in blocks:
            self.check_id(block)
        return blocks

    # ------------------------------ private to the control plane, unchecked
    def _pop(self) -> int:
        """The next free block, now with a count of 1 (the queue must not be empty)."""
        block = self.queue.pop()
        self._ref[block] = 1
        return block

    def _push(self, block: int) -> None:
        """Queue a block whose count is 0."""
        self.queue.push(block)

    def _claim(self, block: int) -> None:
        """Give a block that is *not* in the free queue (an evicted cached block) a count of 1."""
        self._ref[block] = 1

    def _decref(self, blocks: Iterable[int]) -> list[int]:
        """Count each block down once; return, in order, those that reached 0 (not queued)."""
        ref = self._ref
        reached_zero = []
        for block in blocks:
            ref[block] -= 1
            if ref[block] == 0:
                reached_zero.append(block)
        return reached_zero

    def _move_count(self, src: int, dst: int) -> None:
        """Give ``dst`` the reference count of ``src`` and set ``src`` to 0 (block relocation)."""
        self._ref[dst], self._ref[src] = self._ref[src], 0
