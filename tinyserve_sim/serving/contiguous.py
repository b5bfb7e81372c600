"""Contiguous reservation: the memory managers that paging replaced.

Before vLLM, serving systems such as Orca and FasterTransformer stored each
request's KV cache in **one contiguous range** of slots, reserved when the
request was admitted and released when it finished. Because the final length
of a request is unknown at admission, the reservation must be a guess. The
vLLM paper (Kwon et al., SOSP 2023, §6.1) compares three guesses, which we
implement as *reservation rules*:

``max``
    Reserve the model's maximum length (2,048 tokens) for every request.
``pow2``
    Reserve the prompt plus the next power of two of the true output length:
    "if the true output length is 25, it reserves 32 positions for outputs",
    at most 2x too much for the output.
``oracle``
    Reserve exactly the true final length (prompt + output): the best any
    guess could do.

The reservation is then handed to an allocator of contiguous ranges
(:mod:`tinyserve_sim.serving.allocators`): the **buddy** allocator by
default, as the paper assumes for its Orca baselines, or **first fit**. The
buddy allocator rounds each range up to a power of two; that rounding is
waste added by the allocator, not by the rule, so it is counted with the
allocator's other waste as *external fragmentation* (this is how the paper's
Fig. 2 can show Oracle with no internal fragmentation at all). First fit
never rounds; compare the two to see how much of the waste is the
allocator's.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinyserve_sim.errors import InvalidArgumentError
from tinyserve_sim.serving.allocators import (
    ALLOCATORS,
    BuddyAllocator,
    FirstFitAllocator,
)
from tinyserve_sim.serving.memory import Group, SeqState, Usage

#: The reservation rules of the vLLM paper's Orca baselines (§6.1).
RULES: tuple[str, ...] = ("max", "pow2", "oracle")


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (``next_pow2(25) == 32``, ``next_pow2(32) == 32``)."""
    if n < 1:
        raise InvalidArgumentError(f"next_pow2 needs n >= 1, got {n}")
    return 1 << (n - 1).bit_length()


def reservation_size(rule: str, prompt_len: int, output_len: int, max_len: int = 2048) -> int:
    """Slots the rule reserves for a sequence of ``prompt_len`` + ``output_len`` tokens.

    >>> [reservation_size(r, 10, 25) for r in RULES]
    [2048, 42, 35]
    """
    final = prompt_len + output_len
    if rule == "max":
        return max(max_len, final)
    if rule == "pow2":
        return prompt_len + next_pow2(output_len)
    if rule == "oracle":
        return final
    raise InvalidArgumentError(f"unknown reservation rule {rule!r}; choose one of {RULES}")


@dataclass
class _Range:
    start: int
    reserved: int  # what the rule asked for
    given: int  # what the allocator handed out (>= reserved: the buddy allocator rounds up)


class ReservationMemory:
    """A KV memory of ``capacity`` slots managed by contiguous reservation.

    Each sequence gets one range at admission, sized by the reservation rule
    (:func:`reservation_size`), and keeps it until it finishes: it never needs
    memory while decoding, so it is never preempted. A request with several
    sequences (parallel samples, beams) reserves one range per sequence:
    contiguous ranges cannot share a prefix.

    Args:
        capacity: KV slots (tokens).
        rule: ``"max"``, ``"pow2"`` or ``"oracle"``.
        allocator: ``"buddy"`` (default, as in the paper) or ``"first-fit"``.
        max_len: the model's maximum sequence length (the ``max`` rule's reservation).

    It implements the scheduler's memory interface
    (:class:`~tinyserve_sim.serving.memory.KVMemory`); its unit is one slot.
    """

    def __init__(self, capacity: int, rule: str, allocator: str = "buddy", max_len: int = 2048) -> None:
        reservation_size(rule, 1, 1, max_len)  # validates the rule
        if allocator not in ALLOCATORS:
            raise InvalidArgumentError(f"unknown allocator {allocator!r}; choose one of {ALLOCATORS}")
        self.rule = rule
        self.max_len = max_len
        self.name = rule if allocator == "buddy" else f"{rule}-{allocator}"
        self.capacity_slots = capacity
        self.unit = 1
        self.allocator = BuddyAllocator(capacity) if allocator == "buddy" else FirstFitAllocator(capacity)
        self._ranges: dict[tuple[int, int], _Range] = {}

    # ---------------------------------------------------------- admission
    def reservation(self, group: Group, seq: SeqState) -> int:
        """What the rule reserves for one sequence of the group."""
        return reservation_size(self.rule, group.req.prompt_len, seq.final - group.req.prompt_len, self.max_len)

    def admit(self, group: Group) -> bool:
        """Reserve a range for each sequence of the group; all or nothing."""
        taken: list[tuple[tuple[int, int], _Range]] = []
        for seq in group.seqs:
            need = self.reservation(group, seq)
            got = self.allocator.allocate(need)
            if got is None:
                for _, rng in taken:  # roll back: the group is admitted whole or not at all
                    self.allocator.free(rng.start, rng.given)
                return False
            taken.append(((group.req.req_id, seq.slot), _Range(got[0], need, got[1])))
        self._ranges.update(taken)
        return True

    def range_of(self, group: Group, seq: SeqState) -> tuple[int, int, int]:
        """``(start, reserved, given)`` of a live sequence's range."""
        rng = self._ranges[(group.req.req_id, seq.slot)]
        return rng.start, rng.reserved, rng.given

    # ------------------------------------------------------------- decoding
    def decode_need(self, group: Group) -> int:
        return 0  # the reservation already holds every future token

    def decode(self, group: Group) -> None:
        pass  # tokens go into slots reserved at admission

    def decode_all(self, groups: list[Group]) -> None:
        for group in groups:
            self.decode(group)

    def reparent(self, group: Group, parents: list[int]) -> None:
        # Beam search: a beam that continues another beam copies that beam's KV into
        # its own range (a data copy); the reservations themselves do not change.
        pass

    def release_seq(self, group: Group, seq: SeqState) -> None:
        rng = self._ranges.pop((group.req.req_id, seq.slot))
        self.allocator.free(rng.start, rng.given)

    # ------------------------------------------------------------ accounting
    def free_slots(self) -> int:
        return self.allocator.num_free

    def account(self, groups: list[Group]) -> Usage:
        """Split the allocated slots; nothing is shared, so the sharing saving is 0."""
        tokens = reserve = internal = padding = 0
        for group in groups:
            for seq in group.seqs:
                rng = self._ranges[(group.req.req_id, seq.slot)]
                tokens += seq.tokens
                reserve += min(rng.reserved, seq.final) - seq.tokens
                internal += max(0, rng.reserved - seq.final)  # the rule guessed too long
                padding += rng.given - rng.reserved  # the allocator rounded up
        used = self.capacity_slots - self.allocator.num_free
        return Usage(tokens, reserve, internal, used, used, padding)
