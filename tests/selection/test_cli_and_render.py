"""``tinyserve-sim select`` and the selection renderers show what the records hold."""

from __future__ import annotations

import json

from rich.console import Console
from typer.testing import CliRunner

from tinyserve_sim.cli import app
from tinyserve_sim.render.selection import (
    draw_budget_sweep,
    draw_hit_rates,
    draw_selection_step,
    render_selection_step,
)
from tinyserve_sim.selection import SINK, AttentionWorkloadSpec, budget_sweep, hit_rate_study
from tinyserve_sim.selection.scenarios import SELECTION_SCENARIOS, get_selection_scenario

runner = CliRunner()
ENV = {"COLUMNS": "160"}


def test_the_terminal_view_shows_scores_reasons_and_misses() -> None:
    session = get_selection_scenario("query-aware-selection").session()
    report = session.step()
    console = Console(record=True, width=160)
    console.print(render_selection_step(report, "lru"))
    text = console.export_text()
    sel = report.selection
    first = f"{float(sel.scores[0, 0, 0]):5.1f}*"  # the sink page's score, a miss on the first step
    assert sel.reasons[0, 0, 0] == SINK and first in text
    assert text.count("*") - text.count("* = miss") == len(report.tiers["lru"].loads)  # every miss marked once
    assert "fast tier (lru)" in text and "0 hits, 12 misses" in text
    assert f"{report.quality.mean_recall:.3f}" in text


def test_the_pictures_draw(tmp_path) -> None:
    session = get_selection_scenario("query-aware-selection").session()
    report = session.step()
    fig = draw_selection_step(report)
    rows = len(fig.axes[0].patches)
    assert rows == 2 * 24  # one rectangle per page and KV head
    path = tmp_path / "step.svg"
    fig.savefig(path)
    assert path.read_text().lstrip().startswith("<?xml")
    spec = AttentionWorkloadSpec(num_seqs=1, context_len=512, decode_steps=2, head_dim=32, window=8)
    sweep = budget_sweep(spec, (0.5, 0.25))
    assert len(draw_budget_sweep(sweep).axes) == 3  # recall, its error twin, bytes
    study = hit_rate_study([spec], budgets=(0.25,), capacities=(1.0, 2.0))
    assert len(draw_hit_rates(study).axes) == 1


def test_demo_walks_every_step_and_renders(tmp_path) -> None:
    result = runner.invoke(app, ["select", "demo", "--render", str(tmp_path), "--format", "png"], env=ENV)
    assert result.exit_code == 0, result.output
    scenario = SELECTION_SCENARIOS["query-aware-selection"]
    steps = scenario.spec.decode_steps
    assert f"decode step {steps - 1}:" in result.output and "query changes topic" in result.output
    assert "fast-tier hit rate (lru, 15 pages)" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"step-{i:03d}.png" for i in range(steps)]


def test_run_sweep_and_their_errors(tmp_path) -> None:
    out = tmp_path / "run.json"
    result = runner.invoke(app, ["select", "run", "--context", "511", "--steps", "3", "--budget", "1/4",
                                 "--quiet", "--copy-pages", "--json", str(out)], env=ENV)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["budget_tokens"] == 128 and set(data["hit_rates"]) == {"lru", "lfu", "score-aware"}
    assert "decode step 0:" not in result.output and "fast-tier hit rate" in result.output

    result = runner.invoke(app, ["select", "sweep", "--seqs", "1", "--context", "1024", "--steps", "2",
                                 "--json", str(tmp_path / "sweep.json")], env=ENV)
    assert result.exit_code == 0, result.output
    assert "1/32" in result.output
    assert [row["budget_tokens"] for row in json.loads((tmp_path / "sweep.json").read_text())] == [512, 256, 128,
                                                                                                    64, 32]
    for args, message in [
        (["select", "run", "--budget", "x/8"], "--budget must be a share"),
        (["select", "run", "--policies", "mru"], "unknown eviction policy 'mru'"),
        (["select", "run", "--q-heads", "3"], "not a multiple"),
        (["select", "run", "--capacity", "0.5"], "cannot hold"),
        (["select", "demo", "--scenario", "nope"], "no selection scenario 'nope'"),
        (["select", "policies", "--size", "huge"], "--size must be one of"),
    ]:
        result = runner.invoke(app, args, env=ENV)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_policies_prints_the_claims_study(tmp_path) -> None:
    result = runner.invoke(app, ["select", "policies", "--plot", str(tmp_path / "hits.png")], env=ENV)
    assert result.exit_code == 0, result.output
    assert "topic stay 0.9, budget 1/8, capacity 1.1x" in result.output and "optimum" in result.output
    assert (tmp_path / "hits.png").stat().st_size > 1000


def test_the_top_level_demo_walks_the_selection_scenarios(tmp_path) -> None:
    """``tinyserve-sim demo --scenario NAME`` takes a selection scenario as well as a trace one:
    the same walk as ``select demo``, step for step; and ``scenarios`` lists both kinds."""
    for name, scenario in SELECTION_SCENARIOS.items():
        top = runner.invoke(app, ["demo", "--scenario", name, "--render", str(tmp_path / name)], env=ENV)
        sub = runner.invoke(app, ["select", "demo", "--scenario", name], env=ENV)
        assert top.exit_code == 0 and sub.exit_code == 0, (top.output, sub.output)
        assert top.output == sub.output
        assert f"decode step {scenario.spec.decode_steps - 1}:" in top.output
        assert len(list((tmp_path / name).iterdir())) == scenario.spec.decode_steps
    listed = runner.invoke(app, ["scenarios"], env=ENV)
    assert listed.exit_code == 0 and all(name in listed.output for name in SELECTION_SCENARIOS)
    unknown = runner.invoke(app, ["demo", "--scenario", "nope"], env=ENV)
    assert unknown.exit_code == 2 and "query-aware-selection" in unknown.output and "tour" in unknown.output
    as_trace = runner.invoke(app, ["scenarios", "query-aware-selection"], env=ENV)
    assert as_trace.exit_code == 2 and "demo --scenario query-aware-selection" in as_trace.output
