"""Which eviction policy keeps the fast tier's hit rate highest? The study behind the claims row.

The seed claims that query-aware cache selection improves the cache hit rate
by 15-25%. Read against this simulator (issue 17): at the same fast-tier
capacity, how much higher is the hit rate of the **score-aware** policy (keep
the pages with the highest recent selection scores) than that of **LRU**?

One selection run per workload records the pages each step requests; the
requests do not depend on the tier, so the very same stream is replayed into a
fresh :class:`~tinyserve_sim.selection.tiers.TwoTierCache` per policy and per
capacity (:func:`~tinyserve_sim.selection.session.replay_tiers`). Capacities
are multiples of the most pages one step selects (a fast tier smaller than
that cannot serve a step at all). Beside the policies, each row gives the
ceiling no policy can pass, Belady's rule with knowledge of the future
(:func:`~tinyserve_sim.selection.tiers.belady_hit_rate`): if the ceiling is
within a few percent of LRU, no eviction policy can improve the hit rate by
15%, whatever its cleverness.

>>> from tinyserve_sim.selection.workloads import AttentionWorkloadSpec
>>> spec = AttentionWorkloadSpec(num_seqs=1, context_len=512, decode_steps=20, head_dim=32, window=8)
>>> rows = hit_rate_study([spec], budgets=(0.125,), capacities=(1.5,))
>>> row = rows[0]
>>> row.capacity, row.belady >= max(row.hit_rates.values())
(12, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tinyserve_sim.control.checks import short_repr
from tinyserve_sim.errors import ConfigError
from tinyserve_sim.selection.session import SelectionConfig, check_policy_names, replay_tiers, run_selection
from tinyserve_sim.selection.tiers import MAX_CAPACITY, belady_hit_rate, check_decay
from tinyserve_sim.selection.workloads import AttentionWorkloadSpec, check_measurable, generate_attention_workload

#: The policies compared, and the pair the claim compares.
STUDY_POLICIES: tuple[str, ...] = ("lru", "lfu", "score-aware")
BASELINE, CHALLENGER = "lru", "score-aware"


def _relative(rate: float, baseline: float) -> float:
    """``rate / baseline - 1``; NaN when the baseline is 0 (no relative change is defined)."""
    return rate / baseline - 1.0 if baseline else math.nan


@dataclass(frozen=True)
class HitRateRow:
    """Hit rates of every policy under one condition.

    Attributes:
        topic_stay: the workload's probability that a query keeps its topic.
        budget: share of the prompt selected per (sequence, KV head).
        capacity_factor: fast-tier capacity / the most pages one step selects.
        capacity: the fast tier's capacity in pages.
        hit_rates: policy name -> hits / requests over the run.
        belady: the offline optimum (no policy can do better).
        requests: pages requested over the run.
        steps: decode steps of the run.
    """

    topic_stay: float
    budget: float
    capacity_factor: float
    capacity: int
    hit_rates: dict[str, float]
    belady: float
    requests: int
    steps: int

    @property
    def improvement(self) -> float:
        """Relative hit-rate improvement of score-aware over LRU: ``hit(score-aware) / hit(lru) - 1``
        (NaN when LRU hit nothing)."""
        return _relative(self.hit_rates[CHALLENGER], self.hit_rates[BASELINE])

    @property
    def headroom(self) -> float:
        """The most any policy could improve on LRU: ``belady / hit(lru) - 1`` (NaN when LRU hit nothing)."""
        return _relative(self.belady, self.hit_rates[BASELINE])

    @property
    def condition(self) -> str:
        return (f"topic stay {self.topic_stay:g}, budget 1/{round(1 / self.budget)}, "
                f"capacity {self.capacity_factor:g}x")


def hit_rate_study(
    specs: Sequence[AttentionWorkloadSpec],
    budgets: Sequence[float] = (1 / 8,),
    capacities: Sequence[float] = (1.1, 1.25, 1.5, 2.0),
    block_size: int = 16,
    score_decay: float = 0.5,
    policies: Sequence[str] = STUDY_POLICIES,
) -> list[HitRateRow]:
    """One row per (workload, budget, capacity): the hit rate of each policy and the optimum.

    Every argument is checked before anything runs: WorkloadError for a spec that is not an
    :class:`AttentionWorkloadSpec` with decode steps, ConfigError for the rest.
    """
    for name, values in (("specs", specs), ("budgets", budgets), ("capacities", capacities)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ConfigError(f"{name} must be a sequence, got {short_repr(values)}")
    for spec in specs:
        check_measurable(spec)
    configs = [SelectionConfig(block_size=block_size, budget=budget, policies=(), capacity=1.0, quality=False)
               for budget in budgets]
    for factor in capacities:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= MAX_CAPACITY:
            raise ConfigError(
                f"a capacity factor must be positive and at most {MAX_CAPACITY:,} (a fast tier's most pages), "
                f"got {short_repr(factor)}"
            )
    check_decay(score_decay)
    policies = check_policy_names(policies)
    rows = []
    for spec in specs:
        workload = generate_attention_workload(spec)
        for budget, config in zip(budgets, configs):
            run = run_selection(workload, config)
            per_step = run.capacity  # capacity 1.0x: the most pages one step selects
            requests = [report.requested for report in run.steps]
            total = sum(len(r) for r in requests)
            for factor in capacities:
                capacity = max(per_step, round(factor * per_step))
                tiers = replay_tiers(run.steps, capacity, policies, score_decay)
                rows.append(HitRateRow(
                    topic_stay=spec.topic_stay,
                    budget=float(budget),
                    capacity_factor=float(factor),
                    capacity=capacity,
                    hit_rates={name: tier.hit_rate for name, tier in tiers.items()},
                    belady=belady_hit_rate(requests, capacity),
                    requests=total,
                    steps=len(run.steps),
                ))
    return rows


def format_hit_rates(rows: Sequence[HitRateRow]) -> str:
    """The study as a plain-text table."""
    names = list(rows[0].hit_rates) if rows else []
    header = f"{'condition':<44}" + "".join(f"{n:>12}" for n in names) + f"{'optimum':>9}{'gain':>8}"
    lines = [header]
    for r in rows:
        lines.append(f"{r.condition:<44}" + "".join(f"{r.hit_rates[n]:>12.3f}" for n in names)
                     + f"{r.belady:>9.3f}{100 * r.improvement:>+7.1f}%")
    return "\n".join(lines)
