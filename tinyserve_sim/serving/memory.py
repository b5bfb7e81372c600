"""The interface between the scheduler and a KV memory manager.

The scheduler (:mod:`tinyserve_sim.serving.scheduler`) runs requests; a
*memory* decides where their tokens live. Two kinds implement the same small
interface, so one scheduler compares them on the same workload:

* :class:`~tinyserve_sim.serving.paged.PagedMemory` - blocks from a
  :class:`~tinyserve_sim.control.manager.BlockManager` (vLLM's paging);
* :class:`~tinyserve_sim.serving.contiguous.ReservationMemory` - one
  contiguous range per sequence (the Max / Pow2 / Oracle baselines).

A request in flight is a :class:`Group` of :class:`SeqState` (one per
sample or beam). Every memory measures itself with :meth:`KVMemory.account`,
which splits the allocated slots into the categories of the vLLM paper's
Fig. 2 (see ``docs/concepts/memory-waste.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from tinyserve_sim.serving.generator import Request


@dataclass
class SeqState:
    """One sequence of a request.

    Attributes:
        slot: its fixed index inside the request (sample ``k`` or beam ``k``).
        seq_id: the id the paged manager knows it by (assigned by the memory).
        tokens: tokens computed so far (prompt + generated).
        final: tokens it holds when it finishes (prompt + its output length).
    """

    slot: int
    tokens: int
    final: int
    seq_id: int = -1

    @property
    def remaining(self) -> int:
        """Tokens still to generate."""
        return self.final - self.tokens


@dataclass
class Group:
    """A request in flight: its sequences and its scheduling history."""

    req: Request
    seqs: list[SeqState] = field(default_factory=list)
    preemptions: int = 0
    admitted_at: int = -1  # step of the latest admission
    first_admitted_at: int = -1
    finished_at: int = -1

    @classmethod
    def fresh(cls, req: Request) -> Group:
        """A request that has not started: every sequence holds just the prompt."""
        return cls(req, [SeqState(k, req.prompt_len, req.final_len(k)) for k in range(req.num_seqs)])


class Usage(NamedTuple):
    """How a memory's allocated slots split up at one moment (all in slots, or blocks).

    Attributes:
        token_states: slots holding the KV of tokens already computed.
        reservation: allocated slots that future tokens of the same sequence will fill.
        internal: allocated slots that will never be filled (the sequence ends first).
        blocks_unshared: blocks (slots, for contiguous memory) the live sequences would
            need if nothing were shared.
        blocks_used: blocks (slots) actually in use. Sharing saves
            ``1 - blocks_used / blocks_unshared`` (vLLM paper, Fig. 15).
        padding: slots an allocator added beyond what was asked (buddy rounding);
            counted as external fragmentation.
    """

    token_states: int
    reservation: int
    internal: int
    blocks_unshared: int
    blocks_used: int
    padding: int = 0


class KVMemory(Protocol):
    """What the scheduler needs from a memory manager.

    Attributes:
        name: a short label (``"paged-16"``, ``"max"``...).
        capacity_slots: total KV slots (tokens) of the memory.
        unit: slots per allocation unit (the block size; 1 for contiguous ranges).
    """

    name: str
    capacity_slots: int
    unit: int

    def admit(self, group: Group) -> bool:
        """Allocate memory for every sequence's current tokens; all or nothing."""
        ...

    def decode_need(self, group: Group) -> int:
        """Units that one decode step of the group would allocate."""
        ...

    def decode(self, group: Group) -> None:
        """Store one new token for each live sequence of the group."""
        ...

    def decode_all(self, groups: list[Group]) -> None:
        """One scheduler step: store one new token for each sequence of every group, in order."""
        ...

    def reparent(self, group: Group, parents: list[int]) -> None:
        """Beam search: beam ``k`` continues from beam ``parents[k]`` (indices into ``group.seqs``)."""
        ...

    def release_seq(self, group: Group, seq: SeqState) -> None:
        """Free one sequence's memory (it finished, or its group is preempted)."""
        ...

    def free_slots(self) -> int:
        """Slots not allocated to any live sequence."""
        ...

    def account(self, groups: list[Group]) -> Usage:
        """Split the allocated memory of the running groups into the waste categories."""
        ...
