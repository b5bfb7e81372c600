"""GPU block allocators: the deterministic FIFO ring and the racing contrast.

:class:`GpuFifoAllocator` keeps the free queue on the device and serves a
batch of requests in one launch (``kernels/block_allocation.cu``); its ids
equal those of :class:`tinyserve_sim.data.block_allocation.FifoBlockAllocator`
and of ``BlockPool(policy="fifo")``. :func:`racing_allocate` is the seed-style
allocator, valid but not deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import cupy as cp
import numpy as np

from tinyserve_sim.data.block_allocation import (
    BatchAllocation,
    check_free_ids,
    check_num_blocks,
    check_requests,
)
from tinyserve_sim.errors import DoubleFreeError, KernelInputError

from .build import get_module

_THREADS = 1024  # one thread block; must match ALLOC_THREADS in the kernel


def _fn(name: str):
    return get_module("block_allocation.cu").get_function(name)


class GpuFifoAllocator:
    """Device-resident FIFO free queue (ring buffer), batched allocation."""

    def __init__(self, num_blocks: int) -> None:
        num_blocks = check_num_blocks(num_blocks)
        self.num_blocks = num_blocks
        self.ring = cp.arange(num_blocks, dtype=cp.int32)
        self.state = cp.asarray(np.array([0, num_blocks], dtype=np.int32))  # head, count
        self.is_free = cp.ones(num_blocks, dtype=cp.uint8)

    @property
    def num_free(self) -> int:
        return int(self.state[1].get())

    def free_queue(self) -> np.ndarray:
        head, count = (int(x) for x in self.state.get())
        return self.ring.get()[(head + np.arange(count)) % self.num_blocks]

    def allocate_batch(self, requests: Sequence[int] | np.ndarray) -> BatchAllocation:
        """One launch: prefix sum over the batch, ids taken from the ring in order."""
        n = check_requests(requests)
        R = n.size
        granted = cp.empty(R, dtype=cp.int32)
        offsets = cp.empty(R, dtype=cp.int64)
        ids = cp.full(self.num_blocks, -1, dtype=cp.int32)  # poisoned: unwritten ids stay -1
        total = cp.zeros(1, dtype=cp.int32)
        if R:
            _fn("fifo_allocate_kernel")(
                (1,), (_THREADS,),
                (self.ring, self.state, self.is_free, cp.asarray(n), granted, offsets, ids, total,
                 np.int32(R), np.int32(self.num_blocks)),
            )
        t = int(total.get()[0])
        g = granted.get()
        return BatchAllocation(g, offsets.get(), ids[:t].get(), _served_prefix(n, g))

    def free(self, block_ids: Sequence[int] | np.ndarray) -> None:
        """Append ids at the tail in order; checks range, duplicates and double frees first."""
        ids = check_free_ids(block_ids, self.num_blocks)
        if ids.size == 0:
            return
        ids_d = cp.asarray(ids.astype(np.int32))
        errors = cp.zeros(1, dtype=cp.int32)
        _fn("fifo_check_free_kernel")(
            (-(-ids.size // 256),), (256,), (self.is_free, ids_d, np.int32(ids.size), errors)
        )
        if int(errors.get()[0]):
            raise DoubleFreeError("a block in this free batch is already free")
        _fn("fifo_free_kernel")(
            (1,), (_THREADS,), (self.ring, self.state, self.is_free, ids_d, np.int32(ids.size), np.int32(self.num_blocks))
        )


def _served_prefix(n: np.ndarray, granted: np.ndarray) -> np.ndarray:
    """Served = before the first request that got fewer blocks than it asked for."""
    short = np.flatnonzero(granted != n)
    served = np.ones(n.size, dtype=bool)
    if short.size:
        served[short[0]:] = False
    return served


def racing_allocate(ref_counts: cp.ndarray, num_requests: int) -> cp.ndarray:
    """Seed-style allocation of one block per request by ``atomicCAS`` races.

    ``ref_counts`` (int32 [N], on the GPU) is updated in place (claimed blocks
    go 0 -> 1). Returns int32 ``[num_requests]``: a block id or -1."""
    if not isinstance(ref_counts, cp.ndarray) or ref_counts.dtype != cp.int32 or ref_counts.ndim != 1:
        raise KernelInputError("ref_counts must be a 1-D int32 cupy array")
    if not ref_counts.flags.c_contiguous or ref_counts.size == 0:
        raise KernelInputError("ref_counts must be C-contiguous and non-empty")
    if isinstance(num_requests, bool) or not isinstance(num_requests, (int, np.integer)) or not 0 <= num_requests < 2**31:
        raise KernelInputError(f"num_requests must be an integer in 0 .. 2**31 - 1, got {num_requests!r}")
    result = cp.full(num_requests, -2, dtype=cp.int32)  # poison: -2 is never a valid answer
    if num_requests:
        _fn("racing_allocate_kernel")(
            (-(-num_requests // 256),), (256,), (ref_counts, result, np.int32(num_requests), np.int32(ref_counts.size))
        )
    return result
