"""``demo``, ``trace`` and ``scenarios``: step through block-manager operations.

Each prints one explained line per operation, read from its record, and the
state at the end (block tables, a memory map, the free queue). Pictures are
named after what they show: ``initial.svg`` is the state before any operation,
``op-004.svg`` the state after operation ``[  4]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from tinyserve_sim.cli.common import console, fail, output_file, output_folder, writing
from tinyserve_sim.cli.export import export_target, write_export
from tinyserve_sim.cli.selection import demo_command as select_demo
from tinyserve_sim.control.trace import Replay, Trace, load
from tinyserve_sim.errors import SimError
from tinyserve_sim.render import SequenceColors, print_state, render_record, save_state, write_player
from tinyserve_sim.scenarios import SCENARIOS, get_scenario
from tinyserve_sim.selection.scenarios import SELECTION_SCENARIOS


def picture_name(position: int | None, picture_format: str) -> str:
    """The file name of a picture: ``initial.svg`` before any operation, ``op-NNN.svg`` after operation NNN.

    >>> picture_name(None, "svg"), picture_name(4, "png")
    ('initial.svg', 'op-004.png')
    """
    return f"initial.{picture_format}" if position is None else f"op-{position:03d}.{picture_format}"


def _wait_for_key() -> bool:
    """Wait for one key press; return False when the user quits (q) or the input ends.

    In a terminal this reads a single key press. Without one (standard input
    is a pipe, a file or ``/dev/null``, as in CI), it reads one character of
    standard input instead, so ``printf 'nnq' | tinyserve-sim trace F --step``
    works; at the end of the input it stops.
    """
    console.print("[dim]press a key for the next operation, q to quit[/]")
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        key = typer.getchar()
    else:
        key = stdin.read(1) if stdin is not None else ""
        if key == "":
            console.print("[dim]standard input ended: stopping here (--step reads one key per operation)[/]")
            return False
    return key not in ("q", "Q")


def _walk(
    trace: Trace,
    step_by_step: bool = False,
    until: Optional[int] = None,
    render_dir: Optional[Path] = None,
    picture_format: str = "svg",
    show_state: bool = True,
) -> Replay:
    """Replay ``trace``, printing one explained line per operation; return the replay."""
    replay = trace.replay()
    header = trace.header
    colors = SequenceColors()  # one colour per sequence for the whole trace, in every picture
    console.print(
        f"[bold]{header.name or 'trace'}[/]: {header.description or ''}\n"
        f"[dim]{header.num_blocks} blocks x {header.block_size} slots, free queue {header.policy}, "
        f"prefix caching {'on' if header.prefix_caching else 'off'}[/]"
    )
    if render_dir is not None:
        with writing(render_dir, "--render"):
            save_state(replay.manager, render_dir / picture_name(None, picture_format), title="initial state",
                       colors=colors)
    while not replay.done and (until is None or replay.position < until):
        op = replay.next_op
        try:
            record = replay.next_record()
        except StopIteration:
            break
        console.print(render_record(record), soft_wrap=True)
        if op.note:
            console.print(Text(f"       {op.note}", style="italic dim"), soft_wrap=True)
        if render_dir is not None:
            with writing(render_dir, "--render"):
                save_state(replay.manager, render_dir / picture_name(record.index, picture_format),
                           title=f"after operation {record.index}: {record.op}", colors=colors)
        if step_by_step:
            print_state(replay.manager, console, colors=colors)
            if not replay.done and not _wait_for_key():
                break
    if replay.error is not None:
        console.print(f"[bold red]stopped:[/] {replay.stop_message()}", soft_wrap=True)
    if show_state and not step_by_step:
        print_state(replay.manager, console, colors=colors)
    return replay


def demo(
    scenario: Annotated[str, typer.Option(metavar="NAME", help=(
        "Which built-in scenario to walk: a block-manager one (`tinyserve-sim scenarios` lists them) "
        f"or a query-aware selection one ({', '.join(SELECTION_SCENARIOS)}).")
    )] = "tour",
    render: Annotated[Optional[Path], typer.Option(
        metavar="DIR", help="Also write one picture per operation into this folder.")] = None,
) -> None:
    """Walk a built-in scenario, explaining each operation in one line."""
    if scenario in SELECTION_SCENARIOS:  # selection scenarios are walked by `select demo`
        select_demo(scenario=scenario, render=render, picture_format="svg", policy=None)
        return
    try:
        trace = get_scenario(scenario).trace()
    except SimError as exc:
        raise fail(f"{exc}; or a selection scenario: {', '.join(SELECTION_SCENARIOS)}") from None
    if render is not None:
        output_folder(render, "--render")
    _walk(trace, render_dir=render)
    console.print("\n[dim]Next: `tinyserve-sim scenarios` lists more; `tinyserve-sim trace FILE --step` steps "
                  "through your own trace.[/]")


def trace_command(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A trace file (JSON Lines).")],
    step: Annotated[bool, typer.Option(
        "--step", help="Show the state and wait for a key press after each operation.")] = False,
    until: Annotated[Optional[int], typer.Option(
        metavar="N", help="Stop after this many operations.", min=0)] = None,
    render: Annotated[Optional[Path], typer.Option(
        metavar="DIR", help="Write one picture per operation into this folder.")] = None,
    picture_format: Annotated[str, typer.Option("--format", metavar="svg|png", help="Picture format.")] = "svg",
    html: Annotated[Optional[Path], typer.Option(
        metavar="FILE.html", help="Write an interactive player of the whole trace (one HTML file).")] = None,
    export: Annotated[Optional[tuple[str, Path]], typer.Option(
        metavar="FORMAT OUT", help="Then write the live sequences' batch tensors, FORMAT vllm or flashinfer, "
        "to OUT.npz with an OUT.json sidecar.")] = None,
) -> None:
    """Step through a trace: all at once, key by key, or up to an operation."""
    if picture_format not in ("svg", "png"):
        raise fail(f"--format must be svg or png, got {picture_format!r}")
    if render is not None:
        output_folder(render, "--render")
    if html is not None:
        output_file(html, "--html")
    target = export_target(*export) if export is not None else None
    try:
        trace = load(file)
    except SimError as exc:
        raise fail(f"{file}: {exc}") from None
    if html is not None:
        with writing(html, "--html"):
            write_player(trace, html)
        console.print(f"wrote the player {html}: open it in a browser (arrow keys step)")
    replay = _walk(trace, step, until, render, picture_format)
    if target is not None:
        write_export(trace, replay.position, target, file)
    if replay.error is not None:
        raise typer.Exit(code=1)


def scenarios(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="A scenario to print or write.")] = None,
    write: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Write the scenario as a trace file here.")] = None,
) -> None:
    """List the built-in scenarios, or print or write one as a trace file."""
    if name is None:
        table = Table(title="built-in scenarios", title_justify="left")
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("what it shows")
        for scenario in SCENARIOS.values():
            table.add_row(scenario.name, scenario.title)
        for selection in SELECTION_SCENARIOS.values():
            table.add_row(selection.name, f"(query-aware selection) {selection.title}")
        console.print(table)
        console.print("[dim]`tinyserve-sim scenarios NAME --write FILE` saves one; "
                      "`tinyserve-sim demo --scenario NAME` walks it.[/]")
        return
    if name in SELECTION_SCENARIOS:
        raise fail(f"{name!r} is a query-aware selection scenario, not a trace; "
                   f"`tinyserve-sim demo --scenario {name}` walks it")
    try:
        text = get_scenario(name).trace().dumps()
    except SimError as exc:
        raise fail(str(exc)) from None
    if write is None:
        print(text, end="")
        return
    output_file(write, "--write")
    with writing(write, "--write"):
        write.write_text(text)
    console.print(f"wrote {write}")
