"""The time model: its phases behave as a roofline must, presets and JSON files are checked."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyserve_sim.errors import InvalidArgumentError
from tinyserve_sim.serving.timing import (
    TIME_MODELS,
    ConstantTime,
    RooflineTime,
    StepWork,
    causal_pairs,
    get_time_model,
    load_time_model,
    time_model_from_json,
)

ROOFLINES = [t for t in TIME_MODELS.values() if isinstance(t, RooflineTime)]
works = st.builds(
    StepWork,
    decode_tokens=st.integers(0, 512),
    decode_context=st.integers(0, 2_000_000),
    prefill_tokens=st.integers(0, 8192),
    prefill_pairs=st.integers(0, 30_000_000),
    paged=st.booleans(),
)


@given(model=st.sampled_from(ROOFLINES), work=works, more=st.integers(1, 256), context=st.integers(1, 4096))
def test_more_decode_tokens_never_take_less_time(model, work, more, context) -> None:
    bigger = dataclasses.replace(work, decode_tokens=work.decode_tokens + more,
                                 decode_context=work.decode_context + more * context)
    assert model.step_time(bigger) >= model.step_time(work)
    longer = dataclasses.replace(work, decode_context=work.decode_context + context)
    assert model.step_time(longer) >= model.step_time(work)


@given(model=st.sampled_from(ROOFLINES), work=works, extra=st.integers(1, 4096))
def test_more_prefill_never_takes_less_time(model, work, extra) -> None:
    more = dataclasses.replace(work, prefill_tokens=work.prefill_tokens + extra,
                               prefill_pairs=work.prefill_pairs + causal_pairs(0, extra))
    assert model.step_time(more) >= model.step_time(work)


@given(model=st.sampled_from(ROOFLINES), tokens=st.integers(1, 64), context=st.integers(64, 100_000),
       factor=st.integers(2, 8))
def test_a_memory_bound_phase_scales_with_bytes(model, tokens, context, factor) -> None:
    """Decode attention reads about one byte per FLOP: memory-bound, so its time is bytes / bandwidth."""
    work = StepWork(tokens, tokens * context)
    scaled = StepWork(factor * tokens, factor * tokens * context)
    attention = model.phases(work).decode_attention
    assert math.isclose(model.phases(scaled).decode_attention, factor * attention, rel_tol=1e-12)
    bandwidth = model.hardware.paged_attention_bandwidth
    assert math.isclose(attention, model.model.kv_bytes_per_token * (tokens + tokens * context) / bandwidth)
    # A small batch's dense layers are memory-bound too: twice the weights, twice the time.
    heavier = dataclasses.replace(model, model=dataclasses.replace(model.model, param_bytes=2 * model.model.param_bytes))
    assert math.isclose(heavier.phases(work).dense, 2 * model.phases(work).dense, rel_tol=1e-12)


def test_a_large_prefill_is_compute_bound() -> None:
    """2,000 prompt tokens: 2 FLOPs per parameter and token outweigh reading the weights once."""
    model = TIME_MODELS["opt-13b-a100"]
    phases = model.phases(StepWork(prefill_tokens=2000, prefill_pairs=causal_pairs(0, 2000)))
    flops = model.model.flops_per_token * 2000 / model.hardware.matrix_flops
    assert phases.dense == pytest.approx(flops)
    assert flops > model.model.param_bytes / model.hardware.memory_bandwidth


def test_separate_prefill_pays_a_second_iteration() -> None:
    separate = TIME_MODELS["opt-13b-a100"]
    mixed = dataclasses.replace(separate, separate_prefill=False)
    work = StepWork(decode_tokens=20, decode_context=8000, prefill_tokens=100, prefill_pairs=causal_pairs(0, 100))
    assert separate.phases(work).overhead == 2 * separate.overhead
    assert mixed.phases(work).overhead == separate.overhead
    assert separate.step_time(work) > mixed.step_time(work)


@given(model=st.sampled_from(ROOFLINES + [ConstantTime(0.03)]), tokens=st.integers(0, 300),
       contexts=st.lists(st.integers(0, 500_000), min_size=1, max_size=20))
def test_the_vectorised_decode_times_equal_the_step_times(model, tokens, contexts) -> None:
    """Quiet steps use decode_step_times; it must give exactly step_time's seconds."""
    got = model.decode_step_times(tokens, contexts, paged=True)
    want = [model.step_time(StepWork(tokens, c, paged=True)) for c in contexts]
    assert list(got) == want


def test_presets_and_their_capacities() -> None:
    paper = TIME_MODELS["opt-13b-a100"]
    assert paper.kv_capacity_tokens == 15_728  # 12 GiB / 800 KiB (vLLM paper §6.1, §3)
    assert paper.model.kv_bytes_per_token == 800 * 1024
    h100 = TIME_MODELS["llama3-8b-h100"]
    assert h100.hardware.paged_attention_bandwidth == 2.273e12  # bench_h100_lead_final.log, Hkv=8, auto
    assert get_time_model("constant-40ms").step_time(StepWork(decode_tokens=1)) == 0.04
    assert get_time_model("constant-12.5ms").step_time(StepWork(decode_tokens=3)) == 0.0125
    assert ConstantTime(0.04).step_time(StepWork()) == 0.0  # no work, no time


