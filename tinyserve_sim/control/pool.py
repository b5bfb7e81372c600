"""The block pool: physical KV blocks, their reference counts, and the free queue.

A paged KV cache cuts GPU memory into ``num_blocks`` equal *blocks*, each
holding the keys and values of ``block_size`` tokens. The pool knows nothing
about sequences or bytes; it only answers three questions:

* which blocks are free, and in which order will they be handed out?
* how many users (block-table entries) does each block have?
* which blocks did an allocation or a release touch?

The order of the free queue is a *policy*, and it decides which block ids come
out of :meth:`BlockPool.allocate`:

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
a million blocks costs a few tens of megabytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from tinyserve_sim.errors import (
    BlockIdError,
    ConfigError,
    DoubleFreeError,
    OutOfBlocksError,
)

#: The free-queue policies a pool understands.
POLICIES: tuple[str, ...] = ("fifo", "lifo")


class BlockPool:
    """Physical blocks with reference counts and a free queue.

    Args:
        num_blocks: how many physical blocks exist (ids ``0 .. num_blocks-1``).
        policy: the free-queue order, ``"fifo"`` or ``"lifo"`` (see the module doc).

    A block is *free* when its reference count is 0. Free blocks wait in the
    free queue, unless a prefix cache has parked them (see
    :class:`tinyserve_sim.control.prefix_cache.PrefixCache`): the manager decides, so
    the pool offers :meth:`decref` (count down, report blocks that reached 0)
    and :meth:`push_free` (queue them) separately, and :meth:`release` for both.
    """

    def __init__(self, num_blocks: int, policy: str = "fifo") -> None:
        if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or num_blocks < 1:
            raise ConfigError(f"num_blocks must be a positive integer, got {num_blocks!r}")
        if policy not in POLICIES:
            raise ConfigError(f"unknown free-queue policy {policy!r}; choose one of {POLICIES}")
        self.num_blocks = num_blocks
        self.policy = policy
        self._ref: list[int] = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))

    # ----------------------------------------------------------------- queries
    @property
    def num_free(self) -> int:
        """Blocks waiting in the free queue (ready to allocate without evicting)."""
        return len(self._free)

    def ref_count(self, block: int) -> int:
        """How many block-table entries point at ``block``."""
        self.check_id(block)
        return self._ref[block]

    def ref_counts(self) -> list[int]:
        """A copy of every block's reference count, indexed by block id."""
        return list(self._ref)

    def free_queue(self) -> list[int]:
        """The free blocks in the order :meth:`allocate` would hand them out."""
        if self.policy == "fifo":
            return list(self._free)
        return list(reversed(self._free))

    def check_id(self, block: int) -> None:
        """Raise :class:`BlockIdError` unless ``block`` is a valid block id."""
        if not isinstance(block, int) or isinstance(block, bool) or not 0 <= block < self.num_blocks:
            raise BlockIdError(f"block id {block!r} is out of range 0..{self.num_blocks - 1}")

    # ---------------------------------------------------------------- mutation
    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks from the free queue and give each a reference count of 1.

        Raises:
            OutOfBlocksError: fewer than ``n`` blocks are free. Nothing changes.
        """
        if n > len(self._free):
            raise OutOfBlocksError(
                f"out of blocks: need {n}, only {len(self._free)} free", needed=n, available=len(self._free)
            )
        take = self._free.popleft if self.policy == "fifo" else self._free.pop
        blocks = [take() for _ in range(n)]
        for block in blocks:
            self._ref[block] = 1
        return blocks

    def take(self, blocks: Iterable[int]) -> None:
        """Remove these particular blocks from the free queue and give each a count of 1.

        Used to move data into chosen blocks (compaction). Costs one pass over the
        queue. Raises :class:`BlockIdError` and changes nothing if any block is not free.
        """
        wanted = set(blocks)
        queued = set(self._free)
        for block in wanted:
            self.check_id(block)
            if block not in queued:
                raise BlockIdError(f"block {block} is not in the free queue")
        self._free = deque(b for b in self._free if b not in wanted)
        for block in wanted:
            self._ref[block] = 1

    def claim(self, block: int) -> None:
        """Give a block that is *not* in the free queue (an evicted cached block) a count of 1."""
        if self._ref[block] != 0:
            raise DoubleFreeError(f"block {block} is in use (ref {self._ref[block]}); cannot claim it")
        self._ref[block] = 1

    def move_count(self, src: int, dst: int) -> None:
        """Give ``dst`` the reference count of ``src`` and set ``src`` to 0 (block relocation)."""
        self._ref[dst], self._ref[src] = self._ref[src], 0

    def incref(self, block: int) -> None:
        """One more block-table entry points at ``block`` (fork, prefix-cache hit)."""
        self._ref[block] += 1

    def decref(self, blocks: Iterable[int]) -> list[int]:
        """Count each block down once; return, in order, those that reached 0.

        The blocks that reach 0 are *not* queued: call :meth:`push_free` (or
        park them in a prefix cache). The whole call is checked first, so a
        double free raises :class:`DoubleFreeError` and changes nothing.
        """
        blocks = list(blocks)
        pending: dict[int, int] = {}
        for block in blocks:
            self.check_id(block)
            pending[block] = pending.get(block, 0) + 1
            if pending[block] > self._ref[block]:
                raise DoubleFreeError(
                    f"double free: block {block} has reference count {self._ref[block]}, "
                    f"released {pending[block]} time(s)"
                )
        reached_zero = []
        for block in blocks:
            self._ref[block] -= 1
            if self._ref[block] == 0:
                reached_zero.append(block)
        return reached_zero

    def push_free(self, blocks: Iterable[int]) -> None:
        """Append blocks whose count is 0 to the free queue, in the given order."""
        for block in blocks:
            self._free.append(block)

    def release(self, blocks: Iterable[int]) -> list[int]:
        """:meth:`decref` then :meth:`push_free`: blocks reaching 0 join the queue in order."""
        reached_zero = self.decref(blocks)
        self.push_free(reached_zero)
        return reached_zero
