"""``tinyserve-sim simulate``: run a serving workload against memory managers.

It writes a summary (JSON or CSV), the per-step logs and plots, and prints
where each manager's KV memory went and how fast it served. Each step log is
written as soon as its run ends and then dropped, so memory stays flat
however many managers run.
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

from tinyserve_sim.cli.common import console, fail, output_file, output_folder, progress, writing
from tinyserve_sim.errors import SimError
from tinyserve_sim.serving.catalog import make_memory
from tinyserve_sim.serving.generator import MAX_REQUESTS, MAX_WIDTH, PRESETS, WorkloadSpec, generate
from tinyserve_sim.serving.metrics import MAX_COUNT
from tinyserve_sim.serving.paged import PagedMemory
from tinyserve_sim.serving.scheduler import Scheduler, SchedulerConfig
from tinyserve_sim.serving.timing import DEFAULT_TIME_MODEL, TIME_MODELS, ConstantTime, TimeModel, get_time_model

DEFAULT_MANAGERS = "paged-16,max,pow2,oracle"


# ------------------------------------------------------------------------ checks shared by the serving commands
def check_count(value: int, flag: str, low: int, high: int) -> None:
    """Fail in one line, naming the flag, unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise fail(f"{flag} must be between {low:,} and {high:,}, got {value:,}")


def resolve_time_model(name: str, step_time: Optional[float]) -> TimeModel:
    """``--time-model`` and ``--step-time`` to a time model (a constant step time wins)."""
    if step_time is not None:
        if not (math.isfinite(step_time) and step_time > 0):
            raise fail(f"--step-time must be a positive number of seconds, got {step_time}")
        return ConstantTime(step_time)
    try:
        return get_time_model(name)
    except SimError as exc:
        raise fail(f"--time-model: {exc}") from None


def resolve_capacity(capacity: Optional[int], timer: TimeModel) -> int:
    """``--capacity``, or the time model's KV capacity."""
    if capacity is None:
        return timer.kv_capacity_tokens
    check_count(capacity, "--capacity", 1, MAX_COUNT)
    return capacity


def time_model_help() -> str:
    return (f"How long a step takes: {', '.join(TIME_MODELS)}, constant-<ms>ms, or a JSON preset file "
            "(docs: serving time).")


