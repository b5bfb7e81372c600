"""The claims table comes from the simulation, never typed in; the CLI commands work."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from tinyserve_sim.claims import experiments
from tinyserve_sim.claims.experiments import Size, run_experiments
from tinyserve_sim.claims.paper import paper_checks
from tinyserve_sim.claims.verdicts import claims_markdown, seed_claims
from tinyserve_sim.cli import app
from tinyserve_sim.serving.timing import TIME_MODELS

TINY = Size("tiny", 60, 200, 20, 6, per_octave=1, load_scale=0.1)


def _tiny(time_model=None) -> experiments.Experiments:
    experiments.SIZES["tiny"] = TINY
    try:
        return run_experiments("tiny", time_model=time_model)
    finally:
        del experiments.SIZES["tiny"]


@pytest.fixture(scope="module")
def tiny() -> experiments.Experiments:
    """A very small run: enough to exercise every row (verdicts need the quick size or more)."""
    return _tiny()


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
        e = dataclasses.replace(tiny, main=dict(tiny.main), rate_sweeps=dict(tiny.rate_sweeps))
        for d in ("sharegpt", "alpaca"):
            e.main[d, "paged-16"] = dataclasses.replace(tiny.main[d, "paged-16"], token_states=share)
        sweep = e.rate_sweeps["sharegpt"] = dataclasses.replace(tiny.rate_sweeps["sharegpt"],
                                                                points=dict(tiny.rate_sweeps["sharegpt"].points))
        sweep.points["paged-16", 2.0] = dataclasses.replace(sweep.points["paged-16", 2.0], token_states=share,
                                                            token_states_blocked=share)
        row = _row(seed_claims(e), "Memory Utilization")
        assert row.verdict == verdict
        assert f"{100 * share:.1f}%" in row.measured
    assert f"{100 * tiny.main[key].token_states:.1f}%" in before.measured

    e = dataclasses.replace(tiny, main=dict(tiny.main))
    e.main["alpaca", "max"] = dataclasses.replace(tiny.main["alpaca", "max"],
                                                  mean_running_seqs=tiny.main["alpaca", "paged-16"].mean_running_seqs / 40)
    assert "reaches 40.0x (alpaca vs max)" in _row(seed_claims(e), "Performance Boost").reason
    # With time: tokens per second decide the verdict, not the batch.
    paged = tiny.main["alpaca", "paged-16"]
    e.main["alpaca", "max"] = dataclasses.replace(tiny.main["alpaca", "max"], generated_tokens=paged.generated_tokens,
                                                  duration=paged.duration * 31)
    row = _row(seed_claims(e), "Performance Boost")
    assert "alpaca vs max 31.0x" in row.measured and row.verdict == "holds under stated conditions"


def test_a_claims_row_moves_when_the_time_model_moves(tiny) -> None:
    """A slower iteration (three times the host overhead) changes the time rows, not the memory rows."""
    paper = TIME_MODELS["opt-13b-a100"]
    slow = _tiny(dataclasses.replace(paper, name="slow", overhead=3 * paper.overhead))
    for start in ("Performance Boost",):
        before, after = _row(seed_claims(tiny), start), _row(seed_claims(slow), start)
        assert before.measured != after.measured and "[time: slow]" in after.simulated
    for start in ("vLLM Fig. 12", "vLLM Fig. 13"):
        assert _row(paper_checks(tiny), start).measured != _row(paper_checks(slow), start).measured
    assert _row(seed_claims(tiny), "Memory Efficiency").measured == _row(seed_claims(slow), "Memory Efficiency").measured
    # A slower server holds each request longer: a larger batch at the same rate (Little's law).
    assert slow.rate_sweeps["alpaca"].batch("paged-16", 30.0) > tiny.rate_sweeps["alpaca"].batch("paged-16", 30.0)


def test_paper_checks_are_computed(tiny) -> None:
    rows = paper_checks(tiny)
    assert [r.claim.split(":")[0] for r in rows] == ["vLLM Fig. 2", "vLLM Fig. 12", "vLLM Fig. 13", "vLLM §7.2",
                                                     "vLLM Fig. 15"]
    e = dataclasses.replace(tiny, main=dict(tiny.main))
    e.main["sharegpt", "max"] = dataclasses.replace(tiny.main["sharegpt", "max"], token_states=0.9)
    assert paper_checks(e)[0].verdict == "not reproduced"


def test_every_row_states_its_conditions(tiny) -> None:
    for row in seed_claims(tiny)[:7] + paper_checks(tiny):
        assert row.simulated.startswith("[") or "[memory" in row.simulated or "[time" in row.simulated, row.claim


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
    assert verdicts["Performance Boost"] == "does not hold"  # with time: about 14x at most, not 30x
    checks = {row["claim"].split(":")[0]: row["verdict"] for row in data["paper_checks"]}
    assert checks["vLLM Fig. 2"] == "reproduced"
    assert checks["vLLM Fig. 12"] == "reproduced" and checks["vLLM Fig. 13"] == "reproduced"
    assert checks["vLLM §7.2"] == "partly reproduced"
    assert len(list((tmp_path / "plots").glob("*.png"))) == 8
