"""``tinyserve-sim claims``: check the seed's numeric claims by simulation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from tinyserve_sim.claims.experiments import SIZES, run_experiments
from tinyserve_sim.claims.paper import paper_checks
from tinyserve_sim.claims.rows import ClaimRow, rows_to_json
from tinyserve_sim.claims.verdicts import seed_claims
from tinyserve_sim.cli.common import console, fail, output_file, output_folder, progress, writing
from tinyserve_sim.cli.simulate import resolve_time_model, time_model_help
from tinyserve_sim.serving.timing import DEFAULT_TIME_MODEL


def _claims_table(title: str, rows: list[ClaimRow]) -> Table:
    table = Table(title=title, show_lines=True)
    for column, width in (("claim", 26), ("simulated", 30), ("measured", 30), ("verdict", 16), ("why", 36)):
        table.add_column(column, max_width=width, overflow="fold")
    for row in rows:
        style = {"holds": "green", "does not hold": "red"}.get(row.verdict, "yellow")
        table.add_row(row.claim, row.simulated, row.measured, f"[{style}]{row.verdict}[/]", row.reason)
    return table


def claims_command(
    quick: Annotated[bool, typer.Option(
        help="Smaller runs, the same verdicts (measured: 22 s of CPU time against 33 s, on a 2-core machine).")]
    = False,
    size: Annotated[str, typer.Option(help=f"Run size: {', '.join(SIZES)} (--quick means quick).")] = "default",
    time_model: Annotated[str, typer.Option(help=time_model_help())] = DEFAULT_TIME_MODEL,
    plots: Annotated[Optional[Path], typer.Option(help="Folder for the plots of docs/claims.md.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the tables as JSON.")] = None,
) -> None:
    """Check every numeric claim of the seed README by simulation, and print the table."""
    chosen = "quick" if quick else size
    if chosen not in SIZES:
        raise fail(f"--size must be one of {', '.join(SIZES)}, got {chosen!r}")
    timer = resolve_time_model(time_model, None)
    if plots is not None:
        output_folder(plots, "--plots")
    if json_out is not None:
        output_file(json_out, "--json")
    with progress() as bar:
        task = bar.add_task("simulating", total=None)
        experiments = run_experiments(chosen, lambda label: bar.update(task, advance=1, description=label), timer)
    claims, checks = seed_claims(experiments), paper_checks(experiments)
    console.print(_claims_table("Claims of the seed (TinyServe README)", claims))
    console.print(_claims_table("Does the simulator reproduce the vLLM paper?", checks))
    if plots is not None:
        from tinyserve_sim.claims.plots import write_claim_plots

        with writing(plots, "--plots"):
            for path in write_claim_plots(experiments, plots):
                console.print(f"wrote {path}")
    if json_out is not None:
        with writing(json_out, "--json"):
            json_out.write_text(json.dumps({"size": chosen, "claims": rows_to_json(claims),
                                            "paper_checks": rows_to_json(checks)}, indent=2))
        console.print(f"wrote {json_out}")
