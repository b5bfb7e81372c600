"""``tinyserve-sim sweep``: latency against request rate, the vLLM paper's Fig. 12 (and Fig. 13)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from tinyserve_sim.cli.common import console, fail, output_folder, progress, writing
from tinyserve_sim.cli.simulate import check_count, resolve_capacity, resolve_time_model, time_model_help
from tinyserve_sim.errors import SimError
from tinyserve_sim.serving.catalog import make_memory
from tinyserve_sim.serving.generator import MAX_REQUESTS, PRESETS
from tinyserve_sim.serving.rate_sweep import (
    DEFAULT_DURATION,
    DEFAULT_RATES,
    DEFAULT_THRESHOLD,
    FIG13_RATES,
    SWEEP_MAX_SEQS,
    RateSweep,
    sweep_rates,
)
from tinyserve_sim.serving.timing import DEFAULT_TIME_MODEL

#: The vLLM paper's Fig. 13 (mean batched requests) at ShareGPT 2 req/s and Alpaca 30 req/s.
PAPER_FIG13: dict[str, dict[str, float]] = {
    "sharegpt": {"max": 7.00, "pow2": 9.81, "oracle": 13.62, "paged-16": 30.42},
    "alpaca": {"max": 7.00, "pow2": 43.24, "oracle": 72.75, "paged-16": 132.44},
}


def _parse_rates(text: str) -> tuple[float, ...]:
    rates = []
    for part in text.split(","):
        try:
            rate = float(part)
        except ValueError:
            raise fail(f"--rates must be comma-separated numbers, got {part.strip()!r}") from None
        if not (math.isfinite(rate) and rate > 0):
            raise fail(f"--rates must be positive requests/s, got {part.strip()}")
        rates.append(rate)
    return tuple(sorted(set(rates)))


def sweep_command(
    dataset: Annotated[str, typer.Option(help=f"Length preset: {', '.join(PRESETS)}, or both.")] = "both",
    managers: Annotated[str, typer.Option(help="Comma-separated managers; the first is compared with the others.")]
    = "paged-16,max,pow2,oracle",
    rates: Annotated[Optional[str], typer.Option(
        help="Comma-separated requests/s (default: 16 rates from 0.25 to 3.4 for ShareGPT, 21 from 1.9 to 60 "
        "for Alpaca).", show_default=False)] = None,
    duration: Annotated[Optional[float], typer.Option(
        help="Seconds of arrivals per run, rate x duration requests (default: 500 for ShareGPT, 100 for Alpaca).",
        show_default=False)] = None,
    threshold: Annotated[float, typer.Option(help="Latency (s/token) above which a rate is not sustained.")]
    = DEFAULT_THRESHOLD,
    time_model: Annotated[str, typer.Option(help=time_model_help())] = DEFAULT_TIME_MODEL,
    step_time: Annotated[Optional[float], typer.Option(
        help="Seconds per step, a constant (overrides --time-model; for comparison).", show_default=False)] = None,
    capacity: Annotated[Optional[int], typer.Option(
        help="KV cache size in tokens (default: the time model's).", show_default=False)] = None,
    max_seqs: Annotated[int, typer.Option(help="Most sequences per batch (vLLM's default 256).")] = SWEEP_MAX_SEQS,
    seed: Annotated[int, typer.Option(help="Random seed of the workloads.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder (sweep.json, latency_vs_rate.png).")] = Path("sweep-out"),
    plots: Annotated[bool, typer.Option(help="Write the plot.")] = True,
) -> None:
    """Normalised latency against request rate for each manager (vLLM paper, Fig. 12 and 13)."""
    datasets = list(PRESETS) if dataset == "both" else [dataset]
    if dataset != "both" and dataset not in PRESETS:
        raise fail(f"--dataset must be one of {', '.join(PRESETS)} or both, got {dataset!r}")
    chosen = _parse_rates(rates) if rates is not None else None
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise fail(f"--duration must be a positive number of seconds, got {duration}")
    longest = max(chosen) if chosen else max(max(DEFAULT_RATES[ds]) for ds in datasets)
    if duration is not None and longest * duration > MAX_REQUESTS:
        raise fail(f"--duration {duration:g} s at {longest:g} req/s is more than {MAX_REQUESTS:,} requests")
    if not (math.isfinite(threshold) and threshold > 0):
        raise fail(f"--threshold must be a positive number of seconds per token, got {threshold}")
    check_count(max_seqs, "--max-seqs", 1, 2**31 - 1)
    check_count(seed, "--seed", 0, 2**63 - 1)
    timer = resolve_time_model(time_model, step_time)
    slots = resolve_capacity(capacity, timer)
    names = tuple(name.strip() for name in managers.split(",") if name.strip())
    if not names:
        raise fail("--managers is empty; try paged-16,max,pow2,oracle")
    try:
        for name in names:
            make_memory(name, slots)
    except SimError as exc:
        raise fail(f"--managers: {exc}") from None
    output_folder(out, "--out")

    sweeps: list[RateSweep] = []
    with progress() as bar:
        for ds in datasets:
            grid = chosen or DEFAULT_RATES[ds]
            task = bar.add_task(ds, total=len(grid) * len(names))
            try:
                sweep = sweep_rates(ds, names, grid, duration or DEFAULT_DURATION[ds], timer, slots, seed, threshold,
                                    max_seqs, progress=lambda label, t=task: bar.update(t, advance=1, description=label))
            except SimError as exc:
                raise fail(str(exc)) from None
            bar.update(task, completed=len(grid) * len(names))
            sweeps.append(sweep)

    for sweep in sweeps:
        console.print(latency_table(sweep))
        console.print(sustained_table(sweep))
    with writing(out, "--out"):
        (out / "sweep.json").write_text(json.dumps([sweep_to_json(s) for s in sweeps], indent=2))
        if plots:
            from tinyserve_sim.serving.plots import plot_latency_vs_rate

            plot_latency_vs_rate(sweeps, out / "latency_vs_rate.png")
    console.print(f"wrote {out}/sweep.json" + (f" and {out}/latency_vs_rate.png" if plots else ""))


def latency_table(sweep: RateSweep) -> Table:
    """Latency (s/token) at each rate; '-' where a run past the knee was skipped."""
    table = Table(title=f"Latency (s/token), {sweep.dataset}-like, {sweep.time_model}", title_justify="left",
                  caption_justify="left",
                  caption=f"{sweep.duration:g} s of arrivals per run; -: not run (past the knee)")
    table.add_column("req/s", justify="right")
    for name in sweep.managers:
        table.add_column(name, justify="right", no_wrap=True)
    for rate in sweep.rates:
        cells = []
        for name in sweep.managers:
            point = sweep.points.get((name, rate))
            cells.append("-" if point is None else f"{point.latency:.3f}")
        table.add_row(f"{rate:g}", *cells)
    return table


def sustained_table(sweep: RateSweep) -> Table:
    """Sustainable rate of each manager, the first manager's ratio to it, and Fig. 13's batch."""
    first = sweep.managers[0]
    fig13 = FIG13_RATES.get(sweep.dataset)
    shown = fig13 in sweep.rates
    table = Table(title=f"Sustained under {sweep.threshold:g} s/token, {sweep.dataset}-like", title_justify="left")
    for column in ("manager", "req/s", f"{first} / it"):
        table.add_column(column, justify="right", no_wrap=True)
    if shown:
        table.add_column(f"batch at {fig13:g} req/s", justify="right")
        table.add_column("paper", justify="right")
    for name in sweep.managers:
        rate, bound = sweep.sustainable_rate(name)
        ratio, qualifier = sweep.ratio(first, name)
        row = [name, f"{bound}{rate:.2f}", "-" if name == first else f"{qualifier}{ratio:.2f}x"]
        if shown:
            paper = PAPER_FIG13.get(sweep.dataset, {}).get(name)
            row += [f"{sweep.batch(name, fig13):.1f}", "-" if paper is None else f"{paper:.2f}"]
        table.add_row(*row)
    return table


def sweep_to_json(sweep: RateSweep) -> dict:
    """A sweep's runs, sustainable rates and ratios as plain JSON."""
    first = sweep.managers[0]
    return {
        "dataset": sweep.dataset,
        "time_model": sweep.time_model,
        "duration": sweep.duration,
        "seed": sweep.seed,
        "threshold": sweep.threshold,
        "rates": list(sweep.rates),
        "points": [vars(p) for p in sweep.points.values()],
        "sustainable_rate": {n: dict(zip(("rate", "bound"), sweep.sustainable_rate(n))) for n in sweep.managers},
        "ratio_of_first": {n: dict(zip(("ratio", "bound"), sweep.ratio(first, n))) for n in sweep.managers},
    }
