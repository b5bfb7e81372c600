"""CPU checks of the third-party tests' helpers: the replayed state really has forks,
copy-on-write and interleaved pages, and the project's own twin meets the agreement
bound against the float64 reference (so a failure on the GPU points at the other kernel)."""

from __future__ import annotations

import numpy as np
from third_party import agreement_bound, check_agreement, head_subset, replay_with_forks

from tinyserve_sim.data import paged_attention, reference_paged_attention


def test_the_replayed_state_has_forks_copy_on_write_and_scattered_pages():
    state = replay_with_forks([70, 45, 33], block_size=16, num_kv_heads=2, group=4, head_dim=64, seed=1)
    m = state.manager
    assert state.copies >= 2 and len(m.seq_ids()) == 5
    refs = m.pool.ref_counts()
    assert any(count >= 3 for count in refs)  # sequence 0's full pages, shared three ways
    table = m.block_table(0)
    assert any(b - a != 1 for a, b in zip(table, table[1:]))  # not one contiguous run
    assert state.batch.seq_lens.tolist() == [m.num_tokens(s) for s in m.seq_ids()]
    m.check_invariants()


def test_the_twin_meets_the_agreement_bound_on_a_replayed_state():
    state = replay_with_forks([300, 17], block_size=5, num_kv_heads=2, group=2, head_dim=64, seed=3, magnitude=3.0)
    args = (state.query, state.key_cache, state.value_cache, state.batch, state.scale)
    ours = paged_attention(*args)
    check_agreement(reference_paged_attention(*args), ours, agreement_bound(state), "float64 reference")


def test_large_shapes_can_skip_the_per_step_writes():
    state = replay_with_forks([64, 64], block_size=16, num_kv_heads=1, group=1, head_dim=8, seed=0,
                              write_values=False)
    assert np.isfinite(state.key_cache).all() and state.copies >= 2


def test_a_head_subset_has_the_bound_of_those_columns():
    state = replay_with_forks([90, 40], block_size=8, num_kv_heads=3, group=2, head_dim=16, seed=5, magnitude=2.0)
    sub, columns = head_subset(state, [0, 2])
    assert columns.tolist() == [0, 1, 4, 5]
    full = agreement_bound(state)
    assert np.array_equal(agreement_bound(sub), full[:, columns])
