"""Latency against load: deterministic for a seed, knees where the memory says, rates read off correctly."""

from __future__ import annotations

import math

import pytest

from tinyserve_sim.errors import InvalidArgumentError, WorkloadError
from tinyserve_sim.serving.rate_sweep import RatePoint, RateSweep, paper_rates, sweep_rates
from tinyserve_sim.serving.timing import ConstantTime


@pytest.fixture(scope="module")
def small() -> RateSweep:
    return sweep_rates("sharegpt", ("paged-16", "max"), rates=(0.25, 0.5, 1.0, 2.0, 4.0), duration=150)


def test_the_sweep_is_deterministic_for_a_seed(small) -> None:
    again = sweep_rates("sharegpt", ("paged-16", "max"), rates=(0.25, 0.5, 1.0, 2.0, 4.0), duration=150)
    assert again.points == small.points
    other = sweep_rates("sharegpt", ("paged-16", "max"), rates=(0.25, 0.5, 1.0, 2.0, 4.0), duration=150, seed=1)
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
    fast = sweep_rates("alpaca", ("paged-16",), rates=(8.0,), duration=40, time_model=ConstantTime(0.02))
    slow = sweep_rates("alpaca", ("paged-16",), rates=(8.0,), duration=40, time_model=ConstantTime(0.06))
    assert slow.batch("paged-16", 8.0) > 2 * fast.batch("paged-16", 8.0)


def _sweep(latencies: dict[float, float]) -> RateSweep:
    sweep = RateSweep("sharegpt", tuple(latencies), ("a",), 1.0, 0, "t", 0.25)
    for rate, latency in latencies.items():
        sweep.points["a", rate] = RatePoint("a", rate, 1, latency, 1.0, 1.0, 0)
    return sweep


def test_the_sustainable_rate_interpolates_at_the_threshold() -> None:
    """Between the rates around the crossing, the logarithm of the latency is interpolated linearly."""
    sweep = _sweep({1.0: 0.05, 2.0: 0.1, 3.0: 0.4})
    assert sweep.sustainable_rate("a", threshold=0.2) == (pytest.approx(2.5), "")  # 0.2: halfway from 0.1 to 0.4
    assert sweep.sustainable_rate("a", threshold=0.1 * 2**0.25) == (pytest.approx(2.125), "")
    assert sweep.sustainable_rate("a", threshold=0.0707) == (pytest.approx(1.5, abs=1e-3), "")
    assert sweep.sustainable_rate("a", threshold=1.0) == (3.0, ">=")
    assert sweep.sustainable_rate("a", threshold=0.01) == (1.0, "<")


def test_ratios_say_when_they_are_bounds() -> None:
    sweep = _sweep({1.0: 0.05, 2.0: 0.05})
    sweep.managers = ("a", "b")
    for rate, latency in {1.0: 0.05, 2.0: 0.45}.items():
        sweep.points["b", rate] = RatePoint("b", rate, 1, latency, 1.0, 1.0, 0)
    crossing = 1.0 + math.log(0.25 / 0.05) / math.log(0.45 / 0.05)  # where b's latency reaches 0.25
    assert sweep.ratio("a", "b") == (pytest.approx(2.0 / crossing), ">=")  # a never crossed: at least
    assert sweep.ratio("b", "a") == (pytest.approx(crossing / 2.0), "<=")


def test_paper_rates_go_through_the_anchor() -> None:
    rates = paper_rates(2.0, -4, 4)
    assert rates[4] == 2.0 and rates[0] == 1.0 and rates[-1] == 4.0


@pytest.mark.parametrize("kwargs", [
    {"dataset": "nope"}, {"rates": ()}, {"rates": (1.0, -2.0)}, {"rates": (float("nan"),)},
    {"managers": ()}, {"duration": 0}, {"duration": -1.0}, {"duration": 10**12}, {"threshold": 0},
    {"threshold": float("inf")},
])
def test_bad_sweeps_are_refused(kwargs) -> None:
    args = {"dataset": "sharegpt", "rates": (1.0,), "duration": 5.0, **kwargs}
    with pytest.raises(InvalidArgumentError):
        sweep_rates(**args)
    with pytest.raises(WorkloadError):
        sweep_rates("sharegpt", ("nope",), rates=(1.0,), duration=5.0)


def test_every_run_covers_the_same_span_of_arrivals(small) -> None:
    assert [p.requests for p in small.curve("paged-16")] == [38, 75, 150, 300, 600]
