"""Bad input to query-aware selection (the ``select`` command, the selection kernels' twins, the
seed heuristics, the two-tier cache, the session and its studies): each raises the project's own
error naming the problem, before any work, and leaves the state exactly as it was.

Found by an input-validation audit; every case here failed before its fix (a raw Python error,
a traceback and exit status 1, a changed state, or a silently accepted NaN or duplicate).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tinyserve_sim.cli import app
from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data.page_scores import page_scores, page_scores_reference
from tinyserve_sim.data.seed_heuristics import adaptive_cache_management, cache_selection, query_analysis
from tinyserve_sim.data.select_pages import compact_tables, select_page_indices, selected_lengths
from tinyserve_sim.errors import ConfigError, InvalidArgumentError, KernelInputError, SimError, WorkloadError
from tinyserve_sim.selection import (
    AttentionWorkloadSpec,
    SelectionConfig,
    SelectionRun,
    SelectionSession,
    TwoTierCache,
    belady_hit_rate,
    budget_in_tokens,
    budget_sweep,
    generate_attention_workload,
    hit_rate_study,
    replay_tiers,
)
from tinyserve_sim.selection.tiers import ScoreAware

F16, F32, I32 = np.float16, np.float32, np.int32
runner = CliRunner()


# ------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize(
    "args",
    [
        ["run", "--steps", "0"],  # was ZeroDivisionError in byte_ceiling
        ["sweep", "--steps", "0"],  # was min() of an empty sequence
        ["run", "--seed", "-5"],  # was NumPy's ValueError
        ["sweep", "--seed", "-1"],
        ["run", "--capacity", "inf"],  # was OverflowError
        ["sweep", "--plot", "{tmp}/x.foo"],  # was matplotlib's ValueError, after the sweep
        ["policies", "--plot", "{tmp}/x.foo"],
        ["run", "--seqs", "100000000", "--quiet"],  # was numpy's _ArrayMemoryError
        ["run", "--context", "10000000000"],
        ["sweep", "--context", "100000000"],
        ["run", "--steps", "1", "--context", "256", "--json", "{tmp}/missing/x.json"],  # was checked after the run
        ["run", "--quiet", "--capacity", "1e300"],  # was a MemoryError building the tier's slot list
    ],
    ids=lambda args: " ".join(args),
)
def test_a_select_mistake_is_one_line_and_exit_status_2_before_any_work(args: list[str], tmp_path) -> None:
    result = runner.invoke(app, ["select", *(a.format(tmp=tmp_path) for a in args)])
    assert result.exit_code == 2, (result.exit_code, result.exception, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""  # nothing ran: no step, no table


# ------------------------------------------------------------------ seed heuristics
C, R, H = np.ones(3, F32), np.ones(3, I32), np.ones(3, I32)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: query_analysis([[1.0, 2.0]]), "NumPy or CuPy array"),
        (lambda: query_analysis(np.ones((2, 8), F32), "a"), "low_threshold must be a real number"),
        (lambda: query_analysis(np.ones((2, 8), F32), [0.1, 0.2]), "low_threshold must be a real number"),
        (lambda: query_analysis(np.ones((2, 8), F32), 0.1, 10**400), "high_threshold must be finite"),
        (lambda: cache_selection([1.0], [1], [1], 0.5), "complexity must be a NumPy or CuPy array"),
        (lambda: cache_selection(C, R, H, 1j), "threshold must be a real number"),
        (lambda: cache_selection(C, R, H, "x"), "threshold must be a real number"),
        (lambda: cache_selection(np.array([0.5, np.nan, 1], F32), R, H, 0.5), r"NaN at complexity\[1\]"),
        (lambda: adaptive_cache_management(C, H, R, "a", 10), "hit_rate_threshold must be a real number"),
        (lambda: adaptive_cache_management([0.1], [1], [1], 0.5, 10), "hit_rates must be a NumPy or CuPy array"),
        (lambda: adaptive_cache_management(np.array([0.5, np.nan], F32), H[:2], R[:2], 0.5, 1), r"hit_rates\[1\]"),
        (lambda: adaptive_cache_management(np.array([1.5], F32), H[:1], R[:1], 0.5, 1), r"in \[0, 1\]"),
    ],
)
def test_seed_heuristics_refuse_bad_input(call: Callable[[], Any], match: str) -> None:
    with pytest.raises(KernelInputError, match=match):
        call()


# ------------------------------------------------------- page scores, selection, compaction
def scored_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray, DecodeBatch, np.ndarray]:
    """Two sequences (8 and 3 pages of 4 tokens), 2 KV heads; the query, metadata, batch and scores."""
    batch = DecodeBatch.from_tables([list(range(8)), [8, 9, 10, -1, -1, -1, -1, -1]], [30, 9], 4)
    rng = np.random.default_rng(0)
    key_min = rng.standard_normal((16, 2, 8)).astype(F16)
    key_max = (key_min + 1).astype(F16)
    query = rng.standard_normal((2, 4, 8)).astype(F16)
    return query, key_min, key_max, batch, page_scores(query, key_min, key_max, batch)


def _logical(rows: list[list[int]]) -> np.ndarray:
    """Both heads of sequence 0 get ``rows``; sequence 1 keeps its 3 pages."""
    return np.array([[rows[0], rows[0]], [[0, 1, 2, -1][: len(rows[0])]] * 2], I32)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda q, lo, hi, b, s: page_scores(q.tolist(), lo, hi, b), "query must be a NumPy or CuPy array"),
        (lambda q, lo, hi, b, s: page_scores_reference(q.tolist(), lo, hi, b), "query must be"),
        (lambda q, lo, hi, b, s: page_scores(q, lo.tolist(), hi, b), "key_min must be"),
        (lambda q, lo, hi, b, s: select_page_indices(s.tolist(), b, 8), "scores must be a NumPy or CuPy array"),
        (lambda q, lo, hi, b, s: compact_tables(b, np.full_like(select_page_indices(s, b, 8), 99)), "= 99"),
        (lambda q, lo, hi, b, s: compact_tables(b, select_page_indices(s, b, 8).astype(float)), "integer array"),
        (lambda q, lo, hi, b, s: compact_tables(b, select_page_indices(s, b, 8).tolist()), "NumPy or CuPy array"),
        (lambda q, lo, hi, b, s: compact_tables(b, select_page_indices(s, b, 8)[0]), r"\[S, Hkv, K'\]"),
        (lambda q, lo, hi, b, s: compact_tables(None, select_page_indices(s, b, 8)), "batch must be a DecodeBatch"),
        (lambda q, lo, hi, b, s: compact_tables(b, _logical([[0, 5, 9]])), "= 9"),  # past the row's 8 pages
        (lambda q, lo, hi, b, s: compact_tables(b, _logical([[0, -5, 7]])), "= -5"),
        (lambda q, lo, hi, b, s: compact_tables(b, _logical([[0, 0, 7]])), "increasing"),  # counted twice
        (lambda q, lo, hi, b, s: compact_tables(b, _logical([[0, -1, 7]])), "padding"),
        (lambda q, lo, hi, b, s: selected_lengths(None, 2, 8), "batch must be a DecodeBatch"),
    ],
)
def test_selection_kernels_refuse_bad_input(call: Callable[..., Any], match: str) -> None:
    with pytest.raises(KernelInputError, match=match):
        call(*scored_batch())


# ------------------------------------------------------- budgets, configs, workloads, sessions
SMALL = AttentionWorkloadSpec(num_seqs=1, context_len=128, decode_steps=2, num_kv_heads=1, num_q_heads=1,
                              head_dim=16, window=8, num_topics=2, needles_per_topic=1)


def _run(**config: Any) -> SelectionRun:
    return SelectionSession(generate_attention_workload(SMALL), SelectionConfig(**config)).run()


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: budget_in_tokens(0.5, 1024, 0), InvalidArgumentError, "block_size"),
        (lambda: budget_in_tokens("a", 1024, 16), InvalidArgumentError, "budget must be"),
        (lambda: budget_in_tokens(None, 1024, 16), InvalidArgumentError, "budget must be"),
        (lambda: SelectionConfig(capacity="a"), ConfigError, "capacity"),
        (lambda: SelectionConfig(capacity=float("inf")), ConfigError, "capacity"),
        (lambda: SelectionConfig(policies=None), ConfigError, "policies"),
        (lambda: SelectionConfig(score_decay="a"), ConfigError, "decay"),
        (lambda: SelectionConfig(budget="a"), ConfigError, "budget"),
        (lambda: AttentionWorkloadSpec(seed=-5), WorkloadError, "seed"),
        (lambda: AttentionWorkloadSpec(seed=1.5), WorkloadError, "seed"),
        (lambda: AttentionWorkloadSpec(seed="a"), WorkloadError, "seed"),
        (lambda: AttentionWorkloadSpec(topic_stay="a"), WorkloadError, "topic_stay"),
        (lambda: AttentionWorkloadSpec(num_seqs=10**8), WorkloadError, "too large"),
        (lambda: AttentionWorkloadSpec(context_len=10**10), WorkloadError, "too large"),
        (lambda: TwoTierCache(2, page_bytes="a"), ConfigError, "page_bytes"),
        (lambda: TwoTierCache(2, policy=["lru"]), ConfigError, "unknown eviction policy"),
        (lambda: ScoreAware("a"), ConfigError, "decay"),
        (lambda: belady_hit_rate([["a"], ["b"]], "a"), InvalidArgumentError, "capacity"),
        (lambda: belady_hit_rate(None, 2), InvalidArgumentError, "requests"),
        (lambda: belady_hit_rate([[["a"]]], 2), InvalidArgumentError, "hashable"),
        (lambda: _run(budget=64, policies=("lru",)).bytes_moved("foo"), InvalidArgumentError, "'foo'"),
        (lambda: SelectionRun(SelectionConfig(), 64, 8).byte_ceiling, WorkloadError, "no decode steps"),
        (lambda: SelectionRun(SelectionConfig(), 64, 8).min_recall, WorkloadError, "no quality"),
        (lambda: _run(budget=64, capacity=float(2**40)), ConfigError, "pages a fast tier"),
        (lambda: SelectionSession(None), InvalidArgumentError, "workload must be"),
        (lambda: SelectionSession(generate_attention_workload(SMALL), "cfg"), InvalidArgumentError, "config"),
        (lambda: budget_sweep(None, (0.5,)), WorkloadError, "spec must be"),
        (lambda: budget_sweep(SMALL, None), ConfigError, "budgets"),
        (lambda: hit_rate_study(None), ConfigError, "specs"),
        (lambda: hit_rate_study([SMALL], score_decay="a"), ConfigError, "decay"),
        (lambda: replay_tiers(None, 8, ["lru"]), InvalidArgumentError, "steps"),
    ],
)
def test_the_selection_api_names_the_bad_argument(call: Callable[[], Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()


# -------------------------------------------------- the two-tier cache: a failed call changes nothing
def tier_state(tier: TwoTierCache) -> tuple:
    """Everything an access can change: counters, tick, free slots, every resident page's stats."""
    pages = sorted((repr(p), tier.stats(p)) for p in tier.resident())
    return (tier.hits, tier.misses, tier.evictions, tier.bytes_moved, tier.steps, tier._tick,
            list(tier._free_slots), [(key, vars(stats)) for key, stats in pages])


