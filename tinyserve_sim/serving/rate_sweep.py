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
records each run's latency and batch. Every run covers the same span of
arrivals (``duration`` seconds, so ``rate x duration`` requests): past the
knee the queue then grows for as long at every rate, and the latency a
manager reaches there does not depend on how fast it is. With a fixed number
of requests instead, a fast manager's overloaded runs would be shorter and
look better than they are. :meth:`RateSweep.sustainable_rate` reads
off the highest rate whose latency stays under a threshold, interpolating
linearly between the two rates around the crossing; the ratio of two
managers' sustainable rates is the paper's "vLLM sustains 1.7-2.7x higher
request rates than Orca (Oracle)". :meth:`RateSweep.batch` is Fig. 13's mean
number of batched requests at one of the rates.

Runs above a manager's knee only grow longer queues; once a manager has
passed the threshold, its larger rates are skipped (their latency is only
higher, and the crossing is already bracketed), which saves most of a
sweep's time. The
rates of Fig. 13 are never skipped: the paper reports every system's batch
there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tinyserve_sim.errors import InvalidArgumentError
from tinyserve_sim.serving.catalog import make_memory
from tinyserve_sim.serving.generator import MAX_REQUESTS, PRESETS, WorkloadSpec, generate
from tinyserve_sim.serving.scheduler import Scheduler, SchedulerConfig
from tinyserve_sim.serving.timing import TimeModel


def paper_rates(anchor: float, low: int, high: int, per_octave: int = 4) -> tuple[float, ...]:
    """Rates ``anchor * 2**(k / per_octave)`` for ``k`` in ``low..high``: even steps on a log scale, through ``anchor``.

    >>> paper_rates(2.0, -2, 1, per_octave=2)
    (1.0, 1.4142, 2.0, 2.8284)
    """
    return tuple(round(anchor * 2 ** (k / per_octave), 4) for k in range(low, high + 1))


#: Default rates (requests/s) of each dataset: through the paper's Fig. 13 rates (ShareGPT 2, Alpaca 30),
#: low enough for Orca (Max) and high enough to pass paged memory's knee.
DEFAULT_RATES: dict[str, tuple[float, ...]] = {
    "sharegpt": paper_rates(2.0, -12, 3),  # 0.25 .. 3.36
    "alpaca": paper_rates(30.0, -16, 4),  # 1.88 .. 60
}
#: The rates of the paper's Fig. 13 (batched requests), per dataset.
FIG13_RATES: dict[str, float] = {"sharegpt": 2.0, "alpaca": 30.0}
#: Seconds of arrivals per run: about 1,000 ShareGPT-like / 3,000 Alpaca-like requests at the Fig. 13 rates.
DEFAULT_DURATION: dict[str, float] = {"sharegpt": 500.0, "alpaca": 100.0}
#: Normalised latency (seconds per output token) above which a rate counts as not sustained.
DEFAULT_THRESHOLD = 0.25
#: vLLM's default cap on sequences per batch (``max_num_seqs``), which the paper's runs had.
SWEEP_MAX_SEQS = 256


@dataclass(frozen=True)
class RatePoint:
    """One run of a sweep.

    Attributes:
        manager, rate: what ran; ``requests``: how many requests the run had.
        latency: mean normalised latency, seconds per output token.
        batch: mean requests in the batch over time (Fig. 13): each step
            weighted by its duration.
        batch_seqs: mean sequences in the batch over time.
        preemptions: requests preempted by recomputation.
        token_states: share of the KV memory holding token states, mean over every step.
        token_states_blocked: the same over the steps in which memory held a
            request back (NaN if there were none).
        blocked_steps: share of the steps in which memory held a request back.
        throughput: output tokens per simulated second.
    """

    manager: str
    rate: float
    requests: int
    latency: float
    batch: float
    batch_seqs: float
    preemptions: int
    token_states: float = math.nan
    token_states_blocked: float = math.nan
    blocked_steps: float = math.nan
    throughput: float = math.nan


