"""Block allocation as a GPU would do it: the twin of ``gpu/kernels/block_allocation.cu``.

The control plane's :class:`~tinyserve_sim.control.pool.BlockPool` (FIFO policy)
hands out free blocks one request at a time. A GPU wants to serve a whole
*batch* of requests in one launch, and still give exactly the same block ids.
:class:`FifoBlockAllocator` shows how:

* The free blocks live in a **ring buffer** ``ring[N]`` with a ``head`` (the
  next id to hand out) and a ``count``. It starts as ``[0, 1, ..., N-1]``,
  like the pool's free queue.
* A batch asks for ``n_i >= 0`` blocks per request. An **inclusive prefix
  sum** ``c_i = n_0 + ... + n_i`` (a parallel scan on the GPU) says where each
  request's blocks start (``c_i - n_i``) and whether it fits: request ``i`` is
  served iff ``c_i <= count``. Because ``n_i >= 0`` the ``c_i`` never
  decrease, so the served requests are exactly a prefix of the batch: the
  first request that does not fit, and every later one, get nothing
  (first-come, first-served, no overtaking; this is the pool's behaviour
  when you call ``allocate(n_i)`` in order and stop at the first failure).
* Blocks are handed out in ring order, so the served requests together take
  ``ring[head : head + total]`` and request ``i`` its slice of that.
* **Frees** append their ids at the tail, ``ring[(head + count + k) % N]``,
  in the given order, as the pool appends blocks whose reference count
  reaches zero.

Integer arithmetic is exact, so the GPU and this twin agree by construction
as long as they follow the same rules. The contrast, a seed-style allocator
where threads race with ``atomicCAS`` over reference counts, is only *valid*
(see :func:`check_racing_allocation`): which thread wins a block depends on
the hardware's scheduling, so its ids cannot match any fixed order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinyserve_sim.errors import (
    BlockIdError,
    ConfigError,
    DoubleFreeError,
    KernelInputError,
)


@dataclass(frozen=True)
class BatchAllocation:
    """Result of one batch: ``granted[i]`` blocks for request ``i`` (``n_i`` or 0),
    found at ``block_ids[offsets[i] : offsets[i] + granted[i]]``."""

    granted: np.ndarray  # int32 [R]
    offsets: np.ndarray  # int64 [R]
    block_ids: np.ndarray  # int32 [total]

    served: np.ndarray  # bool [R]: which requests got their blocks (a prefix)

    def blocks_of(self, i: int) -> np.ndarray:
        """The block ids request ``i`` received (empty if it was not served)."""
        start = int(self.offsets[i])
        return self.block_ids[start : start + int(self.granted[i])]


def _integer_array(name: str, values: object) -> np.ndarray:
    """``values`` as a 1-D integer NumPy array, or KernelInputError naming it."""
    try:
        n = np.asarray(values.get() if hasattr(values, "get") else values)
    except Exception:  # noqa: BLE001 - ragged lists, objects: one clear error
        raise KernelInputError(f"{name} must be a 1-D sequence of integers, got {type(values).__name__}") from None
    if n.ndim != 1 or (n.size and not np.issubdtype(n.dtype, np.integer)):
        raise KernelInputError(f"{name} must be a 1-D sequence of integers")
    return n


def check_requests(requests: Sequence[int] | np.ndarray) -> np.ndarray:
    """Requests as an int32 array of non-negative counts (raises KernelInputError)."""
    n = _integer_array("requests", requests)
    if n.size and int(n.min()) < 0:
        raise KernelInputError("a request cannot ask for a negative number of blocks")
    if n.size and (int(n.max()) >= 2**31 or int(n.astype(np.int64).sum()) >= 2**31):
        raise KernelInputError("a batch may ask for at most 2**31 - 1 blocks in total")
    return n.astype(np.int32)


def check_num_blocks(num_blocks: object) -> int:
    """A ring size: an integer in ``1 .. 2**31 - 1`` (block ids are int32)."""
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, (int, np.integer)) or not 1 <= num_blocks < 2**31:
        raise ConfigError(f"num_blocks must be an integer in 1 .. 2**31 - 1, got {num_blocks!r}")
    return int(num_blocks)


def check_free_ids(block_ids: Sequence[int] | np.ndarray, num_blocks: int) -> np.ndarray:
    """Ids to free: integers in range, none twice (int64; BlockIdError / DoubleFreeError)."""
    try:
        ids = np.asarray(block_ids.get() if hasattr(block_ids, "get") else block_ids).reshape(-1)
    except Exception:  # noqa: BLE001 - ragged lists, objects: one clear error
        raise KernelInputError(f"block_ids must be integers, got {type(block_ids).__name__}") from None
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise KernelInputError(f"block_ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_blocks):
        raise BlockIdError(f"block id outside 0..{num_blocks - 1}")
    if np.unique(ids).size != ids.size:
        raise DoubleFreeError("a block appears twice in one free batch")
    return ids


class FifoBlockAllocator:
    """Batched FIFO allocator over a ring buffer; same ids as ``BlockPool("fifo")``."""

    def __init__(self, num_blocks: int) -> None:
        num_blocks = check_num_blocks(num_blocks)
        self.num_blocks = num_blocks
        try:
            self.ring = np.arange(num_blocks, dtype=np.int32)
        except MemoryError:
            raise ConfigError(f"a ring of {num_blocks} blocks does not fit in memory") from None
        self.head = 0
        self.count = num_blocks
        self._is_free = np.ones(num_blocks, dtype=bool)

    @property
    def num_free(self) -> int:
        return self.count

    def free_queue(self) -> np.ndarray:
        """The free ids in the order they will be handed out."""
        return self.ring[(self.head + np.arange(self.count)) % self.num_blocks]

    def allocate_batch(self, requests: Sequence[int] | np.ndarray) -> BatchAllocation:
        """Serve requests in order until the first that does not fit (see module doc)."""
        n = check_requests(requests)
        inclusive = np.cumsum(n, dtype=np.int64)  # the GPU's block-wide scan
        fits = inclusive <= self.count
        offsets = inclusive - n  # exclusive prefix sum
        granted = np.where(fits, n, 0).astype(np.int32)
        total = int(inclusive[fits][-1]) if fits.any() else 0
        ids = self.ring[(self.head + np.arange(total)) % self.num_blocks]
        self._is_free[ids] = False
        self.head = (self.head + total) % self.num_blocks
        self.count -= total
        return BatchAllocation(granted, np.where(fits, offsets, total), ids, fits)

    def free(self, block_ids: Sequence[int] | np.ndarray) -> None:
        """Append ``block_ids`` at the tail, in order. Checks everything first."""
        ids = check_free_ids(block_ids, self.num_blocks)
        if self._is_free[ids].any():
            raise DoubleFreeError("a block in this free batch is already free")
        tail = (self.head + self.count + np.arange(ids.size)) % self.num_blocks
        self.ring[tail] = ids
        self._is_free[ids] = True
        self.count += ids.size


def check_racing_allocation(free_before: np.ndarray, result: np.ndarray) -> None:
    """Validity of a racing (atomicCAS) allocation of one block per request.

    Args:
        free_before: bool ``[N]``, which blocks were free before the launch.
        result: int ``[R]``, the block each request got, or -1.

    Raises AssertionError unless: every id handed out was free and is handed
    out once; and a request got -1 only if no free block was left, i.e. the
    number of -1 results equals ``max(0, R - free blocks)``.
    """
    free_before, result = np.asarray(free_before), np.asarray(result)
    if free_before.dtype != np.bool_ or free_before.ndim != 1 or result.dtype.kind not in "iu" or result.ndim != 1:
        raise KernelInputError(
            f"check_racing_allocation needs a 1-D bool array and a 1-D integer array, got "
            f"{free_before.dtype} {free_before.shape} and {result.dtype} {result.shape}"
        )
    got = result[result >= 0]
    assert (got < free_before.size).all(), "a block id past the pool was handed out"
    assert np.unique(got).size == got.size, "a block was handed out twice"
    assert free_before[got].all(), "a block that was not free was handed out"
    assert (result >= -1).all(), "results must be block ids or -1"
    expected_failures = max(0, result.size - int(free_before.sum()))
    assert int((result == -1).sum()) == expected_failures, "a request failed while blocks were free"
