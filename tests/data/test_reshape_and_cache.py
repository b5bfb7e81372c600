"""reshape_and_cache twin: semantics against a per-token loop, and input checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyserve_sim.data import reshape_and_cache
from tinyserve_sim.errors import KernelInputError


@given(
    num_blocks=st.integers(1, 12),
    block_size=st.integers(1, 9),
    heads=st.integers(1, 3),
    dtype=st.sampled_from([np.float16, np.float32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_each_token_lands_in_its_slot_and_padding_is_skipped(num_blocks, block_size, heads, dtype, seed):
    rng = np.random.default_rng(seed)
    cap = num_blocks * block_size
    T = int(rng.integers(0, cap + 1))
    slots = rng.permutation(cap)[:T].astype(np.int64)
    slots[rng.random(T) < 0.25] = -1
    key = rng.standard_normal((T, heads, 8)).astype(dtype)
    value = rng.standard_normal((T, heads, 8)).astype(dtype)
    kc = np.full((num_blocks, block_size, heads, 8), np.nan, dtype)
    vc = kc.copy()
    expect_k, expect_v = kc.copy(), vc.copy()
    for t in range(T):  # the definition, one token at a time
        if slots[t] >= 0:
            b, o = divmod(int(slots[t]), block_size)
            expect_k[b, o], expect_v[b, o] = key[t], value[t]
    reshape_and_cache(key, value, kc, vc, slots)
    np.testing.assert_array_equal(kc, expect_k)
    np.testing.assert_array_equal(vc, expect_v)


def _inputs(T=3, dtype=np.float16):
    kc = np.zeros((4, 2, 1, 8), dtype)
    return np.ones((T, 1, 8), dtype), np.ones((T, 1, 8), dtype), kc, kc.copy()


@pytest.mark.parametrize(
    "slots, match",
    [([0, 1, 8], "out of range"), ([0, 1, 1], "twice"), ([0, 1], "3 tokens but slot_mapping has 2")],
)
def test_bad_slot_mappings_are_rejected(slots, match):
    k, v, kc, vc = _inputs()
    with pytest.raises(KernelInputError, match=match):
        reshape_and_cache(k, v, kc, vc, np.array(slots, np.int64))
    assert not kc.any()  # nothing was written


def test_bad_dtypes_shapes_and_layouts_are_rejected():
    k, v, kc, vc = _inputs()
    slots = np.array([0, 1, 2], np.int64)
    with pytest.raises(KernelInputError, match="slot_mapping"):
        reshape_and_cache(k, v, kc, vc, slots.astype(np.int32))
    with pytest.raises(KernelInputError, match="dtype"):
        reshape_and_cache(k.astype(np.float32), v, kc, vc, slots)
    with pytest.raises(KernelInputError, match="contiguous"):
        reshape_and_cache(np.ones((6, 1, 8), np.float16)[::2], v, kc, vc, slots)
    with pytest.raises(KernelInputError, match="head_dim"):
        bad = np.zeros((4, 2, 1, 12), np.float16)
        reshape_and_cache(np.ones((3, 1, 12), np.float16), np.ones((3, 1, 12), np.float16), bad, bad.copy(), slots)
    with pytest.raises(KernelInputError, match="dtype"):
        reshape_and_cache(k.astype(np.float64), v.astype(np.float64), kc.astype(np.float64), vc.astype(np.float64), slots)