# ------------------------------------------------------------------------ the command
def simulate_command(
    managers: Annotated[str, typer.Option(
        help="Comma-separated names: paged-<block size>, max, pow2, oracle, <rule>-first-fit "
        "(default: the paper's four, paged-16, max, pow2 and oracle).", show_default=False)] = DEFAULT_MANAGERS,
    dataset: Annotated[str, typer.Option(help=f"Length preset: {', '.join(PRESETS)}.")] = "sharegpt",
    requests: Annotated[int, typer.Option(help="Number of requests.")] = 500,
    rate: Annotated[float, typer.Option(help="Arrivals per second (0 = all at time 0: a saturated server).")] = 0.0,
    n: Annotated[int, typer.Option(help="Parallel samples per request.")] = 1,
    beam_width: Annotated[int, typer.Option(help="Beam width (beam search).")] = 1,
    system_prompt: Annotated[int, typer.Option(help="Tokens of a system prompt shared by every request.")] = 0,
    prefix_caching: Annotated[bool, typer.Option(help="Paged managers reuse cached prompt blocks.")] = False,
    capacity: Annotated[Optional[int], typer.Option(
        help="KV cache size in tokens (default: the time model's, 15,728 for the paper's setting).",
        show_default=False)] = None,
    max_seqs: Annotated[int, typer.Option(help="Most sequences per batch (0 = limited by memory only).")] = 0,
    time_model: Annotated[str, typer.Option(help=time_model_help())] = DEFAULT_TIME_MODEL,
    step_time: Annotated[Optional[float], typer.Option(
        help="Seconds per step, a constant (overrides --time-model; for comparison).", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the workload.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("simulate-out"),
    fmt: Annotated[str, typer.Option("--format", help="Summary format: json or csv.")] = "json",
    plots: Annotated[bool, typer.Option(help="Write PNG plots.")] = True,
    save_trace: Annotated[Optional[Path], typer.Option(
        help="Also record the first paged run as a trace file (JSONL).", show_default=False)] = None,
) -> None:
    """Run a workload against memory managers; write summaries, step logs and plots."""
    # Every mistake is caught here, before anything runs, and named by its flag.
    if fmt not in ("json", "csv"):
        raise fail(f"--format must be json or csv, got {fmt!r}")
    if dataset not in PRESETS:
        raise fail(f"--dataset must be one of {', '.join(PRESETS)}, got {dataset!r}")
    check_count(requests, "--requests", 1, MAX_REQUESTS)
    if not (math.isfinite(rate) and rate >= 0):
        raise fail(f"--rate must be a number of requests per second >= 0 (0: all at once), got {rate}")
    check_count(n, "--n", 1, MAX_WIDTH)
    check_count(beam_width, "--beam-width", 1, MAX_WIDTH)
    if n > 1 and beam_width > 1:
        raise fail("--n and --beam-width cannot both exceed 1")
    check_count(system_prompt, "--system-prompt", 0, 1023)  # below half of the 2,048-token maximum length
    check_count(max_seqs, "--max-seqs", 0, MAX_COUNT)
    check_count(seed, "--seed", 0, 2**63 - 1)
    timer = resolve_time_model(time_model, step_time)
    slots = resolve_capacity(capacity, timer)
    names = [name.strip() for name in managers.split(",") if name.strip()]
    if not names:
        raise fail("--managers is empty; try paged-16,max,pow2,oracle")
    try:
        memories = [make_memory(name, slots, prefix_caching) for name in names]
    except SimError as exc:
        raise fail(f"--managers: {exc}") from None
    spec = WorkloadSpec(dataset, requests, rate if rate > 0 else math.inf, n, beam_width, system_prompt,
                        seed=seed)
    try:
        workload = generate(spec)
    except SimError as exc:  # e.g. a rate so low that the arrivals leave the simulated clock
        raise fail(f"--rate: {exc}") from None
    output_folder(out, "--out")
    if save_trace is not None:
        output_file(save_trace, "--save-trace")
        for i, memory in enumerate(memories):
            if isinstance(memory, PagedMemory):
                memories[i] = PagedMemory(slots, memory.block_size, prefix_caching, record_trace=True)
                break
    config = SchedulerConfig(max_running_seqs=max_seqs or MAX_COUNT, time_model=timer)
    window = "all" if rate > 0 else "saturated"

    summaries, shares = [], {}
    with progress() as bar:
        for memory in memories:
            task = bar.add_task(f"{memory.name:>16}", total=len(workload.requests))
            sched = Scheduler(workload, memory, config)
            try:
                sched.run(lambda done, total, task=task: bar.update(task, completed=done))
            except SimError as exc:
                raise fail(f"{memory.name}: {exc}") from None
            result = sched.result(window)
            summaries.append(result.summary)
            if plots:
                from tinyserve_sim.serving.plots import token_state_share

                shares[memory.name] = token_state_share(result.log)
            with writing(out, "--out"):
                with open(out / f"steps_{memory.name}.csv", "w", encoding="utf-8", newline="") as f:
                    result.log.write_csv(f)
            if isinstance(memory, PagedMemory) and memory.trace is not None and save_trace is not None:
                with writing(save_trace, "--save-trace"):
                    memory.trace.save(save_trace)
                console.print(f"wrote trace {save_trace} ({len(memory.trace.ops):,} operations)")
            del sched, result  # the step log can go: it is on disk

    rows = [s.to_dict() for s in summaries]
    with writing(out, "--out"):
        if fmt == "json":
            payload = {"workload": workload.to_json()["spec"], "time_model": timer.name, "capacity": slots,
                       "window": window, "results": rows}
            (out / "summary.json").write_text(json.dumps(payload, indent=2))
        else:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
            (out / "summary.csv").write_text(buf.getvalue())
        if plots:
            from tinyserve_sim.serving.plots import plot_shares, plot_timeline

            plot_shares(summaries, out / "shares.png")
            plot_timeline(shares, out / "timeline.png")

    load = "saturated" if rate == 0 else f"{rate:g} req/s"
    over = "every step" if window == "all" else "the steps in which memory held a request back"
    console.print(memory_table(summaries, f"KV memory: {dataset}, {requests:,} requests, {load}", f"mean over {over}"))
    console.print(time_table(summaries, f"Time: {timer.name}",
                             "batch: sequences per step; s/token: latency / output tokens"))
    console.print(f"wrote {out}/summary.{fmt}, step logs" + (" and plots" if plots else ""))


def memory_table(summaries: list, title: str, caption: str = "") -> Table:
    """Where each manager's KV memory went (fits 80 columns)."""
    table = Table(title=title, title_justify="left", caption=caption or None, caption_justify="left")
    table.add_column("manager", no_wrap=True)
    for column in ("tokens", "reserved", "internal", "external", "idle", "shared"):
        table.add_column(column, justify="right", no_wrap=True)
    for s in summaries:
        table.add_row(s.manager, *(f"{100 * x:.1f}%" for x in (
            s.token_states, s.reservation, s.internal, s.external, s.idle, s.sharing_saving)))
    return table


def time_table(summaries: list, title: str, caption: str = "") -> Table:
    """How fast each manager served (fits 80 columns)."""
    table = Table(title=title, title_justify="left", caption=caption or None, caption_justify="left")
    table.add_column("manager", no_wrap=True)
    for column in ("batch", "preempted", "s/token", "tokens/s", "simulated"):
        table.add_column(column, justify="right", no_wrap=True)
    for s in summaries:
        table.add_row(s.manager, f"{s.mean_running_seqs:.1f}", f"{s.preemptions:,}",
                      f"{s.mean_latency_per_token:.3f}", f"{s.throughput:,.0f}", f"{s.duration:,.0f} s")
    return table
