"""``tinyserve-sim simulate`` writes its summary, step logs, plots and trace."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tinyserve_sim.cli import app


def test_simulate_command_writes_json_csv_and_plots(tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["simulate", "--managers", "paged-16,oracle", "--dataset", "alpaca", "--requests", "30",
            "--out", str(out), "--save-trace", str(tmp_path / "t.jsonl")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert [r["manager"] for r in summary["results"]] == ["paged-16", "oracle"]
    assert (out / "shares.png").exists() and (out / "steps_oracle.csv").exists()
    assert (tmp_path / "t.jsonl").read_text().startswith('{"format": "tinyserve-sim-trace"')
    result = runner.invoke(app, ["simulate", "--managers", "max", "--requests", "5", "--format", "csv",
                                    "--no-plots", "--rate", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "summary.csv").read_text().startswith("manager,")
    bad = runner.invoke(app, ["simulate", "--managers", "nope", "--out", str(out)])
    assert bad.exit_code == 2
