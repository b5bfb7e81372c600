"""The claims row "15-25% better cache hit rate" comes from the policy study and follows it."""

from __future__ import annotations

import dataclasses

import pytest

from tinyserve_sim.claims.experiments import Experiments, Size
from tinyserve_sim.claims.hit_rate import CLAIM_SETTING, hit_rate_experiment
from tinyserve_sim.claims.verdicts import hit_rate_claim
from tinyserve_sim.selection.hit_rates import HitRateRow


def _row(e: Experiments):
    return hit_rate_claim(e)  # seed_claims(e)'s row 8, alone


def _experiments(rows: list[HitRateRow]) -> Experiments:
    """Experiments holding only the hit-rate study (the other rows are not read here)."""
    e = Experiments(Size("none", 1, 1, 1, 1))
    e.hit_rates = rows
    return e


@pytest.fixture(scope="module")
def study() -> list[HitRateRow]:
    return hit_rate_experiment("")  # the smallest size: 24 decode steps


def test_the_study_covers_the_stated_conditions(study) -> None:
    n = len(CLAIM_SETTING["topic_stays"]) * len(CLAIM_SETTING["budgets"]) * len(CLAIM_SETTING["capacities"])
    assert len(study) == n
    for r in study:
        assert set(r.hit_rates) == {"lru", "lfu", "score-aware"}
        assert r.belady >= max(r.hit_rates.values()) - 1e-12  # nothing beats the offline optimum
        assert r.steps == 24 and r.requests > 0


def test_the_row_is_computed_from_the_study(study) -> None:
    row = _row(_experiments(study))
    gains = [r.improvement for r in study]
    assert f"{100 * min(gains):+.1f}% to {100 * max(gains):+.1f}%" in row.measured
    assert row.verdict in {"holds", "holds under stated conditions", "does not hold"}
    assert "24 decode steps" in row.simulated


def _with_rate(rows: list[HitRateRow], score_aware: float, belady: float | None = None) -> list[HitRateRow]:
    """The study with every row's score-aware hit rate set to ``score_aware`` x LRU's."""
    out = []
    for r in rows:
        rates = {**r.hit_rates, "score-aware": r.hit_rates["lru"] * score_aware}
        out.append(dataclasses.replace(r, hit_rates=rates, belady=max(r.belady, rates["score-aware"], belady or 0)))
    return out


def test_the_verdict_moves_when_the_hit_rates_move(study) -> None:
    assert _row(_experiments(_with_rate(study, 1.20))).verdict == "holds"
    assert _row(_experiments(_with_rate(study, 1.01))).verdict == "does not hold"
    mixed = _with_rate(study[:1], 1.20) + _with_rate(study[1:], 1.0)
    row = _row(_experiments(mixed))
    assert row.verdict == "holds under stated conditions"
    assert study[0].condition in row.reason and "+20.0%" in row.reason
    assert "+0.0% to +20.0%" in row.measured


def test_the_explanation_follows_the_headroom(study) -> None:
    tight = [dataclasses.replace(r, belady=r.hit_rates["lru"] * 1.05, hit_rates={**r.hit_rates,
             "score-aware": r.hit_rates["lru"]}) for r in study]
    assert "no eviction policy can gain 15% here" in _row(_experiments(tight)).reason
    roomy = [dataclasses.replace(r, belady=r.hit_rates["lru"] * 1.3) for r in study]
    assert "there is room for a 15% gain" in _row(_experiments(roomy)).reason
