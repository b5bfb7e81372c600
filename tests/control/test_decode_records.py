"""A decode record drives the data plane exactly as the same one-token appends do.

One ``decode`` call returns one record for the batch: its copies (copy-on-write)
and its slot mapping (one slot per sequence, in batch order). Applied to a KV
cache with one key/value row per sequence, it must leave the cache bit for bit
as the equivalent appends, each applied with its own row, do. The GPU variant
applies the decode records on the CuPy backend and compares with NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest

from tinyserve_sim import BlockManager
from tinyserve_sim.data import KVCache

BLOCKS, BLOCK_SIZE, HEADS, DIM = 24, 4, 2, 8


def setup(manager: BlockManager) -> list:
    """Three sequences, one forked (its partly filled last block is shared): (record, keys, values) to apply."""
    rng = np.random.default_rng(0)
    steps = []
    for seq, n in (("a", 6), ("c", 4)):
        keys = rng.standard_normal((n, HEADS, DIM)).astype(np.float16)
        steps.append((manager.add(seq, n), keys, keys + 1))
    steps.append((manager.fork("a", "b"), None, None))
    return steps


def rows(step: int, count: int) -> np.ndarray:
    return np.random.default_rng(100 + step).standard_normal((count, HEADS, DIM)).astype(np.float16)


def run(backend: str, batched: bool) -> tuple[np.ndarray, np.ndarray, BlockManager]:
    manager = BlockManager(BLOCKS, BLOCK_SIZE)
    cache = KVCache(BLOCKS, BLOCK_SIZE, HEADS, DIM, backend=backend)
    for record, keys, values in setup(manager):
        cache.apply(record, keys, values)
    batch = ["a", "b", "c"]
    for step in range(7):  # crosses block boundaries; the first step copies on write
        keys = rows(step, len(batch))
        if batched:
            cache.apply(manager.decode(batch), keys, keys * 2)
        else:
            for i, seq in enumerate(batch):
                cache.apply(manager.append(seq, 1), keys[i : i + 1], keys[i : i + 1] * 2)
    key_cache, value_cache = cache.to_numpy()
    return key_cache, value_cache, manager


def test_decode_records_write_the_cache_as_the_appends_do():
    k1, v1, batched = run("numpy", batched=True)
    k2, v2, one_by_one = run("numpy", batched=False)
    assert np.array_equal(k1.view(np.uint16), k2.view(np.uint16))
    assert np.array_equal(v1.view(np.uint16), v2.view(np.uint16))
    assert [batched.block_table(s) for s in "abc"] == [one_by_one.block_table(s) for s in "abc"]


@pytest.mark.gpu
def test_decode_records_on_the_gpu_match_numpy_bit_for_bit():
    k1, v1, _ = run("cupy", batched=True)
    k2, v2, _ = run("numpy", batched=True)
    assert np.array_equal(k1.view(np.uint16), k2.view(np.uint16))
    assert np.array_equal(v1.view(np.uint16), v2.view(np.uint16))
