"""copy_blocks twin: whole-block copies, and conflict detection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyserve_sim.data import copy_blocks
from tinyserve_sim.errors import CopyConflictError, KernelInputError


@given(num_blocks=st.integers(2, 30), seed=st.integers(0, 2**32 - 1))
def test_destinations_get_their_sources_and_nothing_else_changes(num_blocks, seed):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_blocks)
    P = int(rng.integers(0, num_blocks // 2 + 1))
    mapping = np.stack([perm[:P], perm[P : 2 * P]], axis=1).astype(np.int64)
    kc = rng.standard_normal((num_blocks, 3, 2, 8)).astype(np.float16)
    vc = rng.standard_normal((num_blocks, 3, 2, 8)).astype(np.float16)
    k0, v0 = kc.copy(), vc.copy()
    copy_blocks(kc, vc, mapping)
    dst = set(mapping[:, 1].tolist())
    for src, d in mapping:
        np.testing.assert_array_equal(kc[d], k0[src])
        np.testing.assert_array_equal(vc[d], v0[src])
    for b in range(num_blocks):
        if b not in dst:
            np.testing.assert_array_equal(kc[b], k0[b])


@pytest.mark.parametrize(
    "pairs, error",
    [
        ([[0, 1], [2, 1]], CopyConflictError),  # one destination twice
        ([[0, 1], [1, 2]], CopyConflictError),  # block 1 read and written
        ([[3, 3]], CopyConflictError),  # a self copy reads what it writes
        ([[0, 4]], KernelInputError),  # out of range
        ([[-1, 2]], KernelInputError),
    ],
)
def test_conflicting_or_out_of_range_mappings_are_rejected(pairs, error):
    kc = np.arange(4 * 8, dtype=np.float16).reshape(4, 1, 1, 8)
    vc = kc.copy()
    before = kc.copy()
    with pytest.raises(error):
        copy_blocks(kc, vc, np.array(pairs, np.int64))
    np.testing.assert_array_equal(kc, before)


def test_mapping_must_be_int64_pairs():
    kc = np.zeros((4, 1, 1, 8), np.float16)
    with pytest.raises(KernelInputError):
        copy_blocks(kc, kc.copy(), np.array([[0, 1]], np.int32))
    with pytest.raises(KernelInputError):
        copy_blocks(kc, kc.copy(), np.array([0, 1, 2], np.int64))
