"""``tinyserve-sim select``: query-aware cache selection, step by step.

* ``select demo``: walk a built-in scenario; each step shows every page's score,
  which pages were kept and why, and the fast tier's hits and misses;
* ``select run``: the same on a workload you describe (``--render DIR`` draws each step);
* ``select sweep``: recall, error and bytes as the budget shrinks from 1/2 to 1/32;
* ``select policies``: the eviction policies' hit rates (the claims row's study).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from tinyserve_sim.cli.common import console, fail, output_file, output_folder, progress, writing
from tinyserve_sim.cli.simulate import check_count
from tinyserve_sim.errors import SimError
from tinyserve_sim.selection.hit_rates import HitRateRow
from tinyserve_sim.selection.scenarios import SELECTION_SCENARIOS, get_selection_scenario
from tinyserve_sim.selection.session import SelectionConfig, SelectionRun, SelectionSession
from tinyserve_sim.selection.sweep import DEFAULT_BUDGETS, budget_sweep
from tinyserve_sim.selection.tiers import POLICIES
from tinyserve_sim.selection.workloads import MAX_ELEMENTS, AttentionWorkloadSpec, generate_attention_workload

#: Formats ``--plot`` can write (matplotlib picks the format from the file's suffix).
PLOT_SUFFIXES = (".svg", ".png")

select_app = typer.Typer(
    help="Query-aware cache selection: score pages, keep the best, count what the fast tier moves.",
    no_args_is_help=True,
)


def parse_budget(text: str) -> float | int:
    """``"1/8"`` or ``"0.125"``: a share of the prompt; ``"256"``: tokens."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return int(text) if text.strip().isdigit() else float(text)
    except (ValueError, ZeroDivisionError):
        raise fail(f"--budget must be a share like 1/8 or 0.125, or a number of tokens, got {text!r}") from None


