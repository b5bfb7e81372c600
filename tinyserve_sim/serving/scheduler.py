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
4. **Time and record.** The time model (:mod:`~tinyserve_sim.serving.timing`)
   says how long the step took, from the work it did: the decodes, the
   context they read, the prompts it prefilled. One row of the
   :class:`~tinyserve_sim.serving.metrics.StepLog`.
5. **Finish.** Sequences that reached their final length are freed; a
   request's latency is its finish time minus its arrival time.

The clock advances by each step's duration; when nothing runs or waits, it
jumps to the next arrival.

Quiet steps
    Most steps of a long run change nothing but the token counts: nobody
    arrives, finishes, is preempted or admitted. :meth:`Scheduler.run` computes
    such a stretch of steps all at once (:mod:`~tinyserve_sim.serving.quiet_steps`)
    and logs exactly the rows that stepping one by one would have logged (a
    test checks it). :meth:`Scheduler.step` always does one step, and a run
    with an ``observer`` sees every step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tinyserve_sim.errors import InvalidArgumentError, WorkloadError
from tinyserve_sim.serving import quiet_steps
from tinyserve_sim.serving.generator import Workload
from tinyserve_sim.serving.memory import Group, KVMemory
from tinyserve_sim.serving.metrics import MAX_COUNT, StepLog, Summary, summarize
from tinyserve_sim.serving.paged import PagedMemory
from tinyserve_sim.serving.timing import (
    DEFAULT_TIME_MODEL,
    TIME_MODELS,
    ConstantTime,
    StepWork,
    TimeModel,
    causal_pairs,
)


def _is_count(value: object, low: int, high: int = MAX_COUNT) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and low <= value <= high


