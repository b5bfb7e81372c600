"""What every command shares: the console, the one-line error, the progress bar.

Every mistake a user can make on the command line ends in :func:`fail`: one
line on standard error and exit status 2, never a traceback.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

#: Standard output of every command (no automatic highlighting of numbers).
console = Console(highlight=False)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on standard error; return the exit (status 2) to raise."""
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code=2)


def progress() -> Progress:
    """A progress bar on standard error that disappears when it is done."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    )
