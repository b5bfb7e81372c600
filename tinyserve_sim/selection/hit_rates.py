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

from collections.abc import Sequence
from dataclasses import dataclass

from tinyserve_sim.selection.session import SelectionConfig, replay_tiers, run_selection
from tinyserve_sim.selection.tiers import belady_hit_rate
from tinyserve_sim.selection.workloads import AttentionWorkloadSpec, generate_attention_workload

#: The policies compared, and the pair the claim compares.
STUDY_POLICIES: tuple[str, ...] = ("lru", "lfu", "score-aware")
BASELINE, CHALLENGER = "lru", "score-aware"


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
        """Relative hit-rate improvement of score-aware over LRU: ``hit(score-aware) / hit(lru) - 1``."""
        return self.hit_rates[CHALLENGER] / self.hit_rates[BASELINE] - 1.0

    @property
    def headroom(self) -> float:
        """The most any policy could improve on LRU: ``belady / hit(lru) - 1``."""
        return self.belady / self.hit_rates[BASELINE] - 1.0

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
    """One row per (workload, budget, capacity): the hit rate of each policy and the optimum."""
    rows = []
    for spec in specs:
        workload = generate_attention_workload(spec)
        for budget in budgets:
            config = SelectionConfig(block_size=block_size, budget=budget, policies=(), capacity=1.0, quality=False)
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
