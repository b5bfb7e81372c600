"""Latency against load: the vLLM paper's Fig. 12, and Fig. 13 from the same runs.

A server is fed requests at a steady rate (Poisson arrivals). Below the rate
it can sustain, a request waits little and its *normalised latency* (end-to-end
seconds divided by its output tokens; paper §6.1) stays near the time of one
iteration. Above it, requests arrive faster than they finish, the queue grows
for as long as the run lasts, and latency shoots up. How much memory a
manager wastes sets how many requests share an iteration, and so where that
knee lies.

:func:`sweep_rates` runs one workload per rate (the same seed at every rate)
against each memory manager with the scheduler and its time model, and
records each run's latency and batch. :meth:`RateSweep.sustainable_rate` reads
off the highest rate whose latency stays under a threshold, interpolating
linearly between the two rates around the crossing; the ratio of two
managers' sustainable rates is the paper's "vLLM sustains 1.7-2.7x higher
request rates than Orca (Oracle)". :meth:`RateSweep.batch` is Fig. 13's mean
number of batched requests at one of the rates.

Runs above a manager's knee only grow longer queues; once a manager has
passed the threshold at two rates in a row, its larger rates are skipped
(their latency is only higher), which saves most of a sweep's time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tinyserve_sim.errors import InvalidArgumentError
from tinyserve_sim.serving.catalog import make_memory
from tinyserve_sim.serving.generator import PRESETS, WorkloadSpec, generate
from tinyserve_sim.serving.scheduler import Scheduler, SchedulerConfig
from tinyserve_sim.serving.timing import TimeModel


def paper_rates(anchor: float, low: int, high: int) -> tuple[float, ...]:
    """Rates ``anchor * 2**(k/4)`` for ``k`` in ``low..high``: even steps on a log scale, through ``anchor``."""
    return tuple(round(anchor * 2 ** (k / 4), 4) for k in range(low, high + 1))


#: Default rates (requests/s) of each dataset: through the paper's Fig. 13 rates (ShareGPT 2, Alpaca 30),
#: low enough for Orca (Max) and high enough to pass paged memory's knee.
DEFAULT_RATES: dict[str, tuple[float, ...]] = {
    "sharegpt": paper_rates(2.0, -12, 3),  # 0.25 .. 3.36
    "alpaca": paper_rates(30.0, -16, 4),  # 1.88 .. 60
}
#: The rates of the paper's Fig. 13 (batched requests), per dataset.
FIG13_RATES: dict[str, float] = {"sharegpt": 2.0, "alpaca": 30.0}
#: Requests per run: enough for the queue of an overloaded server to show (Alpaca requests are short).
DEFAULT_REQUESTS: dict[str, int] = {"sharegpt": 1000, "alpaca": 3000}
#: Normalised latency (seconds per output token) above which a rate counts as not sustained.
DEFAULT_THRESHOLD = 0.25
#: vLLM's default cap on sequences per batch (``max_num_seqs``), which the paper's runs had.
SWEEP_MAX_SEQS = 256


@dataclass(frozen=True)
class RatePoint:
    """One run of a sweep.

    Attributes:
        manager, rate: what ran.
        latency: mean normalised latency, seconds per output token.
        batch: mean requests in the batch over time (Fig. 13): each step
            weighted by its duration.
        batch_seqs: mean sequences in the batch over time.
        preemptions: requests preempted by recomputation.
    """

    manager: str
    rate: float
    latency: float
    batch: float
    batch_seqs: float
    preemptions: int


@dataclass
class RateSweep:
    """The runs of one dataset at every rate, for every manager.

    Attributes:
        dataset: the length preset.
        rates: the rates swept, ascending.
        managers: the managers, in the order given.
        num_requests: requests per run; ``seed`` the workload's seed.
        time_model: the name of the time model the runs used.
        threshold: the latency (s/token) that defines a sustained rate.
        points: ``(manager, rate) -> RatePoint``; rates skipped past a knee are absent.
    """

    dataset: str
    rates: tuple[float, ...]
    managers: tuple[str, ...]
    num_requests: int
    seed: int
    time_model: str
    threshold: float
    points: dict[tuple[str, float], RatePoint] = field(default_factory=dict)

    def curve(self, manager: str) -> list[RatePoint]:
        """A manager's runs, by rate."""
        return [self.points[manager, r] for r in self.rates if (manager, r) in self.points]

    def sustainable_rate(self, manager: str, threshold: float | None = None) -> tuple[float, str]:
        """The highest rate at which ``manager``'s latency stays under ``threshold``, and a qualifier.

        Returns ``(rate, "")`` interpolated between the last rate under and
        the first over; ``(lowest rate, "<")`` when even the lowest rate is
        over; ``(highest rate, ">=")`` when every rate is under.
        """
        limit = self.threshold if threshold is None else threshold
        curve = self.curve(manager)
        if not curve:
            raise InvalidArgumentError(f"no runs of {manager!r} in this sweep")
        if curve[0].latency > limit:
            return curve[0].rate, "<"
        for below, above in zip(curve, curve[1:]):
            if above.latency > limit:
                share = (limit - below.latency) / (above.latency - below.latency)
                return below.rate + share * (above.rate - below.rate), ""
        return curve[-1].rate, ">="

    def ratio(self, manager: str, baseline: str, threshold: float | None = None) -> tuple[float, str]:
        """``manager``'s sustainable rate over ``baseline``'s, with a qualifier when either is a bound.

        ``">="`` means the ratio is at least the figure (the manager beat every
        rate, or the baseline failed them all); ``"<="`` at most; ``"?"`` unknown.
        """
        top, top_q = self.sustainable_rate(manager, threshold)
        bottom, bottom_q = self.sustainable_rate(baseline, threshold)
        # A bound on the numerator bounds the ratio the same way; on the denominator, the other way.
        directions = {{">=": ">=", "<": "<="}.get(top_q, ""), {">=": "<=", "<": ">="}.get(bottom_q, "")} - {""}
        qualifier = directions.pop() if len(directions) == 1 else ("?" if directions else "")
        return top / bottom, qualifier

    def batch(self, manager: str, rate: float) -> float:
        """Mean requests in the batch of ``manager`` at ``rate``, over time (Fig. 13); NaN if that run was skipped."""
        point = self.points.get((manager, rate))
        return point.batch if point is not None else math.nan


