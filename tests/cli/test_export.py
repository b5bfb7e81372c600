"""``tinyserve-sim trace FILE --until N --export {vllm,flashinfer} OUT``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tinyserve_sim.cli import app
from tinyserve_sim.control.formats import from_flashinfer, from_vllm
from tinyserve_sim.control.trace import load

runner = CliRunner()


@pytest.fixture
def beam_trace(tmp_path):
    path = tmp_path / "beam.jsonl"
    assert runner.invoke(app, ["scenarios", "beam-search", "--write", str(path)]).exit_code == 0
    return path


def _replayed(path, until):
    replay = load(path).replay()
    records = replay.run(until)
    return replay.manager, records[-1]


@pytest.mark.parametrize("fmt", ["vllm", "flashinfer"])
@pytest.mark.parametrize("until", [3, 6, None])
def test_export_writes_the_state_at_step_n_that_imports_back(beam_trace, tmp_path, fmt, until):
    out = tmp_path / "state"
    args = ["trace", str(beam_trace), "--export", fmt, str(out)] + (["--until", str(until)] if until else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    arrays = np.load(tmp_path / "state.npz")
    sidecar = json.loads((tmp_path / "state.json").read_text())
    manager, last = _replayed(beam_trace, until)
    assert sidecar["format"] == fmt and sidecar["operations_replayed"] == last.index + 1
    assert sidecar["last_operation"]["op"] == last.op
    for name, described in sidecar["arrays"].items():
        assert described["dtype"] == str(arrays[name].dtype) and described["shape"] == list(arrays[name].shape)
    ids = sidecar["seq_ids"]
    assert ids == manager.seq_ids()
    if fmt == "vllm":
        back = from_vllm(arrays["block_tables"], arrays["seq_lens"], sidecar["block_size"], sidecar["num_blocks"], ids)
        assert arrays["slot_mapping"].tolist() == last.slot_mapping.tolist()
    else:
        back = from_flashinfer(arrays["kv_indptr"], arrays["kv_indices"], arrays["kv_last_page_len"],
                               sidecar["page_size"], sidecar["num_blocks"], seq_ids=ids)
        assert sidecar["slot_mapping"]["values"] == last.slot_mapping.tolist()
    for seq in ids:
        assert back.block_table(seq) == manager.block_table(seq)
        assert back.num_tokens(seq) == manager.num_tokens(seq)
    assert back.pool.ref_counts() == manager.pool.ref_counts()


def test_an_npz_name_is_kept(beam_trace, tmp_path):
    result = runner.invoke(app, ["trace", str(beam_trace), "--export", "vllm", str(tmp_path / "t.npz")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t.npz").is_file() and (tmp_path / "t.json").is_file()


@pytest.mark.parametrize(
    "export, words",
    [
        (["torch", "{tmp}/x"], "unknown format 'torch'"),
        (["vllm", "{tmp}/no/such/folder/x"], "does not exist"),
        (["flashinfer", "{tmp}/adir"], "is a folder"),
    ],
)
def test_bad_export_values_are_one_line_and_exit_2(beam_trace, tmp_path, export, words):
    (tmp_path / "adir.npz").mkdir()
    args = ["trace", str(beam_trace), "--export", *[a.format(tmp=tmp_path) for a in export]]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert words in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
