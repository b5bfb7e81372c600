"""The scheduler: conservation at every step, paged waste below one block, preemption."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyserve_sim.errors import WorkloadError
from tinyserve_sim.serving.contiguous import ReservationMemory
from tinyserve_sim.serving.generator import Request, Workload, WorkloadSpec, generate
from tinyserve_sim.serving.metrics import CATEGORIES
from tinyserve_sim.serving.paged import PagedMemory
from tinyserve_sim.serving.scheduler import Scheduler, SchedulerConfig

specs = st.builds(
    WorkloadSpec,
    dataset=st.sampled_from(["alpaca", "sharegpt"]),
    num_requests=st.integers(1, 12),
    rate=st.sampled_from([float("inf"), 20.0]),
    n=st.sampled_from([1, 1, 2, 3]),
    system_prompt_len=st.sampled_from([0, 0, 20]),
    max_len=st.sampled_from([128, 256]),
    seed=st.integers(0, 10_000),
)
beam_specs = st.builds(
    WorkloadSpec, dataset=st.just("alpaca"), num_requests=st.integers(1, 6), beam_width=st.integers(2, 4),
    max_len=st.just(128), seed=st.integers(0, 10_000),
)


def check_paged_step(sched: Scheduler, memory: PagedMemory) -> None:
    """Conservation and per-sequence waste, read from the manager's public state."""
    m = memory.manager
    bs = memory.block_size
    live = {seq.seq_id: seq.tokens for g in sched.running for seq in g.seqs}
    assert set(m.seq_ids()) == set(live)  # no leaked or missing sequences
    for seq_id, tokens in live.items():
        assert m.num_tokens(seq_id) == tokens  # tokens stored == live tokens
        assert len(m.block_table(seq_id)) * bs - tokens < bs  # waste below one block
    m.check_invariants()


def check_row(sched: Scheduler, capacity: int, exact_tokens: bool) -> None:
    """The recorded row splits the whole memory, and counts exactly the live tokens."""
    row = {name: sched.log.columns[name][-1] for name in CATEGORIES}
    assert sum(row.values()) == capacity
    assert min(row.values()) >= 0
    if exact_tokens:
        assert row["token_states"] == sum(s.tokens for g in sched.running for s in g.seqs)


@settings(max_examples=20, deadline=None)
@given(spec=st.one_of(specs, beam_specs), block_size=st.sampled_from([1, 4, 16]),
       capacity=st.integers(900, 2000), caching=st.booleans())
def test_paged_conservation_at_every_step(spec, block_size, capacity, caching) -> None:
    memory = PagedMemory(capacity, block_size, prefix_caching=caching)
    no_sharing = spec.n == 1 and spec.beam_width == 1 and not caching

    def observe(sched: Scheduler) -> None:
        check_paged_step(sched, memory)
        check_row(sched, memory.capacity_slots, no_sharing)

    sched = Scheduler(generate(spec), memory, SchedulerConfig(step_time=0.1, seed=spec.seed), observe)
    sched.run()
    assert len(sched.finished) == spec.num_requests
    assert memory.manager.num_used == 0


@settings(max_examples=20, deadline=None)
@given(spec=specs, rule=st.sampled_from(["max", "pow2", "oracle"]),
       allocator=st.sampled_from(["buddy", "first-fit"]))
def test_contiguous_conservation_and_no_preemption(spec, rule, allocator) -> None:
    memory = ReservationMemory(4096, rule, allocator, max_len=spec.max_len)
    sched = Scheduler(generate(spec), memory, observer=lambda s: check_row(s, memory.capacity_slots, True))
    sched.run()
    assert sched.preemptions == 0
    assert memory.free_slots() == memory.capacity_slots


def test_memory_pressure_preempts_by_recomputation_and_everything_finishes() -> None:
    w = generate(WorkloadSpec("sharegpt", num_requests=40, max_len=512, seed=3))
    sched = Scheduler(w, PagedMemory(1024, 16))
    result = sched.run()
    assert result.summary.preemptions > 0
    assert result.summary.recomputed_tokens > 0
    assert result.summary.finished == 40
    assert result.summary.generated_tokens >= sum(sum(r.output_lens) for r in w.requests)


def test_a_request_larger_than_memory_is_an_error() -> None:
    w = Workload(WorkloadSpec(num_requests=1), [Request(0, 0.0, 500, (10,))])
    with pytest.raises(WorkloadError):
        Scheduler(w, PagedMemory(256, 16)).run()  # the prompt alone does not fit
    w = Workload(WorkloadSpec(num_requests=1), [Request(0, 0.0, 200, (100,))])
    with pytest.raises(WorkloadError):
        Scheduler(w, PagedMemory(256, 16)).run()  # it fits, then cannot grow: no endless recomputation


def test_sharing_saves_blocks_for_parallel_sampling_only_with_paging() -> None:
    w = generate(WorkloadSpec("sharegpt", num_requests=10, n=4, seed=1))
    paged = Scheduler(w, PagedMemory(20_000, 16)).run().summary
    oracle = Scheduler(w, ReservationMemory(20_000, "oracle")).run().summary
    assert paged.sharing_saving > 0.05
    assert oracle.sharing_saving == 0.0
