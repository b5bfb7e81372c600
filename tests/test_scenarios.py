"""Every built-in scenario runs to the end and shows what its name promises."""

import pytest

from tinyserve_sim.control.trace import loads
from tinyserve_sim.errors import InvalidArgumentError
from tinyserve_sim.scenarios import SCENARIOS, get_scenario


def run(name):
    replay = get_scenario(name).trace().replay()
    steps = []
    for step in replay:
        replay.manager.check_invariants()
        steps.append(step)
    assert replay.error is None, replay.stop_message()
    return steps, replay.manager


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_runs_and_round_trips(name):
    steps, _ = run(name)
    assert len(steps) == len(get_scenario(name).trace().ops)
    trace = get_scenario(name).trace()
    assert loads(trace.dumps()).ops == trace.ops


def test_copy_on_write_scenario_diverges_by_copy_on_write():
    steps, _ = run("copy-on-write")
    assert [s.copies for s in steps if s.copies] == [((1, 2),)]


def test_parallel_sampling_stores_the_prompt_once():
    steps, manager = run("parallel-sampling")
    assert sum(len(s.copies) for s in steps) == 3  # n - 1 samples copy the shared partial block
    assert manager.num_free == manager.num_blocks


def test_shared_system_prompt_hits_and_eviction_evicts():
    steps, _ = run("shared-system-prompt")
    assert sum(len(s.cache_hits) for s in steps) == 3 + 3 + 2
    steps, _ = run("eviction")
    assert any(s.evicted for s in steps if s.op == "add")


def test_unknown_scenario():
    with pytest.raises(InvalidArgumentError, match="no scenario 'nope'; choose one of tour"):
        get_scenario("nope")
