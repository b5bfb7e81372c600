"""Latency against load: deterministic for a seed, knees where the memory says, rates read off correctly."""

from __future__ import annotations

import pytest

from tinyserve_sim.errors import InvalidArgumentError, WorkloadError
from tinyserve_sim.serving.rate_sweep import RatePoint, RateSweep, paper_rates, sweep_rates
from tinyserve_sim.serving.timing import ConstantTime


@pytest.fixture(scope="module")
def small() -> RateSweep:
    return sweep_rates("sharegpt", ("paged-16", "max"), rates=(0.25, 0.5, 1.0, 2.0, 4.0), num_requests=120)


def test_the_sweep_is_deterministic_for_a_seed(small) -> None:
    again = sweep_rates("sharegpt", ("paged-16", "max"), rates=(0.25, 0.5, 1.0, 2.0, 4.0), num_requests=120)
    assert again.points == small.points
    other = sweep_rates("sharegpt", ("paged-16", "max"), rates=(0.25, 0.5, 1.0, 2.0, 4.0), num_requests=120, seed=1)
    assert other.points != small.points


def test_paged_memory_sustains_a_higher_rate_than_max(small) -> None:
    paged, _ = small.sustainable_rate("paged-16")
    worst, _ = small.sustainable_rate("max")
    assert paged > 1.5 * worst
    assert small.ratio("paged-16", "max")[0] == pytest.approx(paged / worst)
    # Past its knee a manager's larger rates are skipped: its latency only grows there.
    assert len(small.curve("max")) < len(small.rates)
    # Latency grows with the load; so does the batch, until memory caps it.
    for curve in (small.curve("paged-16"), small.curve("max")):
        assert all(a.latency <= b.latency * 1.05 for a, b in zip(curve, curve[1:]))


def test_the_batch_follows_the_time_model() -> None:
    """Below the knee, a slower iteration keeps each request longer: a larger batch (Little's law)."""
    fast = sweep_rates("alpaca", ("paged-16",), rates=(8.0,), num_requests=300, time_model=ConstantTime(0.02))
    slow = sweep_rates("alpaca", ("paged-16",), rates=(8.0,), num_requests=300, time_model=ConstantTime(0.06))
    assert slow.batch("paged-16", 8.0) > 2 * fast.batch("paged-16", 8.0)


def _sweep(latencies: dict[float, float]) -> RateSweep:
    sweep = RateSweep("sharegpt", tuple(latencies), ("a",), 1, 0, "t", 0.25)
    for rate, latency in latencies.items():
        sweep.points["a", rate] = RatePoint("a", rate, latency, 1.0, 1.0, 0)
    return sweep


def test_the_sustainable_rate_interpolates_at_the_threshold() -> None:
    sweep = _sweep({1.0: 0.05, 2.0: 0.15, 3.0: 0.35})
    assert sweep.sustainable_rate("a") == (pytest.approx(2.5), "")  # 0.25 is halfway from 0.15 to 0.35
    assert sweep.sustainable_rate("a", threshold=0.1) == (pytest.approx(1.5), "")
    assert sweep.sustainable_rate("a", threshold=1.0) == (3.0, ">=")
    assert sweep.sustainable_rate("a", threshold=0.01) == (1.0, "<")


def test_ratios_say_when_they_are_bounds() -> None:
    sweep = _sweep({1.0: 0.05, 2.0: 0.05})
    sweep.managers = ("a", "b")
    for rate, latency in {1.0: 0.05, 2.0: 0.45}.items():
        sweep.points["b", rate] = RatePoint("b", rate, latency, 1.0, 1.0, 0)
    assert sweep.ratio("a", "b") == (pytest.approx(2.0 / 1.5), ">=")  # a never crossed: at least
    assert sweep.ratio("b", "a") == (pytest.approx(1.5 / 2.0), "<=")


def test_paper_rates_go_through_the_anchor() -> None:
    rates = paper_rates(2.0, -4, 4)
    assert rates[4] == 2.0 and rates[0] == 1.0 and rates[-1] == 4.0


@pytest.mark.parametrize("kwargs", [
    {"dataset": "nope"}, {"rates": ()}, {"rates": (1.0, -2.0)}, {"rates": (float("nan"),)},
    {"managers": ()}, {"num_requests": 0}, {"threshold": 0}, {"threshold": float("inf")},
])
def test_bad_sweeps_are_refused(kwargs) -> None:
    args = {"dataset": "sharegpt", "rates": (1.0,), "num_requests": 5, **kwargs}
    with pytest.raises(InvalidArgumentError):
        sweep_rates(**args)
    with pytest.raises(WorkloadError):
        sweep_rates("sharegpt", ("nope",), rates=(1.0,), num_requests=5)
