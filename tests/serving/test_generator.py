"""Workloads: reproducible from a seed, lengths as documented, savable as traces."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyserve_sim.control.trace import loads
from tinyserve_sim.errors import InvalidArgumentError
from tinyserve_sim.serving.generator import (
    PRESETS,
    WorkloadSpec,
    generate,
    workload_from_json,
)
from tinyserve_sim.serving.paged import PagedMemory
from tinyserve_sim.serving.scheduler import Scheduler


@given(seed=st.integers(0, 2**32 - 1), dataset=st.sampled_from(sorted(PRESETS)))
def test_same_seed_same_workload(seed: int, dataset: str) -> None:
    spec = WorkloadSpec(dataset, num_requests=20, rate=2.0, seed=seed)
    assert generate(spec).requests == generate(spec).requests


def test_different_seeds_differ() -> None:
    a = generate(WorkloadSpec(num_requests=50, seed=1)).requests
    b = generate(WorkloadSpec(num_requests=50, seed=2)).requests
    assert a != b


@given(
    n=st.integers(1, 4), beam=st.integers(1, 4), system=st.integers(0, 40), max_len=st.integers(128, 4096),
    seed=st.integers(0, 1000),
)
def test_lengths_respect_the_spec(n: int, beam: int, system: int, max_len: int, seed: int) -> None:
    if n > 1 and beam > 1:
        with pytest.raises(InvalidArgumentError):
            WorkloadSpec(n=n, beam_width=beam).check()
        return
    spec = WorkloadSpec("sharegpt", 30, 1.0, n, beam, system, max_len, seed)
    arrivals = []
    for r in generate(spec).requests:
        assert r.num_seqs == max(n, beam)
        assert system < r.prompt_len <= max(max_len // 2, system + 1)
        assert all(o >= 1 and r.prompt_len + o <= max_len for o in r.output_lens)
        if beam > 1:
            assert len(set(r.output_lens)) == 1  # beams finish together
        assert r.prompt_ids()[:system] == generate(spec).requests[0].prompt_ids()[:system]
        arrivals.append(r.arrival)
    assert arrivals == sorted(arrivals)


@pytest.mark.parametrize("dataset", sorted(PRESETS))
def test_means_match_the_paper(dataset: str) -> None:
    """The calibrated log-normals reproduce the paper's means (Fig. 11) within 4%."""
    w = generate(WorkloadSpec(dataset, num_requests=40_000, seed=7))
    preset = PRESETS[dataset]
    assert w.mean_prompt() == pytest.approx(preset.mean_prompt, rel=0.04)
    assert w.mean_output() == pytest.approx(preset.mean_output, rel=0.04)


def test_rate_inf_puts_everything_at_zero_and_poisson_rate_is_right() -> None:
    assert {r.arrival for r in generate(WorkloadSpec(num_requests=10)).requests} == {0.0}
    w = generate(WorkloadSpec(num_requests=5000, rate=4.0, seed=3))
    assert w.requests[-1].arrival / 5000 == pytest.approx(0.25, rel=0.05)


def test_workload_json_round_trip() -> None:
    w = generate(WorkloadSpec("alpaca", num_requests=15, rate=3.0, n=2, seed=4))
    back = workload_from_json(w.to_json())
    assert back.spec == w.spec and back.requests == w.requests
    w2 = generate(WorkloadSpec(num_requests=3))
    assert math.isinf(workload_from_json(w2.to_json()).spec.rate)


def test_a_run_saves_as_a_trace_that_replays_to_the_same_state() -> None:
    w = generate(WorkloadSpec("alpaca", num_requests=12, n=2, seed=5))
    memory = PagedMemory(512, 8, record_trace=True)
    sched = Scheduler(w, memory)
    for _ in range(25):  # stop half way, with sequences live
        sched.step()
    trace = loads(memory.trace.dumps())
    replay = trace.replay(record_ops=False)
    replay.run()
    assert replay.error is None
    assert replay.manager.snapshot().sequences == memory.manager.snapshot().sequences
