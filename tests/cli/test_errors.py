"""Every mistake on the command line is one line on standard error and exit status 2, never a traceback.

Each case runs the real program (``python -m tinyserve_sim``) in a fresh
process with no terminal, as a script or CI would, and checks standard error
line by line: the CLI reference page promises exactly this.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def case(name: str, args: list[str], marks=(), timeout: float = 30):
    return pytest.param(args, timeout, id=name, marks=marks)


# (id, arguments). "{trace}" is a valid trace file, "{bad}" a malformed one,
# "{folder}" an existing folder. /proc refuses new files even to root (CI runs as root).
CASES = [
    case("no-such-command", ["bogus"]),
    case("no-such-option", ["--bogus"]),
    case("demo-unknown-scenario", ["demo", "--scenario", "nope"]),
    case("demo-unknown-option", ["demo", "--bogus"]),
    case("demo-render-unwritable", ["demo", "--render", "/proc/forbidden"]),
    case("demo-selection-render-unwritable", ["demo", "--scenario", "query-aware-selection", "--render", "/proc/forbidden"]),
    case("select-demo-render-is-a-file", ["select", "demo", "--render", "{trace}"]),
    case("select-run-render-unwritable", ["select", "run", "--quiet", "--steps", "2", "--render", "/proc/forbidden"]),
    case("scenarios-selection-is-no-trace", ["scenarios", "query-aware-selection"]),
    case("trace-missing-file-argument", ["trace"]),
    case("trace-no-such-file", ["trace", "/nonexistent/t.jsonl"]),
    case("trace-folder-as-file", ["trace", "{folder}"]),
    case("trace-malformed", ["trace", "{bad}"]),
    case("trace-render-unwritable", ["trace", "{trace}", "--render", "/proc/forbidden"]),
    case("trace-render-is-a-file", ["trace", "{trace}", "--render", "{trace}"]),
    case("trace-html-no-such-folder", ["trace", "{trace}", "--html", "/nonexistent/dir/p.html"]),
    case("trace-html-unwritable", ["trace", "{trace}", "--html", "/proc/p.html"]),
    case("trace-bad-format", ["trace", "{trace}", "--format", "gif"]),
    case("trace-until-negative", ["trace", "{trace}", "--until", "-1"]),
    case("trace-until-not-a-number", ["trace", "{trace}", "--until", "x"]),
    case("scenarios-unknown", ["scenarios", "nope"]),
    case("scenarios-write-no-such-folder", ["scenarios", "eviction", "--write", "/nonexistent/dir/x.jsonl"]),
    case("scenarios-write-unwritable", ["scenarios", "eviction", "--write", "/proc/x.jsonl"]),
    case("scenarios-write-is-a-folder", ["scenarios", "eviction", "--write", "{folder}"]),
    case("simulate-unknown-option", ["simulate", "--bogus"]),
    case("simulate-no-requests", ["simulate", "--requests", "0"]),
    case("simulate-unknown-dataset", ["simulate", "--dataset", "nope", "--requests", "1"]),
    case("simulate-unknown-manager", ["simulate", "--managers", "nope", "--requests", "1"]),
    case("simulate-bad-format", ["simulate", "--format", "xml", "--requests", "1"]),
    case("simulate-out-unwritable", ["simulate", "--requests", "1", "--out", "/proc/nope"]),
    case("simulate-save-trace-no-such-folder", ["simulate", "--requests", "1", "--save-trace", "/nonexistent/t.jsonl"]),
    case("simulate-max-seqs-negative", ["simulate", "--requests", "1", "--max-seqs", "-1"]),
    case("simulate-rate-negative", ["simulate", "--requests", "1", "--rate", "-5"]),
    case("simulate-step-time-negative", ["simulate", "--requests", "1", "--step-time", "-1"]),
    case("simulate-unknown-time-model", ["simulate", "--requests", "1", "--time-model", "nope"]),
    case("sweep-unknown-option", ["sweep", "--bogus"]),
    case("sweep-rates-negative", ["sweep", "--rates", "1,-2"]),
    case("sweep-out-unwritable", ["sweep", "--rates", "1", "--out", "/proc/nope"]),
    case("plan-head-dim-not-a-multiple-of-8", ["plan", "--head-dim", "7"]),
    case("plan-heads-not-a-multiple", ["plan", "--heads", "30", "--kv-heads", "8"]),
    case("plan-kv-heads-zero", ["plan", "--kv-heads", "0"]),
    case("plan-unknown-dtype", ["plan", "--dtype", "int8"]),
    case("plan-bad-partition", ["plan", "--partition", "100"]),
    case("plan-lengths-not-numbers", ["plan", "--lengths", "500,x"]),
    case("plan-lengths-zero", ["plan", "--lengths", "0,5"]),
    case("plan-budget-under-two-pages", ["plan", "--budget", "8"]),
    case("plan-batch-past-the-grid", ["plan", "--batch", "1000000000"]),
    case("plan-context-past-int32", ["plan", "--context", "99999999999"]),
    case("plan-lengths-past-int32", ["plan", "--lengths", "5,99999999999"]),
    case("plan-too-many-rows", ["plan", "--batch", "65535", "--kv-heads", "32"]),
    case("plan-block-size-zero", ["plan", "--budget", "64", "--block-size", "0"]),
    case("claims-unknown-size", ["claims", "--size", "nope"]),
    # Checked before the run starts: one line at once, not after the simulations.
    case("claims-json-no-such-folder", ["claims", "--quick", "--json", "/nonexistent/dir/c.json"]),
    case("claims-plots-unwritable", ["claims", "--quick", "--plots", "/proc/forbidden"]),
]


def run_cli(args: list[str], cwd: Path, stdin: int | bytes = subprocess.DEVNULL,
            timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
    kwargs = {"input": stdin} if isinstance(stdin, bytes) else {"stdin": stdin}
    return subprocess.run([sys.executable, "-m", "tinyserve_sim", *args], cwd=cwd, env=env,
                          capture_output=True, timeout=timeout, **kwargs)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    trace = tmp_path / "ev.jsonl"
    subprocess.run([sys.executable, "-m", "tinyserve_sim", "scenarios", "eviction", "--write", str(trace)],
                   check=True, capture_output=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "tinyserve-sim-trace", "version": 1, "block_size": 4, "num_blocks": 2}\n{"op": "add"}\n')
    folder = tmp_path / "a-folder"
    folder.mkdir()
    return {"trace": str(trace), "bad": str(bad), "folder": str(folder)}


@pytest.mark.parametrize("args, timeout", CASES)
def test_a_mistake_is_one_line_and_exit_status_2(args, timeout, files, tmp_path):
    args = [a.format(**files) for a in args]
    try:
        result = run_cli(args, tmp_path, timeout=timeout)
    except subprocess.TimeoutExpired:  # e.g. a negative --max-seqs that never finishes
        pytest.fail(f"tinyserve-sim {' '.join(args)} still ran after {timeout} s")
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert result.returncode == 2, (result.returncode, stderr)


@pytest.mark.parametrize("args", [
    ["demo", "--scenario", "query-aware-selection", "--render", "/proc/forbidden"],
    ["select", "demo", "--render", "{trace}"],
])
def test_a_bad_render_folder_is_refused_before_anything_prints(args, files, tmp_path):
    result = run_cli([a.format(**files) for a in args], tmp_path)
    assert result.returncode == 2 and result.stdout.decode() == "", result.stdout.decode()[:300]


def test_step_without_a_terminal_reads_standard_input(files, tmp_path):
    # stdin is /dev/null, as in CI: the first operation is shown, then the input ends.
    result = run_cli(["trace", files["trace"], "--step"], tmp_path)
    out = result.stdout.decode()
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr.decode()
    assert "[  0]" in out and "[  1]" not in out
    assert "standard input ended" in out
    # Keys from a pipe: two keys, then q.
    result = run_cli(["trace", files["trace"], "--step"], tmp_path, stdin=b"nnq")
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "[  2]" in out and "[  3]" not in out


def test_version(tmp_path):
    from tinyserve_sim import __version__

    result = run_cli(["--version"], tmp_path)
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"tinyserve-sim {__version__}"


def test_help_fits_80_columns_and_shows_no_types_for_flags(tmp_path):
    for command in ([], ["demo"], ["trace"], ["scenarios"], ["simulate"], ["sweep"], ["claims"]):
        result = run_cli([*command, "--help"], tmp_path)
        text = result.stdout.decode()
        assert result.returncode == 0, result.stderr.decode()
        assert max(len(line) for line in text.splitlines()) <= 80, text
        assert "<bool>" not in text and "--help" in text
