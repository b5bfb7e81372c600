"""The block manager: sequences, block tables, fork, copy-on-write and prefix caching.

This is the *control plane* of a paged KV cache: it decides which physical
block holds which tokens of which sequence, and never touches the bytes. Each
operation returns a :class:`~tinyserve_sim.control.records.OpRecord` describing exactly what
it did, including the work the *data plane* must do next: the slots to write
(``slot_mapping``) and the copy-on-write block copies (``copies``).

The five operations, as a server uses them:

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

Every operation checks everything before it changes anything, so a call that
raises leaves the manager exactly as it was.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from tinyserve_sim.control.pool import BlockPool
from tinyserve_sim.control.prefix_cache import ROOT_HASH, PrefixCache, hash_blocks
from tinyserve_sim.control.records import OpRecord, SeqId, SequenceState, Snapshot
from tinyserve_sim.errors import (
    ConfigError,
    DuplicateSequenceError,
    InvalidArgumentError,
    InvalidTokenCountError,
    InvariantError,
    OutOfBlocksError,
    UnknownSequenceError,
)

#: What ``add`` and ``append`` accept: a number of tokens, or the token ids themselves.
Tokens = int | SequenceABC[int] | np.ndarray


@dataclass
class _Sequence:
    """A live sequence (mutable; the public view is :class:`SequenceState`)."""

    num_tokens: int
    table: list[int]
    # Chained hashes of the full blocks, in order. Only kept with prefix caching.
    block_hashes: list[int]
    # Token ids of the partly filled last block, or None once the content is unknown
    # (a prompt given as a length, or an append given as a count).
    tail: np.ndarray | None


class _AddPlan(NamedTuple):
    count: int
    hashes: list[int]
    hits: list[int]
    misses: int
    needed: int
    tail: np.ndarray | None


class _AppendPlan(NamedTuple):
    count: int
    ids: np.ndarray | None
    copy_on_write: bool
    needed: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    """Paged KV-cache bookkeeping for many sequences over one block pool.

    Args:
        num_blocks: physical blocks in the pool.
        block_size: token slots per block.
        policy: free-queue order, ``"fifo"`` or ``"lifo"`` (see :mod:`tinyserve_sim.control.pool`).
        prefix_caching: reuse full blocks across sequences with the same prefix.
        record_ops: build a :class:`OpRecord` for every operation. Turn it off
            for raw speed; operations then return ``None``.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        policy: str = "fifo",
        prefix_caching: bool = False,
        record_ops: bool = True,
    ) -> None:
        if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
            raise ConfigError(f"block_size must be a positive integer, got {block_size!r}")
        self.pool = BlockPool(num_blocks, policy)
        self.block_size = block_size
        self.cache: PrefixCache | None = PrefixCache() if prefix_caching else None
        self.record_ops = record_ops
        self.op_index = 0
        self._seqs: dict[SeqId, _Sequence] = {}

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
            manager._seqs[seq_id] = _Sequence(num_tokens, table, [], None)
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
        return self.pool.num_free

    @property
    def num_cached_free(self) -> int:
        """Cached blocks nobody uses: reusable by a prefix hit, or evictable."""
        return self.cache.num_evictable if self.cache else 0

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
        """Cache slots of tokens ``start .. end-1`` of a sequence (int64)."""
        seq = self._get(seq_id)
        return self._slots(seq.table, start, seq.num_tokens if end is None else end)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens: ``ceil(num_tokens / block_size)``."""
        return _ceil_div(num_tokens, self.block_size)

    # ------------------------------------------------- admission (change nothing)
    def blocks_needed_to_add(self, prompt: Tokens) -> int:
        """New blocks ``add`` would allocate for this prompt (prefix hits excluded)."""
        return self._plan_add(prompt).needed

    def can_add(self, prompt: Tokens) -> bool:
        """Would ``add`` of this prompt succeed now?"""
        return self._available_after(self._plan_add(prompt)) >= 0

    def blocks_needed_to_append(self, seq_id: SeqId, tokens: Tokens = 1) -> int:
        """Blocks ``append`` would allocate (new blocks plus a copy-on-write copy)."""
        return self._plan_append(self._get(seq_id), tokens).needed

    def can_append(self, seq_id: SeqId, tokens: Tokens = 1) -> bool:
        """Would ``append`` of this many tokens succeed now?"""
        return self.blocks_needed_to_append(seq_id, tokens) <= self.num_available

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
        # Prefix hits: one more user each. A parked (free) hit leaves the evictor.
        for block in plan.hits:
            if self.cache.is_evictable(block):
                self.cache.revive(block)
                self.pool.claim(block)
            else:
                self.pool.incref(block)
        new_blocks, evicted = self._allocate(plan.needed)
        table = plan.hits + new_blocks
        if self.cache is not None:
            self.cache.hits += len(plan.hits)
            self.cache.misses += plan.misses
            for i in range(len(plan.hits), len(plan.hashes)):
                self.cache.register(table[i], plan.hashes[i])
        self._seqs[seq_id] = _Sequence(plan.count, table, plan.hashes, plan.tail)
        return self._record(
            "add",
            seq_id,
            num_new_tokens=plan.count,
            allocated=new_blocks,
            shared=plan.hits,
            cache_hits=plan.hits,
            cache_misses=plan.misses,
            evicted=evicted,
            # Tokens covered by prefix hits are already in the cache: nothing to write.
            slots=(table, len(plan.hits) * self.block_size, plan.count),
        )

    def append(self, seq_id: SeqId, tokens: Tokens = 1) -> OpRecord | None:
        """Add ``tokens`` decoded tokens (a count, or token ids) to a live sequence."""
        seq = self._get(seq_id)
        plan = self._plan_append(seq, tokens)
        if plan.needed > self.num_available:
            raise OutOfBlocksError(
                f"out of blocks: appending {plan.count} token(s) to {seq_id!r} needs {plan.needed} "
                f"block(s), only {self.num_available} available",
                needed=plan.needed,
                available=self.num_available,
            )
        blocks, evicted = self._allocate(plan.needed)
        copies: list[tuple[int, int]] = []
        if plan.copy_on_write:
            # The last block is partly filled and shared: this sequence gets a private
            # copy to write into, and gives up its reference to the shared one.
            src, dst = seq.table[-1], blocks.pop(0)
            self.pool.decref([src])  # still > 0: another sequence holds it
            seq.table[-1] = dst
            copies.append((src, dst))
        start = seq.num_tokens
        seq.table.extend(blocks)
        seq.num_tokens += plan.count
        self._hash_new_full_blocks(seq, plan.ids)
        return self._record(
            "append",
            seq_id,
            num_new_tokens=plan.count,
            allocated=[dst for _, dst in copies] + blocks,
            copies=copies,
            evicted=evicted,
            slots=(seq.table, start, seq.num_tokens),
        )

    def fork(self, parent_id: SeqId, child_id: SeqId) -> OpRecord | None:
        """The child shares every block of the parent; nothing is allocated or copied."""
        parent = self._get(parent_id)
        self._check_new_id(child_id)
        for block in parent.table:
            self.pool.incref(block)
        self._seqs[child_id] = _Sequence(
            parent.num_tokens,
            list(parent.table),
            list(parent.block_hashes),
            None if parent.tail is None else parent.tail.copy(),
        )
        return self._record("fork", child_id, parent_id=parent_id, shared=parent.table)

    def free(self, seq_id: SeqId) -> OpRecord | None:
        """Release a finished sequence's blocks, last logical block first."""
        seq = self._get(seq_id)
        reached_zero = self.pool.decref(reversed(seq.table))
        del self._seqs[seq_id]
        cached, plain = [], []
        for block in reached_zero:
            if self.cache is not None and self.cache.hash_of(block) is not None:
                self.cache.park(block)  # keep its content: a later prompt may reuse it
                cached.append(block)
            else:
                plain.append(block)
        self.pool.push_free(plain)
        return self._record("free", seq_id, freed=reached_zero, cached=cached)

    def evict(self, n: int = 1) -> OpRecord | None:
        """Forget up to ``n`` cached free blocks, least recently used first."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InvalidArgumentError(f"evict needs a positive number of blocks, got {n!r}")
        if self.cache is None:
            raise ConfigError("evict needs prefix caching: without it no free block is ever cached")
        victims = self.cache.evict(n)
        self.pool.push_free(victims)
        return self._record("evict", None, evicted=victims)

    def move(self, moves: SequenceABC[tuple[int, int]]) -> OpRecord | None:
        """Relocate blocks: the data of each ``src`` moves to the free block ``dst``.

        Every table entry pointing at ``src`` is rewritten to ``dst``, the
        reference count and any prefix-cache entry move with it, and ``src``
        joins the free queue (in the order given). Each ``src`` must hold data
        (in use, or cached and free); each ``dst`` must be in the free queue; no
        block may appear twice, and no ``dst`` may also be a ``src`` (the copies
        run as one batch, so a chain would read a block while it is overwritten).
        """
        moves = [(src, dst) for src, dst in moves]
        if not moves:
            raise InvalidArgumentError("move needs at least one (src, dst) pair")
        for src, dst in moves:
            self.pool.check_id(src)
            self.pool.check_id(dst)
        sources = [src for src, _ in moves]
        targets = [dst for _, dst in moves]
        if len(set(sources + targets)) != 2 * len(moves):
            raise InvalidArgumentError("move: every block may appear once, as a source or as a destination")
        parked = set(self.cache.evictable()) if self.cache else set()
        for src in sources:
            if self.pool.ref_count(src) == 0 and src not in parked:
                raise InvalidArgumentError(f"move: source block {src} holds no data (it is free)")
        self.pool.take(targets)  # raises, changing nothing, unless every dst is in the free queue
        where = dict(moves)
        for seq in self._seqs.values():
            seq.table = [where.get(block, block) for block in seq.table]
        for src, dst in moves:
            self.pool.move_count(src, dst)
            if self.cache is not None:
                self.cache.rename(src, dst)
        self.pool.push_free(sources)
        return self._record("move", None, copies=moves)

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
                    None if seq.tail is None else tuple(int(t) for t in seq.tail),
                )
                for seq_id, seq in self._seqs.items()
            ),
            cache_hits=cache.hits if cache else 0,
            cache_misses=cache.misses if cache else 0,
            evictions=cache.evictions if cache else 0,
        )

    def check_invariants(self) -> None:
        """Raise :class:`InvariantError` if the state is inconsistent (it never should be)."""
        refs = self.pool.ref_counts()
        users = Counter(block for seq in self._seqs.values() for block in seq.table)
        for block, count in enumerate(refs):
            if count != users.get(block, 0):
                raise InvariantError(f"block {block}: ref count {count} but {users.get(block, 0)} table entries")
        free = self.pool.free_queue()
        parked = self.cache.evictable() if self.cache else []
        if len(set(free)) != len(free):
            raise InvariantError("a block appears twice in the free queue")
        if set(free) & set(parked):
            raise InvariantError("a block is both in the free queue and parked in the prefix cache")
        idle = {block for block, count in enumerate(refs) if count == 0}
        if set(free) | set(parked) != idle or len(free) + len(parked) != len(idle):
            raise InvariantError("the free blocks (queue + cached) are not exactly the blocks with ref count 0")
        cached = self.cache.cached_blocks() if self.cache else {}
        if self.cache and any(self.cache.lookup(h) != b for b, h in cached.items()):
            raise InvariantError("the prefix cache's hash -> block and block -> hash maps disagree")
        for seq_id, seq in self._seqs.items():
            if len(seq.table) != self.blocks_for(seq.num_tokens):
                raise InvariantError(
                    f"{seq_id!r}: {len(seq.table)} blocks for {seq.num_tokens} tokens "
                    f"(expected {self.blocks_for(seq.num_tokens)})"
                )
            for i, block in enumerate(seq.table):
                if block in cached and seq.num_tokens < (i + 1) * self.block_size:
                    raise InvariantError(f"{seq_id!r}: cached block {block} is not full")

    # ---------------------------------------------------------------- helpers
    def _get(self, seq_id: SeqId) -> _Sequence:
        try:
            return self._seqs[seq_id]
        except (KeyError, TypeError):
            raise UnknownSequenceError(f"unknown sequence {seq_id!r}") from None

    def _check_new_id(self, seq_id: SeqId) -> None:
        if not isinstance(seq_id, (str, int)) or isinstance(seq_id, bool):
            raise InvalidArgumentError(f"a sequence id must be a str or an int, got {seq_id!r}")
        if seq_id in self._seqs:
            raise DuplicateSequenceError(f"sequence {seq_id!r} already exists")

    def _tokens(self, tokens: Tokens, what: str) -> tuple[int, np.ndarray | None]:
        """Normalise a token count or token ids to ``(count, ids or None)``."""
        if type(tokens) is int and tokens > 0:  # the common decode case, checked first for speed
            return tokens, None
        if isinstance(tokens, (int, np.integer)) and not isinstance(tokens, bool):
            count, ids = int(tokens), None
        else:
            try:
                ids = np.asarray(tokens)
            except Exception:
                ids = np.asarray(None)
            if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
                raise InvalidTokenCountError(f"{what} must be a token count or a 1-D list of integer token ids")
            ids = ids.astype(np.int64)
            count = len(ids)
        if count < 1:
            raise InvalidTokenCountError(f"{what} needs at least one token, got {count}")
        return count, ids

    def _plan_add(self, prompt: Tokens) -> _AddPlan:
        count, ids = self._tokens(prompt, "a prompt")
        hashes: list[int] = []
        hits: list[int] = []
        misses = 0
        tail = None
        if self.cache is not None and ids is not None:
            hashes = hash_blocks(ids, self.block_size)
            tail = ids[len(hashes) * self.block_size :]
            # The last prompt token is always computed (its logits start decoding),
            # so at most (count - 1) tokens can come from the cache, as in vLLM.
            lookups = hashes[: (count - 1) // self.block_size]
            for block_hash in lookups:
                block = self.cache.lookup(block_hash)
                if block is None:
                    break
                hits.append(block)
            misses = len(lookups) - len(hits)
        return _AddPlan(count, hashes, hits, misses, self.blocks_for(count) - len(hits), tail)

    def _available_after(self, plan: _AddPlan) -> int:
        """Blocks left over if ``plan`` ran (negative: the shortfall)."""
        revived = sum(1 for block in plan.hits if self.cache.is_evictable(block)) if plan.hits else 0
        return self.num_available - revived - plan.needed

    def _plan_append(self, seq: _Sequence, tokens: Tokens) -> _AppendPlan:
        count, ids = self._tokens(tokens, "an append")
        partly_filled = seq.num_tokens % self.block_size != 0
        copy_on_write = partly_filled and self.pool.ref_count(seq.table[-1]) > 1
        grow = self.blocks_for(seq.num_tokens + count) - len(seq.table)
        return _AppendPlan(count, ids, copy_on_write, grow + int(copy_on_write))

    def _allocate(self, n: int) -> tuple[list[int], list[int]]:
        """Take ``n`` blocks: from the free queue first, then by evicting cached ones."""
        from_queue = min(n, self.pool.num_free)
        blocks = self.pool.allocate(from_queue)
        evicted: list[int] = []
        if n > from_queue:
            evicted = self.cache.evict(n - from_queue)
            for block in evicted:
                self.pool.claim(block)
            blocks += evicted
        return blocks, evicted

    def _hash_new_full_blocks(self, seq: _Sequence, ids: np.ndarray | None) -> None:
        """After an append, hash and cache the blocks it filled (prefix caching only)."""
        if self.cache is None or seq.tail is None:
            return
        if ids is None:
            seq.tail = None  # content unknown from here on: nothing more can be cached
            return
        pending = np.concatenate([seq.tail, ids])
        parent = seq.block_hashes[-1] if seq.block_hashes else ROOT_HASH
        first = len(seq.block_hashes)
        for j, block_hash in enumerate(hash_blocks(pending, self.block_size, parent)):
            self.cache.register(seq.table[first + j], block_hash)
            seq.block_hashes.append(block_hash)
        seq.tail = pending[(len(seq.block_hashes) - first) * self.block_size :]

    def _slots(self, table: list[int], start: int, end: int) -> np.ndarray:
        """Slots of tokens ``start .. end-1``: ``table[t // bs] * bs + t % bs``."""
        bs = self.block_size
        if end - start <= 8:  # a decode step: a plain loop beats NumPy's set-up cost
            return np.array([table[t // bs] * bs + t % bs for t in range(start, end)], dtype=np.int64)
        first = start // bs
        blocks = np.asarray(table[first : _ceil_div(end, bs)], dtype=np.int64)
        positions = np.arange(start, end, dtype=np.int64)
        return blocks[positions // bs - first] * bs + positions % bs

    def _record(self, op: str, seq_id: SeqId | None, slots: tuple | None = None, **fields) -> OpRecord | None:
        index = self.op_index
        self.op_index += 1
        if not self.record_ops:
            return None
        for name, value in fields.items():
            if isinstance(value, list):  # lists of ids (or of (src, dst) tuples) become tuples
                fields[name] = tuple(value)
        return OpRecord(
            index=index,
            op=op,
            seq_id=seq_id,
            slot_mapping=self._slots(*slots) if slots else np.empty(0, dtype=np.int64),
            num_free=self.num_free,
            num_cached_free=self.num_cached_free,
            num_used=self.num_used,
            **fields,
        )
