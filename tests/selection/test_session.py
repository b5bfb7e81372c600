"""A decode run with selection: budgets, reasons, bytes, quality, the fast tier's data, the sweep."""

from __future__ import annotations

import numpy as np
import pytest

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data.backends import NumpyBackend
from tinyserve_sim.data.cache import KVCache
from tinyserve_sim.data.reference import reference_paged_attention
from tinyserve_sim.errors import ConfigError, InvalidArgumentError, WorkloadError
from tinyserve_sim.selection import (
    NEWEST,
    SINK,
    TOP_K,
    AttentionWorkloadSpec,
    SelectionConfig,
    SelectionSession,
    budget_in_tokens,
    budget_sweep,
    generate_attention_workload,
    run_selection,
    select_step,
)
from tinyserve_sim.selection.quality import selected_token_mask

# 1023 prompt tokens: after the first decode step, 1024 tokens in 64 full pages.
SPEC = AttentionWorkloadSpec(num_seqs=2, context_len=1023, decode_steps=8, head_dim=64, seed=11)


@pytest.fixture(scope="module")
def workload():
    return generate_attention_workload(SPEC)


def test_every_row_keeps_sink_newest_and_the_budget(workload) -> None:
    session = SelectionSession(workload, SelectionConfig(budget=1 / 8, policies=()))
    for report in session:
        sel = report.selection
        assert sel.sparse.per_head and sel.sparse.seq_lens.max() <= session.budget_tokens
        for s in range(SPEC.num_seqs):
            n = int(sel.num_pages[s])
            for h in range(SPEC.num_kv_heads):
                kept = sel.selected(s, h)
                assert len(kept) == session.budget_tokens // 16
                assert sel.reasons[s, h, 0] == SINK and sel.reasons[s, h, n - 1] == NEWEST
                assert all(sel.reasons[s, h, i] == TOP_K for i in kept[1:-1])
                # Top-K: every page kept for its score scores at least as high as every page left out.
                middle = set(range(1, n - 1))
                chosen, left = set(kept[1:-1]), middle - set(kept)
                assert min(sel.scores[s, h, i] for i in chosen) >= max(sel.scores[s, h, i] for i in left)
                assert sel.physical_selected(s, h) == [int(sel.batch.block_tables[s, i]) for i in kept]
        assert "sink 0; newest" in sel.explain()


def test_bytes_and_the_byte_ceiling(workload) -> None:
    """64 full pages of 16, 8 selected: K/V bytes 1/8 of dense, metadata 1/16: ceiling 16/3."""
    session = SelectionSession(workload, SelectionConfig(budget=1 / 8, policies=(), quality=False))
    sel = session.step().selection
    row = 2 * SPEC.head_dim * 2  # K and V of one token of one head, fp16
    assert sel.dense_bytes == 2 * 1024 * SPEC.num_kv_heads * row
    assert sel.selected_bytes == 2 * SPEC.num_kv_heads * 128 * row
    assert sel.metadata_bytes == 2 * SPEC.num_kv_heads * 64 * row
    assert sel.byte_ceiling == pytest.approx(16 / 3)


def test_selecting_every_page_is_dense_attention(workload) -> None:
    run = run_selection(workload, SelectionConfig(budget=2048, policies=()))  # more than any sequence
    for report in run.steps:
        assert np.array_equal(report.selection.sparse.block_tables[:, 0, :], report.selection.batch.block_tables)
        assert report.quality.min_recall == 1.0 and report.quality.max_rel_error == 0.0


