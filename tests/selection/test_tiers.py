"""The two-tier cache: capacity, accounting, and each policy's choice on hand-worked traces."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyserve_sim.data.backends import NumpyBackend
from tinyserve_sim.errors import ConfigError, InvalidArgumentError
from tinyserve_sim.selection.tiers import (
    POLICIES,
    EvictionPolicy,
    FastTier,
    PageStats,
    TwoTierCache,
    register_policy,
)

# The trace worked by hand in the tests below (capacity 3).
TRACE = [["A", "B", "C"], ["A"], ["D"], ["C", "E"], ["A", "D"]]


def test_lru_on_a_hand_worked_trace() -> None:
    # Ticks: A1 B2 C3 | A4 | D5 evicts B (oldest tick 2) | C6 hit, E7 evicts A (4 < D's 5)
    # | A8 evicts C (6 < E's 7), D9 hit.
    tier = TwoTierCache(3, "lru")
    records = [tier.access(step) for step in TRACE]
    assert [r.evicted for r in records] == [(), (), (("B", 1),), (("A", 0),), (("C", 2),)]
    assert [r.loads for r in records] == [(("A", 0), ("B", 1), ("C", 2)), (), (("D", 1),), (("E", 0),), (("A", 2),)]
    assert [r.hits for r in records] == [(), ("A",), (), ("C",), ("D",)]
    assert tier.resident() == ["E", "D", "A"]  # slot order
    assert (tier.hits, tier.misses, tier.requests, tier.evictions) == (3, 6, 9, 3)
    assert records[3].explain() == "step 3: 2 requested, 1 hit(s), 1 miss(es): load E evicting A"


def test_lfu_on_the_same_trace() -> None:
    # D: uses A2 B1 C1, B and C tie on 1 use: B is older -> evict B. E: A(2 uses) vs D(1) -> evict D.
    # D again: C(2 uses) vs E(1) -> evict E.
    tier = TwoTierCache(3, "lfu")
    records = [tier.access(step) for step in TRACE]
    assert [r.evicted for r in records] == [(), (), (("B", 1),), (("D", 1),), (("E", 1),)]
    assert [r.hits for r in records] == [(), ("A",), (), ("C",), ("A",)]
    assert tier.resident() == ["A", "D", "C"]


@pytest.mark.parametrize(("decay", "evicted"), [(0.0, "A"), (0.5, "B")])
def test_score_aware_keeps_the_highest_recent_scores(decay: float, evicted: str) -> None:
    """A scored 0 then -1.5, B -1 then -1: the latest score alone evicts A; the average
    (-0.75 for A) remembers that A mattered a step ago and evicts B."""
    from tinyserve_sim.selection.tiers import ScoreAware

    tier = TwoTierCache(2, ScoreAware(decay))
    tier.access(["A", "B"], {"A": 0.0, "B": -1.0})
    record = tier.access(["C"], {"A": -1.5, "B": -1.0, "C": 0.0})
    assert record.evicted[0][0] == evicted
    assert tier.stats("C").priority == 0.0


def test_invalidated_pages_leave_without_an_eviction() -> None:
    tier = TwoTierCache(2, "lru", page_bytes=5)
    tier.access(["a", "b"])
    assert tier.invalidate(["b", "zzz"]) == ["b"]
    record = tier.access(["c"])
    assert record.evicted == () and record.loads == (("c", 1),)  # b's slot was free again
    assert (tier.evictions, tier.misses, sorted(tier.resident())) == (0, 3, ["a", "c"])


def test_too_many_pages_in_one_step_changes_nothing() -> None:
    tier = TwoTierCache(2, "lru", page_bytes=10)
    tier.access(["a", "b"])
    before = (tier.resident(), tier.hits, tier.misses, tier.steps, tier.bytes_moved)
    with pytest.raises(InvalidArgumentError, match="3 pages requested in one step but the fast tier holds 2"):
        tier.access(["c", "d", "e"])
    assert (tier.resident(), tier.hits, tier.misses, tier.steps, tier.bytes_moved) == before


def test_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="unknown eviction policy 'fifo'"):
        TwoTierCache(4, "fifo")
    with pytest.raises(ConfigError, match="capacity"):
        TwoTierCache(0)
    with pytest.raises(ConfigError, match="already registered"):
        register_policy("lru")(EvictionPolicy)
    with pytest.raises(InvalidArgumentError, match="not in the fast tier"):
        TwoTierCache(1).slot_of("x")


def test_a_registered_policy_is_used() -> None:
    @register_policy("test-mru")
    class MostRecent(EvictionPolicy):
        def victim(self, candidates: list[PageStats]) -> PageStats:
            return max(candidates, key=lambda p: p.last_tick)

    try:
        tier = TwoTierCache(2, "test-mru")
        for step in (["a"], ["b"], ["c"]):
            record = tier.access(step)
        assert record.evicted == (("b", 1),)
    finally:
        del POLICIES["test-mru"]


steps_strategy = st.lists(st.lists(st.integers(0, 12), max_size=5), max_size=40)


@given(
    steps=steps_strategy,
    capacity=st.integers(5, 8),
    policy=st.sampled_from(["lru", "lfu", "score-aware"]),
    seed=st.integers(0, 2**16),
)
def test_capacity_accounting_and_residency(steps: list[list[int]], capacity: int, policy: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    loaded: list[tuple[int, int]] = []
    tier = TwoTierCache(capacity, policy, page_bytes=3, on_load=lambda page, slot: loaded.append((page, slot)))
    requested = 0
    for step in steps:
        scores = {page: float(rng.integers(-5, 1)) for page in range(13)}
        record = tier.access(step, scores)
        distinct = list(dict.fromkeys(step))
        requested += len(distinct)
        assert len(tier) <= capacity  # never more than C pages
        assert len(record.hits) + len(record.loads) == len(distinct)
        assert all(page in tier for page in distinct)  # what a step needs is resident
        assert not {page for page, _ in record.evicted} & set(distinct)  # never evict a page in use
        slots = [tier.slot_of(p) for p in tier.resident()]
        assert sorted(slots) == sorted(set(slots)) and all(0 <= s < capacity for s in slots)
    assert tier.hits + tier.misses == requested
    assert tier.bytes_moved == 3 * tier.misses
    assert len(loaded) == tier.misses


def test_fast_tier_copies_pages_in() -> None:
    fast = FastTier(NumpyBackend(), capacity=2, block_size=4, head_dim=8, dtype=np.float16)
    keys = np.arange(32, dtype=np.float16).reshape(4, 8)
    fast.load(1, keys, -keys)
    fast.write_token(1, 3, np.ones(8), np.zeros(8))
    k, v = fast.page(1)
    assert np.array_equal(k[:3], keys[:3]) and np.array_equal(v[:3], -keys[:3])
    assert np.array_equal(k[3], np.ones(8)) and fast.bytes_copied == fast.page_bytes == 2 * 4 * 8 * 2
    with pytest.raises(InvalidArgumentError, match="a page is"):
        fast.load(0, keys[:2], keys[:2])
