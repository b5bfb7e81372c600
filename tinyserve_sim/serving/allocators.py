"""Allocators of contiguous ranges: buddy and first fit.

A contiguous-reservation server (see :mod:`tinyserve_sim.serving.contiguous`)
needs, for every sequence, one range of consecutive KV slots. Handing out
ranges of different sizes and taking them back in a different order leaves
free memory in pieces: **external fragmentation**. Two classic allocators:

**Buddy** (:class:`BuddyAllocator`, the default, as the vLLM paper assumes
for its Orca baselines, §6.1). Every range is a power of two, aligned to its
size. To serve a request for ``size`` slots, round up to ``2**k``, take the
smallest free block of at least that order, and split it in halves
("buddies") until it has the right order. On release, a block merges with its
buddy whenever the buddy is free too. Fast and simple, but every range is
rounded up: a 300-slot request takes 512 slots. That rounding is waste the
*allocator* adds, on top of any over-estimate of the reservation rule.

**First fit** (:class:`FirstFitAllocator`). The free space is a sorted list of
holes; a request takes the lowest-addressed hole that is large enough, and a
release merges the range with its free neighbours. No rounding, so the only
allocator waste is holes between live ranges.

Both answer ``allocate(size)`` with ``(start, size_given)`` or ``None``.
"""

from __future__ import annotations

import bisect

from tinyserve_sim.errors import InvalidArgumentError

#: The allocators a contiguous memory can use.
ALLOCATORS: tuple[str, ...] = ("buddy", "first-fit")


def _check_size(size: int) -> None:
    if size < 1:
        raise InvalidArgumentError(f"allocate needs size >= 1, got {size}")


class FirstFitAllocator:
    """Contiguous ranges of slots, handed out first fit, never rounded.

    >>> a = FirstFitAllocator(10)
    >>> a.allocate(4), a.allocate(4)
    ((0, 4), (4, 4))
    >>> a.free(0, 4); a.holes()
    [(0, 4), (8, 2)]
    >>> a.allocate(5) is None      # 6 slots free, but no hole holds 5: external fragmentation
    True
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise InvalidArgumentError(f"capacity must be at least 1 slot, got {capacity}")
        self.capacity = capacity
        self._starts: list[int] = [0]  # holes, sorted by start; touching holes are always merged
        self._sizes: list[int] = [capacity]
        self.num_free = capacity

    def holes(self) -> list[tuple[int, int]]:
        """The free holes as ``(start, size)``, by address."""
        return list(zip(self._starts, self._sizes))

    def allocate(self, size: int) -> tuple[int, int] | None:
        """Reserve ``size`` contiguous slots: ``(start, size)``, or ``None`` if no hole fits."""
        _check_size(size)
        for i, hole in enumerate(self._sizes):  # first fit: the lowest address that fits
            if hole >= size:
                start = self._starts[i]
                if hole == size:
                    del self._starts[i], self._sizes[i]
                else:
                    self._starts[i] += size
                    self._sizes[i] -= size
                self.num_free -= size
                return start, size
        return None

    def free(self, start: int, size: int) -> None:
        """Return the range ``[start, start + size)``, merging it with free neighbours."""
        i = bisect.bisect_left(self._starts, start)
        # The range must not overlap the holes around it (that would be a double free).
        if (i < len(self._starts) and start + size > self._starts[i]) or (
            i > 0 and self._starts[i - 1] + self._sizes[i - 1] > start
        ):
            raise InvalidArgumentError(f"free({start}, {size}) overlaps free space: double free?")
        merge_left = i > 0 and self._starts[i - 1] + self._sizes[i - 1] == start
        merge_right = i < len(self._starts) and start + size == self._starts[i]
        if merge_left and merge_right:
            self._sizes[i - 1] += size + self._sizes[i]
            del self._starts[i], self._sizes[i]
        elif merge_left:
            self._sizes[i - 1] += size
        elif merge_right:
            self._starts[i] = start
            self._sizes[i] += size
        else:
            self._starts.insert(i, start)
            self._sizes.insert(i, size)
        self.num_free += size


class BuddyAllocator:
    """Power-of-two ranges, split and merged in buddy pairs.

    A capacity that is not a power of two is cut into aligned power-of-two
    *arenas* (15,728 = 8,192 + 4,096 + 2,048 + 1,024 + 256 + 64 + 32 + 16);
    blocks never merge across arenas.

    >>> b = BuddyAllocator(16)
    >>> b.allocate(3)              # rounded up to 4: split 16 -> 8 + 8 -> 4 + 4
    (0, 4)
    >>> b.allocate(8)
    (8, 8)
    >>> b.free(0, 4); b.num_free
    8
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise InvalidArgumentError(f"capacity must be at least 1 slot, got {capacity}")
        self.capacity = capacity
        self.num_free = capacity
        self._free: dict[int, set[int]] = {}  # order -> starts of free blocks of size 2**order
        self._given: dict[int, int] = {}  # start -> size of each allocated block
        self._arena_starts: list[int] = []
        self._arena_orders: list[int] = []
        start = 0
        for order in range(capacity.bit_length() - 1, -1, -1):  # biggest arenas first keeps them aligned
            if capacity - start >= 1 << order:
                self._arena_starts.append(start)
                self._arena_orders.append(order)
                self._free.setdefault(order, set()).add(start)
                start += 1 << order

    @staticmethod
    def order_for(size: int) -> int:
        """The order ``k`` of the smallest block ``2**k >= size``."""
        return (size - 1).bit_length()

    def free_blocks(self) -> list[tuple[int, int]]:
        """Free blocks as ``(start, size)``, by address."""
        return sorted((s, 1 << k) for k, starts in self._free.items() for s in starts)

    def allocate(self, size: int) -> tuple[int, int] | None:
        """A block of ``2**order_for(size)`` slots: ``(start, block size)``, or ``None``."""
        _check_size(size)
        want = self.order_for(size)
        # The smallest free block big enough (lowest address among equals, for determinism).
        order = next((k for k in sorted(self._free) if k >= want and self._free[k]), None)
        if order is None:
            return None
        start = min(self._free[order])
        self._free[order].remove(start)
        while order > want:  # split: keep the lower half, free the upper half (its buddy)
            order -= 1
            self._free.setdefault(order, set()).add(start + (1 << order))
        self.num_free -= 1 << want
        self._given[start] = 1 << want
        return start, 1 << want

    def free(self, start: int, size: int) -> None:
        """Return a block given by :meth:`allocate`, merging it with its free buddy, repeatedly."""
        if self._given.get(start) != size:
            raise InvalidArgumentError(f"free({start}, {size}) was not allocated (or is already free): double free?")
        del self._given[start]
        order = self.order_for(size)
        self.num_free += size
        arena = bisect.bisect_right(self._arena_starts, start) - 1
        base, top = self._arena_starts[arena], self._arena_orders[arena]
        while order < top:
            buddy = base + ((start - base) ^ (1 << order))
            if buddy not in self._free.get(order, ()):
                break
            self._free[order].remove(buddy)  # merge the pair into one block of the next order
            start = min(start, buddy)
            order += 1
        self._free.setdefault(order, set()).add(start)
