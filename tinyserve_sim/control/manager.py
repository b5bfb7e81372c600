"""The block manager: sequences, block tables, fork, copy-on-write and prefix caching.

This is the *control plane* of a paged KV cache: it decides which physical
block holds which tokens of which sequence, and never touches the bytes. Each
operation returns a :class:`~tinyserve_sim.control.records.OpRecord` describing exactly what
it did, including the work the *data plane* must do next: the slots to write
(``slot_mapping``) and the copy-on-write block copies (``copies``).

The seven operations, as a server uses them:

``add(seq, prompt)``
    A new request arrives. Reuse cached prefix blocks if prefix caching is on,
    allocate the rest.
``append(seq, tokens)``
    Decode: the model produced ``tokens`` more tokens. Allocate a block when
    the last one is full; copy-on-write when the last one is partly filled
    and shared with another sequence.
``fork(parent, child)``
    Parallel sampling or beam search: the child shares *every* block of the
    parent. Reference counts go up; nothing is allocated or copied.
``free(seq)``
    The request finished. Its blocks go back tail first; cached full blocks
    stay reusable in the prefix cache until evicted.
``evict(n)``
    Forget up to ``n`` cached free blocks (least recently used first).
``move(moves)``
    Relocate blocks (memory compaction): each ``(src, dst)`` moves a block's
    data into a free block and rewrites every table that pointed at it.
``decode(seq_ids, token_ids=None)``
    One scheduler step of decoding: append one token to each sequence of a
    batch, in one call that returns one record for the whole batch.

Every operation checks everything before it changes anything, so a call that
raises leaves the manager exactly as it was, and any bad argument raises one
of the project's errors (a :class:`~tinyserve_sim.errors.SimError`).

Speed. A server calls ``append`` (or ``decode``) for every token it
generates, so those paths are written for it: one token takes a fast path
with plain ints and lists (no NumPy set-up, no helper call), a block is
hashed once, when it fills, and a record is built from its values in field
order and keeps its slot mapping compact until someone reads it. ``decode``
checks a whole batch in a few passes in C, then runs the one-token path for
each sequence in one loop. ``benchmarks/bench_control_plane.py --mode serving``
measures both against nano-vllm's block manager.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as SequenceABC
from itertools import repeat

import numpy as np

from tinyserve_sim.control.checks import (
    INT64_MAX,
    INT64_MIN,
    check_int,
    is_int,
    short_repr,
)
from tinyserve_sim.control.pool import BlockPool
from tinyserve_sim.control.prefix_cache import (
    ROOT_HASH,
    PrefixCache,
    hash_blocks,
    hash_token_array,
)
from tinyserve_sim.control.records import (
    OpRecord,
    SeqId,
    SequenceState,
    SlotRun,
    Snapshot,
    new_record,
)
from tinyserve_sim.control.sequence import (
    AddPlan,
    LiveSequence,
    ceil_div,
    decode_need,
    plan_add,
    plan_append,
)
from tinyserve_sim.control.tokens import TokenIds, Tokens, checked_ids, token_arg
from tinyserve_sim.errors import (
    ConfigError,
    DuplicateSequenceError,
    InvalidArgumentError,
    InvalidTokenCountError,
    InvariantError,
    OutOfBlocksError,
    UnknownSequenceError,
)

#: The largest block size: 2**20 = 1,048,576 token slots (so every slot id fits in 64 bits).
MAX_BLOCK_SIZE = 1 << 20


#: The types of a sequence id (exactly: a dict look-up also finds sequence 1 under True or 1.0).
_ID_TYPES = frozenset((str, int))


def _is_seq_id(seq_id: object) -> bool:
    """A str, or an int (not a bool) that fits in 64 bits, as in a trace."""
    return isinstance(seq_id, str) or (is_int(seq_id) and INT64_MIN <= seq_id <= INT64_MAX)  # type: ignore[operator]


class BlockManager:
    """Paged KV-cache bookkeeping for many sequences over one block pool.

    Args:
        num_blocks: physical blocks in the pool (at most
            :data:`~tinyserve_sim.control.pool.MAX_NUM_BLOCKS`).
        block_size: token slots per block (at most :data:`MAX_BLOCK_SIZE`).
        policy: free-queue order, a name from :data:`~tinyserve_sim.control.policies.POLICIES`
            (``"fifo"`` or ``"lifo"``, see :mod:`tinyserve_sim.control.pool`).
        prefix_caching: reuse full blocks across sequences with the same prefix.
        record_ops: build a :class:`OpRecord` for every operation. Turn it off
            for raw speed; operations then return ``None``.
        evictor: the order in which cached free blocks are evicted, a name from
            :data:`~tinyserve_sim.control.policies.EVICTORS` (``"lru"``); only
            used with prefix caching.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        policy: str = "fifo",
        prefix_caching: bool = False,
        record_ops: bool = True,
        evictor: str = "lru",
    ) -> None:
        self.block_size = check_int(block_size, "block_size", 1, MAX_BLOCK_SIZE, ConfigError)
        for name, flag in (("prefix_caching", prefix_caching), ("record_ops", record_ops)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ConfigError(f"{name} must be True or False, got {short_repr(flag)}")
        cache = PrefixCache(evictor)  # checks the evictor's name even without prefix caching
        self.pool = BlockPool(num_blocks, policy)
        self.cache: PrefixCache | None = cache if prefix_caching else None
        self.evictor: str = evictor
        self.record_ops = bool(record_ops)
        self.op_index = 0
        self._seqs: dict[SeqId, LiveSequence] = {}
        # Shortcuts for the per-token paths (append, decode): the pool's reference counts
        # and free queue, and the parked blocks (an empty tuple without prefix caching).
        self._ref = self.pool._ref
        self._queue = self.pool.queue
        self._num_blocks = self.pool.num_blocks
        self._parked = self.cache.evictor if self.cache is not None else ()

    @classmethod
    def from_block_tables(
        cls,
        num_blocks: int,
        block_size: int,
        sequences: Mapping[SeqId, tuple[SequenceABC[int], int]],
        policy: str = "fifo",
        record_ops: bool = True,
    ) -> BlockManager:
        """A manager whose live sequences are given: ``{seq_id: (block_table, num_tokens)}``.

        This is how a state that exists elsewhere (a real server's page table,
        see :mod:`tinyserve_sim.control.formats`) comes in. Each block's
        reference count is the number of tables that hold it; the blocks no
        table holds form the free queue, in id order. Token contents are
        unknown, so prefix caching is off. Everything is checked first: a bad
        table raises and no manager is returned.

        >>> m = BlockManager.from_block_tables(8, 4, {"a": ([5, 2], 6), "b": ([5], 3)})
        >>> m.block_table("b"), m.pool.ref_count(5), m.pool.free_queue()
        ((5,), 2, [0, 1, 3, 4, 6, 7])
        """
        manager = cls(num_blocks, block_size, policy=policy, record_ops=record_ops)
        if not isinstance(sequences, Mapping):
            raise InvalidArgumentError(f"sequences must map a seq id to (block_table, num_tokens), got {type(sequences).__name__}")
        users: Counter[int] = Counter()
        plain: dict[SeqId, tuple[list[int], int]] = {}
        for seq_id, entry in sequences.items():
            manager._check_new_id(seq_id)
            try:
                table, num_tokens = entry
                table = [int(b) if isinstance(b, (int, np.integer)) and not isinstance(b, bool) else b for b in table]
            except (TypeError, ValueError):
                raise InvalidArgumentError(f"{seq_id!r}: expected (block_table, num_tokens), got {entry!r}") from None
            if isinstance(num_tokens, bool) or not isinstance(num_tokens, (int, np.integer)) or num_tokens < 1:
                raise InvalidTokenCountError(f"{seq_id!r}: num_tokens must be a positive integer, got {num_tokens!r}")
            for block in table:
                manager.pool.check_id(block)
            if len(table) != manager.blocks_for(int(num_tokens)):
                raise InvalidArgumentError(
                    f"{seq_id!r}: {len(table)} blocks for {num_tokens} tokens "
                    f"(blocks of {block_size} need {manager.blocks_for(int(num_tokens))})"
                )
            if len(set(table)) != len(table):
                raise InvalidArgumentError(f"{seq_id!r}: block table {table} holds a block twice")
            users.update(table)
            plain[seq_id] = (table, int(num_tokens))
        manager.pool.take(sorted(users))  # each a count of 1, out of the free queue
        for block, count in users.items():
            for _ in range(count - 1):
                manager.pool.incref(block)
        for seq_id, (table, num_tokens) in plain.items():
            manager._seqs[seq_id] = LiveSequence(num_tokens, table, [], None)
        return manager

    # ------------------------------------------------------------- properties
    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def policy(self) -> str:
        return self.pool.policy

    @property
    def prefix_caching(self) -> bool:
        return self.cache is not None

    @property
    def num_free(self) -> int:
        """Blocks in the free queue (never cached, or evicted)."""
        return len(self.pool.queue)

    @property
    def num_cached_free(self) -> int:
        """Cached blocks nobody uses: reusable by a prefix hit, or evictable."""
        return len(self.cache.evictor) if self.cache is not None else 0

    @property
    def num_available(self) -> int:
        """Blocks an allocation could get: free ones, then evicted cached ones."""
        return self.num_free + self.num_cached_free

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_available

    # ------------------------------------------------------------- inspection
    def seq_ids(self) -> list[SeqId]:
        """Live sequence ids, in the order they were added."""
        return list(self._seqs)

    def block_table(self, seq_id: SeqId) -> tuple[int, ...]:
        """Logical block ``i`` of the sequence lives in physical block ``table[i]``."""
        return tuple(self._get(seq_id).table)

    def num_tokens(self, seq_id: SeqId) -> int:
        return self._get(seq_id).num_tokens

    def slot_mapping(self, seq_id: SeqId, start: int = 0, end: int | None = None) -> np.ndarray:
        """Cache slots of tokens ``start .. end-1`` of a sequence (int64; ``end`` defaults to its length)."""
        seq = self._get(seq_id)
        end = seq.num_tokens if end is None else check_int(end, "end", 0, seq.num_tokens)
        start = check_int(start, "start", 0, end)
        bs = self.block_size
        blocks = tuple(seq.table[start // bs : ceil_div(end, bs)])
        return SlotRun(blocks, start % bs, end - start, bs).to_array()

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens: ``ceil(num_tokens / block_size)``."""
        return ceil_div(check_int(num_tokens, "num_tokens", 0, INT64_MAX), self.block_size)

    # ------------------------------------------------- admission (change nothing)
    def blocks_needed_to_add(self, prompt: Tokens) -> int:
        """New blocks ``add`` would allocate for this prompt (prefix hits excluded)."""
        return self._plan_add(prompt).needed

    def can_add(self, prompt: Tokens) -> bool:
        """Would ``add`` of this prompt succeed now?"""
        return self._available_after(self._plan_add(prompt)) >= 0

    def blocks_needed_to_append(self, seq_id: SeqId, tokens: Tokens = 1) -> int:
        """Blocks ``append`` would allocate (new blocks plus a copy-on-write copy)."""
        return plan_append(self._get(seq_id), *token_arg(tokens, "an append"), self.block_size, self._ref).needed

    def can_append(self, seq_id: SeqId, tokens: Tokens = 1) -> bool:
        """Would ``append`` of this many tokens succeed now?"""
        return self.blocks_needed_to_append(seq_id, tokens) <= self.num_available

    def blocks_needed_to_decode(self, seq_ids: Iterable[SeqId]) -> int:
        """Blocks ``decode`` of this batch would allocate (new blocks plus copy-on-write copies)."""
        return decode_need(self._batch(seq_ids)[1], self.block_size, self._ref)

    # -------------------------------------------------------------- operations
    def add(self, seq_id: SeqId, prompt: Tokens) -> OpRecord | None:
        """Start a sequence with a prompt (a token count, or token ids for prefix caching)."""
        self._check_new_id(seq_id)
        plan = self._plan_add(prompt)
        shortfall = self._available_after(plan)
        if shortfall < 0:
            raise OutOfBlocksError(
                f"out of blocks: adding {seq_id!r} ({plan.count} tokens) needs {plan.needed} new block(s), "
                f"only {plan.needed + shortfall} available",
                needed=plan.needed,
                available=plan.needed + shortfall,
            )
        # Prefix hits: one more user each. A hit with no user was parked (cached and
        # free): it leaves the evictor.
        cache, ref = self.cache, self._ref
        hits = plan.hits
        for block in hits:
            if ref[block] == 0:
                cache._revive(block)  # type: ignore[union-attr]
            ref[block] += 1
        new_blocks, evicted = self._allocate(plan.needed)
        table = hits + new_blocks
        if cache is not None:
            cache.hits += len(hits)
            cache.misses += plan.misses
            hashes = plan.hashes
            for i in range(len(hits), len(hashes)):
                cache._register(table[i], hashes[i])
        self._seqs[seq_id] = LiveSequence(plan.count, table, plan.hashes, plan.tail)
        index = self.op_index
        self.op_index = index + 1
        if not self.record_ops:
            return None
        bs = self.block_size
        allocated = tuple(new_blocks)
        shared = tuple(hits)
        # Tokens covered by prefix hits are already in the cache: only the new blocks are written.
        slots = SlotRun(allocated, 0, plan.count - len(hits) * bs, bs)
        free, cached = len(self._queue), len(self._parked)
        return new_record(OpRecord, (
            index, "add", seq_id, None, (), plan.count,  # index, op, seq_id, parent_id, seq_ids, num_new_tokens
            allocated, (), (), shared, (), tuple(evicted), shared, plan.misses,  # allocated, freed, cached, shared, copies, evicted, cache_hits, cache_misses
            slots, free, cached, self._num_blocks - free - cached, bs,  # slots, num_free, num_cached_free, num_used, block_size
        ))  # fmt: skip

    def append(self, seq_id: SeqId, tokens: Tokens = 1) -> OpRecord | None:
        """Add ``tokens`` decoded tokens (a count, or token ids) to a live sequence."""
        seq = self._seqs.get(seq_id) if type(seq_id) is int or type(seq_id) is str else None
        if seq is None:
            seq = self._get(seq_id)  # raises, unless seq_id is a str or int subclass
        # One token (one token id, or a count of 1) is every decode step: the fast path
        # below, in plain ints and lists (no NumPy, no helper calls). Anything else, and
        # any bad argument, goes to _append_many.
        if type(tokens) is list and len(tokens) == 1:
            token = tokens[0]
            if type(token) is not int or not INT64_MIN <= token <= INT64_MAX:
                return self._append_many(seq_id, seq, tokens)
        elif type(tokens) is int and tokens == 1:
            token = None
        else:
            return self._append_many(seq_id, seq, tokens)
        bs = self.block_size
        n = seq.num_tokens
        offset = n % bs  # where the token goes in the last block (0: the last block is full)
        if offset and self._ref[block := seq.table[-1]] == 1:
            allocated = copies = evicted = ()  # the usual case: room in its own last block
        else:
            # A new block (the last one is full), or a private copy of a shared, partly filled one.
            block, allocated, copies, evicted = self._grow_or_copy(seq_id, seq, offset)
        seq.num_tokens = n + 1
        tail = seq.tail
        if tail is not None:  # prefix caching, content known so far
            if token is None:
                seq.tail = None  # content unknown from here on: nothing more can be cached
            else:
                tail.append(token)
                if offset == bs - 1:
                    self._cache_full_block(seq, block)
        index = self.op_index
        self.op_index = index + 1
        if not self.record_ops:
            return None
        free = len(self._queue)
        cached = len(self._parked)
        return new_record(OpRecord, (
            index, "append", seq_id, None, (), 1,  # index, op, seq_id, parent_id, seq_ids, num_new_tokens
            allocated, (), (), (), copies, evicted, (), 0,  # allocated, freed, cached, shared, copies, evicted, cache_hits, cache_misses
            block * bs + offset, free, cached, self._num_blocks - free - cached, bs,  # slots, num_free, num_cached_free, num_used, block_size
        ))  # fmt: skip

    def _append_many(self, seq_id: SeqId, seq: LiveSequence, tokens: Tokens) -> OpRecord | None:
        """``append`` of any number of tokens (a count, or token ids), checked first."""
        count, ids = token_arg(tokens, "an append")
        plan = plan_append(seq, count, ids, self.block_size, self._ref)
        if plan.needed > self.num_available:
            raise self._out_of_blocks_appending(seq_id, plan.count, plan.needed)
        blocks, evicted = self._allocate(plan.needed)
        copies: list[tuple[int, int]] = []
        if plan.copy_on_write:
            # The last block is partly filled and shared: this sequence gets a private
            # copy to write into, and gives up its reference to the shared one.
            src, dst = seq.table[-1], blocks.pop(0)
            self.pool._ref[src] -= 1  # still > 0: another sequence holds it
            seq.table[-1] = dst
            copies.append((src, dst))
        start = seq.num_tokens
        seq.table.extend(blocks)
        seq.num_tokens += plan.count
        if seq.tail is not None:
            self._extend_tail(seq, plan.ids)
        bs = self.block_size
        written = tuple(seq.table[start // bs : ceil_div(seq.num_tokens, bs)])
        return self._record(
            "append",
            seq_id,
            num_new_tokens=plan.count,
            allocated=tuple(dst for _, dst in copies) + tuple(blocks),
            copies=tuple(copies),
            evicted=tuple(evicted),
            slots=SlotRun(written, start % bs, plan.count, bs),
        )

    def decode(self, seq_ids: Iterable[SeqId], token_ids: SequenceABC[int] | np.ndarray | None = None) -> OpRecord | None:
        """One decode step of a batch: append one token to each sequence, with ONE record.

        This is what a server's scheduler does every iteration, and the same as
        ``append(seq, 1)`` (or ``append(seq, [token_id])``) for each sequence in
        order, only faster. The record lists the batch (``seq_ids``), every
        block allocated, every copy-on-write (``copies``) and eviction, and
        ``slot_mapping[i]``, the slot of ``seq_ids[i]``'s new token: ready for
        ``DecodeBatch.from_manager(manager, record.seq_ids, record.slot_mapping)``.

        Args:
            seq_ids: the live sequences of the batch, each once.
            token_ids: one token id per sequence, to keep hashing blocks for
                prefix caching; ``None`` appends a count (the content is unknown).
        """
        ids, seqs = self._batch(seq_ids)
        tokens = self._batch_tokens(token_ids, len(ids))
        # Each sequence needs at most one block for one token (a new block when its
        # last block is full, or a private copy when it is partly filled and shared),
        # so the exact count is only needed when memory is short.
        if len(seqs) > self.num_available:
            needed = decode_need(seqs, self.block_size, self._ref)
            if needed > self.num_available:
                raise OutOfBlocksError(
                    f"out of blocks: decoding {len(seqs)} sequence(s) needs {needed} block(s), "
                    f"only {self.num_available} available",
                    needed=needed,
                    available=self.num_available,
                )
        if tokens is None:
            for seq in seqs:
                seq.tail = None  # content unknown from here on: nothing more can be cached
            tokens = repeat(None)  # type: ignore[assignment]
        bs = self.block_size
        last = bs - 1  # the offset of a block's last token
        ref = self._ref
        queue = self._queue
        slots: list[int] = []
        add_slot = slots.append
        allocated: list[int] = []
        copies: list[tuple[int, int]] = []
        evicted: list[int] = []
        # append's one-token path, written out for each sequence: no call per token except
        # when a block fills (hashed once) or a new block is needed. Everything was checked
        # above, so nothing below can fail half-way.
        for seq, token in zip(seqs, tokens):  # type: ignore[call-overload]
            n = seq.num_tokens
            seq.num_tokens = n + 1
            offset = n % bs  # where the token goes in the last block (0: the last block is full)
            table = seq.table
            if offset and ref[block := table[-1]] == 1:
                add_slot(block * bs + offset)  # the usual case: room in its own last block
            else:
                # A new block (the last one is full), or a private copy of a shared, partly filled one.
                block = queue.pop() if queue else self._take_block(evicted)
                ref[block] = 1
                allocated.append(block)
                if offset:
                    src = table[-1]
                    ref[src] -= 1  # still > 0: another sequence holds it
                    table[-1] = block
                    copies.append((src, block))
                else:
                    table.append(block)
                add_slot(block * bs + offset)
            tail = seq.tail
            if tail is not None:  # prefix caching, content known so far
                tail.append(token)
                if offset == last:
                    self._cache_full_block(seq, block)
        index = self.op_index
        self.op_index = index + 1
        if not self.record_ops:
            return None
        free, cached = len(self._queue), len(self._parked)
        return new_record(OpRecord, (
            index, "decode", None, None, ids, len(ids),  # index, op, seq_id, parent_id, seq_ids, num_new_tokens
            tuple(allocated), (), (), (), tuple(copies), tuple(evicted), (), 0,  # ... as in append
            slots, free, cached, self._num_blocks - free - cached, bs,
        ))  # fmt: skip

    def fork(self, parent_id: SeqId, child_id: SeqId) -> OpRecord | None:
        """The child shares every block of the parent; nothing is allocated or copied."""
        parent = self._get(parent_id)
        self._check_new_id(child_id)
        ref = self.pool._ref
        for block in parent.table:
            ref[block] += 1
        self._seqs[child_id] = LiveSequence(
            parent.num_tokens,
            list(parent.table),
            list(parent.block_hashes),
            None if parent.tail is None else array("q", parent.tail),
        )
        return self._record("fork", child_id, parent_id=parent_id, shared=tuple(parent.table))

    def free(self, seq_id: SeqId) -> OpRecord | None:
        """Release a finished sequence's blocks, last logical block first."""
        seq = self._get(seq_id)
        reached_zero = self.pool._decref(reversed(seq.table))
        del self._seqs[seq_id]
        # Cached blocks keep their content (a later prompt may reuse it): they are parked
        # in the evictor. The others join the free queue.
        cached, plain = self.cache._park_cached(reached_zero) if self.cache is not None else ([], reached_zero)
        push = self._queue.push
        for block in plain:
            push(block)
        index = self.op_index
        self.op_index = index + 1
        if not self.record_ops:
            return None
        free, parked = len(self._queue), len(self._parked)
        return new_record(OpRecord, (
            index, "free", seq_id, None, (), 0,  # index, op, seq_id, parent_id, seq_ids, num_new_tokens
            (), tuple(reached_zero), tuple(cached), (), (), (), (), 0,  # allocated, freed, cached, shared, copies, evicted, cache_hits, cache_misses
            None, free, parked, self._num_blocks - free - parked, self.block_size,  # slots, num_free, num_cached_free, num_used, block_size
        ))  # fmt: skip

    def evict(self, n: int = 1) -> OpRecord | None:
        """Forget up to ``n`` cached free blocks, in the evictor's order (least recently used first)."""
        if not is_int(n) or n < 1:
            raise InvalidArgumentError(f"evict needs a positive number of blocks, got {short_repr(n)}")
        if self.cache is None:
            raise ConfigError("evict needs prefix caching: without it no free block is ever cached")
        victims = self.cache._evict(n)
        for block in victims:
            self.pool._push(block)
        return self._record("evict", None, evicted=tuple(victims))

    def move(self, moves: Iterable[tuple[int, int]]) -> OpRecord | None:
        """Relocate blocks: the data of each ``src`` moves to the free block ``dst``.

        Every table entry pointing at ``src`` is rewritten to ``dst``, the
        reference count and any prefix-cache entry move with it, and ``src``
        joins the free queue (in the order given). Each ``src`` must hold data
        (in use, or cached and free); each ``dst`` must be in the free queue; no
        block may appear twice, and no ``dst`` may also be a ``src`` (the copies
        run as one batch, so a chain would read a block while it is overwritten).
        """
        try:
            moves = [(src, dst) for src, dst in moves]  # type: ignore[misc]
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"move needs a list of (src, dst) block-id pairs, got {short_repr(moves)}") from None
        if not moves:
            raise InvalidArgumentError("move needs at least one (src, dst) pair")
        for src, dst in moves:
            self.pool.check_id(src)
            self.pool.check_id(dst)
        sources = [src for src, _ in moves]
        targets = [dst for _, dst in moves]
        if len(set(sources + targets)) != 2 * len(moves):
            raise InvalidArgumentError("move: every block may appear once, as a source or as a destination")
        parked = self.cache.evictor if self.cache is not None else ()
        for src in sources:
            if self.pool._ref[src] == 0 and src not in parked:
                raise InvalidArgumentError(f"move: source block {src} holds no data (it is free)")
        self.pool.take(targets)  # raises, changing nothing, unless every dst is in the free queue
        where = dict(moves)
        for seq in self._seqs.values():
            seq.table = [where.get(block, block) for block in seq.table]
        for src, dst in moves:
            self.pool._move_count(src, dst)
            if self.cache is not None:
                self.cache._rename(src, dst)
        for src in sources:
            self.pool._push(src)
        return self._record("move", None, copies=tuple(moves))

    # ----------------------------------------------------------------- state
    def snapshot(self) -> Snapshot:
        """A frozen copy of the whole state; equal snapshots mean equal states."""
        cache = self.cache
        return Snapshot(
            num_blocks=self.num_blocks,
            block_size=self.block_size,
            policy=self.policy,
            prefix_caching=cache is not None,
            op_index=self.op_index,
            ref_counts=tuple(self.pool.ref_counts()),
            free_queue=tuple(self.pool.free_queue()),
            evictable=tuple(cache.evictable()) if cache else (),
            cached=tuple(sorted(cache.cached_blocks().items())) if cache else (),
            sequences=tuple(
                SequenceState(
                    seq_id,
                    seq.num_tokens,
                    tuple(seq.table),
                    tuple(seq.block_hashes),
                    None if seq.tail is None else tuple(seq.tail),
                )
                for seq_id, seq in self._seqs.items()
            ),
            cache_hits=cache.hits if cache else 0,
            cache_misses=cache.misses if cache else 0,
            evictions=cache.evictions if cache else 0,
            evictor=self.evictor,
        )

    def check_invariants(self) -> None:
        """Raise :class:`InvariantError` if the state is inconsistent (it never should be).

        The checks are those of :meth:`Snapshot.check`, plus the prefix cache's two maps agreeing.
        """
        self.snapshot().check()
        cache = self.cache
        if cache is not None and any(cache.lookup(h) != b for b, h in cache.cached_blocks().items()):
            raise InvariantError("the prefix cache's hash -> block and block -> hash maps disagree")

    # ---------------------------------------------------------------- helpers
    def _get(self, seq_id: SeqId) -> LiveSequence:
        try:
            seq = self._seqs[seq_id]
        except (KeyError, TypeError):
            seq = None
        # A dict lookup also finds sequence 1 under True, 1.0 or numpy.int64(1): only str and int are ids.
        if seq is None or (type(seq_id) is not str and type(seq_id) is not int and not _is_seq_id(seq_id)):
            raise UnknownSequenceError(f"unknown sequence {short_repr(seq_id)}")
        return seq

    def _check_new_id(self, seq_id: SeqId) -> None:
        if not _is_seq_id(seq_id):
            raise InvalidArgumentError(f"a sequence id must be a str or an int (64-bit), got {short_repr(seq_id)}")
        if seq_id in self._seqs:
            raise DuplicateSequenceError(f"sequence {seq_id!r} already exists")

    def _batch(self, seq_ids: Iterable[SeqId]) -> tuple[tuple[SeqId, ...], list[LiveSequence]]:
        """The ids of a decode batch as a tuple, and their sequences; checked (each live, each once)."""
        if type(seq_ids) is not list and type(seq_ids) is not tuple and (  # the usual cases, checked quickly
            isinstance(seq_ids, (str, bytes)) or not isinstance(seq_ids, Iterable)
        ):
            raise InvalidArgumentError(f"decode needs a list of sequence ids, got {short_repr(seq_ids)}")
        try:
            ids = tuple(seq_ids)
        except TypeError:  # iterable in name only (a 0-d NumPy array)
            raise InvalidArgumentError(f"decode needs a list of sequence ids, got {short_repr(seq_ids)}") from None
        if not ids:
            raise InvalidArgumentError("decode needs at least one sequence")
        # Three passes in C: look every id up, check their types, look for a repeat.
        try:
            seqs = list(map(self._seqs.__getitem__, ids))
            valid = _ID_TYPES.issuperset(map(type, ids)) and len(set(ids)) == len(ids)
        except (KeyError, TypeError):
            valid = False
        if not valid:  # find the first culprit, to name it
            seen: set[SeqId] = set()
            for seq_id in ids:
                self._get(seq_id)
                if seq_id in seen:
                    raise InvalidArgumentError(f"decode: sequence {seq_id!r} appears twice in the batch")
                seen.add(seq_id)
        return ids, seqs

    def _batch_tokens(self, tokens: object, n: int) -> SequenceABC[int] | None:
        """A decode's token ids: None, or one 64-bit int per sequence."""
        if tokens is None:
            return None
        ids = checked_ids(tokens)
        if ids is None or len(ids) != n:
            raise InvalidTokenCountError(
                f"decode needs one integer token id (64-bit) per sequence ({n}), got {short_repr(tokens)}"
            )
        return ids

    def _plan_add(self, prompt: Tokens) -> AddPlan:
        return plan_add(*token_arg(prompt, "a prompt"), self.block_size, self.cache)

    def _available_after(self, plan: AddPlan) -> int:
        """Blocks left over if ``plan`` ran (negative: the shortfall)."""
        ref = self._ref
        revived = len([block for block in plan.hits if ref[block] == 0])  # parked hits: they stop being available
        return self.num_available - revived - plan.needed

    def _out_of_blocks_appending(self, seq_id: SeqId, count: int, needed: int) -> OutOfBlocksError:
        return OutOfBlocksError(
            f"out of blocks: appending {count} token(s) to {seq_id!r} needs {needed} "
            f"block(s), only {self.num_available} available",
            needed=needed,
            available=self.num_available,
        )

    def _grow_or_copy(
        self, seq_id: SeqId | None, seq: LiveSequence, offset: int
    ) -> tuple[int, tuple[int, ...], tuple[tuple[int, int], ...], tuple[int, ...]]:
        """Give a sequence a block to write one token into: a new one when its last block
        is full (``offset == 0``), else a private copy of its shared last block.

        Returns ``(block, allocated, copies, evicted)``. Raises :class:`OutOfBlocksError`,
        changing nothing, when no block is available.
        """
        evicted: tuple[int, ...] = ()
        if self._queue:  # the usual case: the next block of the free queue
            block = self._queue.pop()
            self._ref[block] = 1
        elif self._parked:  # else a cached free block, evicted
            block = self._take_block([])
            evicted = (block,)
        else:
            raise self._out_of_blocks_appending(seq_id, 1, 1)
        if offset == 0:
            seq.table.append(block)
            return block, (block,), (), evicted
        src = seq.table[-1]
        self.pool._ref[src] -= 1  # still > 0: another sequence holds it
        seq.table[-1] = block
        return block, (block,), ((src, block),), evicted

    def _cache_full_block(self, seq: LiveSequence, block: int) -> None:
        """The tail has just filled ``block``, the sequence's last: hash it once (chained to
        the block before), cache it, start a new tail."""
        hashes = seq.block_hashes
        block_hash = hash_token_array(hashes[-1] if hashes else ROOT_HASH, seq.tail)  # type: ignore[arg-type]
        self.cache._register(block, block_hash)  # type: ignore[union-attr]
        hashes.append(block_hash)
        seq.tail = array("q")

    def _take_block(self, evicted: list[int]) -> int:
        """One block: from the free queue, else by evicting a cached one (recorded in ``evicted``).

        The caller has checked that a block is available.
        """
        if len(self.pool.queue):
            return self.pool._pop()
        (block,) = self.cache._evict(1)  # type: ignore[union-attr]
        self.pool._claim(block)
        evicted.append(block)
        return block

    def _allocate(self, n: int) -> tuple[list[int], list[int]]:
        """Take ``n`` blocks: from the free queue first, then by evicting cached ones."""
        pop, ref = self._queue.pop, self._ref
        blocks = [pop() for _ in range(min(n, len(self._queue)))]
        for block in blocks:
            ref[block] = 1
        evicted: list[int] = []
        for _ in range(n - len(blocks)):
            blocks.append(self._take_block(evicted))
        return blocks, evicted

    def _extend_tail(self, seq: LiveSequence, ids: TokenIds | None) -> None:
        """After an append, hash and cache the blocks it filled (prefix caching only)."""
        if ids is None:
            seq.tail = None  # content unknown from here on: nothing more can be cached
            return
        tail = seq.tail
        tail.extend(ids)  # type: ignore[union-attr]
        bs = self.block_size
        if len(tail) < bs:  # type: ignore[arg-type]
            return  # the usual case: no block filled, nothing to hash
        parent = seq.block_hashes[-1] if seq.block_hashes else ROOT_HASH
        first = len(seq.block_hashes)
        for j, block_hash in enumerate(hash_blocks(tail, bs, parent)):  # type: ignore[arg-type]
            self.cache._register(seq.table[first + j], block_hash)  # type: ignore[union-attr]
            seq.block_hashes.append(block_hash)
        seq.tail = tail[(len(seq.block_hashes) - first) * bs :]  # type: ignore[index]

    def _record(self, op: str, seq_id: SeqId | None, **fields: object) -> OpRecord | None:
        """Number the operation and, with records on, describe it (with the pool's counts afterwards)."""
        index = self.op_index
        self.op_index = index + 1
        if not self.record_ops:
            return None
        free = len(self.pool.queue)
        cached = len(self.cache.evictor) if self.cache is not None else 0
        return OpRecord(
            index,
            op,
            seq_id,
            num_free=free,
            num_cached_free=cached,
            num_used=self.pool.num_blocks - free - cached,
            block_size=self.block_size,
            **fields,  # type: ignore[arg-type]
        )
