"""Built-in scenarios: small, commented traces that each show one idea.

Every scenario is a :class:`~tinyserve_sim.control.trace.Trace` whose operations carry
a ``note`` explaining why the step matters. ``tinyserve-sim scenarios`` lists
them and writes any of them to a file; ``tinyserve-sim demo`` walks one.

Token ids are small integers; where a scenario tells a story in words, the
note says which word each id stands for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tinyserve_sim.control.operations import Add, Append, Evict, Fork, Free
from tinyserve_sim.control.trace import Trace, TraceHeader
from tinyserve_sim.errors import InvalidArgumentError


@dataclass(frozen=True)
class Scenario:
    """A named, documented trace."""

    name: str
    title: str
    build: Callable[[], Trace]

    def trace(self) -> Trace:
        return self.build()


def _tour() -> Trace:
    header = TraceHeader(
        block_size=4, num_blocks=12, policy="fifo", prefix_caching=True, name="tour",
        description="A guided tour: paging, fork, copy-on-write, prefix caching and eviction.",
    )
    system = list(range(100, 108))  # an 8-token system prompt: two full blocks
    return Trace(header, [
        Add(seq="A", prompt=tuple(system + [1, 2, 3]),
           note="An 11-token prompt needs ceil(11/4) = 3 blocks; the last one is 3/4 full."),
        Fork(parent="A", child="B",
           note="Parallel sampling: B shares all of A's blocks. Ref counts go to 2; nothing is copied."),
        Append(seq="A", tokens=(7,),
           note="A writes into its last block, which B shares and which is not full: copy-on-write."),
        Append(seq="B", tokens=(8,),
           note="B is now the block's only user, so it writes in place: no copy."),
        Append(seq="B", tokens=(9, 10),
           note="B's last block is full, so B gets a fresh block for the new tokens."),
        Free(seq="A",
           note="A finishes. B still uses the blocks they share; A's own full block keeps its hash and stays cached."),
        Add(seq="C", prompt=tuple(system + [4, 5]),
           note="C starts with the same system prompt: its two full blocks are prefix-cache hits."),
        Free(seq="B", note="B finishes; its blocks return to the pool tail first."),
        Add(seq="D", prompt=tuple(range(200, 232)),
           note="A 32-token prompt needs 8 blocks, one more than the free queue holds: the least recently used cached block is evicted."),
        Free(seq="C"),
        Evict(blocks=2, note="Evict two cached blocks by hand, least recently used first."),
    ])


def _copy_on_write() -> Trace:
    # The vLLM paper's Fig. 8: two samples of "Four score and seven years ago our".
    header = TraceHeader(
        block_size=4, num_blocks=8, name="copy-on-write",
        description="Two samples share a 7-token prompt, then diverge by copy-on-write (vLLM paper, Fig. 8).",
    )
    return Trace(header, [
        Add(seq="A1", prompt=(11, 12, 13, 14, 15, 16, 17),
           note="Prompt 'Four score and seven years ago our' (7 tokens): 2 blocks, the second 3/4 full."),
        Fork(parent="A1", child="A2", note="A second sample shares both blocks (ref count 2)."),
        Append(seq="A1", tokens=(18,),
           note="A1 generates 'fathers' into the shared, partly filled block: copy-on-write first."),
        Append(seq="A2", tokens=(19,),
           note="A2 generates 'mothers': it is now the only user of the old block, so no copy."),
        Append(seq="A1", tokens=(20,), note="A1 generates 'brought': a new block."),
        Append(seq="A2", tokens=(21,), note="A2 generates 'brought': a new block of its own."),
        Free(seq="A1"),
        Free(seq="A2", note="Everything returns to the pool."),
    ])


def _parallel_sampling(n: int = 4) -> Trace:
    header = TraceHeader(
        block_size=4, num_blocks=16, name="parallel-sampling",
        description=f"One prompt, {n} samples: the prompt's blocks are stored once.",
    )
    ops = [Add(seq="s0", prompt=10, note="A 10-token prompt: 3 blocks.")]
    for i in range(1, n):
        ops.append(Fork(parent="s0", child=f"s{i}", note=f"Sample s{i} shares the prompt's blocks."))
    for i in range(n):
        ops.append(Append(seq=f"s{i}", tokens=1,
                      note="The last prompt block is shared and partly filled: copy-on-write." if i < n - 1
                      else "The last sample owns the original block alone now: no copy."))
    for _ in range(2):
        for i in range(n):
            ops.append(Append(seq=f"s{i}", tokens=1))
    for i in range(n):
        ops.append(Free(seq=f"s{i}"))
    return Trace(header, ops)


def _beam_search() -> Trace:
    header = TraceHeader(
        block_size=4, num_blocks=20, name="beam-search",
        description="Beam width 3: beams fork from the best candidate and weak beams are pruned (freed).",
    )
    ops = [
        Add(seq="b0", prompt=8, note="An 8-token prompt fills exactly 2 blocks."),
        Fork(parent="b0", child="b1"),
        Fork(parent="b0", child="b2", note="Three beams share the prompt (ref count 3)."),
        Append(seq="b0", tokens=2), Append(seq="b1", tokens=2), Append(seq="b2", tokens=2),
        Free(seq="b2", note="Beam b2 scores worst: pruned. Its private block returns to the pool."),
        Fork(parent="b0", child="b3", note="b0 is best: a new beam b3 continues from it, sharing everything."),
        Append(seq="b3", tokens=1, note="b3 writes into a shared partly filled block: copy-on-write."),
        Append(seq="b0", tokens=1), Append(seq="b1", tokens=1),
        Free(seq="b1", note="Prune b1."),
        Fork(parent="b3", child="b4"),
        Append(seq="b0", tokens=2), Append(seq="b3", tokens=2), Append(seq="b4", tokens=2),
        Free(seq="b0"), Free(seq="b4"),
        Free(seq="b3", note="The search ends: every block is free again."),
    ]
    return Trace(header, ops)


def _shared_system_prompt() -> Trace:
    header = TraceHeader(
        block_size=4, num_blocks=16, prefix_caching=True, name="shared-system-prompt",
        description="Requests that start with the same 12-token system prompt reuse its blocks.",
    )
    system = tuple(range(100, 112))
    return Trace(header, [
        Add(seq="r1", prompt=system + (1, 2, 3), note="First request: 4 blocks, 3 of them full and cached."),
        Add(seq="r2", prompt=system + (4, 5), note="Same system prompt: 3 prefix-cache hits, 1 new block."),
        Append(seq="r2", tokens=(6, 7), note="r2 decodes; its shared prefix blocks are full, never copied."),
        Free(seq="r1", note="r1 finishes; the system prompt's blocks are still used by r2."),
        Free(seq="r2", note="r2 finishes; the full blocks stay cached with ref count 0."),
        Add(seq="r3", prompt=system + (8,), note="A later request still hits the cached system prompt."),
        Add(seq="r4", prompt=system,
           note="A prompt of exactly 12 tokens: at most 11 tokens may come from the cache, so 2 hits."),
        Free(seq="r3"), Free(seq="r4"),
    ])


def _eviction() -> Trace:
    header = TraceHeader(
        block_size=4, num_blocks=8, prefix_caching=True, name="eviction",
        description="A small pool under pressure: cached blocks are evicted least recently used first.",
    )
    return Trace(header, [
        Add(seq="x", prompt=tuple(range(0, 9)), note="x: 3 blocks, 2 full ones get cached."),
        Free(seq="x", note="x's cached blocks are parked, deepest first."),
        Add(seq="y", prompt=tuple(range(50, 59)), note="y uses fresh blocks from the free queue."),
        Free(seq="y", note="y's blocks are parked too: 4 cached, 4 free."),
        Add(seq="z", prompt=tuple(range(80, 100)),
           note="z needs 5 blocks but only 4 are free: the least recently used cached block (x's deepest) is evicted."),
        Add(seq="x2", prompt=tuple(range(0, 9)),
           note="x again: its first block is still cached (a hit), its second was evicted (a miss)."),
        Free(seq="z"), Free(seq="x2"),
        Evict(blocks=8, note="Drop the whole prefix cache."),
    ])


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("tour", "A tour of paging, fork, copy-on-write, prefix caching and eviction", _tour),
        Scenario("copy-on-write", "Two samples share a prompt and diverge by copy-on-write (vLLM Fig. 8)",
                 _copy_on_write),
        Scenario("parallel-sampling", "Parallel sampling with n = 4", _parallel_sampling),
        Scenario("beam-search", "Beam search: forking and pruning beams", _beam_search),
        Scenario("shared-system-prompt", "A shared system prompt reused through prefix caching",
                 _shared_system_prompt),
        Scenario("eviction", "Eviction of cached blocks under memory pressure", _eviction),
    )
}


def get_scenario(name: str) -> Scenario:
    """The built-in scenario called ``name``."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise InvalidArgumentError(f"no scenario {name!r}; choose one of {', '.join(SCENARIOS)}") from None
