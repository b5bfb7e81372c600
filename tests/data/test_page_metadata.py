"""Page metadata: equal to the min/max recomputed from the cache after random traces; reset,
copy, fused and separate updates; signed zeros and NaN; errors leave everything unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from trace_driver import run_trace

from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.data import (
    KVCache,
    copy_page_metadata,
    empty_page_metadata,
    page_metadata_from_cache,
    reset_page_metadata,
    reshape_and_cache,
    reshape_and_cache_with_metadata,
    update_page_metadata,
)
from tinyserve_sim.errors import CopyConflictError, KernelInputError


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16 if a.dtype == np.float16 else np.uint32)


def _assert_same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    diff = _bits(a) != _bits(b)
    assert not diff.any(), f"{int(diff.sum())} elements differ, first at {np.argwhere(diff)[0]}"


def block_fill(manager: BlockManager) -> np.ndarray:
    """Tokens held by each block, read from the live sequences' tables (0 for a block no one uses)."""
    fill = np.zeros(manager.num_blocks, dtype=np.int64)
    bs = manager.block_size
    for seq in manager.seq_ids():
        n = manager.num_tokens(seq)
        for j, blk in enumerate(manager.block_table(seq)):
            used = min(bs, n - j * bs)
            assert fill[blk] in (0, used), "a shared block must hold as many tokens for every user"
            fill[blk] = used
    return fill


def assert_metadata_matches_cache(cache: KVCache, manager: BlockManager) -> None:
    fill = block_fill(manager)
    key_cache, _ = cache.to_numpy()
    expect_min, expect_max = page_metadata_from_cache(key_cache, fill)
    key_min, key_max = cache.metadata_to_numpy()
    live = fill > 0
    _assert_same_bits(key_min[live], expect_min[live])
    _assert_same_bits(key_max[live], expect_max[live])


# ----------------------------------------------------------------- random traces
@given(
    seed=st.integers(0, 2**32 - 1),
    block_size=st.sampled_from([1, 2, 5, 16]),
    dtype=st.sampled_from([np.float16, np.float32]),
)
@example(seed=0, block_size=1, dtype=np.float16)
def test_metadata_equals_min_max_of_the_cache_after_every_step(seed, block_size, dtype):
    rng = np.random.default_rng(seed)
    manager = BlockManager(num_blocks=20, block_size=block_size, policy="fifo")
    fused = KVCache(20, block_size, 2, 8, dtype, fill=np.nan, page_metadata=True)
    separate = KVCache(20, block_size, 2, 8, dtype, fill=np.nan, page_metadata=True, metadata_update="separate")
    ops = []

    def check(step, model):
        assert_metadata_matches_cache(fused, manager)
        for a, b in zip(fused.metadata_to_numpy(), separate.metadata_to_numpy()):
            _assert_same_bits(a, b)  # every block, live or not
        ops.append(step.op)

    data_steps = run_trace(manager, [fused, separate], rng, num_ops=30, on_step=check)
    assert data_steps >= 1 and "add" in ops


def test_prefix_cache_hits_keep_their_metadata_and_reused_blocks_are_reset():
    rng = np.random.default_rng(1)
    manager = BlockManager(num_blocks=4, block_size=4, prefix_caching=True)
    cache = KVCache(4, 4, 1, 8, np.float32, page_metadata=True)

    def write(step, n):
        keys = rng.standard_normal((n, 1, 8)).astype(np.float32) * 10
        cache.apply(step, keys, keys)

    prompt = list(range(8))
    write(manager.add("a", prompt), 8)  # two full blocks, hashed
    manager.free("a")  # both stay cached
    before = cache.metadata_to_numpy()
    hit = manager.add("b", prompt + [99])  # two cache hits and one new block
    assert len(hit.cache_hits) == 2
    write(hit, 1)  # only the new token is written
    after = cache.metadata_to_numpy()
    for blk in hit.cache_hits:  # untouched: the keys are still there
        _assert_same_bits(after[0][blk], before[0][blk])
    assert_metadata_matches_cache(cache, manager)
    manager.free("b")
    step = manager.add("c", [7] * 16)  # evicts the cached blocks and reuses them
    assert step.evicted
    write(step, 16)
    assert_metadata_matches_cache(cache, manager)


