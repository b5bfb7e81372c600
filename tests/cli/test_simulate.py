"""``simulate``, ``sweep`` and ``claims``: they write what they promise, and every mistake is one line, exit 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tinyserve_sim.cli import app

runner = CliRunner()
NARROW = {"COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1"}


def test_simulate_command_writes_json_csv_and_plots(tmp_path) -> None:
    out = tmp_path / "run"
    args = ["simulate", "--managers", "paged-16,oracle", "--dataset", "alpaca", "--requests", "30",
            "--out", str(out), "--save-trace", str(tmp_path / "t.jsonl")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [r["manager"] for r in summary["results"]] == ["paged-16", "oracle"]
    assert summary["time_model"] == "opt-13b-a100" and summary["capacity"] == 15_728
    assert (out / "shares.png").exists() and (out / "timeline.png").exists()
    steps = (out / "steps_oracle.csv").read_text().splitlines()
    assert steps[0].startswith("step,time,duration,") and len(steps) == summary["results"][1]["steps"] + 1
    assert (tmp_path / "t.jsonl").read_text().startswith('{"format": "tinyserve-sim-trace"')
    result = runner.invoke(app, ["simulate", "--managers", "max", "--requests", "5", "--format", "csv",
                                 "--no-plots", "--rate", "2", "--step-time", "0.05", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "summary.csv").read_text().startswith("manager,")
    assert "constant-50ms" in result.output


def test_the_time_model_changes_latency_not_memory(tmp_path) -> None:
    def run(*extra: str) -> dict:
        out = tmp_path / "-".join(extra)
        result = runner.invoke(app, ["simulate", "--managers", "paged-16", "--requests", "40", "--rate", "1",
                                     "--no-plots", "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        return json.loads((out / "summary.json").read_text())["results"][0]

    slow, fast = run("--step-time", "0.08"), run("--step-time", "0.02")
    assert slow["mean_latency_per_token"] > 3 * fast["mean_latency_per_token"]
    h100 = run("--time-model", "opt-13b-h100", "--capacity", "15728")
    assert h100["mean_latency_per_token"] < run()["mean_latency_per_token"]


def test_simulate_fits_80_columns(tmp_path) -> None:
    result = runner.invoke(app, ["simulate", "--managers", "paged-16,oracle-first-fit", "--requests", "10",
                                 "--no-plots", "--out", str(tmp_path)], env=NARROW)
    assert result.exit_code == 0, result.output
    assert "oracle-first-fit" in result.output and "…" not in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    help_text = runner.invoke(app, ["simulate", "--help"], env=NARROW).output
    assert "paged-16, max, pow2 and oracle)" in " ".join(help_text.split()) and "…" not in help_text
    assert max(len(line) for line in help_text.splitlines()) <= 80


def _one_line_error(args: list[str], *expected: str) -> None:
    result = runner.invoke(app, args, env=NARROW)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize(("args", "expected"), [
    (["--max-seqs", "-1"], ["--max-seqs"]),
    (["--rate", "-5"], ["--rate"]),
    (["--rate", "nan"], ["--rate"]),
    (["--step-time", "-1"], ["--step-time"]),
    (["--step-time", "0"], ["--step-time"]),
    (["--requests", "0"], ["--requests"]),
    (["--n", "0"], ["--n"]),
    (["--n", "2", "--beam-width", "2"], ["--n", "--beam-width"]),
    (["--system-prompt", "5000"], ["--system-prompt"]),
    (["--capacity", "0"], ["--capacity"]),
    (["--capacity", "99999999999"], ["--capacity"]),
    (["--seed", "-1"], ["--seed"]),
    (["--dataset", "nope"], ["--dataset"]),
    (["--format", "xml"], ["--format"]),
    (["--managers", "nope"], ["--managers", "nope"]),
    (["--managers", "paged-0"], ["--managers"]),
    (["--managers", " , "], ["--managers"]),
    (["--time-model", "nope"], ["--time-model", "nope"]),
    (["--time-model", "/nonexistent/mine.json"], ["--time-model", "mine.json"]),
    (["--out", "/proc/nope"], ["--out", "/proc/nope"]),
    (["--save-trace", "/nonexistent/t.jsonl"], ["--save-trace", "/nonexistent"]),
    (["--save-trace", "/proc"], ["--save-trace"]),
])
def test_simulate_mistakes_are_one_line(tmp_path, args, expected) -> None:
    base = ["simulate", "--requests", "3", "--no-plots", "--out", str(tmp_path / "o")]
    _one_line_error(base + args, *expected)


def test_a_request_too_large_for_the_batch_is_an_error_not_a_hang(tmp_path) -> None:
    _one_line_error(["simulate", "--n", "4", "--max-seqs", "2", "--requests", "2", "--no-plots",
                     "--out", str(tmp_path)], "max_running_seqs")


def test_sweep_prints_tables_and_writes_json_and_plot(tmp_path) -> None:
    result = runner.invoke(app, ["sweep", "--dataset", "sharegpt", "--rates", "0.5,2", "--duration", "30",
                                 "--managers", "paged-16,max", "--out", str(tmp_path)], env=NARROW)
    assert result.exit_code == 0, result.output
    assert "Sustained under 0.25 s/token" in result.output and "batch at 2 req/s" in result.output
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert data[0]["rates"] == [0.5, 2.0] and {p["manager"] for p in data[0]["points"]} == {"paged-16", "max"}
    assert (tmp_path / "latency_vs_rate.png").exists()
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


@pytest.mark.parametrize(("args", "expected"), [
    (["--rates", "1,-2"], ["--rates"]),
    (["--rates", "1,abc"], ["--rates", "abc"]),
    (["--duration", "0"], ["--duration"]),
    (["--duration", "1e12"], ["--duration"]),
    (["--threshold", "0"], ["--threshold"]),
    (["--dataset", "nope"], ["--dataset"]),
    (["--managers", "nope"], ["--managers", "nope"]),
    (["--max-seqs", "0"], ["--max-seqs"]),
    (["--step-time", "-2"], ["--step-time"]),
    (["--out", "/proc/nope"], ["--out"]),
])
def test_sweep_mistakes_are_one_line(tmp_path, args, expected) -> None:
    _one_line_error(["sweep", "--rates", "1", "--duration", "3", "--no-plots", "--out", str(tmp_path)] + args,
                    *expected)


@pytest.mark.parametrize(("args", "expected"), [
    (["--size", "nope"], ["--size"]),
    (["--time-model", "nope"], ["--time-model"]),
    (["--plots", "/proc/nope"], ["--plots"]),
    (["--json", "/nonexistent/c.json"], ["--json"]),
])
def test_claims_mistakes_are_one_line(args, expected) -> None:
    _one_line_error(["claims"] + args, *expected)
