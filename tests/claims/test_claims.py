"""The claims table comes from the simulation, never typed in; the CLI commands work."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from tinyserve_sim.claims import experiments
from tinyserve_sim.claims.experiments import Size, run_experiments
from tinyserve_sim.claims.verdicts import claims_markdown, paper_checks, seed_claims
from tinyserve_sim.cli import app


@pytest.fixture(scope="module")
def tiny() -> experiments.Experiments:
    """A very small run: enough to exercise every row (verdicts need the quick size or more)."""
    experiments.SIZES["tiny"] = Size("tiny", 60, 200, 20, 6)
    try:
        return run_experiments("tiny")
    finally:
        del experiments.SIZES["tiny"]


def _row(rows, start: str):
    return next(r for r in rows if r.claim.startswith(start))


def test_every_seed_claim_has_a_row(tiny) -> None:
    rows = seed_claims(tiny)
    assert len(rows) == 8
    assert _row(rows, "Cache Hit Rate").measured.startswith("score-aware vs LRU")  # computed (tests/selection)
    allowed = {"holds", "holds under stated conditions", "does not hold",
               "cannot be checked by a memory simulator"}
    assert {r.verdict for r in rows} <= allowed


def test_measured_figures_and_verdicts_follow_the_simulation(tiny) -> None:
    """Change one simulated figure: the row's measurement and verdict change with it."""
    key = ("sharegpt", "paged-16")
    before = _row(seed_claims(tiny), "Memory Utilization")
    for share, verdict in ((0.999, "holds"), (0.5, "does not hold")):
        e = dataclasses.replace(tiny, main=dict(tiny.main))
        for d in ("sharegpt", "alpaca"):
            e.main[d, "paged-16"] = dataclasses.replace(tiny.main[d, "paged-16"], token_states=share)
        row = _row(seed_claims(e), "Memory Utilization")
        assert row.verdict == verdict
        assert f"{100 * share:.1f}%" in row.measured
    assert f"{100 * tiny.main[key].token_states:.1f}%" in before.measured

    e = dataclasses.replace(tiny, main=dict(tiny.main))
    e.main["alpaca", "max"] = dataclasses.replace(tiny.main["alpaca", "max"],
                                                  mean_running_seqs=tiny.main["alpaca", "paged-16"].mean_running_seqs / 40)
    assert "40.0x" in _row(seed_claims(e), "Performance Boost").measured


def test_paper_checks_are_computed(tiny) -> None:
    rows = paper_checks(tiny)
    assert [r.claim.split(":")[0] for r in rows] == ["vLLM Fig. 2", "vLLM §7.2", "vLLM Fig. 15"]
    e = dataclasses.replace(tiny, main=dict(tiny.main))
    e.main["sharegpt", "max"] = dataclasses.replace(tiny.main["sharegpt", "max"], token_states=0.9)
    assert paper_checks(e)[0].verdict == "not reproduced"


def test_docs_markdown_tables_hold_every_row(tiny) -> None:
    text = claims_markdown(tiny)
    assert text.count("\n| ") == len(seed_claims(tiny)) + len(paper_checks(tiny)) + 2  # + 2 header rows
    assert _row(seed_claims(tiny), "Memory Utilization").measured in text


def test_claims_command_quick_prints_the_table_and_writes_plots(tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["claims", "--quick", "--plots", str(tmp_path / "plots"), "--json", str(tmp_path / "c.json")],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "Memory Utilization" in result.output and "reproduced" in result.output
    data = json.loads((tmp_path / "c.json").read_text())
    assert len(data["claims"]) == 8
    # The quick size's verdicts (stable against the default size's, see experiments.py).
    verdicts = {row["claim"].split(":")[0]: row["verdict"] for row in data["claims"]}
    assert verdicts["Memory Utilization"] == "holds under stated conditions"
    assert verdicts["Performance Boost"] == "holds under stated conditions"
    assert data["paper_checks"][0]["verdict"] == "reproduced"
    assert len(list((tmp_path / "plots").glob("*.png"))) == 6
