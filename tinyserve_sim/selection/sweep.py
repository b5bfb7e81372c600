"""The budget sweep: how recall, error and bytes change as the budget shrinks from 1/2 to 1/32.

For each budget, the same workload (same seed) is replayed with selection
(:class:`~tinyserve_sim.selection.session.SelectionSession`), and the run's
averages go into one row. ``tinyserve-sim select sweep`` prints the table;
:func:`tinyserve_sim.render.selection.draw_budget_sweep` draws it.

>>> from tinyserve_sim.selection.workloads import AttentionWorkloadSpec
>>> spec = AttentionWorkloadSpec(num_seqs=1, context_len=512, decode_steps=2, head_dim=32, window=8, seed=2)
>>> rows = budget_sweep(spec, budgets=(0.5, 0.125))
>>> [row.budget_tokens for row in rows], rows[0].mean_recall >= rows[1].mean_recall
([256, 64], True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tinyserve_sim.control.checks import short_repr
from tinyserve_sim.errors import ConfigError
from tinyserve_sim.selection.session import SelectionConfig, run_selection
from tinyserve_sim.selection.workloads import AttentionWorkloadSpec, check_measurable, generate_attention_workload

#: The budgets of the sweep: 1/2 down to 1/32 of the context.
DEFAULT_BUDGETS: tuple[float, ...] = (1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32)


@dataclass(frozen=True)
class SweepRow:
    """One budget's averages over a run.

    Attributes:
        budget: the share of the prompt asked for.
        budget_tokens: what it rounds to (whole pages, at least two).
        mean_recall, min_recall: softmax mass on the selected tokens (mean and worst over
            steps, sequences and query heads).
        mean_rel_error, max_rel_error: relative error of the attention output.
        pages_per_step: pages read per step (all sequences and KV heads).
        byte_ceiling: dense bytes / (selected + metadata bytes).
    """

    budget: float
    budget_tokens: int
    mean_recall: float
    min_recall: float
    mean_rel_error: float
    max_rel_error: float
    pages_per_step: float
    byte_ceiling: float

    def to_dict(self) -> dict:
        return asdict(self)


def budget_sweep(
    spec: AttentionWorkloadSpec,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    block_size: int = 16,
    backend: str = "numpy",
) -> list[SweepRow]:
    """One :class:`SweepRow` per budget, on the workload ``spec`` describes (deterministic).

    Raises:
        WorkloadError: ``spec`` is not an :class:`AttentionWorkloadSpec` with at least one decode step.
        ConfigError: a budget or the block size is impossible (checked before anything runs).
    """
    check_measurable(spec)
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Sequence):
        raise ConfigError(f"budgets must be a sequence of budgets, got {short_repr(budgets)}")
    configs = [SelectionConfig(block_size=block_size, budget=b, policies=(), backend=backend) for b in budgets]
    workload = generate_attention_workload(spec)
    rows = []
    for budget, config in zip(budgets, configs):
        run = run_selection(workload, config)
        pages = sum(r.selection.pages_selected for r in run.steps) / max(len(run.steps), 1)
        rows.append(SweepRow(
            budget=float(budget),
            budget_tokens=run.budget_tokens,
            mean_recall=run.mean_recall,
            min_recall=run.min_recall,
            mean_rel_error=run.mean_rel_error,
            max_rel_error=run.max_rel_error,
            pages_per_step=pages,
            byte_ceiling=run.byte_ceiling,
        ))
    return rows


def format_sweep(rows: Sequence[SweepRow]) -> str:
    """The sweep as a plain-text table (what the CLI prints, without colours)."""
    header = f"{'budget':>8} {'tokens':>7} {'recall':>7} {'min':>7} {'error':>9} {'max error':>9} {'ceiling':>8}"
    lines = [header]
    for r in rows:
        lines.append(
            f"{'1/' + str(round(1 / r.budget)):>8} {r.budget_tokens:>7} {r.mean_recall:>7.3f} {r.min_recall:>7.3f} "
            f"{r.mean_rel_error:>9.2e} {r.max_rel_error:>9.2e} {r.byte_ceiling:>7.2f}x"
        )
    return "\n".join(lines)
