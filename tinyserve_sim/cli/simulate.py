"""``tinyserve-sim simulate``: run a serving workload against memory managers.

It writes a summary (JSON or CSV), the per-step logs and plots, and prints a
table of where each manager's KV memory went.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from tinyserve_sim.cli.common import console, fail, progress
from tinyserve_sim.errors import SimError
from tinyserve_sim.serving.catalog import KV_CAPACITY_TOKENS, make_memory
from tinyserve_sim.serving.generator import PRESETS, WorkloadSpec, generate
from tinyserve_sim.serving.paged import PagedMemory
from tinyserve_sim.serving.scheduler import Scheduler, SchedulerConfig


def simulate_command(
    managers: Annotated[str, typer.Option(help="Comma-separated: paged-<block size>, max, pow2, oracle, <rule>-first-fit.")] = "paged-16,max,pow2,oracle",
    dataset: Annotated[str, typer.Option(help=f"Length preset: {', '.join(PRESETS)}.")] = "sharegpt",
    requests: Annotated[int, typer.Option(help="Number of requests.")] = 500,
    rate: Annotated[float, typer.Option(help="Arrivals per second (0 = all at time 0: a saturated server).")] = 0.0,
    n: Annotated[int, typer.Option(help="Parallel samples per request.")] = 1,
    beam_width: Annotated[int, typer.Option(help="Beam width (beam search).")] = 1,
    system_prompt: Annotated[int, typer.Option(help="Tokens of a system prompt shared by every request.")] = 0,
    prefix_caching: Annotated[bool, typer.Option(help="Paged managers reuse cached prompt blocks.")] = False,
    capacity: Annotated[int, typer.Option(help="KV cache size in tokens.")] = KV_CAPACITY_TOKENS,
    max_seqs: Annotated[int, typer.Option(help="Most sequences per batch (0 = limited by memory only).")] = 0,
    step_time: Annotated[float, typer.Option(help="Seconds per scheduler step (time model).")] = 0.04,
    seed: Annotated[int, typer.Option(help="Random seed of the workload.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("simulate-out"),
    fmt: Annotated[str, typer.Option("--format", help="Summary format: json or csv.")] = "json",
    plots: Annotated[bool, typer.Option(help="Write PNG plots.")] = True,
    save_trace: Annotated[Optional[Path], typer.Option(help="Also record the first paged run as a trace file (JSONL).")] = None,
) -> None:
    """Run a workload against memory managers; write summaries, step logs and plots."""
    if fmt not in ("json", "csv"):
        raise fail(f"--format must be json or csv, got {fmt!r}")
    try:
        spec = WorkloadSpec(dataset, requests, rate if rate > 0 else math.inf, n, beam_width, system_prompt, seed=seed)
        workload = generate(spec)
        names = [name.strip() for name in managers.split(",") if name.strip()]
        memories = [make_memory(name, capacity, prefix_caching) for name in names]
    except SimError as exc:
        raise fail(str(exc)) from None
    if save_trace is not None:
        for i, memory in enumerate(memories):
            if isinstance(memory, PagedMemory):
                memories[i] = PagedMemory(capacity, memory.block_size, prefix_caching, record_trace=True)
                break
    config = SchedulerConfig(max_running_seqs=max_seqs or 10**9, step_time=step_time)
    window = "all" if rate > 0 else "saturated"
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with progress() as bar:
        for memory in memories:
            task = bar.add_task(f"{memory.name:>16}", total=len(workload.requests))
            sched = Scheduler(workload, memory, config)
            try:
                sched.run(lambda done, total: bar.update(task, completed=done))
            except SimError as exc:
                raise fail(f"{memory.name}: {exc}") from None
            result = sched.result(window)
            results.append(result)
            (out / f"steps_{memory.name}.csv").write_text(result.log.to_csv())
            if isinstance(memory, PagedMemory) and memory.trace is not None and save_trace is not None:
                memory.trace.save(save_trace)
                console.print(f"wrote trace {save_trace} ({len(memory.trace.ops):,} operations)")

    summaries = [r.summary.to_dict() for r in results]
    if fmt == "json":
        payload = {"workload": workload.to_json()["spec"], "window": window, "results": summaries}
        (out / "summary.json").write_text(json.dumps(payload, indent=2))
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(summaries[0]))
        writer.writeheader()
        writer.writerows(summaries)
        (out / "summary.csv").write_text(buf.getvalue())
    if plots:
        from tinyserve_sim.serving.plots import plot_shares, plot_timeline

        plot_shares([r.summary for r in results], out / "shares.png")
        plot_timeline({r.memory_name: r.log for r in results}, out / "timeline.png")

    table = Table(title=f"{dataset}, {requests} requests, window: {window} steps")
    for column in ("manager", "token states", "reservation", "internal", "external", "idle", "batch", "preempted", "shared"):
        table.add_column(column, justify="right")
    for r in results:
        s = r.summary
        table.add_row(
            s.manager, *(f"{100 * x:.1f}%" for x in (s.token_states, s.reservation, s.internal, s.external, s.idle)),
            f"{s.mean_running_seqs:.1f}", str(s.preemptions), f"{100 * s.sharing_saving:.1f}%",
        )
    console.print(table)
    console.print(f"wrote {out}/summary.{fmt}, step logs" + (" and plots" if plots else ""))
