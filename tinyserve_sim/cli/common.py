"""What every command shares: the console, the one-line error, output paths, the progress bar.

Every mistake a user can make on the command line ends in :func:`fail`: one
line on standard error and exit status 2, never a traceback.

Output paths are checked *before* any work is done, so a typo in ``--out`` is
reported at once instead of after a long simulation:

* :func:`output_file` for an option naming a file to write (``--write``,
  ``--save-trace``, ``--json``, ``--html``): its folder must exist and accept
  files; the file itself may or may not exist;
* :func:`output_folder` for an option naming a folder (``--render``, ``--out``,
  ``--plots``): it is created (with its parents) if missing and must accept files;
* :func:`writing` around the write itself, for what no check can foresee (a
  full disk): the ``OSError`` becomes one line too.

>>> import tempfile, pathlib, typer
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> output_file(folder / "x.jsonl", "--write") == folder / "x.jsonl"
True
>>> try:
...     output_file(folder / "missing" / "x.jsonl", "--write")
... except typer.Exit as exit:
...     print("exit status", exit.exit_code)
exit status 2
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
    """Print ``error: message`` on standard error; return the exit (status 2) to raise.

    The message is printed as plain text on one line (no markup is read from it,
    no wrapping at the terminal's width), so a path with brackets or a long
    message stays one line that a script can read.
    """
    one_line = " ".join(str(message).split())
    error_console = Console(stderr=True, highlight=False, soft_wrap=True)
    error_console.print("error: ", style="bold red", end="")
    error_console.print(one_line, markup=False)
    return typer.Exit(code=2)


def _reason(exc: OSError) -> str:
    """``[Errno 2] No such file or directory: 'x'`` -> ``no such file or directory``."""
    text = exc.strerror or str(exc) or exc.__class__.__name__
    return text[0].lower() + text[1:]


def _check_folder_accepts_files(folder: Path, option: str, shown: Path) -> None:
    """Fail unless a file can be created in ``folder`` (tried for real: ``os.access`` lies to root)."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".tinyserve-write-check-"):
            pass
    except OSError as exc:
        raise fail(f"{option} {shown}: cannot write in {folder} ({_reason(exc)})") from None


def output_file(path: Path, option: str) -> Path:
    """Check that the file ``path`` (given with ``option``) can be written; return it.

    Nothing is created: the folder must already exist (a typo in a folder name
    is an error, not a new folder), must be a folder, and must accept files.
    An existing file is overwritten later; a folder of that name is an error.
    """
    path = Path(path)
    if path.is_dir():
        raise fail(f"{option} {path}: is a folder; give a file name")
    folder = path.parent
    if not folder.exists():
        raise fail(f"{option} {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise fail(f"{option} {path}: {folder} is not a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise fail(f"{option} {path}: the file is read-only")
    _check_folder_accepts_files(folder, option, path)
    return path


def output_folder(path: Path, option: str) -> Path:
    """Create the folder ``path`` (given with ``option``) if needed and check it accepts files; return it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise fail(f"{option} {path}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"{option} {path}: cannot create the folder ({_reason(exc)})") from None
    _check_folder_accepts_files(path, option, path)
    return path


@contextmanager
def writing(path: Path, option: str) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into one line and exit status 2.

    ::

        with writing(out, "--write"):
            out.write_text(text)
    """
    try:
        yield
    except OSError as exc:
        raise fail(f"{option} {path}: cannot write ({_reason(exc)})") from None


def progress() -> Progress:
    """A progress bar on standard error that disappears when it is done."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    )
