"""``demo``, ``trace`` and ``scenarios``: step through block-manager operations.

Each prints one explained line per operation, read from its record, and the
state at the end (block tables, a memory map, the free queue).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from tinyserve_sim.cli.common import console, fail
from tinyserve_sim.cli.export import export_target, write_export
from tinyserve_sim.control.trace import Replay, Trace, load
from tinyserve_sim.errors import SimError
from tinyserve_sim.render import print_state, render_record, save_state
from tinyserve_sim.scenarios import SCENARIOS, get_scenario


def _walk(
    trace: Trace,
    step_by_step: bool = False,
    until: Optional[int] = None,
    render_dir: Optional[Path] = None,
    picture_format: str = "svg",
    show_state: bool = True,
) -> Replay:
    """Replay ``trace``, printing one explained line per step; return the replay."""
    replay = trace.replay()
    header = trace.header
    console.print(
        f"[bold]{header.name or 'trace'}[/]: {header.description or ''}\n"
        f"[dim]{header.num_blocks} blocks x {header.block_size} slots, free queue {header.policy}, "
        f"prefix caching {'on' if header.prefix_caching else 'off'}[/]"
    )
    if render_dir is not None:
        save_state(replay.manager, render_dir / f"step-000.{picture_format}", title="initial state")
    while not replay.done and (until is None or replay.position < until):
        op = replay.next_op
        try:
            step = replay.next_record()
        except StopIteration:
            break
        console.print(render_record(step), soft_wrap=True)
        if op.note:
            console.print(Text(f"       {op.note}", style="italic dim"), soft_wrap=True)
        if render_dir is not None:
            save_state(replay.manager, render_dir / f"step-{replay.position:03d}.{picture_format}",
                       title=f"after step {step.index}: {step.op}")
        if step_by_step:
            print_state(replay.manager, console)
            console.print("[dim]press a key for the next step, q to quit[/]")
            if typer.getchar() in ("q", "Q"):
                break
    if replay.error is not None:
        console.print(f"[bold red]stopped:[/] {replay.stop_message()}", soft_wrap=True)
    if show_state and not step_by_step:
        print_state(replay.manager, console)
    return replay


def demo(
    scenario: Annotated[str, typer.Option(help="Which built-in scenario to walk.")] = "tour",
    render: Annotated[Optional[Path], typer.Option(help="Also write one picture per step into this folder.")] = None,
) -> None:
    """Walk a built-in scenario step by step, explaining each step in one line."""
    try:
        trace = get_scenario(scenario).trace()
    except SimError as exc:
        raise fail(str(exc)) from None
    _walk(trace, render_dir=render)
    console.print("\n[dim]Next: `tinyserve-sim scenarios` lists more; `tinyserve-sim trace FILE --step` steps "
                  "through your own trace.[/]")


def trace_command(
    file: Annotated[Path, typer.Argument(help="A trace file (JSON Lines).")],
    step: Annotated[bool, typer.Option("--step", help="Show the state and wait for a key press after each step.")] = False,
    until: Annotated[Optional[int], typer.Option(help="Stop after this many operations.", min=0)] = None,
    render: Annotated[Optional[Path], typer.Option(help="Write one picture per step into this folder.")] = None,
    picture_format: Annotated[str, typer.Option("--format", help="Picture format: svg or png.")] = "svg",
    export: Annotated[Optional[tuple[str, Path]], typer.Option(metavar="FORMAT OUT", help="Then write the live sequences' batch tensors, FORMAT vllm or flashinfer, to OUT.npz with an OUT.json sidecar.")] = None,
) -> None:
    """Step through a trace: all at once, one step per key press, or up to a step."""
    if picture_format not in ("svg", "png"):
        raise fail(f"--format must be svg or png, got {picture_format!r}")
    target = export_target(*export) if export is not None else None
    try:
        trace = load(file)
    except SimError as exc:
        raise fail(f"{file}: {exc}") from None
    replay = _walk(trace, step, until, render, picture_format)
    if target is not None:
        write_export(trace, replay.position, target, file)
    if replay.error is not None:
        raise typer.Exit(code=1)


def scenarios(
    name: Annotated[Optional[str], typer.Argument(help="A scenario to print or write.")] = None,
    write: Annotated[Optional[Path], typer.Option(help="Write the scenario as a trace file here.")] = None,
) -> None:
    """List the built-in scenarios, or print / write one as a trace file."""
    if name is None:
        table = Table(title="built-in scenarios", title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("what it shows")
        for scenario in SCENARIOS.values():
            table.add_row(scenario.name, scenario.title)
        console.print(table)
        console.print("[dim]`tinyserve-sim scenarios NAME --write FILE` saves one; "
                      "`tinyserve-sim demo --scenario NAME` walks it.[/]")
        return
    try:
        text = get_scenario(name).trace().dumps()
    except SimError as exc:
        raise fail(str(exc)) from None
    if write is None:
        print(text, end="")
    else:
        write.write_text(text)
        console.print(f"wrote {write}")
