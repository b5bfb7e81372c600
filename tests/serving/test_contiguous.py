"""Each baseline's reservation rule, as a property, and its accounting."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tinyserve_sim.serving.contiguous import (
    ReservationMemory,
    next_pow2,
    reservation_size,
)
from tinyserve_sim.serving.generator import Request
from tinyserve_sim.serving.memory import Group

prompts = st.integers(1, 1024)
outputs = st.integers(1, 1024)


@given(prompts, outputs)
def test_max_reserves_the_model_maximum(p: int, o: int) -> None:
    assert reservation_size("max", p, o, 2048) == 2048


@given(prompts, outputs)
def test_pow2_over_reserves_the_output_by_at_most_2x(p: int, o: int) -> None:
    size = reservation_size("pow2", p, o)
    out = size - p
    assert out & (out - 1) == 0  # a power of two ...
    assert o <= out < 2 * o or out == o == 1  # ... the smallest one that holds the output


@given(prompts, outputs)
def test_oracle_reserves_exactly_the_true_length(p: int, o: int) -> None:
    assert reservation_size("oracle", p, o) == p + o


def test_next_pow2_examples() -> None:
    assert [next_pow2(n) for n in (1, 2, 3, 25, 32, 33)] == [1, 2, 4, 32, 32, 64]


@given(
    rule=st.sampled_from(["max", "pow2", "oracle"]), allocator=st.sampled_from(["buddy", "first-fit"]),
    reqs=st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300)), min_size=1, max_size=12),
)
def test_admitted_groups_get_their_rule_and_accounting_adds_up(rule, allocator, reqs) -> None:
    mem = ReservationMemory(8192, rule, allocator)
    groups = []
    for i, (p, o) in enumerate(reqs):
        g = Group.fresh(Request(i, 0.0, p, (o,)))
        if mem.admit(g):
            groups.append(g)
            start, reserved, given_size = mem.range_of(g, g.seqs[0])
            assert reserved == reservation_size(rule, p, o)
            assert given_size >= reserved
    usage = mem.account(groups)
    allocated = mem.capacity_slots - mem.free_slots()
    assert usage.token_states + usage.reservation + usage.internal + usage.padding == allocated
    assert usage.token_states == sum(g.seqs[0].tokens for g in groups)
    if rule == "oracle":
        assert usage.internal == 0