def test_move_copies_the_metadata():
    manager = BlockManager(num_blocks=6, block_size=4)
    cache = KVCache(6, 4, 1, 8, np.float16, page_metadata=True)
    keys = np.arange(6 * 8, dtype=np.float16).reshape(6, 1, 8)
    cache.apply(manager.add("a", 6), keys, keys)
    src = manager.block_table("a")[0]
    step = manager.move([(src, 5)])
    cache.apply(step)
    assert_metadata_matches_cache(cache, manager)
    key_min, key_max = cache.metadata_to_numpy()
    assert key_min[5, 0, 0] == 0 and key_max[5, 0, 0] == 24  # tokens 0..3, channel 0


# --------------------------------------------------------------- the operations
def test_update_by_hand():
    key_min, key_max = empty_page_metadata(3, 1, 8, np.float32)
    key = np.zeros((3, 1, 8), np.float32)
    key[:, 0, 0] = [1.0, -2.0, 5.0]
    key[:, 0, 1] = [4.0, 3.0, -1.0]
    update_page_metadata(key, np.array([4, 5, -1], np.int64), key_min, key_max, block_size=4)
    assert key_min[1, 0, :2].tolist() == [-2.0, 3.0] and key_max[1, 0, :2].tolist() == [1.0, 4.0]
    assert np.isposinf(key_min[0]).all() and np.isneginf(key_max[2]).all()  # untouched blocks stay empty


def test_zeros_are_stored_as_positive_zero_and_nan_keys_are_ignored():
    key_min, key_max = empty_page_metadata(1, 1, 8, np.float16)
    key = np.zeros((2, 1, 8), np.float16)
    key[0, 0, :] = -0.0
    key[1, 0, 1] = np.nan
    key[0, 0, 1] = np.nan  # channel 1 is NaN in every token
    update_page_metadata(key, np.array([0, 1], np.int64), key_min, key_max, block_size=2)
    assert not np.signbit(key_min[0, 0, [0, 2, 3]]).any() and not np.signbit(key_max[0, 0, [0, 2]]).any()
    assert np.isposinf(key_min[0, 0, 1]) and np.isneginf(key_max[0, 0, 1])


