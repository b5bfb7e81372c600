"""Pictures of query-aware selection: a step in the terminal (rich) and as a figure (matplotlib),
the budget sweep and the eviction policies' hit rates.

Everything here reads the records of :mod:`tinyserve_sim.selection` (a
:class:`~tinyserve_sim.selection.session.StepReport` holds a step's selection,
fast-tier and quality records; a bare
:class:`~tinyserve_sim.selection.selector.SelectionRecord` works too), so a
picture shows exactly what was computed.

In the terminal, one row per (sequence, KV head), one cell per page, in logical
order: the cell holds the page's score; its colour says whether the page was
kept and why (sink, newest, top-K) or left out; a page that had to be copied
into the fast tier this step (a miss) is underlined and marked ``*``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tinyserve_sim.selection.hit_rates import HitRateRow
from tinyserve_sim.selection.selector import NEWEST, SINK, TOP_K, SelectionRecord, reason_label
from tinyserve_sim.selection.session import StepReport
from tinyserve_sim.selection.sweep import SweepRow

#: Terminal styles of a page by why it was kept (0: left out).
REASON_STYLES = {SINK: "bold white on magenta", NEWEST: "bold white on green", TOP_K: "bold white on blue",
                 SINK | NEWEST: "bold white on magenta", 0: "grey50"}
#: Figure colours of the same.
REASON_COLORS = {SINK: "#e377c2", NEWEST: "#2ca02c", TOP_K: "#1f77b4", SINK | NEWEST: "#e377c2"}
POLICY_COLORS = {"lru": "#1f77b4", "lfu": "#ff7f0e", "score-aware": "#2ca02c"}
#: Widest row drawn page by page (longer rows show their first pages, then a count).
MAX_PAGES = 64


def _as_report(step: StepReport | SelectionRecord) -> StepReport:
    """A bare selection record (no tiers, no quality) as a report, so both can be drawn."""
    return step if isinstance(step, StepReport) else StepReport(step.step, step, {}, None)


def _misses(report: StepReport, policy: str | None) -> set[tuple[int, int]]:
    if policy is None or policy not in report.tiers:
        return set()
    return set(report.tiers[policy].misses)


def _default_policy(report: StepReport, policy: str | None) -> str | None:
    if policy is not None:
        return policy
    return next(iter(report.tiers), None)


def _score_text(score: float) -> str:
    return "  -  " if not np.isfinite(score) else f"{score:5.1f}" if abs(score) < 1000 else f"{score:5.0e}"


def render_selection_step(
    report: StepReport | SelectionRecord, policy: str | None = None, per_line: int = 16
) -> RenderableType:
    """One step in the terminal: every page's score, what was kept and why, the fast tier's misses."""
    report = _as_report(report)
    sel = report.selection
    policy = _default_policy(report, policy)
    misses = _misses(report, policy)
    parts: list[RenderableType] = [Text(f"decode step {report.step}: budget {sel.budget_tokens} tokens "
                                        f"per (sequence, KV head)", style="bold")]
    for s in range(sel.num_seqs):
        name = sel.batch.seq_ids[s] if sel.batch.seq_ids else s
        n = int(sel.num_pages[s])
        for h in range(sel.num_kv_heads):
            text = Text(f"{name} head {h}  ", style="bold")
            indent = " " * len(text.plain)
            for i in range(min(n, MAX_PAGES)):
                if i and i % per_line == 0:
                    text.append("\n" + indent)
                flags = int(sel.reasons[s, h, i])
                style = REASON_STYLES.get(flags, REASON_STYLES[TOP_K])
                block = int(sel.batch.block_tables[s, i])
                missed = (block, h) in misses
                text.append(_score_text(float(sel.scores[s, h, i])) + ("*" if missed else " "),
                            style=style + (" underline" if missed else ""))
                text.append(" ")
            if n > MAX_PAGES:
                text.append(f"... +{n - MAX_PAGES} pages")
            parts.append(text)
    legend = Text("legend: ")
    for flags, label in ((SINK, "sink"), (NEWEST, "newest"), (TOP_K, "top-K"), (0, "left out")):
        legend.append(f" {label} ", style=REASON_STYLES[flags] if flags else "reverse grey50")
        legend.append(" ")
    if policy is not None:
        legend.append(f" * = miss, copied into the fast tier ({policy}) ", style="underline")
    parts.append(legend)
    parts.append(render_step_summary(report))
    return Group(*parts)


def render_step_summary(report: StepReport | SelectionRecord) -> Table:
    """A small table: bytes read, each policy's hits and misses, recall and error."""
    report = _as_report(report)
    sel = report.selection
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("what")
    table.add_column("this step", justify="right")
    table.add_row("pages read", f"{sel.pages_selected} of {int(sel.num_pages.sum()) * sel.num_kv_heads}")
    table.add_row("bytes read", f"{sel.sparse_bytes:,} of {sel.dense_bytes:,} (ceiling {sel.byte_ceiling:.2f}x)")
    for name, record in report.tiers.items():
        table.add_row(Text(f"fast tier ({name})"), f"{len(record.hits)} hits, {len(record.loads)} misses, "
                                                   f"{record.bytes_moved:,} bytes in")
    if report.quality is not None:
        q = report.quality
        table.add_row("recall", f"{q.mean_recall:.3f} (min {q.min_recall:.3f})")
        table.add_row("output error", f"{q.mean_rel_error:.2e} (max {q.max_rel_error:.2e})")
    return table


