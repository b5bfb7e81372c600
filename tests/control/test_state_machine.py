"""A Hypothesis state machine over add / append / decode / fork / free / evict.

After every step it checks the manager's own invariants and compares the
manager with a deliberately simple second model written here, independently:
lists instead of deques, and prefix-cache keys that are the *whole prefix of
token ids* (a tuple) instead of chained hashes. The two must agree on every
block table, every reference count, the free queue's order and the eviction
order. Failed operations must raise the right error and change nothing.
"""

from __future__ import annotations

import copy

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.errors import (
    DuplicateSequenceError,
    InvalidTokenCountError,
    OutOfBlocksError,
    UnknownSequenceError,
)


class SimpleModel:
    """The reference semantics, written as plainly as possible."""

    def __init__(self, num_blocks, block_size, policy, caching):
        self.bs = block_size
        self.policy = policy
        self.caching = caching
        self.free = list(range(num_blocks))  # fifo: take from the front; lifo: from the back
        self.ref = [0] * num_blocks
        self.cache = {}  # tuple(prefix tokens) -> block
        self.parked = []  # cached free blocks, oldest first
        self.seqs = {}  # id -> dict(n, table, tokens or None)

    def _blocks(self, n):
        return (n + self.bs - 1) // self.bs

    def _take(self, n):
        out = []
        for _ in range(n):
            if self.free:
                block = self.free.pop(0) if self.policy == "fifo" else self.free.pop()
            else:
                block = self.parked.pop(0)
                self.cache = {k: b for k, b in self.cache.items() if b != block}
            self.ref[block] = 1
            out.append(block)
        return out

    def _register(self, tokens, table, first, last):
        for i in range(first, last):
            key = tuple(tokens[: (i + 1) * self.bs])
            if key not in self.cache and table[i] not in self.cache.values():
                self.cache[key] = table[i]

    def add(self, sid, prompt):
        ids = None if isinstance(prompt, int) else list(prompt)
        n = prompt if ids is None else len(ids)
        hits = []
        if self.caching and ids is not None:
            for i in range((n - 1) // self.bs):
                block = self.cache.get(tuple(ids[: (i + 1) * self.bs]))
                if block is None:
                    break
                hits.append(block)
        needed = self._blocks(n) - len(hits)
        revived = [b for b in hits if b in self.parked]
        if needed > len(self.free) + len(self.parked) - len(revived):
            return "out of blocks"
        for block in hits:
            if block in self.parked:
                self.parked.remove(block)
            self.ref[block] += 1
        table = hits + self._take(needed)
        if self.caching and ids is not None:
            self._register(ids, table, len(hits), n // self.bs)
        self.seqs[sid] = {"n": n, "table": table, "tokens": ids if self.caching else None}
        return None

    def append(self, sid, tokens):
        seq = self.seqs[sid]
        ids = None if isinstance(tokens, int) else list(tokens)
        k = tokens if ids is None else len(ids)
        cow = seq["n"] % self.bs != 0 and self.ref[seq["table"][-1]] > 1
        needed = self._blocks(seq["n"] + k) - len(seq["table"]) + int(cow)
        if needed > len(self.free) + len(self.parked):
            return "out of blocks"
        new = self._take(needed)
        if cow:
            self.ref[seq["table"][-1]] -= 1
            seq["table"][-1] = new.pop(0)
        seq["table"] += new
        old_full = seq["n"] // self.bs
        seq["n"] += k
        if seq["tokens"] is not None:
            if ids is None:
                seq["tokens"] = None
            else:
                seq["tokens"] = seq["tokens"] + ids
                self._register(seq["tokens"], seq["table"], old_full, seq["n"] // self.bs)
        return None

    def decode(self, sids, tokens):
        """One token for each sequence, in order; all or nothing."""
        trial = copy.deepcopy(self)
        for i, sid in enumerate(sids):
            if trial.append(sid, 1 if tokens is None else [tokens[i]]) == "out of blocks":
                return "out of blocks"
        self.__dict__.update(trial.__dict__)
        return None

    def fork(self, parent, child):
        seq = self.seqs[parent]
        for block in seq["table"]:
            self.ref[block] += 1
        self.seqs[child] = {"n": seq["n"], "table": list(seq["table"]),
                            "tokens": None if seq["tokens"] is None else list(seq["tokens"])}

    def free_seq(self, sid):
        seq = self.seqs.pop(sid)
        for block in reversed(seq["table"]):
            self.ref[block] -= 1
            if self.ref[block] == 0:
                if block in self.cache.values():
                    self.parked.append(block)
                else:
                    self.free.append(block)

    def evict(self, k):
        victims = self.parked[:k]
        self.parked = self.parked[k:]
        self.cache = {key: b for key, b in self.cache.items() if b not in victims}
        self.free += victims
        return victims


# Token ids come from a few shared "system prompts" plus random suffixes, so
# prefix-cache hits actually happen.
PREFIXES = [tuple(range(100, 108)), tuple(range(100, 104)) + (7, 7, 7, 7), (1, 2, 3)]
token_lists = st.builds(
    lambda prefix, suffix: list(prefix) + suffix,
    st.sampled_from(PREFIXES + [()]),
    st.lists(st.integers(0, 3), min_size=0, max_size=7),
).filter(lambda t: len(t) > 0)
prompts = st.one_of(st.integers(1, 12), token_lists)
# One token (a count of 1 or one id) takes append's fast path: drawn as often as the rest.
appends = st.one_of(
    st.just(1),
    st.lists(st.integers(0, 3), min_size=1, max_size=1),
    st.integers(1, 6),
    st.lists(st.integers(0, 3), min_size=1, max_size=6),
)


class ManagerMachine(RuleBasedStateMachine):
    @initialize(
        num_blocks=st.integers(1, 20),
        block_size=st.integers(1, 5),
        policy=st.sampled_from(["fifo", "lifo"]),
        caching=st.booleans(),
    )
    def setup(self, num_blocks, block_size, policy, caching):
        self.manager = BlockManager(num_blocks, block_size, policy, prefix_caching=caching)
        self.model = SimpleModel(num_blocks, block_size, policy, caching)
        self.next_id = 0

    def _new_id(self):
        self.next_id += 1
        return f"s{self.next_id}"

    def _check_counts(self, step):
        """A record's pool counts are the model's, after the operation."""
        model = self.model
        used = sum(1 for count in model.ref if count)
        assert (step.num_free, step.num_cached_free, step.num_used) == (len(model.free), len(model.parked), used)

    def _expect_unchanged(self, call, error, match=None):
        before = self.manager.snapshot()
        with pytest.raises(error, match=match):
            call()
        assert self.manager.snapshot() == before

    @rule(prompt=prompts)
    def add(self, prompt):
        sid = self._new_id()
        if self.model.add(sid, prompt) == "out of blocks":
            self._expect_unchanged(lambda: self.manager.add(sid, prompt), OutOfBlocksError, "out of blocks")
        else:
            step = self.manager.add(sid, prompt)
            n = prompt if isinstance(prompt, int) else len(prompt)
            assert step.num_new_tokens == n
            assert len(step.slot_mapping) == n - len(step.cache_hits) * self.model.bs
            self._check_counts(step)

    @precondition(lambda self: self.model.seqs)
    @rule(data=st.data(), tokens=appends)
    def append(self, data, tokens):
        sid = data.draw(st.sampled_from(sorted(self.model.seqs)))
        if self.model.append(sid, tokens) == "out of blocks":
            self._expect_unchanged(lambda: self.manager.append(sid, tokens), OutOfBlocksError)
        else:
            step = self.manager.append(sid, tokens)
            k = tokens if isinstance(tokens, int) else len(tokens)
            assert len(step.slot_mapping) == k
            for src, dst in step.copies:  # copy-on-write never copies into a shared block
                assert self.manager.pool.ref_count(dst) == 1 and src != dst
            self._check_counts(step)

    @precondition(lambda self: self.model.seqs)
    @rule(data=st.data(), with_ids=st.booleans())
    def decode(self, data, with_ids):
        sids = data.draw(st.lists(st.sampled_from(sorted(self.model.seqs)), min_size=1, unique=True))
        tokens = data.draw(st.lists(st.integers(0, 3), min_size=len(sids), max_size=len(sids))) if with_ids else None
        if self.model.decode(sids, tokens) == "out of blocks":
            self._expect_unchanged(lambda: self.manager.decode(sids, tokens), OutOfBlocksError, "out of blocks")
        else:
            step = self.manager.decode(sids, tokens)
            bs = self.model.bs
            expected = []
            for sid in sids:  # the slot of each sequence's newest token, from the model's tables
                n = self.model.seqs[sid]["n"] - 1
                expected.append(self.model.seqs[sid]["table"][n // bs] * bs + n % bs)
            assert step.slot_mapping.tolist() == expected and step.seq_ids == tuple(sids)
            self._check_counts(step)

    @precondition(lambda self: self.model.seqs)
    @rule(data=st.data())
    def fork(self, data):
        parent = data.draw(st.sampled_from(sorted(self.model.seqs)))
        child = self._new_id()
        self.model.fork(parent, child)
        step = self.manager.fork(parent, child)
        assert step.allocated == () and step.copies == ()
        self._check_counts(step)

    @precondition(lambda self: self.model.seqs)
    @rule(data=st.data())
    def free(self, data):
        sid = data.draw(st.sampled_from(sorted(self.model.seqs)))
        self.model.free_seq(sid)
        self._check_counts(self.manager.free(sid))

    @precondition(lambda self: self.model.caching)
    @rule(k=st.integers(1, 4))
    def evict(self, k):
        victims = self.model.evict(k)
        step = self.manager.evict(k)
        assert list(step.evicted) == victims
        self._check_counts(step)

    @rule()
    def errors_change_nothing(self):
        self._expect_unchanged(lambda: self.manager.append("nobody", 1), UnknownSequenceError, "unknown sequence")
        self._expect_unchanged(lambda: self.manager.free("nobody"), UnknownSequenceError, "unknown sequence")
        self._expect_unchanged(lambda: self.manager.fork("nobody", "x"), UnknownSequenceError, "unknown sequence")
        if self.model.seqs:
            sid = sorted(self.model.seqs)[0]
            self._expect_unchanged(lambda: self.manager.add(sid, 3), DuplicateSequenceError, "already exists")
            self._expect_unchanged(lambda: self.manager.fork(sid, sid), DuplicateSequenceError, "already exists")
            self._expect_unchanged(lambda: self.manager.append(sid, 0), InvalidTokenCountError, "at least one")
            self._expect_unchanged(lambda: self.manager.append(sid, []), InvalidTokenCountError, "at least one")

    @invariant()
    def matches_the_simple_model(self):
        self.manager.check_invariants()
        snap = self.manager.snapshot()
        assert list(snap.ref_counts) == self.model.ref
        assert {s.seq_id: list(s.block_table) for s in snap.sequences} == {
            sid: seq["table"] for sid, seq in self.model.seqs.items()
        }
        assert {s.seq_id: s.num_tokens for s in snap.sequences} == {
            sid: seq["n"] for sid, seq in self.model.seqs.items()
        }
        expected_free = self.model.free if self.model.policy == "fifo" else self.model.free[::-1]
        assert list(snap.free_queue) == expected_free
        assert list(snap.evictable) == self.model.parked
        assert {b for b, _ in snap.cached} == set(self.model.cache.values())

    def teardown(self):
        # Freeing everything returns every block (to the free queue or the cache).
        if not hasattr(self, "manager"):
            return
        for sid in list(self.manager.seq_ids()):
            self.manager.free(sid)
        assert self.manager.num_available == self.manager.num_blocks
        if self.manager.prefix_caching:
            self.manager.evict(self.manager.num_blocks)
        assert sorted(self.manager.pool.free_queue()) == list(range(self.manager.num_blocks))


ManagerMachine.TestCase.settings = settings(ManagerMachine.TestCase.settings, stateful_step_count=40)
TestManagerMachine = ManagerMachine.TestCase
