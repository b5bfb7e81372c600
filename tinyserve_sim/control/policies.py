"""Policies: which free block goes first, and which cached block is forgotten first.

Two orders decide which physical block an allocation gets, and each is a small
class behind a protocol, chosen by name from a registry:

* a **free-queue policy** (:class:`FreeQueue`, registry :data:`POLICIES`)
  orders the plain free blocks: the :class:`~tinyserve_sim.control.pool.BlockPool`
  hands out ``pop()`` and takes back with ``push(block)``;
* an **evictor** (:class:`Evictor`, registry :data:`EVICTORS`) orders the
  *cached* free blocks of a :class:`~tinyserve_sim.control.prefix_cache.PrefixCache`:
  blocks whose count reached 0 but whose content a later prompt may reuse.
  The manager evicts only when the free queue is empty.

The trace header (``"policy"``, ``"evictor"``) and the command line read these
two registries, so adding a policy is one class and one registry line (see
the how-to *Add a free-queue or eviction policy*).

Why two structures, and not one queue as in vLLM v1? vLLM v1's ``BlockPool``
keeps cached free blocks *in* its free queue (a doubly linked list) and drops a
block's hash when the queue hands it out; a prefix hit takes a block out of
the middle of that list, which is why it needs O(1) removal. Here plain free
blocks are always used before any cached block is evicted (as in vLLM v0's
prefix-caching allocator with its LRU evictor), and the free-queue order
(FIFO, LIFO, ...) is chosen independently of the eviction order. One list
cannot hold both orders, so each lives in its own structure: the free queue is
a deque (O(1) at both ends; only compaction takes blocks out of its middle, in
one O(n) pass), and the evictor is an ordered dict (O(1) removal on a prefix
hit: a hash map over a doubly linked list, what vLLM v1 builds by hand).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import ClassVar, Protocol

from tinyserve_sim.errors import ConfigError

# ----------------------------------------------------------------- free queues


class FreeQueue(Protocol):
    """The order in which plain free blocks are handed out.

    A policy starts with every block ``0 .. num_blocks-1`` free. The pool calls
    ``pop`` only when ``len(queue) > 0`` and ``push`` only with a block that is
    not in the queue, so a policy needs no checks of its own.
    """

    #: The name the trace header and the command line use.
    name: ClassVar[str]

    def __init__(self, num_blocks: int) -> None: ...

    def __len__(self) -> int:
        """How many blocks are waiting."""
        ...

    def pop(self) -> int:
        """Remove and return the next block to hand out."""
        ...

    def push(self, block: int) -> None:
        """A block became free (a finished sequence returns its blocks tail first)."""
        ...

    def discard(self, blocks: set[int]) -> None:
        """Take these blocks out, wherever they are (compaction chose them); O(n) is fine."""
        ...

    def order(self) -> list[int]:
        """The waiting blocks in the order ``pop`` would return them (drawn and snapshotted)."""
        ...


class _BlockDeque(deque):
    """A deque of block ids that starts as ``[0, 1, ..., N-1]``: the base of FIFO and LIFO."""

    def __init__(self, num_blocks: int) -> None:
        super().__init__(range(num_blocks))

    push = deque.append  # a freed block joins at the right end

    def discard(self, blocks: set[int]) -> None:
        kept = [block for block in self if block not in blocks]
        self.clear()
        self.extend(kept)


class FifoQueue(_BlockDeque):
    """``"fifo"``: a queue, as in vLLM's current KV-cache manager.

    It starts as ``[0, 1, ..., N-1]``; ``pop`` takes from the head, ``push``
    appends to the tail.
    """

    name: ClassVar[str] = "fifo"
    pop = deque.popleft  # the head of the queue

    def order(self) -> list[int]:
        return list(self)


class LifoQueue(_BlockDeque):
    """``"lifo"``: a stack, as in vLLM's original (2023) block manager.

    It starts as ``[0, 1, ..., N-1]`` with the *top at the end*, so the first
    ``pop`` returns the highest id; ``push`` puts a block on top.
    """

    name: ClassVar[str] = "lifo"
    pop = deque.pop  # the top of the stack

    def order(self) -> list[int]:
        return list(reversed(self))


#: Every free-queue policy, by name. Adding one: a class above, a line here.
POLICIES: dict[str, type[FreeQueue]] = {
    "fifo": FifoQueue,
    "lifo": LifoQueue,
}


# -------------------------------------------------------------------- evictors


class Evictor(Protocol):
    """The order in which cached free blocks are forgotten when the free queue runs dry.

    The prefix cache tells the evictor when a cached block's count reaches 0
    (``park``), when a prefix hit uses it again (``revive``), and when
    compaction moves it (``rename``); ``pop`` names the next victim.
    """

    name: ClassVar[str]

    def __len__(self) -> int:
        """How many cached free blocks could be evicted."""
        ...

    def __contains__(self, block: object) -> bool:
        """Is ``block`` parked here (cached, with reference count 0)?"""
        ...

    def park(self, block: int) -> None:
        """A cached block's reference count reached 0: it may be evicted from now on."""
        ...

    def revive(self, block: int) -> None:
        """A parked block is used again (a prefix hit): it is no longer evictable."""
        ...

    def pop(self) -> int:
        """Remove and return the next victim (called only when ``len > 0``)."""
        ...

    def rename(self, src: int, dst: int) -> None:
        """Compaction moved parked block ``src`` to ``dst``: ``dst`` takes its place."""
        ...

    def order(self) -> list[int]:
        """Parked blocks in eviction order, next victim first (drawn and snapshotted)."""
        ...


class LruEvictor(OrderedDict):
    """``"lru"``: least recently used first; on a tie, the deepest block of a chain first.

    A block is "used" until its reference count reaches 0, so the least
    recently used block is the one parked longest ago. A finished sequence is
    parked tail first, so among blocks parked at the same moment the deepest
    one goes first: a deep block is only useful while every block in front of
    it is still cached. (vLLM v0's LRU evictor breaks ties the same way; vLLM
    v1 gets the same order by freeing a request's blocks in reverse.)

    An ordered dict of the parked blocks, oldest first: a hash map over a
    doubly linked list, so parking, reviving and evicting are all O(1).
    """

    name: ClassVar[str] = "lru"

    def park(self, block: int) -> None:
        self[block] = None  # the most recent end

    def revive(self, block: int) -> None:
        del self[block]

    def pop(self) -> int:  # type: ignore[override]
        return self.popitem(last=False)[0]

    def rename(self, src: int, dst: int) -> None:
        # Keep the position: rebuild the order with dst in src's place.
        order = [dst if block == src else block for block in self]
        self.clear()
        self.update(dict.fromkeys(order))

    def order(self) -> list[int]:
        return list(self)


#: Every evictor, by name. Adding one: a class above, a line here.
EVICTORS: dict[str, type[Evictor]] = {
    "lru": LruEvictor,
}


# -------------------------------------------------------------------- lookups
def _lookup(registry: dict[str, type], kind: str, name: object) -> type:
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; choose one of {list(registry)}")
    return registry[name]


def free_queue_class(name: object) -> type[FreeQueue]:
    """The free-queue policy called ``name``; :class:`ConfigError` for an unknown name."""
    return _lookup(POLICIES, "free-queue policy", name)


def evictor_class(name: object) -> type[Evictor]:
    """The evictor called ``name``; :class:`ConfigError` for an unknown name."""
    return _lookup(EVICTORS, "evictor", name)
