"""The command line, through Typer's test runner."""

import numpy as np
from typer.testing import CliRunner

from tinyserve_sim.cli import app

runner = CliRunner()


def test_demo_explains_every_step():
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "copy-on-write into block 3" in result.output
    assert "reused from the prefix cache" in result.output
    assert "physical memory" in result.output


def test_scenarios_list_and_write(tmp_path):
    result = runner.invoke(app, ["scenarios"])
    assert result.exit_code == 0 and "beam-search" in result.output
    out = tmp_path / "ev.jsonl"
    assert runner.invoke(app, ["scenarios", "eviction", "--write", str(out)]).exit_code == 0
    assert out.read_text().startswith('{"format": "tinyserve-sim-trace"')
    result = runner.invoke(app, ["scenarios", "nope"])
    assert result.exit_code == 2 and "no scenario 'nope'" in result.output


def test_trace_until_and_render(tmp_path):
    out = tmp_path / "cow.jsonl"
    runner.invoke(app, ["scenarios", "copy-on-write", "--write", str(out)])
    pics = tmp_path / "pics"
    result = runner.invoke(app, ["trace", str(out), "--until", "3", "--render", str(pics), "--format", "png"])
    assert result.exit_code == 0, result.output
    # A picture is named after the operation it shows: op-002 is the state after "[  2]".
    assert sorted(p.name for p in pics.iterdir()) == ["initial.png", "op-000.png", "op-001.png", "op-002.png"]
    assert "[  2] append 1 token(s) to 'A1'" in result.output and "[  3]" not in result.output


def test_trace_step_by_step_quits_on_q(tmp_path):
    out = tmp_path / "cow.jsonl"
    runner.invoke(app, ["scenarios", "copy-on-write", "--write", str(out)])
    result = runner.invoke(app, ["trace", str(out), "--step"], input="xq")
    assert result.exit_code == 0, result.output
    assert result.output.count("press a key") == 2


def test_trace_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "tinyserve-sim-trace", "version": 1, "block_size": 4, "num_blocks": 2}\n{"op": "add"}\n')
    result = runner.invoke(app, ["trace", str(bad)])
    assert result.exit_code == 2 and "line 2: field 'seq': missing" in result.output
    full = tmp_path / "full.jsonl"
    full.write_text('{"format": "tinyserve-sim-trace", "version": 1, "block_size": 4, "num_blocks": 2}\n'
                    '{"op": "add", "seq": "a", "prompt": 9}\n')
    result = runner.invoke(app, ["trace", str(full)])
    assert result.exit_code == 1 and "ran out of blocks at line 2" in result.output


def _plan(*args: str) -> list[str]:
    result = runner.invoke(app, ["plan", *args])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()


def test_plan_names_the_split_measured_fastest():
    """The choices the kernel page documents, each measured fastest (or within 1%) on an H200:
    GQA-4 at 8 x 32,768 tokens -> 4,096-token partitions (one wave of 512 blocks); MHA (copies
    through L1) at 32 x 4,096 -> 512 (12.4 waves, 95% busy: 500.7 us, against 543.4 at 2,048,
    benchmarks/results/h200_s11_decode_ca_partitions.log); one sequence of 2,048 tokens (GQA-4)
    fills no wave -> 256, 22.7 us against 31.9 at 512 (benchmarks/results/h200_s9_auto_short_rows.log)."""
    assert _plan()[-1] == "chosen: split-K, partitions of 4,096 tokens (the first grid marked *)"
    mha = _plan("--batch", "32", "--context", "4096", "--kv-heads", "32")
    assert mha[-1].startswith("chosen: split-K, partitions of 512")
    assert any("through L1 (MHA)" in ln for ln in mha) and not any("through L1" in ln for ln in _plan())
    lines = _plan("--batch", "1", "--context", "2048")
    assert lines[-1].startswith("chosen: split-K, partitions of 256 tokens")
    marked = [ln for ln in lines if ln.startswith("  * ")]
    assert len(marked) == 1 and "estimated time is the least" in marked[0]


def test_plan_says_where_the_logits_are_computed():
    # float16 GQA at head dim 128: tensor cores; MHA, float32 and head dim 48: CUDA cores.
    def logits(*args: str) -> str:
        return next(ln for ln in _plan(*args) if ln.startswith("the logits on"))

    assert logits().startswith("the logits on tensor cores")
    assert logits("--kv-heads", "32").startswith("the logits on CUDA cores")
    assert logits("--dtype", "float32").startswith("the logits on CUDA cores")
    assert logits("--head-dim", "48").startswith("the logits on CUDA cores")


def test_plan_says_where_p_v_is_computed():
    # P V follows the logits onto the tensor cores (geometry.TENSOR_CORE_VALUES).
    def values(*args: str) -> str:
        return next(ln for ln in _plan(*args) if ln.startswith("P V on"))

    assert values().startswith("P V on tensor cores")
    assert values("--heads", "16").startswith("P V on CUDA cores")  # GQA-2: logits only
    assert values("--kv-heads", "32").startswith("P V on CUDA cores")
    assert values("--dtype", "float32").startswith("P V on CUDA cores")


def test_plan_never_runs_one_pass_with_a_row_over_twice_the_mean():
    lines = _plan("--lengths", "1720,809,809,809", "--kv-heads", "32")
    assert "809 to 1,720 tokens" in next(ln for ln in lines if ln.startswith("the batch:"))
    assert not lines[-1].startswith("chosen: one pass")


def test_plan_of_a_selection_plans_the_selected_rows():
    """bench_selection's case (8 x 32,768 tokens, GQA-4, 16-token pages): a 1/16 budget keeps
    2,048 tokens a row, a grid too small to fill a wave, so 256-token partitions (the step ran
    73.7 -> 70.4 us with them, benchmarks/results/h200_s9_bench_selection_pipelined.log); a 1/8
    budget keeps 4,096 and fills one wave with 512-token partitions."""
    lines = _plan("--budget", "2048")
    assert lines[0] == "a selection of 2,048 tokens (128 pages of 16) keeps 2,048 tokens a row"
    assert lines[-1].startswith("chosen: split-K, partitions of 256 tokens")
    assert _plan("--budget", "4096")[-1].startswith("chosen: split-K, partitions of 512 tokens")
    # 40 tokens = 3 pages, all kept: 40; 100 tokens = 7 pages, 3 kept, the newest holding 4: 36
    assert "keeps 36 to 40 tokens a row" in _plan("--lengths", "40,100", "--budget", "48")[0]


def test_plan_of_gqa2_wants_three_waves_and_weighs_one_pass_by_its_longest_row():
    """GQA-2 (h200_s12_gqa2_partitions_*.log): at 64 x 4,096 tokens one pass (1.94 waves, 97%
    busy) ran 547 us, 2,048-token partitions (3.88 waves) 523 us; over 32 rows of 1,019 to 7,810
    tokens one pass (one wave) ran 388 us, 1,024-token partitions 288 us."""
    lines = _plan("--batch", "64", "--context", "4096", "--kv-heads", "16")
    assert any("two query heads a block (GQA-2)" in ln for ln in lines)
    assert lines[-1].startswith("chosen: split-K, partitions of 2,048 tokens")
    mixed = ",".join(str(n) for n in np.random.default_rng(12).integers(1000, 8000, 32))
    lines = _plan("--lengths", mixed, "--kv-heads", "16")
    one_pass = next(ln for ln in lines if ln.lstrip(" *").startswith("one pass"))
    assert "(rows of mixed lengths): one wave, under 70%" in one_pass
    assert lines[-1].startswith("chosen: split-K, partitions of 1,024 tokens")