@dataclass(frozen=True)
class SchedulerConfig:
    """Knobs of the scheduler.

    Attributes:
        max_running_seqs: most sequences in one batch (vLLM's default is 256).
        step_time: seconds every step takes, a constant
            (:class:`~tinyserve_sim.serving.timing.ConstantTime`); ``None`` (the
            default) uses ``time_model``.
        time_model: how long a step takes given its work
            (:mod:`~tinyserve_sim.serving.timing`); ``None``: the paper's setting,
            ``TIME_MODELS["opt-13b-a100"]``.
        beam_stay: beam search: chance that a beam continues itself at a step;
            otherwise it continues a beam chosen at random (which may be itself).
        seed: seeds the beam choices.
        max_steps: stop after this many steps (``None``: run to the end).
        skip_quiet_steps: let :meth:`Scheduler.run` compute stretches of quiet
            steps at once (same log, much faster); ``False`` steps one by one.

    Every field is checked: an impossible value raises
    :class:`~tinyserve_sim.errors.InvalidArgumentError` naming it.
    """

    max_running_seqs: int = 256
    step_time: float | None = None
    time_model: TimeModel | None = None
    beam_stay: float = 0.9
    seed: int = 0
    max_steps: int | None = None
    skip_quiet_steps: bool = True

    def __post_init__(self) -> None:
        if not _is_count(self.max_running_seqs, 1, 10**12):
            raise InvalidArgumentError(f"max_running_seqs must be a whole number >= 1, got {self.max_running_seqs!r}")
        if self.step_time is not None:
            if self.time_model is not None:
                raise InvalidArgumentError("give step_time (a constant) or time_model, not both")
            ConstantTime(self.step_time)  # raises if it is not a positive number of seconds
        if self.time_model is not None and not (
            callable(getattr(self.time_model, "step_time", None))
            and callable(getattr(self.time_model, "decode_step_times", None))
        ):
            raise InvalidArgumentError(f"time_model must be a time model (see timing.py), got {self.time_model!r}")
        if isinstance(self.beam_stay, bool) or not isinstance(self.beam_stay, (int, float)) or not (
            0.0 <= self.beam_stay <= 1.0
        ):
            raise InvalidArgumentError(f"beam_stay must be a probability in [0, 1], got {self.beam_stay!r}")
        if not _is_count(self.seed, 0, 2**63 - 1):
            raise InvalidArgumentError(f"seed must be a whole number >= 0, got {self.seed!r}")
        if self.max_steps is not None and not _is_count(self.max_steps, 0, 2**63 - 1):
            raise InvalidArgumentError(f"max_steps must be None or a whole number >= 0, got {self.max_steps!r}")

    def timer(self) -> TimeModel:
        """The time model this configuration runs with."""
        if self.step_time is not None:
            return ConstantTime(self.step_time)
        return self.time_model if self.time_model is not None else TIME_MODELS[DEFAULT_TIME_MODEL]


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
        if not isinstance(workload, Workload):
            raise InvalidArgumentError(f"workload must be a Workload (generate_workload), got {type(workload).__name__}")
        if not all(hasattr(memory, attr) for attr in ("capacity_slots", "name")):
            raise InvalidArgumentError(
                f"memory must be a KV memory manager (make_memory('paged-16', capacity)), got {type(memory).__name__}"
            )
        if not isinstance(config, SchedulerConfig):
            raise InvalidArgumentError(f"config must be a SchedulerConfig, got {type(config).__name__}")
        if observer is not None and not callable(observer):
            raise InvalidArgumentError(f"observer must be a function of the scheduler, got {type(observer).__name__}")
        self.workload = workload
        self.observer = observer
        self.memory = memory
        self.config = config
        self.timer = config.timer()
        self.paged = isinstance(memory, PagedMemory)  # picks the attention kernel's speed
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
        self.running_tokens = 0  # tokens held by the running sequences
        self.latencies: list[float] = []  # seconds per output token of each finished request
        # Why the last step's admission stopped: "empty" queue, batch "cap", "memory", or "preempted".
        self.admission_stop = "empty"

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
        generated = self.running_seqs  # every running sequence decodes one token
        self.memory.decode_all(self.running)  # one batched call for the whole step
        for group in self.running:
            for seq in group.seqs:
                seq.tokens += 1
        self.running_tokens += generated
        decode_context = self.running_tokens  # each decode reads its sequence's KV, the new token's included

        # 3. Admission, first come first served.
        admitted = prefill_tokens = prefill_pairs = 0
        memory_blocked = preempted > 0
        stop = "preempted" if preempted else "empty"
        while self.waiting and not preempted:
            head = self.waiting[0]
            if self.running_seqs + len(head.seqs) > self.config.max_running_seqs:
                if not self.running:
                    raise WorkloadError(
                        f"request {head.req.req_id} runs {len(head.seqs)} sequences, more than a batch holds "
                        f"(max_running_seqs={self.config.max_running_seqs})"
                    )
                stop = "cap"
                break  # the batch is full: free memory is idle, not fragmented
            if not self.memory.admit(head):
                memory_blocked = True
                stop = "memory"
                if not self.running:
                    raise WorkloadError(
                        f"request {head.req.req_id} ({head.req.prompt_len} prompt tokens, {len(head.seqs)} "
                        f"sequence(s)) cannot be admitted even into an empty {self.memory.name} memory"
                    )
                break
            self.waiting.popleft()
            tokens, pairs = self._prefill_work(head)
            prefill_tokens += tokens
            prefill_pairs += pairs
            self._start(head)
            admitted += 1
        self.admission_stop = stop

        # 4. How long the step took, and its row.
        work = StepWork(generated, decode_context, prefill_tokens, prefill_pairs, self.paged)
        duration = self.timer.step_time(work)
        self._record(generated, admitted, preempted, memory_blocked, duration)
        if self.observer is not None:
            self.observer(self)

        # 5. Finish the sequences that reached their final length.
        end = self.now + duration
        done_now = 0
        still_running = []
        for group in self.running:
            if all(seq.tokens < seq.final for seq in group.seqs):
                still_running.append(group)
                continue
            for seq in group.seqs:
                if seq.tokens >= seq.final:
                    self.memory.release_seq(group, seq)
                    self.running_seqs -= 1
                    self.running_tokens -= seq.tokens
            group.seqs[:] = [seq for seq in group.seqs if seq.tokens < seq.final]
            if group.seqs:
                still_running.append(group)
            else:
                group.finished_at = self.step_index
                self.finished.append(group)
                self.latencies.append(max(end - group.req.arrival, 0.0) / max(group.req.output_lens))
                done_now += 1
        self.running[:] = still_running  # in admission order, as before
        self.log.column("finished")[-1] = done_now
        self.step_index += 1
        self.now = end

    def run(self, progress: Callable[[int, int], None] | None = None) -> RunResult:
        """Step until every request has finished (or ``max_steps``).

        ``progress(finished, total)`` is called every 256 steps and at the end.
        """
        total = len(self.workload.requests)
        skip = self.config.skip_quiet_steps and self.observer is None
        limit = self.config.max_steps
        reported = 0
        while not self.done:
            if limit is not None and self.step_index >= limit:
                break
            self.step()
            if skip:
                quiet_steps.skip(self, limit)
            if progress is not None and self.step_index - reported >= 256:
                reported = self.step_index
                progress(len(self.finished), total)
        if progress is not None:
            progress(len(self.finished), total)
        return self.result()

    def result(self, window: str = "all") -> RunResult:
        """The run so far: its log, its summary over ``window`` (``"all"`` or ``"saturated"`` steps)."""
        summary = summarize(self.log, self.memory.name, self.preemptions, self.recomputed_tokens, self.latencies,
                            window)
        return RunResult(self.memory.name, self.log, summary, self.finished)

    # --------------------------------------------------------------- helpers
    @staticmethod
    def _prefill_work(group: Group) -> tuple[int, int]:
        """Tokens and causal attention pairs the admission of ``group`` computes.

        The prompt is computed once for all the group's sequences (they share
        it). After a preemption, each sequence's generated tokens are computed
        again too, each attending to the prompt and to its own earlier tokens.
        """
        prompt = group.req.prompt_len
        tokens, pairs = prompt, causal_pairs(0, prompt)
        for seq in group.seqs:
            if seq.tokens > prompt:
                tokens += seq.tokens - prompt
                pairs += causal_pairs(prompt, seq.tokens)
        return tokens, pairs

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
        self.running_tokens += sum(seq.tokens for seq in group.seqs)

    def _make_room_to_decode(self) -> int:
        """Preempt newest-first until every remaining running group can decode; return how many."""
        memory = self.memory
        preempted = 0
        available = memory.free_slots() // memory.unit  # units free now; a preemption frees more
        promised = 0  # units set aside for the older groups already checked
        i = 0
        while i < len(self.running):
            group = self.running[i]
            need = memory.decode_need(group)
            while need > available - promised:
                victim = self.running[-1]  # the most recently admitted request
                if victim is group and i == 0:
                    # Alone in memory and still out of room: recomputing would loop forever.
                    raise WorkloadError(
                        f"request {group.req.req_id} needs more KV memory than the whole "
                        f"{memory.name} memory ({memory.capacity_slots} slots) to continue"
                    )
                self._preempt(victim)
                preempted += 1
                available = memory.free_slots() // memory.unit
                if victim is group:
                    break
            else:
                promised += need
                i += 1
        return preempted

    def _preempt(self, group: Group) -> None:
        for seq in group.seqs:
            self.memory.release_seq(group, seq)
        self.running[:] = [g for g in self.running if g is not group]  # by identity: groups compare by value
        self.running_seqs -= len(group.seqs)
        self.running_tokens -= sum(seq.tokens for seq in group.seqs)
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

    def _record(self, generated: int, admitted: int, preempted: int, memory_blocked: bool, duration: float) -> None:
        usage = self.memory.account(self.running)
        free = self.memory.free_slots()
        blocked_free = free if memory_blocked and self.waiting else 0
        external = usage.padding + blocked_free  # the allocator's waste
        self.log.append(
            step=self.step_index,
            time=self.now,
            duration=duration,
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