def draw_selection_step(report: StepReport | SelectionRecord, policy: str | None = None, title: str = "") -> Figure:
    """One step as a figure: a row of pages per (sequence, KV head), shaded by score (darker is
    higher, per row), outlined by why it was kept; a red dot marks a fast-tier miss."""
    report = _as_report(report)
    sel = report.selection
    policy = _default_policy(report, policy)
    misses = _misses(report, policy)
    rows = [(s, h) for s in range(sel.num_seqs) for h in range(sel.num_kv_heads)]
    width = min(int(sel.num_pages.max()), MAX_PAGES)
    fig = Figure(figsize=(1.8 + 0.32 * width, 1.3 + 0.45 * len(rows)))
    ax = fig.subplots()
    for r, (s, h) in enumerate(rows):
        y = len(rows) - 1 - r
        n = min(int(sel.num_pages[s]), MAX_PAGES)
        scores = sel.scores[s, h, :n].astype(np.float64)
        lo, hi = float(scores.min()), float(scores.max())
        name = sel.batch.seq_ids[s] if sel.batch.seq_ids else s
        ax.text(-0.3, y + 0.45, f"{name} head {h}", ha="right", va="center", fontsize=8)
        for i in range(n):
            shade = 0.0 if hi == lo else (scores[i] - lo) / (hi - lo)
            grey = 0.92 - 0.72 * shade
            flags = int(sel.reasons[s, h, i])
            edge = REASON_COLORS.get(flags, "#999999") if flags else "#bbbbbb"
            ax.add_patch(Rectangle((i, y + 0.05), 0.9, 0.8, facecolor=(grey, grey, grey),
                                   edgecolor=edge, lw=2.2 if flags else 0.4))
            if (int(sel.batch.block_tables[s, i]), h) in misses:
                ax.plot(i + 0.45, y + 0.45, "o", color="#d62728", markersize=4)
    ax.set_xlim(-0.1, width + 0.1)
    ax.set_ylim(-0.1, len(rows))
    ax.set_xlabel("logical page (shade: score, darker is higher)", fontsize=8)
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    handles = [Rectangle((0, 0), 1, 1, facecolor="white", edgecolor=REASON_COLORS[f], lw=2.2)
               for f in (SINK, NEWEST, TOP_K)]
    labels = [reason_label(f) for f in (SINK, NEWEST, TOP_K)]
    if policy is not None:
        handles.append(ax.plot([], [], "o", color="#d62728", markersize=4)[0])
        labels.append(f"miss in the fast tier ({policy})")
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    q = report.quality
    heading = title or f"decode step {report.step}: {sel.pages_selected} pages kept"
    if q is not None:
        heading += f", recall {q.mean_recall:.3f}"
    fig.suptitle(heading, fontsize=10)
    fig.subplots_adjust(left=0.12, right=0.98, bottom=0.3, top=0.85)
    return fig


def draw_budget_sweep(rows: Sequence[SweepRow], title: str = "") -> Figure:
    """Recall and output error against the budget (left), and the byte ceiling (right)."""
    fig = Figure(figsize=(9, 3.6))
    ax_q, ax_b = fig.subplots(1, 2)
    x = [r.budget for r in rows]
    ax_q.plot(x, [r.mean_recall for r in rows], "o-", color="#1f77b4", label="recall (mean)")
    ax_q.plot(x, [r.min_recall for r in rows], "o--", color="#1f77b4", alpha=0.5, label="recall (worst)")
    ax_q.set_ylabel("softmax mass kept")
    ax_q.set_ylim(0, 1.02)
    ax_e = ax_q.twinx()
    ax_e.plot(x, [r.mean_rel_error for r in rows], "s-", color="#d62728", label="output error (mean)")
    ax_e.set_ylabel("relative error of the output", color="#d62728")
    ax_e.set_ylim(bottom=0)
    ax_b.plot(x, [r.byte_ceiling for r in rows], "o-", color="#2ca02c", label="dense / (selected + metadata)")
    ax_b.plot(x, [1 / b for b in x], ":", color="#555555", label="1 / budget")
    ax_b.set_ylabel("bytes: dense / sparse")
    for ax in (ax_q, ax_b):
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [f"1/{round(1 / b)}" for b in x])
        ax.set_xlabel("budget (share of the context)")
        ax.invert_xaxis()
    handles = ax_q.get_legend_handles_labels()[0] + ax_e.get_legend_handles_labels()[0]
    ax_q.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="lower left")
    ax_b.legend(fontsize=7, loc="upper left")
    ax_q.set_title("what selection keeps", fontsize=10)
    ax_b.set_title("the byte ceiling on the speed-up", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def draw_hit_rates(rows: Sequence[HitRateRow], title: str = "") -> Figure:
    """Hit rate against fast-tier capacity, one panel per (topic stay, budget), one line per policy,
    and Belady's offline optimum dashed."""
    groups: dict[tuple[float, float], list[HitRateRow]] = {}
    for r in rows:
        groups.setdefault((r.topic_stay, r.budget), []).append(r)
    fig = Figure(figsize=(3.2 * len(groups) + 0.6, 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(groups), sharey=True))
    for ax, ((stay, budget), group) in zip(axes, groups.items()):
        x = [r.capacity_factor for r in group]
        for name in group[0].hit_rates:
            ax.plot(x, [r.hit_rates[name] for r in group], "o-", label=name, color=POLICY_COLORS.get(name))
        ax.plot(x, [r.belady for r in group], "k--", lw=1, label="optimum (Belady)")
        ax.set_title(f"topic stay {stay:g}, budget 1/{round(1 / budget)}", fontsize=9)
        ax.set_xlabel("fast tier / pages per step")
    axes[0].set_ylabel("hit rate")
    axes[0].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
