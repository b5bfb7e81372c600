"""Quiet steps: stretches of scheduler steps computed all at once.

Most steps of a long run are *quiet*: every running sequence decodes one
token, and nothing else happens. Nobody arrives, nobody finishes, memory
suffices for every decode (no preemption), and nobody can be admitted,
because the queue is empty or its head is held back by something that a
quiet step cannot change (memory only shrinks while sequences grow, and the
batch cap only frees up when a sequence finishes). A 16,000-request run
under the Max baseline has 780,000 steps and only about 30,000 that are not
quiet.

Over ``k`` quiet steps everything is known in advance: sequence ``i`` holds
``tokens_i + j + 1`` tokens after step ``j``, a paged sequence takes a new
block each time it crosses a block boundary, and the time model gives each
step's duration from the context the batch reads. :func:`skip` finds the
longest run of quiet steps that follows, logs their rows exactly as
:meth:`Scheduler.step <tinyserve_sim.serving.scheduler.Scheduler.step>` would
have (``tests/serving/test_quiet_steps.py`` compares both, column by column),
and applies their effect in one operation per sequence
(``BlockManager.append(seq, k)``).

It steps aside (the scheduler then steps one by one) whenever a step could
do more than decode: a request with several sequences (parallel sampling,
beam search: beams re-parent at random, blocks are shared), prefix caching
(admission may touch the cache), a paged memory that records a trace (the
trace must show every step), or a memory it does not know.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tinyserve_sim.serving.contiguous import ReservationMemory
from tinyserve_sim.serving.paged import PagedMemory

if TYPE_CHECKING:
    from tinyserve_sim.serving.scheduler import Scheduler

#: At most this many steps are computed at once (bounds the arrays; the loop goes on after).
MAX_STRETCH = 4096


def _supported(sched: Scheduler) -> bool:
    """Can the next steps be quiet at all?"""
    if not sched.running or sched.admission_stop == "preempted":
        return False
    if sched.waiting and (sched.admission_stop not in ("cap", "memory") or sched.log.column("finished")[-1]):
        return False  # the head was not held back, or a finish after the last admission freed memory
    memory = sched.memory
    if isinstance(memory, PagedMemory):
        if memory.recorder is not None or memory.prefix_caching:
            return False
    elif not isinstance(memory, ReservationMemory):
        return False
    return all(len(group.seqs) == 1 for group in sched.running)


def skip(sched: Scheduler, max_steps: int | None = None) -> int:
    """Run as many quiet steps as follow, all at once; return how many (0 if the next step is not quiet)."""
    if not _supported(sched):
        return 0
    seqs = [group.seqs[0] for group in sched.running]
    tokens = np.fromiter((s.tokens for s in seqs), dtype=np.int64, count=len(seqs))
    final = np.fromiter((s.final for s in seqs), dtype=np.int64, count=len(seqs))

    # No sequence may finish: sequence i finishes at its (final - tokens)-th decode.
    k = min(int((final - tokens).min()) - 1, MAX_STRETCH)
    if max_steps is not None:
        k = min(k, max_steps - sched.step_index)
    if k <= 0:
        return 0

    memory = sched.memory
    count = len(seqs)
    after = tokens[None, :] + np.arange(1, k + 1)[:, None]  # tokens after step j, [k, seqs]
    paged = isinstance(memory, PagedMemory)
    if paged:
        # Step j gives a new block to each sequence whose tokens fill their blocks exactly before it.
        bs = memory.block_size
        new_blocks = np.count_nonzero((after - 1) % bs == 0, axis=1)
        taken = np.cumsum(new_blocks)
        # No preemption: the blocks taken up to step j must be available.
        k = min(k, int(np.searchsorted(taken, memory.manager.num_available, side="right")))
        if k <= 0:
            return 0
        after, taken = after[:k], taken[:k]

    # Durations and start times; the steps must all start before the next arrival.
    contexts = sched.running_tokens + count * np.arange(1, k + 1)
    durations = np.asarray(sched.timer.decode_step_times(count, contexts, sched.paged), dtype=np.float64)
    starts = np.cumsum(np.concatenate(([sched.now], durations)))  # the clock, added up as step() does
    if sched.pending:
        k = min(k, int(np.searchsorted(starts[:k], sched.pending[0].arrival, side="left")))
        if k <= 0:
            return 0
    after, contexts, durations, starts = after[:k], contexts[:k], durations[:k], starts[: k + 1]

    # The rows: what _record would have computed after each step.
    steps = np.arange(1, k + 1)
    if paged:
        taken = taken[:k]
        blocks = -(-after // bs)
        empty = blocks * bs - after
        will_fill = np.minimum(empty, final[None, :] - after)
        reservation = will_fill.sum(axis=1)
        internal = (empty - will_fill).sum(axis=1)
        blocks_used = memory.manager.num_used + taken
        token_states = blocks_used * bs - reservation - internal
        free = (memory.manager.num_available - taken) * bs
        blocks_unshared = blocks.sum(axis=1)
        padding = 0
    else:
        usage = memory.account(sched.running)  # now; every step moves count slots from reservation to tokens
        token_states = usage.token_states + count * steps
        reservation = usage.reservation - count * steps
        internal = usage.internal
        blocks_used, blocks_unshared = usage.blocks_used, usage.blocks_unshared
        free = memory.free_slots()
        padding = usage.padding
    blocked = bool(sched.waiting) and sched.admission_stop == "memory"
    blocked_free = free if blocked else 0
    sched.log.extend(
        step=sched.step_index + steps - 1,
        time=starts[:k],
        duration=durations,
        running_seqs=sched.running_seqs,
        running_requests=len(sched.running),
        waiting=len(sched.waiting),
        token_states=token_states,
        reservation=reservation,
        internal=internal,
        external=padding + blocked_free,
        idle=free - blocked_free,
        preemptions=0,
        admitted=0,
        finished=0,
        generated=count,
        blocks_unshared=blocks_unshared,
        blocks_used=blocks_used,
        memory_blocked=int(blocked),
    )

    # Apply the k steps: one append of k tokens per paged sequence.
    for seq in seqs:
        if paged:
            memory.manager.append(seq.seq_id, k)
        seq.tokens += k
    sched.running_tokens += count * k
    sched.step_index += k
    sched.now = float(starts[k])
    return k
