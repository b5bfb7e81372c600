"""Quiet steps computed at once log exactly what stepping one by one logs."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tinyserve_sim.errors import WorkloadError
from tinyserve_sim.serving import quiet_steps
from tinyserve_sim.serving.catalog import make_memory
from tinyserve_sim.serving.generator import WorkloadSpec, generate
from tinyserve_sim.serving.metrics import COLUMNS
from tinyserve_sim.serving.scheduler import Scheduler, SchedulerConfig
from tinyserve_sim.serving.timing import TIME_MODELS


def run_both(spec: WorkloadSpec, manager: str, capacity: int, config: SchedulerConfig):
    """Run step by step, then skipping quiet steps; a run that cannot finish must fail the same way in both."""
    workload = generate(spec)
    runs, errors = [], []
    for skip in (False, True):
        cfg = SchedulerConfig(**{**config.__dict__, "skip_quiet_steps": skip})
        sched = Scheduler(workload, make_memory(manager, capacity), cfg)
        try:
            sched.run()
            errors.append(None)
        except WorkloadError as exc:  # e.g. a reservation larger than the whole memory
            errors.append(str(exc))
        runs.append(sched)
    assert errors[0] == errors[1]
    return runs


@settings(max_examples=25, deadline=None)
@given(
    spec=st.builds(
        WorkloadSpec,
        dataset=st.sampled_from(["alpaca", "sharegpt"]),
        num_requests=st.integers(1, 40),
        rate=st.sampled_from([float("inf"), 2.0, 30.0]),
        max_len=st.sampled_from([256, 2048]),
        seed=st.integers(0, 10_000),
    ),
    manager=st.sampled_from(["paged-16", "paged-1", "paged-32", "max", "pow2", "oracle", "oracle-first-fit"]),
    capacity=st.sampled_from([2048, 4096, 15_728]),
    max_seqs=st.sampled_from([3, 256, 10**9]),
    timer=st.sampled_from(["opt-13b-a100", "constant-40ms", "llama3-8b-h100"]),
    max_steps=st.sampled_from([None, None, 50]),
)
@example(spec=WorkloadSpec("sharegpt", num_requests=40, max_len=2048, seed=3), manager="paged-16", capacity=2048,
         max_seqs=10**9, timer="opt-13b-a100", max_steps=None)  # preemptions by recomputation
@example(spec=WorkloadSpec("sharegpt", num_requests=20, max_len=2048, seed=1), manager="pow2", capacity=2048,
         max_seqs=3, timer="opt-13b-a100", max_steps=None)  # a reservation larger than the memory: the same error
def test_skipping_quiet_steps_logs_the_same_rows(spec, manager, capacity, max_seqs, timer, max_steps) -> None:
    config = SchedulerConfig(max_running_seqs=max_seqs, time_model=TIME_MODELS[timer], max_steps=max_steps)
    slow, fast = run_both(spec, manager, capacity, config)
    assert len(slow.log) == len(fast.log)
    for name in COLUMNS:
        assert np.array_equal(slow.log.column(name), fast.log.column(name)), name
    assert slow.latencies == fast.latencies
    assert repr(slow.result().summary) == repr(fast.result().summary)  # repr: nan equals nan


def test_a_saturated_contiguous_run_is_mostly_quiet() -> None:
    """The point of it: most steps of a Max run are computed in stretches."""
    workload = generate(WorkloadSpec("sharegpt", num_requests=200, seed=0))
    sched = Scheduler(workload, make_memory("max"), SchedulerConfig(max_running_seqs=10**9))
    stepped = 0
    while not sched.done:
        sched.step()
        stepped += 1
        quiet_steps.skip(sched)
    assert sched.step_index > 10 * stepped


def test_quiet_steps_step_aside_for_beams_and_traces() -> None:
    workload = generate(WorkloadSpec("alpaca", num_requests=5, beam_width=3, seed=1))
    sched = Scheduler(workload, make_memory("paged-16"))
    sched.step()
    assert quiet_steps.skip(sched) == 0