@dataclass
class RateSweep:
    """The runs of one dataset at every rate, for every manager.

    Attributes:
        dataset: the length preset.
        rates: the rates swept, ascending.
        managers: the managers, in the order given.
        duration: seconds of arrivals per run (``rate x duration`` requests);
            ``seed`` the workloads' seed.
        time_model: the name of the time model the runs used.
        threshold: the latency (s/token) that defines a sustained rate.
        points: ``(manager, rate) -> RatePoint``; rates skipped past a knee are absent.
    """

    dataset: str
    rates: tuple[float, ...]
    managers: tuple[str, ...]
    duration: float
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
                # Past the knee latency grows about exponentially with the rate: interpolate its logarithm.
                share = math.log(limit / below.latency) / math.log(above.latency / below.latency)
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


def requests_at(rate: float, duration: float) -> int:
    """Requests of a run at ``rate`` covering ``duration`` seconds of arrivals (at least 1)."""
    return max(1, round(rate * duration))


def _check_sweep(dataset: str, rates: Sequence[float], managers: Sequence[str], duration: float,
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
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not (
        math.isfinite(duration) and duration > 0
    ):
        raise InvalidArgumentError(f"the duration must be a positive number of seconds, got {duration!r}")
    if requests_at(max(rates), duration) > MAX_REQUESTS:
        raise InvalidArgumentError(f"{max(rates):g} req/s for {duration:g} s is more than {MAX_REQUESTS:,} requests")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
        math.isfinite(threshold) and threshold > 0
    ):
        raise InvalidArgumentError(f"the latency threshold must be a positive number of seconds, got {threshold!r}")


def sweep_rates(
    dataset: str,
    managers: Sequence[str] = ("paged-16", "max", "pow2", "oracle"),
    rates: Sequence[float] | None = None,
    duration: float | None = None,
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
        duration: seconds of arrivals per run (default :data:`DEFAULT_DURATION`).
        time_model: default: the scheduler's default, the paper's setting.
        capacity: KV slots (default: the time model's KV capacity).
        threshold: seconds per output token; used to skip runs past a knee.
        progress: called with a label before each run.

    The dataset's Fig. 13 rate (:data:`FIG13_RATES`), if among ``rates``, runs for every manager.
    """
    rates = tuple(sorted(DEFAULT_RATES.get(dataset, ()) if rates is None else rates))
    span = DEFAULT_DURATION.get(dataset, 500.0) if duration is None else duration
    _check_sweep(dataset, rates, managers, span, threshold)
    config = SchedulerConfig(max_running_seqs=max_running_seqs, time_model=time_model)
    timer = config.timer()
    slots = timer.kv_capacity_tokens if capacity is None else capacity
    memories = {name: make_memory(name, slots) for name in managers}  # checks every name before running
    del memories
    sweep = RateSweep(dataset, rates, tuple(managers), span, seed, timer.name, threshold)
    past_knee = dict.fromkeys(managers, False)
    for rate in rates:
        count = requests_at(rate, span)
        workload = generate(WorkloadSpec(dataset, num_requests=count, rate=rate, seed=seed))
        for name in managers:
            if past_knee[name] and rate != FIG13_RATES.get(dataset):
                continue  # larger rates only queue longer
            if progress is not None:
                progress(f"{dataset} {rate:g} req/s, {name}")
            sched = Scheduler(workload, make_memory(name, slots), config)
            summary = sched.run().summary
            blocked = sched.result("saturated").summary if summary.saturated_steps else None
            sweep.points[name, rate] = RatePoint(
                name, rate, count, summary.mean_latency_per_token, sched.log.time_mean("running_requests"),
                sched.log.time_mean("running_seqs"), summary.preemptions, summary.token_states,
                blocked.token_states if blocked is not None else math.nan,
                summary.saturated_steps / summary.steps if summary.steps else math.nan, summary.throughput,
            )
            past_knee[name] = past_knee[name] or summary.mean_latency_per_token > threshold
    return sweep
