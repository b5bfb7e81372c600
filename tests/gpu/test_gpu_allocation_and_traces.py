"""GPU block allocation against BlockPool("fifo"), the racing allocator's validity,
and trace replay on both backends with bit-identical caches after every step."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_helpers import GPU_SETTINGS, assert_bits_equal
from hypothesis import given
from hypothesis import strategies as st
from trace_driver import run_trace

from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.control.pool import BlockPool
from tinyserve_sim.data import KVCache, check_racing_allocation
from tinyserve_sim.errors import DoubleFreeError, OutOfBlocksError

pytestmark = pytest.mark.gpu


@GPU_SETTINGS
@given(num_blocks=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1), rounds=st.integers(1, 8))
def test_fifo_allocator_matches_block_pool(num_blocks, seed, rounds):
    from tinyserve_sim.gpu.allocators import GpuFifoAllocator

    rng = np.random.default_rng(seed)
    pool = BlockPool(num_blocks, policy="fifo")
    gpu = GpuFifoAllocator(num_blocks)
    held: list[int] = []
    for _ in range(rounds):
        R = int(rng.integers(0, 2500))
        requests = rng.integers(0, max(2, 3 * num_blocks // max(R, 1)), size=R)
        got = gpu.allocate_batch(requests)
        for i, n in enumerate(requests):  # the pool, one request at a time
            try:
                expect = pool.allocate(int(n))
            except OutOfBlocksError:
                assert not got.served[i:].any() and not got.granted[i:].any()
                break
            assert got.served[i]
            assert got.blocks_of(i).tolist() == expect
            held += expect
        assert gpu.free_queue().tolist() == pool.free_queue()
        rng.shuffle(held)
        k = int(rng.integers(0, len(held) + 1))
        to_free, held = held[:k], held[k:]
        gpu.free(to_free)
        pool.release(to_free)
        assert gpu.free_queue().tolist() == pool.free_queue()
        assert gpu.num_free == pool.num_free


def test_fifo_allocator_rejects_double_free_without_changing_state():
    from tinyserve_sim.gpu.allocators import GpuFifoAllocator

    gpu = GpuFifoAllocator(8)
    gpu.allocate_batch([3])
    before = gpu.free_queue().tolist()
    with pytest.raises(DoubleFreeError):
        gpu.free([0, 5])  # 5 is free already
    assert gpu.free_queue().tolist() == before


@GPU_SETTINGS
@given(num_blocks=st.integers(1, 4096), taken=st.floats(0, 1), requests=st.integers(0, 5000), seed=st.integers(0, 2**32 - 1))
def test_racing_allocator_is_valid(num_blocks, taken, requests, seed):
    import cupy as cp
    from tinyserve_sim.gpu.allocators import racing_allocate

    rng = np.random.default_rng(seed)
    refs = (rng.random(num_blocks) < taken).astype(np.int32) * rng.integers(1, 4, num_blocks).astype(np.int32)
    refs_d = cp.asarray(refs)
    result = racing_allocate(refs_d, requests).get()
    check_racing_allocation(refs == 0, result)
    after = refs_d.get()
    got = result[result >= 0]
    assert (after[got] == 1).all() and (np.delete(after, got) == np.delete(refs, got)).all()


@GPU_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    block_size=st.sampled_from([1, 3, 16, 32]),
    dtype=st.sampled_from([np.float16, np.float32]),
    head_dim=st.sampled_from([8, 64, 80]),
)
def test_trace_replay_on_both_backends(seed, block_size, dtype, head_dim):
    rng = np.random.default_rng(seed)
    num_blocks, heads = 24, 2
    manager = BlockManager(num_blocks=num_blocks, block_size=block_size, policy="fifo")
    cpu = KVCache(num_blocks, block_size, heads, head_dim, dtype, backend="numpy", fill=np.nan)
    gpu = KVCache(num_blocks, block_size, heads, head_dim, dtype, backend="cupy", fill=np.nan)
    checked = []

    def compare(step, model):
        for a, b in zip(gpu.to_numpy(), cpu.to_numpy()):
            assert_bits_equal(a, b)
        live = manager.seq_ids()
        if live:  # and attention over every live sequence, both variants
            from tinyserve_sim.control.batch import DecodeBatch

            batch = DecodeBatch.from_manager(manager, slot_mapping=step.slot_mapping)
            q = rng.standard_normal((len(live), 2 * heads, head_dim)).astype(dtype)
            for variant in ("one_pass", "split_k"):
                o_gpu = gpu.attention(q, batch, variant=variant, partition_size=128)
                o_cpu = cpu.attention(q, batch, variant=variant, partition_size=128)
                assert_bits_equal(gpu.backend.to_numpy(o_gpu), o_cpu)
        checked.append(step.op)

    run_trace(manager, [cpu, gpu], rng, num_ops=25, on_step=compare)
    assert checked
