"""An iteration-level scheduler, as in Orca and vLLM.

The server works in *iterations* (steps). In each step every running
sequence produces one token, and between steps requests may join or leave
the batch; nobody waits for the whole batch to finish. One step here:

1. **Arrivals.** Requests whose arrival time has come join the waiting queue.
2. **Decode.** Each running request, oldest first, gets the memory its next
   token needs. If memory runs out, the *newest* running request is
   **preempted by recomputation**: all its memory is freed and it goes back
   to the front of the queue; when readmitted, its prompt and the tokens it
   had generated are computed again (vLLM's default for single sequences).
   Beam search first re-parents its beams. Then every sequence stores a token.
3. **Admission.** Waiting requests, first come first served, are admitted
   while the memory accepts them and the batch has room (at most
   ``max_running_seqs`` sequences). Their prompt is stored (prefill); they
   decode from the next step on. No admission in a step that preempted.
4. **Record.** One row of the :class:`~tinyserve_sim.serving.metrics.StepLog`.
5. **Finish.** Sequences that reached their final length are freed.

Time advances ``step_time`` seconds per step (a deliberately simple model: a
real step's duration grows with the batch). When nothing runs or waits, the
clock jumps to the next arrival.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tinyserve_sim.errors import WorkloadError
from tinyserve_sim.serving.generator import Workload
from tinyserve_sim.serving.memory import Group, KVMemory
from tinyserve_sim.serving.metrics import StepLog, Summary, summarize


@dataclass(frozen=True)
class SchedulerConfig:
    """Knobs of the scheduler.

    Attributes:
        max_running_seqs: most sequences in one batch (vLLM's default is 256).
        step_time: seconds one step takes (the time model).
        beam_stay: beam search: chance that a beam continues itself at a step;
            otherwise it continues a beam chosen at random (which may be itself).
        seed: seeds the beam choices.
        max_steps: stop after this many steps (``None``: run to the end).
    """

    max_running_seqs: int = 256
    step_time: float = 0.04
    beam_stay: float = 0.9
    seed: int = 0
    max_steps: int | None = None


@dataclass
class RunResult:
    """What a run produced: the step log, the summary, and the finished requests."""

    memory_name: str
    log: StepLog
    summary: Summary
    finished: list[Group] = field(default_factory=list)


class Scheduler:
    """Runs a workload against one memory, one step at a time.

    >>> from tinyserve_sim.serving.generator import WorkloadSpec, generate
    >>> from tinyserve_sim.serving.paged import PagedMemory
    >>> sched = Scheduler(generate(WorkloadSpec("alpaca", num_requests=20)), PagedMemory(2048, 16))
    >>> result = sched.run()
    >>> result.summary.finished
    20
    """

    def __init__(
        self, workload: Workload, memory: KVMemory, config: SchedulerConfig = SchedulerConfig(),
        observer: Callable[[Scheduler], None] | None = None,
    ) -> None:
        """``observer(scheduler)``, if given, is called right after each step is recorded,
        before finished sequences are freed: it sees exactly the state the row describes."""
        self.workload = workload
        self.observer = observer
        self.memory = memory
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.pending = deque(sorted(workload.requests, key=lambda r: (r.arrival, r.req_id)))
        self.waiting: deque[Group] = deque()
        self.running: list[Group] = []
        self.finished: list[Group] = []
        self.log = StepLog(memory.capacity_slots)
        self.step_index = 0
        self.now = 0.0
        self.preemptions = 0
        self.recomputed_tokens = 0
        self.running_seqs = 0

    @property
    def done(self) -> bool:
        return not (self.pending or self.waiting or self.running)

    # -------------------------------------------------------------- one step
    def step(self) -> None:
        """Advance one iteration (see the module doc for the five phases)."""
        # 1. Arrivals. An idle server jumps to the next arrival.
        if not self.running and not self.waiting and self.pending:
            self.now = max(self.now, self.pending[0].arrival)
        while self.pending and self.pending[0].arrival <= self.now:
            self.waiting.append(Group.fresh(self.pending.popleft()))

        # 2. Decode. Beams re-parent first (it changes what the next token shares),
        #    then the newest requests are preempted while memory runs short.
        for group in self.running:
            if group.req.beam_width > 1:
                self.memory.reparent(group, self._beam_parents(len(group.seqs)))
        preempted = self._make_room_to_decode()
        generated = 0
        self.memory.decode_all(self.running)  # one batched call for the whole step
        for group in self.running:
            for seq in group.seqs:
                seq.tokens += 1
            generated += len(group.seqs)

        # 3. Admission, first come first served.
        admitted = 0
        memory_blocked = preempted > 0
        while self.waiting and not preempted:
            head = self.waiting[0]
            if self.running_seqs + len(head.seqs) > self.config.max_running_seqs:
                break  # the batch is full: free memory is idle, not fragmented
            if not self.memory.admit(head):
                memory_blocked = True
                if not self.running:
                    raise WorkloadError(
                        f"request {head.req.req_id} ({head.req.prompt_len} prompt tokens, {len(head.seqs)} "
                        f"sequence(s)) cannot be admitted even into an empty {self.memory.name} memory"
                    )
                break
            self.waiting.popleft()
            self._start(head)
            admitted += 1

        # 4. Record this step.
        self._record(generated, admitted, preempted, memory_blocked)
        if self.observer is not None:
            self.observer(self)

        # 5. Finish the sequences that reached their final length.
        done_now = 0
        for group in list(self.running):
            for seq in [s for s in group.seqs if s.tokens >= s.final]:
                self.memory.release_seq(group, seq)
                group.seqs.remove(seq)
                self.running_seqs -= 1
            if not group.seqs:
                group.finished_at = self.step_index
                self.running.remove(group)
                self.finished.append(group)
                done_now += 1
        self.log.columns["finished"][-1] = done_now
        self.step_index += 1
        self.now += self.config.step_time

    def run(self, progress: Callable[[int, int], None] | None = None) -> RunResult:
        """Step until every request has finished (or ``max_steps``).

        ``progress(finished, total)`` is called every 256 steps and at the end.
        """
        total = len(self.workload.requests)
        while not self.done:
            if self.config.max_steps is not None and self.step_index >= self.config.max_steps:
                break
            self.step()
            if progress is not None and self.step_index % 256 == 0:
                progress(len(self.finished), total)
        if progress is not None:
            progress(len(self.finished), total)
        return self.result()

    def result(self, window: str = "all") -> RunResult:
        latencies = []
        for group in self.finished:
            elapsed = (group.finished_at + 1) * self.config.step_time - group.req.arrival
            latencies.append(max(elapsed, 0.0) / max(group.req.output_lens))
        summary = summarize(self.log, self.memory.name, self.preemptions, self.recomputed_tokens, latencies, window)
        return RunResult(self.memory.name, self.log, summary, self.finished)

    # --------------------------------------------------------------- helpers
    def _start(self, group: Group) -> None:
        """Bookkeeping for an admitted group (its memory is already allocated)."""
        recomputed = sum(seq.tokens - group.req.prompt_len for seq in group.seqs)
        if group.first_admitted_at >= 0:
            self.recomputed_tokens += group.req.prompt_len + recomputed
        else:
            group.first_admitted_at = self.step_index
        group.admitted_at = self.step_index
        self.running.append(group)
        self.running_seqs += len(group.seqs)

    def _make_room_to_decode(self) -> int:
        """Preempt newest-first until every remaining running group can decode; return how many."""
        preempted = 0
        promised = 0  # units set aside for the older groups already checked
        i = 0
        while i < len(self.running):
            group = self.running[i]
            need = self.memory.decode_need(group)
            while need > self.memory.free_slots() // self.memory.unit - promised:
                victim = self.running[-1]  # the most recently admitted request
                if victim is group and i == 0:
                    # Alone in memory and still out of room: recomputing would loop forever.
                    raise WorkloadError(
                        f"request {group.req.req_id} needs more KV memory than the whole "
                        f"{self.memory.name} memory ({self.memory.capacity_slots} slots) to continue"
                    )
                self._preempt(victim)
                preempted += 1
                if victim is group:
                    break
            else:
                promised += need
                i += 1
        return preempted

    def _preempt(self, group: Group) -> None:
        for seq in group.seqs:
            self.memory.release_seq(group, seq)
        self.running.remove(group)
        self.running_seqs -= len(group.seqs)
        group.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(group)  # back to the front: it keeps its place in line

    def _beam_parents(self, width: int) -> list[int]:
        """Beam ``k`` continues itself with probability ``beam_stay``, else a random beam."""
        parents = []
        for k in range(width):
            if self.rng.random() < self.config.beam_stay:
                parents.append(k)
            else:
                parents.append(int(self.rng.integers(width)))
        return parents

    def _record(self, generated: int, admitted: int, preempted: int, memory_blocked: bool) -> None:
        usage = self.memory.account(self.running)
        free = self.memory.free_slots()
        blocked_free = free if memory_blocked and self.waiting else 0
        external = usage.padding + blocked_free  # the allocator's waste
        self.log.append(
            step=self.step_index,
            time=self.now,
            running_seqs=self.running_seqs,
            running_requests=len(self.running),
            waiting=len(self.waiting),
            token_states=usage.token_states,
            reservation=usage.reservation,
            internal=usage.internal,
            external=external,
            idle=free - blocked_free,
            preemptions=preempted,
            admitted=admitted,
            finished=0,
            generated=generated,
            blocks_unshared=usage.blocks_unshared,
            blocks_used=usage.blocks_used,
            memory_blocked=int(bool(memory_blocked and self.waiting)),
        )


def simulate(
    workload: Workload, memory: KVMemory, config: SchedulerConfig = SchedulerConfig(), window: str = "all",
    progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    """Run ``workload`` on ``memory`` and summarise (``window``: see :func:`summarize`)."""
    sched = Scheduler(workload, memory, config)
    sched.run(progress)
    return sched.result(window)
