"""scripts/record_gpu_cells.py refuses an --out it could not write before running anything:
one line naming the path and the reason, exit status 2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("record_gpu_cells", ROOT / "scripts" / "record_gpu_cells.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _file(path: Path) -> Path:
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda tmp: tmp, "is a directory"),
        (lambda tmp: _file(tmp / "plain") / "record.json", "is not a directory"),
    ],
)
def test_an_out_path_that_cannot_be_written_stops_at_once(tmp_path, capsys, monkeypatch, make, reason):
    script = _script()
    ran = []
    monkeypatch.setattr(script, "run_tutorial", lambda name: ran.append(name))
    out = make(tmp_path)
    assert script.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"--out {out}") and reason in err[0]
    assert ran == []  # no tutorial ran


def test_a_writable_path_in_folders_still_to_create_is_accepted(tmp_path):
    assert _script().unwritable(tmp_path / "a" / "b" / "record.json") is None
