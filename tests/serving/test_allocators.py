"""Allocators of contiguous ranges: no overlap, exact accounting, full merge when empty."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyserve_sim.errors import InvalidArgumentError
from tinyserve_sim.serving.allocators import BuddyAllocator, FirstFitAllocator

ops = st.lists(st.tuples(st.booleans(), st.integers(1, 300), st.integers(0, 10**6)), max_size=60)


@pytest.mark.parametrize("kind", [BuddyAllocator, FirstFitAllocator])
@given(capacity=st.integers(1, 2000), script=ops)
def test_ranges_never_overlap_and_free_space_adds_up(kind, capacity: int, script) -> None:
    alloc = kind(capacity)
    live: list[tuple[int, int]] = []
    for do_alloc, size, pick in script:
        if do_alloc or not live:
            got = alloc.allocate(size)
            if got is None:
                continue
            start, given_size = got
            assert given_size >= size and 0 <= start and start + given_size <= capacity
            if kind is BuddyAllocator:
                assert given_size == 1 << (size - 1).bit_length()  # rounded up to a power of two
            live.append(got)
        else:
            start, size_ = live.pop(pick % len(live))
            alloc.free(start, size_)
        spans = sorted(live)
        for (s1, n1), (s2, _) in zip(spans, spans[1:]):
            assert s1 + n1 <= s2, "two live ranges overlap"
        assert alloc.num_free == capacity - sum(n for _, n in live)
    for start, size in live:
        alloc.free(start, size)
    assert alloc.num_free == capacity
    if kind is FirstFitAllocator:
        assert alloc.holes() == [(0, capacity)]  # everything merged back into one hole
    else:
        assert sum(size for _, size in alloc.free_blocks()) == capacity
        assert len(alloc.free_blocks()) == bin(capacity).count("1")  # merged back into the arenas


def test_first_fit_shows_external_fragmentation() -> None:
    a = FirstFitAllocator(12)
    x, _, z = a.allocate(4), a.allocate(4), a.allocate(4)
    a.free(*x)
    a.free(*z)
    assert a.num_free == 8 and a.allocate(5) is None  # 8 free slots, but in two holes of 4


def test_buddy_rounds_up_and_merges_buddies() -> None:
    b = BuddyAllocator(16)
    assert b.allocate(3) == (0, 4)
    assert b.allocate(3) == (4, 4)
    b.free(0, 4)
    b.free(4, 4)
    assert b.free_blocks() == [(0, 16)]


@pytest.mark.parametrize("kind", [BuddyAllocator, FirstFitAllocator])
def test_double_free_is_rejected(kind) -> None:
    a = kind(64)
    start, size = a.allocate(8)
    a.free(start, size)
    with pytest.raises(InvalidArgumentError):
        a.free(start, size)
