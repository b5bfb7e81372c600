"""FifoBlockAllocator (the GPU allocator's twin) against BlockPool("fifo")."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyserve_sim.control.pool import BlockPool
from tinyserve_sim.data import FifoBlockAllocator, check_racing_allocation
from tinyserve_sim.errors import (
    BlockIdError,
    DoubleFreeError,
    KernelInputError,
    OutOfBlocksError,
)


@given(num_blocks=st.integers(1, 200), seed=st.integers(0, 2**32 - 1), rounds=st.integers(1, 10))
def test_batches_give_exactly_the_pools_ids(num_blocks, seed, rounds):
    rng = np.random.default_rng(seed)
    pool, alloc = BlockPool(num_blocks, policy="fifo"), FifoBlockAllocator(num_blocks)
    held: list[int] = []
    for _ in range(rounds):
        requests = rng.integers(0, max(2, num_blocks // 3), size=int(rng.integers(0, 12)))
        got = alloc.allocate_batch(requests)
        stopped = False
        for i, n in enumerate(requests):
            if stopped:  # after the first failure nobody is served, even n == 0
                assert not got.served[i] and got.blocks_of(i).size == 0
                continue
            try:
                expect = pool.allocate(int(n))
            except OutOfBlocksError:
                stopped = True
                assert not got.served[i] and got.granted[i] == 0
                continue
            assert got.served[i] and got.blocks_of(i).tolist() == expect
            held += expect
        assert alloc.free_queue().tolist() == pool.free_queue()
        rng.shuffle(held)
        k = int(rng.integers(0, len(held) + 1))
        alloc.free(held[:k])
        pool.release(held[:k])
        held = held[k:]
        assert alloc.free_queue().tolist() == pool.free_queue() and alloc.num_free == pool.num_free


def test_no_overtaking():
    alloc = FifoBlockAllocator(4)
    got = alloc.allocate_batch([3, 2, 1])  # the 2 does not fit: the 1 behind it waits too
    assert got.served.tolist() == [True, False, False]
    assert got.block_ids.tolist() == [0, 1, 2] and alloc.free_queue().tolist() == [3]


def test_bad_frees_and_requests_change_nothing():
    alloc = FifoBlockAllocator(4)
    alloc.allocate_batch([2])
    before = alloc.free_queue().tolist()
    with pytest.raises(DoubleFreeError):
        alloc.free([0, 2])
    with pytest.raises(DoubleFreeError):
        alloc.free([0, 0])
    with pytest.raises(BlockIdError):
        alloc.free([7])
    with pytest.raises(KernelInputError):
        alloc.allocate_batch([1, -1])
    assert alloc.free_queue().tolist() == before


def test_racing_validity_check_catches_each_violation():
    free = np.array([True, True, False, True])
    check_racing_allocation(free, np.array([3, 0, 1, -1, -1]))  # 3 free blocks, 5 requests
    for bad in ([0, 0, -1], [2, -1, -1], [0, -1, 1], [0, 1, 3, 4 - 6]):
        with pytest.raises(AssertionError):
            check_racing_allocation(free, np.array(bad))
