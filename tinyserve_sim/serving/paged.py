"""Paged memory: the scheduler's memory interface over a :class:`BlockManager`.

This adapter turns the scheduler's requests into block-manager operations,
using only the manager's public API:

* admitting a request is ``add`` (the prompt), then ``fork`` for each extra
  sample or beam: the prompt's blocks are shared, not copied (paper §4.4);
* a decode step is one ``decode`` of every running sequence (``append(seq, 1)``
  for each, in one call and one record): a new block only when the last one is
  full, a copy-on-write when it is shared and partly filled;
* beam search re-parents beams with ``fork`` and ``free``;
* a finished or preempted sequence is ``free``-d.

With ``record_trace=True`` every operation also goes through a
:class:`~tinyserve_sim.control.trace.Recorder`, so the whole run can be saved in the
core's trace format and replayed step by step.
"""

from __future__ import annotations

from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.control.trace import Recorder, Trace
from tinyserve_sim.serving.memory import Group, SeqState, Usage


class PagedMemory:
    """A KV memory of ``capacity`` slots, cut into blocks of ``block_size``.

    Args:
        capacity: KV slots (tokens); the pool has ``capacity // block_size`` blocks.
        block_size: tokens per block.
        prefix_caching: reuse full prompt blocks across requests (a shared
            system prompt is then stored once).
        watermark: share of blocks kept free when admitting, as vLLM does, so
            that running sequences can grow without being preempted at once.
        record_trace: record every operation as a trace (slower).
    """

    def __init__(
        self,
        capacity: int,
        block_size: int = 16,
        prefix_caching: bool = False,
        watermark: float = 0.01,
        record_trace: bool = False,
    ) -> None:
        self.block_size = block_size
        self.unit = block_size
        self.manager = BlockManager(
            max(1, capacity // block_size), block_size, prefix_caching=prefix_caching, record_ops=False
        )
        self.capacity_slots = self.manager.num_blocks * block_size
        self.name = f"paged-{block_size}"
        self.prefix_caching = prefix_caching
        self.watermark_blocks = int(watermark * self.manager.num_blocks)
        self.recorder = Recorder(self.manager, name=self.name) if record_trace else None
        # Operations go through the recorder when there is one; it has the manager's signatures.
        self.ops = self.recorder if self.recorder is not None else self.manager
        self._next_id = 0

    @property
    def trace(self) -> Trace | None:
        """The recorded trace (``record_trace=True`` only)."""
        return self.recorder.trace if self.recorder is not None else None

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    # ------------------------------------------------------------- admission
    def regrow_need(self, group: Group) -> int:
        """Blocks needed beyond the prompt's to rebuild sequences that had already generated.

        After a preemption by recomputation, a request comes back with its
        generated tokens: ``add`` the prompt, ``fork`` the other sequences, then
        ``append`` each one's generated tokens. The forks share the prompt's
        partly filled last block, so each writer but the last holder copies it
        on write.
        """
        prompt = group.req.prompt_len
        writers = [seq for seq in group.seqs if seq.tokens > prompt]
        need = sum(self._blocks(seq.tokens) - self._blocks(prompt) for seq in writers)
        if writers and prompt % self.block_size:
            everyone_writes = len(writers) == len(group.seqs)
            need += len(writers) - (1 if everyone_writes else 0)
        return need

    def admit(self, group: Group) -> bool:
        m = self.manager
        req = group.req
        prompt = req.prompt_ids() if self.prefix_caching else req.prompt_len
        need = m.blocks_needed_to_add(prompt) + self.regrow_need(group)
        # Keep the watermark free, unless the memory is idle (then anything that fits goes).
        reserve = self.watermark_blocks if m.num_used else 0
        if need + reserve > m.num_available or not m.can_add(prompt):
            return False
        first = group.seqs[0]
        first.seq_id = self._new_id()
        self.ops.add(first.seq_id, prompt)
        for seq in group.seqs[1:]:
            seq.seq_id = self._new_id()
            self.ops.fork(first.seq_id, seq.seq_id)
        if self.regrow_need(group) > m.num_available:
            # Prefix-cache hits on parked blocks took them out of the available pool,
            # so the regrowth no longer fits: undo (the hits go back to the cache).
            for seq in group.seqs:
                self.ops.free(seq.seq_id)
            return False
        for seq in group.seqs:
            if seq.tokens > req.prompt_len:
                self.ops.append(seq.seq_id, seq.tokens - req.prompt_len)
        return True

    # -------------------------------------------------------------- decoding
    def decode_need(self, group: Group) -> int:
        bs = self.block_size
        if len(group.seqs) == 1:  # nothing shared: a new block exactly when the last is full
            return 1 if group.seqs[0].tokens % bs == 0 else 0
        need = 0
        holders: dict[int, int] = {}  # partly filled last block -> sequences writing into it
        for seq in group.seqs:
            if seq.tokens % bs == 0:
                need += 1
            else:
                last = self.manager.block_table(seq.seq_id)[-1]
                holders[last] = holders.get(last, 0) + 1
        # A partly filled block shared by k sequences: the first k - 1 writers copy it.
        return need + sum(k - 1 for k in holders.values())

    def decode(self, group: Group) -> None:
        for seq in group.seqs:
            self.ops.append(seq.seq_id, 1)

    def decode_all(self, groups: list[Group]) -> None:
        seq_ids = [seq.seq_id for group in groups for seq in group.seqs]
        if seq_ids:
            self.ops.decode(seq_ids)

    def reparent(self, group: Group, parents: list[int]) -> None:
        old = [seq.seq_id for seq in group.seqs]
        kept: set[int] = set()
        new_ids = []
        for parent in parents:
            pid = old[parent]
            if pid not in kept:  # the first beam to continue a parent takes it over
                kept.add(pid)
                new_ids.append(pid)
            else:  # the others fork it: they share all its blocks
                child = self._new_id()
                self.ops.fork(pid, child)
                new_ids.append(child)
        for pid in old:
            if pid not in kept:  # a beam nobody continues is dropped
                self.ops.free(pid)
        for seq, seq_id in zip(group.seqs, new_ids):
            seq.seq_id = seq_id

    def release_seq(self, group: Group, seq: SeqState) -> None:
        self.ops.free(seq.seq_id)

    # ------------------------------------------------------------ accounting
    def free_slots(self) -> int:
        return self.manager.num_available * self.block_size

    def account(self, groups: list[Group]) -> Usage:
        """Split the used blocks' slots; only partly filled last blocks have empty slots.

        Every block of a table except the last is full, so the empty slots are
        those of the distinct last blocks. A shared last block is counted once.
        """
        bs = self.block_size
        reserve = internal = unshared = 0
        for group in groups:
            seen: set[int] = set()
            for seq in group.seqs:
                blocks = self._blocks(seq.tokens)
                unshared += blocks
                empty = blocks * bs - seq.tokens
                if empty == 0:
                    continue
                if len(group.seqs) > 1:
                    last = self.manager.block_table(seq.seq_id)[-1]
                    if last in seen:
                        continue
                    seen.add(last)
                will_fill = min(empty, seq.remaining)
                reserve += will_fill
                internal += empty - will_fill
        used = self.manager.num_used
        return Usage(used * bs - reserve - internal, reserve, internal, unshared, used)