def _policies(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise fail(f"unknown eviction policy {unknown[0]!r}; choose from {', '.join(POLICIES)}")
    return names


def _walk(session: SelectionSession, render: Optional[Path], picture_format: str, policy: Optional[str]) -> SelectionRun:
    """Run every step, printing it (and drawing it when asked); return the run."""
    from tinyserve_sim.render.selection import draw_selection_step, render_selection_step

    run = SelectionRun(session.config, session.budget_tokens, session.capacity)
    topics = session.workload.topics
    for report in session:
        step = report.step
        changed = [s for s in range(topics.shape[1]) if step and topics[step, s] != topics[step - 1, s]]
        note = "; ".join(f"{session.seq_ids[s]}'s query changes topic ({topics[step - 1, s]} -> {topics[step, s]})"
                         for s in changed)
        if note:
            console.print(Text(note, style="italic"))
        console.print(render_selection_step(report, policy))
        if render is not None:
            fig = draw_selection_step(report, policy)
            picture = render / f"step-{step:03d}.{picture_format}"
            with writing(picture, "--render"):
                fig.savefig(picture, dpi=110)
        run.steps.append(report)
    run.hit_rates = {name: tier.hit_rate for name, tier in session.tiers.items()}
    return run


def _totals(run: SelectionRun) -> Table:
    table = Table(title="the whole run", title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("decode steps", str(len(run.steps)))
    table.add_row("budget per (sequence, KV head)", f"{run.budget_tokens} tokens")
    table.add_row("bytes read", f"{run.sparse_bytes:,} of {run.dense_bytes:,} (ceiling {run.byte_ceiling:.2f}x)")
    if run.steps and run.steps[0].quality is not None:
        table.add_row("recall (mean, worst)", f"{run.mean_recall:.3f}, {run.min_recall:.3f}")
        table.add_row("output error (mean, worst)", f"{run.mean_rel_error:.2e}, {run.max_rel_error:.2e}")
    for name, rate in run.hit_rates.items():
        table.add_row(Text(f"fast-tier hit rate ({name}, {run.capacity} pages)"),
                      f"{100 * rate:.1f}%, {run.bytes_moved(name):,} bytes copied in")
    return table


def _check_pictures(picture_format: str, render: Optional[Path]) -> None:
    """``--format`` and the ``--render`` folder, checked before anything prints: a mistake is one line."""
    if picture_format not in ("svg", "png"):
        raise fail(f"--format must be svg or png, got {picture_format!r}")
    if render is not None:
        output_folder(render, "--render")


def _check_plot(plot: Optional[Path]) -> None:
    """``--plot``: an .svg or .png file in a folder that is created if missing and accepts files."""
    if plot is None:
        return
    if plot.suffix.lower() not in PLOT_SUFFIXES:
        raise fail(f"--plot {plot}: the file name must end in .svg or .png")
    output_folder(plot.parent, "--plot")
    output_file(plot, "--plot")


def _check_run_flags(steps: int, seed: int) -> None:
    """The flags the workload spec cannot name: a study needs a decode step; seeds are non-negative."""
    check_count(steps, "--steps", 1, MAX_ELEMENTS)
    check_count(seed, "--seed", 0, 2**63 - 1)


def demo_command(
    scenario: Annotated[str, typer.Option(help=f"Which scenario: {', '.join(SELECTION_SCENARIOS)}.")] = "query-aware-selection",
    render: Annotated[Optional[Path], typer.Option(help="Also draw one picture per step into this folder.")] = None,
    picture_format: Annotated[str, typer.Option("--format", help="Picture format: svg or png.")] = "svg",
    policy: Annotated[Optional[str], typer.Option(help="Whose misses to mark (default: the first policy).")] = None,
) -> None:
    """Walk a built-in selection scenario: every page's score, what was kept and why, hits and misses."""
    _check_pictures(picture_format, render)
    try:
        chosen = get_selection_scenario(scenario)
        session = chosen.session()
    except SimError as exc:
        raise fail(str(exc)) from None
    if policy is not None and policy not in session.tiers:
        raise fail(f"--policy must be one of the scenario's policies: {', '.join(session.tiers)}")
    console.print(f"[bold]{chosen.name}[/]: {chosen.title}\n[dim]{chosen.story}[/]\n")
    run = _walk(session, render, picture_format, policy)
    console.print(_totals(run))
    console.print("[dim]Next: `tinyserve-sim select run --help` for your own workload; `tinyserve-sim select sweep` "
                  "for budgets 1/2 to 1/32.[/]")


def run_command(
    seqs: Annotated[int, typer.Option(help="Sequences decoded together.")] = 1,
    context: Annotated[int, typer.Option(help="Prompt tokens per sequence.")] = 1023,
    steps: Annotated[int, typer.Option(help="Decode steps.")] = 8,
    budget: Annotated[str, typer.Option(help="Per (sequence, KV head): a share like 1/8, or tokens like 256.")] = "1/8",
    block_size: Annotated[int, typer.Option(help="Tokens per page.")] = 16,
    kv_heads: Annotated[int, typer.Option(help="KV heads.")] = 2,
    q_heads: Annotated[int, typer.Option(help="Query heads (a multiple of --kv-heads).")] = 4,
    head_dim: Annotated[int, typer.Option(help="Head dimension.")] = 64,
    capacity: Annotated[float, typer.Option(help="Fast tier, as a multiple of the pages one step keeps.")] = 1.5,
    policies: Annotated[str, typer.Option(help=f"Comma-separated eviction policies: {', '.join(POLICIES)}.")] = "lru,lfu,score-aware",
    topic_stay: Annotated[float, typer.Option(help="Probability that a query keeps its topic from one step to the next.")] = 0.9,
    seed: Annotated[int, typer.Option(help="Random seed of the workload.")] = 0,
    backend: Annotated[str, typer.Option(help="numpy or cupy (the cache and the selection kernels).")] = "numpy",
    copy_pages: Annotated[bool, typer.Option(help="Really copy each missed page into a fast tier on the backend "
                                                  "(host to device on cupy).")] = False,
    quiet: Annotated[bool, typer.Option(help="Print only the totals, not every step.")] = False,
    render: Annotated[Optional[Path], typer.Option(help="Draw one picture per step into this folder.")] = None,
    picture_format: Annotated[str, typer.Option("--format", help="Picture format: svg or png.")] = "svg",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the totals as JSON.")] = None,
) -> None:
    """Run selection on a workload you describe, step by step, and print the totals.

    Every flag is checked before the run starts. A workload whose keys or queries would hold
    more than 2**26 (67,108,864) elements is refused at once (sequences x (context + steps) x
    KV heads x head dim for the keys; steps x sequences x query heads x head dim for the queries).
    """
    _check_run_flags(steps, seed)
    if not (math.isfinite(capacity) and capacity > 0):
        raise fail(f"--capacity must be a positive, finite multiple of the pages one step keeps, got {capacity}")
    _check_pictures(picture_format, render)
    if json_out is not None:
        output_file(json_out, "--json")
    try:
        spec = AttentionWorkloadSpec(num_seqs=seqs, context_len=context, decode_steps=steps, num_kv_heads=kv_heads,
                                     num_q_heads=q_heads, head_dim=head_dim, topic_stay=topic_stay, seed=seed)
        config = SelectionConfig(block_size=block_size, budget=parse_budget(budget), capacity=capacity,
                                 policies=_policies(policies), backend=backend, move_data=copy_pages)
        session = SelectionSession(generate_attention_workload(spec), config)
        if quiet:
            run = session.run()
        else:
            run = _walk(session, render, picture_format, None)
    except SimError as exc:
        raise fail(str(exc)) from None
    console.print(_totals(run))
    if json_out is not None:
        payload = {
            "workload": spec.to_dict(), "budget_tokens": run.budget_tokens, "capacity_pages": run.capacity,
            "dense_bytes": run.dense_bytes, "sparse_bytes": run.sparse_bytes, "byte_ceiling": run.byte_ceiling,
            "mean_recall": run.mean_recall, "min_recall": run.min_recall, "mean_rel_error": run.mean_rel_error,
            "hit_rates": run.hit_rates,
        }
        with writing(json_out, "--json"):
            json_out.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {json_out}")


def sweep_command(
    seqs: Annotated[int, typer.Option(help="Sequences decoded together.")] = 2,
    context: Annotated[int, typer.Option(help="Prompt tokens per sequence.")] = 2048,
    steps: Annotated[int, typer.Option(help="Decode steps per budget.")] = 8,
    block_size: Annotated[int, typer.Option(help="Tokens per page.")] = 16,
    seed: Annotated[int, typer.Option(help="Random seed of the workload.")] = 0,
    plot: Annotated[Optional[Path], typer.Option(help="Also draw the sweep into this file (.svg or .png).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the rows as JSON.")] = None,
) -> None:
    """Recall, output error and the byte ceiling for budgets 1/2 down to 1/32 of the context.

    Every flag is checked before the sweep starts (the workload limit is `select run`'s).
    """
    _check_run_flags(steps, seed)
    _check_plot(plot)
    if json_out is not None:
        output_file(json_out, "--json")
    try:
        spec = AttentionWorkloadSpec(num_seqs=seqs, context_len=context, decode_steps=steps, seed=seed)
        rows = budget_sweep(spec, DEFAULT_BUDGETS, block_size)
    except SimError as exc:
        raise fail(str(exc)) from None
    table = Table(title=f"budget sweep: {seqs} x {context:,}-token contexts, {steps} decode steps, "
                        f"{block_size}-token pages", title_justify="left")
    for column in ("budget", "tokens", "recall", "worst recall", "output error", "worst error", "byte ceiling"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"1/{round(1 / r.budget)}", str(r.budget_tokens), f"{r.mean_recall:.3f}", f"{r.min_recall:.3f}",
                      f"{r.mean_rel_error:.2e}", f"{r.max_rel_error:.2e}", f"{r.byte_ceiling:.2f}x")
    console.print(table)
    if plot is not None:
        from tinyserve_sim.render.selection import draw_budget_sweep

        with writing(plot, "--plot"):
            draw_budget_sweep(rows).savefig(plot, dpi=110)
        console.print(f"wrote {plot}")
    if json_out is not None:
        with writing(json_out, "--json"):
            json_out.write_text(json.dumps([r.to_dict() for r in rows], indent=2))
        console.print(f"wrote {json_out}")


def policies_command(
    size: Annotated[str, typer.Option(help="quick, default or full: the claims check's sizes.")] = "quick",
    plot: Annotated[Optional[Path], typer.Option(help="Also draw the hit rates into this file (.svg or .png).")] = None,
) -> None:
    """Hit rates of LRU, LFU and score-aware eviction, and the offline optimum (the claims row's study)."""
    from tinyserve_sim.claims.hit_rate import CLAIM_STEPS, hit_rate_experiment

    if size not in CLAIM_STEPS or not size:
        raise fail(f"--size must be one of quick, default, full, got {size!r}")
    _check_plot(plot)
    with progress() as bar:
        bar.add_task("simulating", total=None)
        rows = hit_rate_experiment(size)
    console.print(_hit_rate_table(rows))
    if plot is not None:
        from tinyserve_sim.render.selection import draw_hit_rates

        with writing(plot, "--plot"):
            draw_hit_rates(rows).savefig(plot, dpi=110)
        console.print(f"wrote {plot}")


def _hit_rate_table(rows: list[HitRateRow]) -> Table:
    table = Table(title="fast-tier hit rates (same requests for every policy)", title_justify="left")
    table.add_column("condition")
    names = list(rows[0].hit_rates) if rows else []
    for name in names + ["optimum", "score-aware vs LRU"]:
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(r.condition, *(f"{100 * r.hit_rates[n]:.1f}%" for n in names), f"{100 * r.belady:.1f}%",
                      f"{100 * r.improvement:+.1f}%")
    return table


select_app.command("demo")(demo_command)
select_app.command("run")(run_command)
select_app.command("sweep")(sweep_command)
select_app.command("policies")(policies_command)