def test_the_needles_and_sinks_are_found(workload) -> None:
    """At a 1/8 budget the pages holding the step's needles are selected, and recall is high."""
    run = run_selection(workload, SelectionConfig(budget=1 / 8, policies=()))
    found = total = 0
    for i, report in enumerate(run.steps):
        sel = report.selection
        for s in range(SPEC.num_seqs):
            for h in range(SPEC.num_kv_heads):
                pages = set(sel.selected(s, h))
                needles = workload.important_tokens(s, h, i)["needle"]
                found += sum(int(t) // 16 in pages for t in needles)
                total += len(needles)
    assert found / total > 0.9
    assert run.mean_recall > 0.85 and run.min_recall > 0.5


def test_quality_error_is_bounded_by_recall(workload) -> None:
    """Sparse weights differ from dense ones by 2 (1 - recall) in total, so
    |o_sparse - o_dense| <= 2 (1 - recall) max_t |v_t|: the error follows the missed mass."""
    session = SelectionSession(workload, SelectionConfig(budget=1 / 16, policies=()))
    report = session.step()
    q, dense = report.quality, report.selection.batch
    key_cache, value_cache = session.host.to_numpy()
    scale = 1 / np.sqrt(SPEC.head_dim)
    o_dense = reference_paged_attention(workload.queries[0], key_cache, value_cache, dense, scale)
    assert q.min_recall < 1.0  # something was left out
    for s in range(SPEC.num_seqs):
        n = int(dense.seq_lens[s])
        v = workload.values[s, :n].astype(np.float64)  # [L, Hkv, D]
        for g in range(SPEC.num_q_heads):
            v_max = np.linalg.norm(v[:, g // SPEC.group_size], axis=-1).max()
            error = q.rel_error[s, g] * np.linalg.norm(o_dense[s, g])
            assert error <= 2 * (1 - q.recall[s, g]) * v_max * (1 + 1e-9) + 1e-12
    masks = selected_token_mask(dense, report.selection.sparse, SPEC.num_kv_heads)
    assert [int(m.sum()) for m in masks] == [int(report.selection.sparse.seq_lens[s].sum()) for s in range(2)]


def test_the_fast_tier_holds_the_pages_it_says(workload) -> None:
    """With move_data, after every step each resident page's copy equals the slow tier's page."""
    session = SelectionSession(workload, SelectionConfig(budget=1 / 8, capacity=1.25, move_data=True, quality=False))
    for report in session:
        for name, tier in session.tiers.items():
            fast = session.fast[name]
            assert len(tier) <= session.capacity
            assert set(report.requested) <= set(tier.resident())
            for block, head in tier.resident():
                keys, values = fast.page(tier.slot_of((block, head)))
                assert np.array_equal(keys, session.host.key_cache[block, :, head])
                assert np.array_equal(values, session.host.value_cache[block, :, head])
            assert report.tiers[name].bytes_moved == len(report.tiers[name].loads) * fast.page_bytes


class ElsewhereBackend(NumpyBackend):
    """The NumPy twins under another name: the session treats its cache as device memory,
    keeps a host copy as the slow tier and copies pages between them (the cupy path, on the CPU)."""

    name = "elsewhere"


def test_a_device_backend_keeps_a_host_slow_tier(workload) -> None:
    plain = run_selection(workload, SelectionConfig(budget=1 / 8, capacity=1.25, move_data=True))
    session = SelectionSession(workload, SelectionConfig(budget=1 / 8, capacity=1.25, move_data=True,
                                                         backend=ElsewhereBackend()))
    assert session.host is not session.cache
    steps = list(session)
    for a, b in zip(plain.steps, steps):
        assert np.array_equal(a.selection.scores, b.selection.scores)
        assert a.tiers == b.tiers and np.array_equal(a.quality.recall, b.quality.recall)
    assert np.array_equal(session.cache.key_cache, session.host.key_cache)
    for name, tier in session.tiers.items():
        for block, head in tier.resident():
            keys, _ = session.fast[name].page(tier.slot_of((block, head)))
            assert np.array_equal(keys, session.host.key_cache[block, :, head])


def test_session_errors(workload) -> None:
    with pytest.raises(ConfigError, match="cannot hold"):
        SelectionSession(workload, SelectionConfig(budget=1 / 8, capacity=10))
    with pytest.raises(ConfigError, match="unknown eviction policy"):
        SelectionConfig(policies=("mru",))
    with pytest.raises(InvalidArgumentError, match="fractional budget"):
        budget_in_tokens(1.5, 1024, 16)
    assert budget_in_tokens(1 / 32, 100, 16) == 32  # at least two pages
    session = SelectionSession(workload, SelectionConfig(policies=(), quality=False))
    for _ in session:
        pass
    with pytest.raises(WorkloadError, match="all were run"):
        session.step()
    plain = KVCache(4, 16, 2, 64)
    batch = DecodeBatch.from_tables([[0]], [5], block_size=16)
    with pytest.raises(InvalidArgumentError, match="no page metadata"):
        select_step(plain, np.zeros((1, 4, 64), np.float16), batch, 32)


def test_the_sweep_is_deterministic_and_recall_falls_with_the_budget() -> None:
    spec = AttentionWorkloadSpec(num_seqs=1, context_len=1024, decode_steps=4, head_dim=32, window=16, seed=4)
    budgets = (1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32)
    first, second = budget_sweep(spec, budgets), budget_sweep(spec, budgets)
    assert first == second
    recalls = [row.mean_recall for row in first]
    # Top-K sets are nested (same scores, smaller K), so recall can only fall as the budget shrinks.
    assert all(a >= b for a, b in zip(recalls, recalls[1:]))
    assert [row.budget_tokens for row in first] == [512, 256, 128, 64, 32]
    assert first[-1].byte_ceiling > first[0].byte_ceiling
