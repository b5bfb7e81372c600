"""The ``tinyserve-sim`` Typer application: every command, registered in one place.

Two promises of the command line are kept here, for every command at once:

* **one line per mistake**: a wrong option, a missing argument or a value out
  of range prints ``error: ...`` on one line of standard error and exits with
  status 2 (:class:`OneLineErrors`); mistakes found by the commands themselves
  go through :func:`~tinyserve_sim.cli.common.fail`, which prints the same way;
* **plain help** that fits 80 columns: the help is click's plain layout, not
  boxes, so it reads the same in a terminal, a pipe and on the documentation site.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from tinyserve_sim import __version__
from tinyserve_sim.cli.claims import claims_command
from tinyserve_sim.cli.common import console, fail
from tinyserve_sim.cli.plan import plan_command
from tinyserve_sim.cli.selection import select_app
from tinyserve_sim.cli.simulate import simulate_command
from tinyserve_sim.cli.sweep import sweep_command
from tinyserve_sim.cli.trace_commands import demo, scenarios, trace_command
from tinyserve_sim.errors import SimError


class OneLineErrors(TyperGroup):
    """The command group, with every usage mistake reported on one line and exit status 2.

    Click would print a usage line, a hint and the error on separate lines (or
    in a box); a script or a learner reading a log wants one line that names
    the mistake and where to look. A ``SimError`` or ``OSError`` that a command
    did not turn into a message itself is reported the same way: a user never
    sees a traceback for a mistake in the input.
    """

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Exit as exit:  # raised by a command (fail(), or a trace that stops early)
            sys.exit(exit.exit_code)
        except typer.Abort:  # Ctrl-C at a prompt
            print("aborted", file=sys.stderr)
            sys.exit(1)
        except Exception as exc:
            raise SystemExit(_exit_for(exc, prog_name)) from None
        sys.exit(code if isinstance(code, int) else 0)


def _exit_for(exc: Exception, prog_name: str | None) -> int:
    """Print the one line for ``exc`` and return the exit status; re-raise what is a bug."""
    # Click's own exceptions (bad option, missing argument...) carry an exit code and a message.
    exit_code = getattr(exc, "exit_code", None)
    if isinstance(exit_code, int) and hasattr(exc, "format_message"):
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else (prog_name or "tinyserve-sim")
        hint = f" (see '{where} --help')" if ctx is not None else ""
        fail(f"{where}: {exc.format_message()}{hint}")
        return exit_code
    if isinstance(exc, SimError):
        fail(str(exc))
        return 2
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}")
        return 2
    raise exc  # a bug: let its traceback show


app = typer.Typer(
    cls=OneLineErrors,
    help="tinyserve-sim: step through how an LLM server manages its paged KV cache.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: no boxes, fits 80 columns, the same everywhere
)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"tinyserve-sim {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """tinyserve-sim: step through how an LLM server manages its paged KV cache."""


app.command("demo")(demo)
app.command("trace")(trace_command)
app.command("scenarios")(scenarios)
app.command("simulate")(simulate_command)
app.command("sweep")(sweep_command)
app.command("claims")(claims_command)
app.add_typer(select_app, name="select")
app.command("plan")(plan_command)

__all__ = ["OneLineErrors", "app", "main"]


def main() -> None:
    """Entry point of the ``tinyserve-sim`` script."""
    app(prog_name="tinyserve-sim")