def _check_sweep(dataset: str, rates: Sequence[float], managers: Sequence[str], num_requests: int,
                 threshold: float) -> None:
    if dataset not in PRESETS:
        raise InvalidArgumentError(f"unknown dataset {dataset!r}; choose one of {', '.join(PRESETS)}")
    if not rates:
        raise InvalidArgumentError("a sweep needs at least one rate")
    for rate in rates:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (math.isfinite(rate) and rate > 0):
            raise InvalidArgumentError(f"every rate must be a positive finite number of requests/s, got {rate!r}")
    if not managers:
        raise InvalidArgumentError("a sweep needs at least one manager")
    if isinstance(num_requests, bool) or not isinstance(num_requests, int) or num_requests < 1:
        raise InvalidArgumentError(f"a sweep needs at least 1 request per run, got {num_requests!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
        math.isfinite(threshold) and threshold > 0
    ):
        raise InvalidArgumentError(f"the latency threshold must be a positive number of seconds, got {threshold!r}")


def sweep_rates(
    dataset: str,
    managers: Sequence[str] = ("paged-16", "max", "pow2", "oracle"),
    rates: Sequence[float] | None = None,
    num_requests: int | None = None,
    time_model: TimeModel | None = None,
    capacity: int | None = None,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    max_running_seqs: int = SWEEP_MAX_SEQS,
    progress: Callable[[str], None] | None = None,
) -> RateSweep:
    """Run ``dataset`` at every rate against every manager; see the module doc.

    Args:
        rates: requests/s (default :data:`DEFAULT_RATES`); sorted ascending.
        num_requests: requests per run (default :data:`DEFAULT_REQUESTS`).
        time_model: default: the scheduler's default, the paper's setting.
        capacity: KV slots (default: the time model's KV capacity).
        threshold: seconds per output token; used to skip runs past a knee.
        progress: called with a label before each run.
    """
    rates = tuple(sorted(DEFAULT_RATES.get(dataset, ()) if rates is None else rates))
    count = DEFAULT_REQUESTS.get(dataset, 1000) if num_requests is None else num_requests
    _check_sweep(dataset, rates, managers, count, threshold)
    config = SchedulerConfig(max_running_seqs=max_running_seqs, time_model=time_model)
    timer = config.timer()
    slots = timer.kv_capacity_tokens if capacity is None else capacity
    memories = {name: make_memory(name, slots) for name in managers}  # checks every name before running
    del memories
    sweep = RateSweep(dataset, rates, tuple(managers), count, seed, timer.name, threshold)
    over = dict.fromkeys(managers, 0)  # consecutive rates over the threshold
    for rate in rates:
        workload = generate(WorkloadSpec(dataset, num_requests=count, rate=rate, seed=seed))
        for name in managers:
            if over[name] >= 2:
                continue  # past the knee: larger rates only queue longer
            if progress is not None:
                progress(f"{dataset} {rate:g} req/s, {name}")
            result = Scheduler(workload, make_memory(name, slots), config).run()
            summary = result.summary
            sweep.points[name, rate] = RatePoint(
                name, rate, summary.mean_latency_per_token, result.log.time_mean("running_requests"),
                result.log.time_mean("running_seqs"), summary.preemptions,
            )
            over[name] = over[name] + 1 if summary.mean_latency_per_token > threshold else 0
    return sweep
