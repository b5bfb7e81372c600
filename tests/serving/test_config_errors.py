"""The workload simulator's configuration turns every bad value into the project's own error, naming the field."""

from __future__ import annotations

import math

import pytest

from tinyserve_sim.errors import InvalidArgumentError, WorkloadError
from tinyserve_sim.serving.catalog import make_memory
from tinyserve_sim.serving.generator import WorkloadSpec, generate, workload_from_json
from tinyserve_sim.serving.scheduler import Scheduler, SchedulerConfig
from tinyserve_sim.serving.timing import TIME_MODELS, ConstantTime, RooflineTime


@pytest.mark.parametrize(("field", "value"), [
    ("dataset", "nope"), ("dataset", 3),
    ("num_requests", 0), ("num_requests", "5"), ("num_requests", 2.5), ("num_requests", True), ("num_requests", 10**9),
    ("rate", -5.0), ("rate", 0.0), ("rate", math.nan), ("rate", "fast"),
    ("n", 0), ("n", 1000), ("beam_width", -1), ("beam_width", None),
    ("max_len", 2), ("max_len", 10**12), ("system_prompt_len", -1), ("system_prompt_len", 1024),
    ("seed", -1), ("seed", 1.5),
])
def test_workload_spec_names_the_field(field, value) -> None:
    spec = WorkloadSpec(**{field: value})
    with pytest.raises(InvalidArgumentError, match=field):
        generate(spec)


def test_n_and_beams_together_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="beam_width"):
        generate(WorkloadSpec(n=2, beam_width=2))


@pytest.mark.parametrize("obj", [{}, {"spec": {}}, {"spec": {"rate": "x"}, "requests": []}, [], "text",
                                 {"spec": {"rate": 1.0, "colour": 1}, "requests": []}])
def test_bad_workload_json_is_our_error(obj) -> None:
    with pytest.raises(InvalidArgumentError):
        workload_from_json(obj)


@pytest.mark.parametrize(("field", "value"), [
    ("max_running_seqs", 0), ("max_running_seqs", -1), ("max_running_seqs", 2.5), ("max_running_seqs", "8"),
    ("step_time", -1.0), ("step_time", 0.0), ("step_time", math.inf), ("step_time", "fast"),
    ("time_model", "opt-13b-a100"), ("beam_stay", 1.5), ("beam_stay", -0.1), ("seed", -3),
    ("max_steps", -1), ("max_steps", 2.0),
])
def test_scheduler_config_names_the_field(field, value) -> None:
    match = "step" if field == "step_time" else field
    with pytest.raises(InvalidArgumentError, match=match):
        SchedulerConfig(**{field: value})


def test_step_time_and_time_model_together_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="not both"):
        SchedulerConfig(step_time=0.04, time_model=TIME_MODELS["opt-13b-a100"])


def test_the_old_constant_step_time_still_works() -> None:
    config = SchedulerConfig(step_time=0.1)
    assert config.timer() == ConstantTime(0.1)
    assert isinstance(SchedulerConfig().timer(), RooflineTime)


@pytest.mark.parametrize(("args", "match"), [
    (("nope",), "unknown manager"), (("paged-x",), "paged-<block size>"), (("paged--4",), "paged-<block size>"),
    (("paged-64", 32), "does not fit"), (("max", 0), "capacity"), (("max", -5), "capacity"),
    (("oracle", 2**40), "capacity"), (("oracle", 10.5), "capacity"), ((None,), "string"),
])
def test_make_memory_names_the_problem(args, match) -> None:
    with pytest.raises(WorkloadError, match=match):
        make_memory(*args)


def test_a_batch_too_small_for_a_request_is_an_error_not_a_hang() -> None:
    workload = generate(WorkloadSpec("alpaca", num_requests=2, n=4))
    sched = Scheduler(workload, make_memory("paged-16"), SchedulerConfig(max_running_seqs=2))
    with pytest.raises(WorkloadError, match="max_running_seqs"):
        sched.run()