def warm_tier(policy: str) -> TwoTierCache:
    tier = TwoTierCache(3, policy, page_bytes=7)
    tier.access(["a", "b"], {"a": 1.0, "b": 2.0})
    tier.access(["b", ("blk", 0)], {"b": 0.5, ("blk", 0): -1.0})
    return tier


@pytest.mark.parametrize("policy", ["lru", "lfu", "score-aware"])
@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.access(["a", "c"], {"a": 5.0, "c": "bad"}),  # the audit's: a's priority and the tick moved
        lambda t: t.access(["a", "c"], {"a": 5.0, "c": float("nan")}),
        lambda t: t.access(["c", ["unhashable"]]),
        lambda t: t.access(None),
        lambda t: t.access(5),
        lambda t: t.access(["a"], 5),
        lambda t: t.invalidate(["a", ["unhashable"]]),  # "a" is not dropped before the bad page is seen
        lambda t: t.invalidate(None),
        lambda t: t.slot_of(["a"]),
    ],
)
def test_a_failed_tier_call_changes_nothing(policy: str, call: Callable[[TwoTierCache], Any]) -> None:
    tier = warm_tier(policy)
    before = tier_state(tier)
    with pytest.raises(InvalidArgumentError):
        call(tier)
    assert tier_state(tier) == before


junk_page = st.one_of(st.integers(-3, 5), st.text(max_size=2), st.none(), st.lists(st.integers(), max_size=2),
                      st.tuples(st.integers(0, 3), st.integers(0, 1)))
junk_score = st.one_of(st.floats(allow_nan=True), st.integers(-5, 5), st.text(max_size=2), st.none(), st.booleans())


@settings(max_examples=150, deadline=None)
@given(
    policy=st.sampled_from(["lru", "lfu", "score-aware"]),
    requested=st.one_of(st.lists(junk_page, max_size=5), st.none(), st.integers(), st.text(max_size=3)),
    scores=st.one_of(st.none(), st.dictionaries(st.integers(-3, 5), junk_score, max_size=4),
                     st.lists(st.floats(), max_size=2), st.integers()),
)
def test_tier_access_with_junk_either_works_or_changes_nothing(policy: str, requested: Any, scores: Any) -> None:
    tier = warm_tier(policy)
    before = tier_state(tier)
    try:
        tier.access(requested, scores)
    except SimError:
        assert tier_state(tier) == before