@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float16, np.float32]),
    block_size=st.sampled_from([1, 3, 16]),
)
def test_fused_equals_reshape_and_cache_then_update(seed, dtype, block_size):
    rng = np.random.default_rng(seed)
    nb, heads, D = 6, 2, 16
    shape = (nb, block_size, heads, D)
    T = int(rng.integers(0, nb * block_size + 1))
    slots = rng.permutation(nb * block_size)[:T].astype(np.int64)
    slots[rng.random(T) < 0.2] = -1
    key = (rng.standard_normal((T, heads, D)) * rng.choice([1, 1e3], size=(T, heads, D))).astype(dtype)
    key[rng.random(key.shape) < 0.05] = 0.0
    key[rng.random(key.shape) < 0.05] = -0.0
    value = rng.standard_normal((T, heads, D)).astype(dtype)
    start_min, start_max = (rng.standard_normal((nb, heads, D)) * s for s in (1, 1))
    a = [np.zeros(shape, dtype), np.zeros(shape, dtype), start_min.astype(dtype), start_max.astype(dtype)]
    b = [x.copy() for x in a]
    reshape_and_cache_with_metadata(key, value, a[0], a[1], slots, a[2], a[3])
    reshape_and_cache(key, value, b[0], b[1], slots)
    update_page_metadata(key, slots, b[2], b[3], block_size)
    for x, y in zip(a, b):
        _assert_same_bits(x, y)
    # and the metadata is the exact min/max of the start values and the new keys
    real = slots >= 0
    for blk in np.unique(slots[real] // block_size):
        mine = key[real][slots[real] // block_size == blk]
        expect = np.minimum(start_min[blk].astype(dtype), mine.min(axis=0))
        assert (a[2][blk] == expect).all()


def test_reset_and_copy():
    key_min, key_max = (np.arange(4 * 8, dtype=np.float32).reshape(4, 1, 8) + k for k in (0, 100))
    reset_page_metadata(np.array([2, 2, 0], np.int64), key_min, key_max)
    assert np.isposinf(key_min[[0, 2]]).all() and np.isneginf(key_max[[0, 2]]).all()
    copy_page_metadata(key_min, key_max, np.array([[1, 0], [3, 2]], np.int64))
    assert (key_min[0] == key_min[1]).all() and (key_max[2] == key_max[3]).all()


# ----------------------------------------------------------------------- errors
def _meta():
    return empty_page_metadata(4, 2, 8, np.float16)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: reset_page_metadata(np.array([4], np.int64), *m), "outside"),
        (lambda m: reset_page_metadata(np.array([1], np.int32), *m), "int64"),
        (lambda m: update_page_metadata(np.zeros((1, 2, 8), np.float16), np.array([8], np.int64), *m, 2), "out of range"),
        (lambda m: update_page_metadata(np.zeros((2, 2, 8), np.float16), np.array([1, 1], np.int64), *m, 2), "twice"),
        (lambda m: update_page_metadata(np.zeros((1, 2, 8), np.float32), np.array([0], np.int64), *m, 2), "dtype"),
        (lambda m: update_page_metadata(np.zeros((1, 2, 8), np.float16), np.array([0], np.int64), *m, 0), "block_size"),
        (lambda m: update_page_metadata(np.zeros((1, 3, 8), np.float16), np.array([0], np.int64), *m, 2), "shape"),
        (lambda m: copy_page_metadata(*m, np.array([[0, 9]], np.int64)), "outside"),
        (lambda m: reset_page_metadata(np.array([0], np.int64), m[0], m[1][:2].copy()), "match"),
        (lambda m: reset_page_metadata(np.array([0], np.int64), m[0][:, :, ::2], m[1][:, :, ::2]), "contiguous"),
    ],
)
def test_bad_inputs_raise_and_change_nothing(call, match):
    meta = _meta()
    before = [m.copy() for m in meta]
    with pytest.raises(KernelInputError, match=match):
        call(meta)
    for m, b in zip(meta, before):
        _assert_same_bits(m, b)


def test_copy_conflicts_are_rejected():
    meta = _meta()
    with pytest.raises(CopyConflictError):
        copy_page_metadata(*meta, np.array([[0, 1], [1, 2]], np.int64))


def test_apply_checks_the_keys_before_copying_anything():
    manager = BlockManager(num_blocks=6, block_size=2)
    cache = KVCache(6, 2, 1, 8, np.float16, page_metadata=True)
    keys = np.ones((3, 1, 8), np.float16)
    cache.apply(manager.add("a", 3), keys, keys)
    manager.fork("a", "b")
    step = manager.append("b", 1)  # copy-on-write of the shared last block
    assert step.copies
    before = cache.to_numpy() + cache.metadata_to_numpy()
    with pytest.raises(KernelInputError):
        cache.apply(step, np.ones((1, 1, 8), np.float32), np.ones((1, 1, 8), np.float32))  # wrong dtype
    for a, b in zip(cache.to_numpy() + cache.metadata_to_numpy(), before):
        _assert_same_bits(a, b)


def test_a_cache_without_metadata_says_so():
    cache = KVCache(2, 2, 1, 8)
    assert not cache.has_page_metadata
    with pytest.raises(KernelInputError, match="page_metadata=True"):
        cache.metadata_to_numpy()
    with pytest.raises(KernelInputError, match="metadata_update"):
        KVCache(2, 2, 1, 8, page_metadata=True, metadata_update="lazy")