@pytest.mark.parametrize("name", ["nope", "constant-xms", "constant--5ms", "constant-0ms", "constant-infms"])
def test_unknown_or_impossible_names_are_refused(name) -> None:
    with pytest.raises(InvalidArgumentError):
        get_time_model(name)


def test_a_preset_round_trips_through_json(tmp_path) -> None:
    paper = TIME_MODELS["opt-13b-a100"]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(paper.to_json()))
    assert load_time_model(path) == paper
    assert get_time_model(str(path)) == paper


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: d["model"].update(layers=-3), "model.layers"),
    (lambda d: d["model"].update(layers=2.5), "model.layers"),
    (lambda d: d["hardware"].update(memory_bandwidth="fast"), "hardware.memory_bandwidth"),
    (lambda d: d["hardware"].update(matrix_flops=float("inf")), "hardware.matrix_flops"),
    (lambda d: d.update(overhead=-1), "overhead"),
    (lambda d: d.update(kv_capacity_tokens=10**12), "kv_capacity_tokens"),
    (lambda d: d.update(kv_capacity_tokens=True), "kv_capacity_tokens"),
    (lambda d: d["model"].pop("param_bytes"), "model.param_bytes"),
    (lambda d: d["model"].update(colour="blue"), "model.'colour'"),
    (lambda d: d.pop("hardware"), "hardware"),
    (lambda d: d.update(model=[1, 2]), "model."),
    (lambda d: d.update(separate_prefill="yes"), "separate_prefill"),
])
def test_bad_preset_files_name_the_field(tmp_path, edit, field) -> None:
    data = TIME_MODELS["opt-13b-a100"].to_json()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidArgumentError, match=field.replace(".", r"\.")):
        load_time_model(path)


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"{", b"[1, 2]", b"[" * 5000 + b"]" * 5000])
def test_unreadable_preset_files_are_our_error(tmp_path, content) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(InvalidArgumentError):
        load_time_model(path)
    with pytest.raises(InvalidArgumentError):
        load_time_model(tmp_path / "missing.json")
    with pytest.raises(InvalidArgumentError):
        time_model_from_json("a string")


def test_the_docs_examples_of_a_preset_work(tmp_path) -> None:
    """docs/concepts/serving-time.md shows a preset in Python and as JSON: both must run."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "concepts" / "serving-time.md").read_text()
    (python,) = re.findall(r"```python\n(.*?)```", page, re.S)
    namespace: dict = {}
    exec(python, namespace)  # noqa: S102  (the page's own example)
    assert namespace["config"].timer().overhead == 0.005
    (text,) = re.findall(r"```json\n(.*?)```", page, re.S)
    path = tmp_path / "my-gpu.json"
    path.write_text(text)
    mine = load_time_model(path)
    assert mine.name == "llama3-8b-my-gpu" and mine.kv_capacity_tokens == 200_000
    assert mine.step_time(StepWork(decode_tokens=8, decode_context=8000)) > mine.overhead


def _tbps(log: str, start: str) -> float:
    """The TB/s of the first line of a bench_kernels.py log that starts with ``start`` (spaces squeezed)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "benchmarks" / "results" / log).read_text()
    for line in text.splitlines():
        if " ".join(line.split()).startswith(start):
            return float(line.split("TB/s")[0].split()[-1]) * 1e12
    raise AssertionError(f"{log}: no line starting with {start!r}")


@pytest.mark.parametrize(("preset", "log", "copy", "paged", "contiguous"), [
    ("opt-13b-h100", "bench_h100_lead_final.log", "device-to-device copy",
     "paged_attention auto B=64 L=4096 Hq=32 Hkv=32", "torch SDPA, contiguous K/V B=64 L=4096 Hq=32 Hkv=32"),
    ("llama3-8b-h100", "bench_h100_lead_final.log", "device-to-device copy",
     "paged_attention auto B=64 L=4096 Hq=32 Hkv=8", "torch SDPA, contiguous K/V B=64 L=4096 Hq=32 Hkv=8"),
    ("llama3-8b-h200", "h200_call4_bench4.log", "device-to-device copy",
     "ours (auto) B=64 L=4096 Hq=32 Hkv=8 D=128", "torch SDPA, contiguous K/V B=64 L=4096 Hq=32 Hkv=8 D=128"),
])
def test_gpu_presets_use_the_committed_benchmark_figures(preset, log, copy, paged, contiguous) -> None:
    hardware = TIME_MODELS[preset].hardware
    assert hardware.memory_bandwidth == _tbps(log, copy)
    assert hardware.paged_attention_bandwidth == _tbps(log, paged)
    assert hardware.attention_bandwidth == _tbps(log, contiguous)
