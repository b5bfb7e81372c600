"""BlockPool: the free-queue policies' exact block-id order, reference counts, errors."""

import pytest

from tinyserve_sim.control.pool import BlockPool
from tinyserve_sim.errors import (
    BlockIdError,
    ConfigError,
    DoubleFreeError,
    OutOfBlocksError,
)


def test_fifo_order_hand_worked_example():
    # The example in pool.py's docstring and in the docs: 4 blocks.
    pool = BlockPool(4, "fifo")
    assert pool.allocate(2) == [0, 1]
    assert pool.release([1, 0]) == [1, 0]  # a finished sequence goes back tail first
    assert pool.free_queue() == [2, 3, 1, 0]
    assert pool.allocate(3) == [2, 3, 1]


def test_lifo_order_hand_worked_example():
    pool = BlockPool(4, "lifo")
    assert pool.allocate(2) == [3, 2]  # the top of the stack is the highest id
    assert pool.release([2, 3]) == [2, 3]
    assert pool.free_queue() == [3, 2, 1, 0]
    assert pool.allocate(3) == [3, 2, 1]


@pytest.mark.parametrize("policy", ["fifo", "lifo"])
def test_reference_counts_follow_allocate_incref_release(policy):
    pool = BlockPool(3, policy)
    (block,) = pool.allocate(1)
    pool.incref(block)
    assert pool.ref_count(block) == 2
    assert pool.release([block]) == []  # still used once
    assert pool.release([block]) == [block]
    assert pool.ref_count(block) == 0
    assert pool.num_free == 3


def test_out_of_blocks_changes_nothing():
    pool = BlockPool(3)
    pool.allocate(2)
    before = (pool.free_queue(), pool.ref_counts())
    with pytest.raises(OutOfBlocksError, match="need 2, only 1 free") as info:
        pool.allocate(2)
    assert (info.value.needed, info.value.available) == (2, 1)
    assert (pool.free_queue(), pool.ref_counts()) == before


def test_double_free_is_rejected_whole():
    pool = BlockPool(3)
    a, b = pool.allocate(2)
    before = (pool.free_queue(), pool.ref_counts())
    with pytest.raises(DoubleFreeError, match=f"block {a}"):
        pool.release([b, a, a])  # a has one reference, released twice
    assert (pool.free_queue(), pool.ref_counts()) == before


def test_release_of_out_of_range_id():
    pool = BlockPool(3)
    with pytest.raises(BlockIdError, match="out of range 0..2"):
        pool.release([3])


def test_take_specific_blocks():
    pool = BlockPool(5)
    pool.take([3, 1])
    assert pool.free_queue() == [0, 2, 4]
    assert pool.ref_count(3) == pool.ref_count(1) == 1
    with pytest.raises(BlockIdError, match="not in the free queue"):
        pool.take([0, 3])
    assert pool.free_queue() == [0, 2, 4]


@pytest.mark.parametrize("num_blocks", [0, -1, 2.5, True])
def test_bad_num_blocks(num_blocks):
    with pytest.raises(ConfigError, match="num_blocks"):
        BlockPool(num_blocks)


def test_unknown_policy():
    with pytest.raises(ConfigError, match="unknown free-queue policy 'random'"):
        BlockPool(4, "random")


def test_million_blocks_is_cheap():
    pool = BlockPool(1_000_000)
    blocks = pool.allocate(1000)
    assert blocks[-1] == 999
    pool.release(reversed(blocks))
    assert pool.free_queue()[-1] == 0
