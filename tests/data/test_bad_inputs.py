"""Bad input to the data plane's twins and to KVCache: always KernelInputError naming the
argument, raised before anything is written (the caches are unchanged afterwards).

The same lists of bad inputs run against the GPU launchers in
tests/gpu/test_launcher_validation.py (on the CPU: their host checks need no GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from kv_strategies import BAD_COPY_INPUTS, BAD_RESHAPE_INPUTS, good_copy_args, good_reshape_args

from tinyserve_sim import BlockManager
from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data import FifoBlockAllocator, KVCache, copy_blocks, reshape_and_cache
from tinyserve_sim.errors import (
    BackendUnavailableError,
    BlockIdError,
    ConfigError,
    DoubleFreeError,
    KernelInputError,
    SimError,
)


def _snapshot(args: dict) -> dict:
    return {k: np.array(v, copy=True) for k, v in args.items() if isinstance(v, np.ndarray) and "cache" in k}


@pytest.mark.parametrize("change, match", BAD_RESHAPE_INPUTS)
def test_reshape_and_cache_refuses_bad_input_and_writes_nothing(change, match):
    args = good_reshape_args()
    args["key"] = np.ones_like(args["key"])
    change(args)
    before = _snapshot(args)
    with pytest.raises(KernelInputError, match=match):
        reshape_and_cache(**args)
    for name, saved in before.items():
        assert np.array_equal(args[name], saved, equal_nan=True), f"{name} changed"


@pytest.mark.parametrize("change, match", BAD_COPY_INPUTS)
def test_copy_blocks_refuses_bad_input_and_copies_nothing(change, match):
    args = good_copy_args()
    if isinstance(args["key_cache"], np.ndarray):
        args["key_cache"][0] = 1.0
    change(args)
    before = _snapshot(args)
    with pytest.raises(KernelInputError, match=match):
        copy_blocks(**args)
    for name, saved in before.items():
        assert np.array_equal(args[name], saved, equal_nan=True), f"{name} changed"


def test_the_twins_want_host_arrays_and_writable_caches():
    args = good_reshape_args()
    args["key_cache"].setflags(write=False)
    with pytest.raises(KernelInputError, match="key_cache is read-only"):
        reshape_and_cache(**args)
    args = good_copy_args()
    args["value_cache"].setflags(write=False)
    with pytest.raises(KernelInputError, match="value_cache is read-only"):
        copy_blocks(**args)


# ---------------------------------------------------------------------- KVCache
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_blocks=0), "num_blocks must be a positive integer"),
        (dict(num_blocks=4.0), "num_blocks must be a positive integer"),
        (dict(block_size=True), "block_size must be a positive integer"),
        (dict(num_kv_heads=-1), "num_kv_heads"),
        (dict(head_dim=12), "head_dim must be a multiple of 8"),
        (dict(head_dim=264), "head_dim must be a multiple of 8"),
        (dict(dtype=np.float64), "dtype must be float16 or float32"),
        (dict(dtype="not a dtype"), "dtype must be float16 or float32"),
        (dict(fill="zero"), "fill must be a real number"),
        (dict(backend=3), "backend must be"),
        (dict(num_blocks=10**30), "num_blocks must be a positive integer no larger than 9,223,372,036,854,775,807"),
        (dict(num_blocks=2**40), "cannot be allocated"),
    ],
)
def test_kv_cache_refuses_impossible_shapes(kwargs, match):
    args = dict(num_blocks=4, block_size=16, num_kv_heads=2, head_dim=32)
    args.update(kwargs)
    with pytest.raises(KernelInputError, match=match):
        KVCache(**args)


def test_kv_cache_backend_name_errors_are_the_projects():
    with pytest.raises(BackendUnavailableError):
        KVCache(4, 16, 2, 32, backend="tpu")


def _cache_and_manager():
    manager = BlockManager(num_blocks=4, block_size=16)
    cache = KVCache(4, 16, 2, 32, fill=0.5)
    return cache, manager


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda c, r: c.apply(None), "record must be an OpRecord"),
        (lambda c, r: c.apply(r), "no keys/values"),
        (lambda c, r: c.apply(r, np.zeros((3, 2, 32), np.float16), np.zeros((3, 2, 32), np.float16)), "hold 3 tokens but slot_mapping has 5"),
        (lambda c, r: c.apply(r, [[1, 2], [3]], [[1, 2], [3]]), "keys must be an array"),
        (lambda c, r: c.apply(r, np.zeros((5, 2, 32), np.float32), np.zeros((5, 2, 32), np.float32)), "dtype"),
        (lambda c, r: c.reshape_and_cache(np.zeros((1, 2, 32), np.float16), np.zeros((1, 2, 32), np.float16), [1.5]), "integers"),
        (lambda c, r: c.reshape_and_cache(np.zeros((1, 2, 32), np.float16), np.zeros((1, 2, 32), np.float16), "0"), "integers"),
        (lambda c, r: c.copy_blocks([(0, 9)]), "outside"),
        (lambda c, r: c.copy_blocks([(0, 1, 2)]), r"\[P, 2\]"),
        (lambda c, r: c.copy_blocks("0 1"), "integers"),
        (lambda c, r: c.attention(np.zeros((1, 4, 32), np.float16), None), "DecodeBatch"),
        (lambda c, r: c.attention(np.zeros((1, 4, 32), np.float16), DecodeBatch.from_tables([[0]], [5], 8)), "blocks of 8 tokens"),
        (lambda c, r: c.attention(np.zeros((1, 4, 32), np.float16), DecodeBatch.from_tables([[0]], [5], 16), scale=float("nan")), "finite"),
        (lambda c, r: c.attention([[1, 2], [3]], DecodeBatch.from_tables([[0]], [5], 16)), "query must be an array"),
    ],
)
def test_kv_cache_refuses_bad_calls_and_changes_nothing(call, match):
    cache, manager = _cache_and_manager()
    record = manager.add("a", 5)
    before = cache.to_numpy()
    with pytest.raises(KernelInputError, match=match):
        call(cache, record)
    for a, b in zip(cache.to_numpy(), before):
        assert np.array_equal(a, b)


def test_kv_cache_apply_checks_the_writes_before_it_copies():
    """A copy-on-write step whose keys are wrong must not even do its copy."""
    cache, manager = _cache_and_manager()
    cache.apply(manager.add("a", 5), np.ones((5, 2, 32), np.float16), np.ones((5, 2, 32), np.float16))
    manager.fork("a", "b")
    record = manager.append("b", 1)
    assert record.copies
    before = cache.to_numpy()
    with pytest.raises(KernelInputError):
        cache.apply(record, np.ones((1, 2, 16), np.float16), np.ones((1, 2, 16), np.float16))
    for a, b in zip(cache.to_numpy(), before):
        assert np.array_equal(a, b)


def test_every_data_plane_error_is_a_sim_error():
    assert issubclass(KernelInputError, SimError)


# ------------------------------------------------------- the allocator twin
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda a: a.allocate_batch([[1, 2], [3]]), KernelInputError, "requests"),
        (lambda a: a.allocate_batch([1.5]), KernelInputError, "integers"),
        (lambda a: a.allocate_batch(None), KernelInputError, "integers"),
        (lambda a: a.allocate_batch([2**62, 2**62]), KernelInputError, "at most"),
        (lambda a: a.allocate_batch([-1]), KernelInputError, "negative"),
        (lambda a: a.free([1.5]), KernelInputError, "integers"),
        (lambda a: a.free(["a"]), KernelInputError, "integers"),
        (lambda a: a.free([[0], [1, 2]]), KernelInputError, "integers"),
        (lambda a: a.free([9]), BlockIdError, "outside"),
        (lambda a: a.free([0, 0]), DoubleFreeError, "twice"),
        (lambda a: a.free([7]), DoubleFreeError, "already free"),
    ],
)
def test_the_fifo_allocator_refuses_bad_input_and_changes_nothing(call, error, match):
    alloc = FifoBlockAllocator(8)
    alloc.allocate_batch([3])
    before = alloc.free_queue().tolist()
    with pytest.raises(error, match=match):
        call(alloc)
    assert alloc.free_queue().tolist() == before


@pytest.mark.parametrize("num_blocks", [0, -1, 2**31, 10**30, 4.0, "8", True, None])
def test_the_fifo_allocator_refuses_impossible_sizes(num_blocks):
    with pytest.raises(ConfigError, match="num_blocks"):
        FifoBlockAllocator(num_blocks)
