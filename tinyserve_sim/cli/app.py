"""The ``tinyserve-sim`` Typer application: every command, registered in one place."""

from __future__ import annotations

import typer

from tinyserve_sim.cli.claims import claims_command
from tinyserve_sim.cli.simulate import simulate_command
from tinyserve_sim.cli.sweep import sweep_command
from tinyserve_sim.cli.trace_commands import demo, scenarios, trace_command

app = typer.Typer(
    help="tinyserve-sim: step through how an LLM server manages its paged KV cache.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("demo")(demo)
app.command("trace")(trace_command)
app.command("scenarios")(scenarios)
app.command("simulate")(simulate_command)
app.command("sweep")(sweep_command)
app.command("claims")(claims_command)


def main() -> None:
    """Entry point of the ``tinyserve-sim`` script."""
    app()
