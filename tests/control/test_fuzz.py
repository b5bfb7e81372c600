"""Fuzzing the control plane: no bad input escapes as a raw Python error, and a refused call changes nothing.

Three fuzzers, each a Hypothesis test:

* **trace mutants, byte level**: a valid trace (a built-in scenario, or a small
  recorded workload) with bytes flipped, inserted (invalid UTF-8, U+2028, a BOM,
  brackets, thousand-digit numbers...), deleted, duplicated or cut off;
* **trace mutants, JSON level**: one line of a valid trace with a field set to a
  hostile value (huge, negative, fractional, boolean, nested, empty...), a field
  removed or added, or the whole line replaced;
* **operation sequences**: random manager and pool calls, valid ones mixed with
  calls whose arguments are of every wrong kind.

A mutant either loads, or raises :class:`TraceFormatError` whose line is the
mutated line (JSON level) or not before it (byte level) and whose message
starts with ``line N:``; a mutated line that loads must mean exactly what it
says (no ``true`` read as 1). A trace that loads is replayed: it runs to its end or
stops at an operation that raised a :class:`SimError`, with the state exactly
as it was before that operation; the manager's invariants hold after every
operation. A refused call leaves the snapshot unchanged.

Sizes (``max_examples`` below): 1,500 byte-level and 1,500 JSON-level mutants,
400 sequences of up to 40 calls on managers and 200 on pools (about 12,000
calls). The whole file runs in about 15 s on a 2-core machine.
"""

from __future__ import annotations

import json
import random

import numpy as np
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tinyserve_sim import BlockManager, BlockPool
from tinyserve_sim.control.trace import Recorder, loads
from tinyserve_sim.errors import SimError, TraceFormatError
from tinyserve_sim.scenarios import SCENARIOS

def fuzz(examples: int) -> settings:
    """The settings of a fuzzer: a fixed number of examples, whatever the profile says."""
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
    )


# ------------------------------------------------------------------ the seeds
def recorded_workload(seed: int = 7) -> str:
    """A small serving workload, recorded: shared prompts, forks, appends, decode steps, frees, evictions, a move."""
    rng = random.Random(seed)
    rec = Recorder(BlockManager(48, 4, prefix_caching=True), name="fuzz-seed")
    system = [rng.randrange(100) for _ in range(9)]
    live: list[str] = []
    for step in range(30):
        prompt = system + [rng.randrange(100) for _ in range(rng.randrange(1, 6))]
        if len(live) < 5 and rec.manager.can_add(prompt):
            live.append(f"r{step}")
            rec.add(live[-1], prompt, note=f"request {step}")
        if step % 7 == 3 and live and rec.manager.num_available > 4:
            live.append(f"f{step}")
            rec.fork(live[0], live[-1])
        if live and rec.manager.blocks_needed_to_decode(live) <= rec.manager.num_available:
            rec.decode(live, [rng.randrange(100) for _ in live])
        if live and step % 3 == 0 and rec.manager.can_append(live[-1], 2):
            rec.append(live[-1], 2)
        if len(live) > 3:
            rec.free(live.pop(0))
    for seq in live:
        rec.free(seq)
    rec.evict(2)
    free_queue = rec.manager.pool.free_queue()
    cached = rec.manager.cache.evictable()
    rec.move([(cached[0], free_queue[0])])
    return rec.trace.dumps()


SEEDS = [scenario.trace().dumps() for scenario in SCENARIOS.values()] + [recorded_workload()]

SPECIAL_BYTES = [
    b"\xff", b"\xc3", b"\xe2\x80\xa8", b"\xc2\x85", b"\xef\xbb\xbf", b"\r", b"\n", b"\n\n", b"\x00",
    b"[" * 40, b"{" * 40, b"9" * 5000, b'"', b"\\", b"}", b"]", b",", b":", b"true", b"-", b"1e999",
]  # fmt: skip

HOSTILE_INTS = [0, -1, 1, 2, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, 4_194_304, 4_194_305, 1 << 20,
                (1 << 20) + 1, 10**400]  # fmt: skip
HOSTILE_SCALARS = [None, True, False, 1.0, 1.5, -0.0, float("nan"), float("inf"), "", "a", "fifo", "lru", "\u2028",
                   "x" * 300]  # fmt: skip
hostile_json = st.recursive(
    st.one_of(
        st.sampled_from(HOSTILE_INTS + HOSTILE_SCALARS),
        st.integers(-(2**70), 2**70),
        st.text(max_size=6),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=12,
)
FIELD_NAMES = ["op", "seq", "prompt", "tokens", "parent", "child", "blocks", "moves", "seqs", "note", "line",
               "format", "version", "block_size", "num_blocks", "policy", "evictor", "prefix_caching", "name"]  # fmt: skip


# ---------------------------------------------------------------- the checks
def replay_checked(text: str | bytes) -> None:
    """Load and replay: every refusal is a SimError that changed nothing; invariants hold throughout."""
    trace = loads(text)
    if trace.header.num_blocks > 4096:
        return  # a large pool loads fine; replaying it here would only be slow
    replay = trace.replay()
    manager = replay.manager
    while not replay.done:
        before = manager.snapshot()
        try:
            record = replay.next_record()
        except StopIteration:
            assert isinstance(replay.error, SimError)
            assert manager.snapshot() == before, "a refused operation changed the state"
            assert replay.stop_message()
            event(f"replay stopped: {type(replay.error).__name__}")
            return
        manager.check_invariants()
        assert record.explain()
    event("replayed to the end")


def check_mutant(text: str | bytes, first_line: int, exact: bool) -> None:
    lines = (text.count(b"\n") if isinstance(text, bytes) else text.count("\n")) + 1
    try:
        replay_checked(text)
    except TraceFormatError as error:
        event("refused by the reader")
        assert str(error).startswith(f"line {error.line}: "), str(error)
        assert len(str(error)) < 400, "an error message must stay short"
        if exact:
            assert error.line == first_line, str(error)
        else:
            assert first_line <= error.line <= lines, str(error)


# ----------------------------------------------------------- trace mutants
@st.composite
def byte_mutants(draw):
    seed = draw(st.sampled_from(SEEDS)).encode()
    data = bytearray(seed)
    kind = draw(st.sampled_from(["set", "insert", "insert", "delete", "duplicate", "truncate"]))
    pos = draw(st.integers(0, len(data) - 1))
    if kind == "set":
        data[pos] = draw(st.integers(0, 255))
    elif kind == "insert":
        data[pos:pos] = draw(st.one_of(st.sampled_from(SPECIAL_BYTES), st.binary(min_size=1, max_size=6)))
    elif kind == "delete":
        del data[pos : draw(st.integers(pos + 1, min(len(data), pos + 40)))]
    elif kind == "duplicate":
        end = draw(st.integers(pos + 1, min(len(data), pos + 200)))
        data[end:end] = data[pos:end]
        pos = end
    else:
        del data[pos:]
    return bytes(data), seed[:pos].count(b"\n") + 1


@st.composite
def json_mutants(draw):
    lines = draw(st.sampled_from(SEEDS)).rstrip("\n").split("\n")
    k = draw(st.integers(0, len(lines) - 1))
    obj = json.loads(lines[k])
    kind = draw(st.sampled_from(["set", "set", "set", "remove", "replace"]))
    if kind == "set":
        obj[draw(st.sampled_from(sorted(obj) + FIELD_NAMES))] = draw(hostile_json)
    elif kind == "remove":
        del obj[draw(st.sampled_from(sorted(obj)))]
    else:
        obj = draw(hostile_json)
    lines[k] = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    return "\n".join(lines) + "\n", k + 1


@fuzz(1500)
@given(byte_mutants())
@example((SEEDS[0].encode().replace(b'"note": "', b'"note": "\xff', 1), 2))
@example((b"\xef\xbb\xbf" + SEEDS[0].encode(), 1))
def test_byte_mutants_of_valid_traces(mutant):
    data, first_line = mutant
    check_mutant(data, first_line, exact=False)


@fuzz(1500)
@given(json_mutants())
@example(((SEEDS[0].split("\n", 1)[0].replace('"version": 1', '"version": true')) + "\n", 1))
@example(((SEEDS[0].split("\n", 1)[0].replace('"version": 1', '"version": 1.0')) + "\n", 1))
@example((SEEDS[0].split("\n", 1)[0] + '\n{"op": "add", "seq": "A", "prompt": 3, "note": "\x85\u2028"}\n', 2))
def test_json_mutants_of_valid_traces(mutant):
    text, line = mutant
    check_mutant(text, line, exact=True)
    try:
        trace = loads(text)
    except TraceFormatError:
        return
    # A line that loads means exactly what it says: no value was coerced (true into 1, 1.0 into 1...).
    said = json.loads(text.split("\n")[line - 1])
    if line == 1:
        read = {**HEADER_DEFAULTS, **trace.header.to_json()}
    else:
        (op,) = [op for op in trace.ops if op.line == line]
        read = {**op.to_json(), "note": op.note}
    for name, value in said.items():
        assert json.dumps(value) == json.dumps(read.get(name)), f"field {name!r}: {value!r} was read as {read.get(name)!r}"


HEADER_DEFAULTS = {"policy": "fifo", "evictor": "lru", "prefix_caching": False, "name": "", "description": ""}


# --------------------------------------------------------- operation sequences
NASTY = [None, True, False, -1, 0, 2**63, -(2**63) - 1, 10**30, 1.5, float("nan"), "", b"x", [], [[1]], [1.5],
         [True], [2**64], (1, 2), {"a": 1}, {1, 2}, np.int64(2), np.array([1, 2]), np.array([[1]]), np.array([1.5]),
         object(), range(3), "x" * 200]  # fmt: skip
good_ids = st.sampled_from(["s0", "s1", "s2", 3])
ids = st.one_of(good_ids, good_ids, good_ids, st.sampled_from(NASTY + ["nobody", 2**64]))  # mostly ids that can be live
token_args = st.one_of(
    st.integers(1, 9),
    st.lists(st.integers(0, 6), min_size=1, max_size=9),
    st.builds(lambda n: [1, 2, 3, 4] * n, st.integers(1, 3)),  # a shared prefix: prefix-cache hits
    st.sampled_from(NASTY),
)
block_ids = st.one_of(st.integers(-2, 20), st.sampled_from(NASTY))
manager_calls = st.one_of(
    st.tuples(st.just("add"), ids, token_args),
    st.tuples(st.just("append"), ids, token_args),
    st.tuples(st.just("fork"), ids, ids),
    st.tuples(st.just("free"), ids),
    st.tuples(st.just("evict"), st.one_of(st.integers(-1, 4), st.sampled_from(NASTY))),
    st.tuples(st.just("move"), st.one_of(st.lists(st.tuples(block_ids, block_ids), max_size=3),
                                         st.lists(block_ids, max_size=3), st.sampled_from(NASTY))),
    st.tuples(st.just("decode"), st.lists(good_ids, min_size=1, max_size=4, unique=True),
              st.one_of(st.none(), st.lists(st.integers(0, 6), min_size=1, max_size=4))),
    st.tuples(st.just("decode"), st.one_of(st.lists(ids, max_size=4), st.sampled_from(NASTY)),
              st.one_of(st.none(), st.lists(st.integers(0, 6), max_size=4), st.sampled_from(NASTY))),
    st.tuples(st.just("slot_mapping"), ids, st.one_of(st.integers(-1, 12), st.sampled_from(NASTY))),
    st.tuples(st.just("blocks_needed_to_add"), token_args),
    st.tuples(st.just("can_append"), ids, token_args),
    st.tuples(st.just("blocks_needed_to_decode"), st.one_of(st.lists(ids, max_size=3), st.sampled_from(NASTY))),
    st.tuples(st.just("blocks_for"), st.one_of(st.integers(-1, 50), st.sampled_from(NASTY))),
)  # fmt: skip


@fuzz(400)
@given(
    config=st.tuples(st.integers(1, 24), st.integers(1, 5), st.sampled_from(["fifo", "lifo"]), st.booleans()),
    calls=st.lists(manager_calls, max_size=40),
)
def test_random_manager_calls_with_bad_ones_mixed_in(config, calls):
    num_blocks, block_size, policy, caching = config
    manager = BlockManager(num_blocks, block_size, policy, prefix_caching=caching)
    # Start with live sequences (when they fit), so that valid calls find something to act on.
    setup = [("add", "s0", [1, 2, 3, 4, 1]), ("add", "s1", 3), ("fork", "s0", "s2"), ("add", 3, [1, 2, 3, 4, 9])]
    for name, *args in setup + calls:
        before = manager.snapshot()
        try:
            getattr(manager, name)(*args)
            event(f"{name}: done")
        except SimError as error:
            event(f"{name}: {type(error).__name__}")
            assert manager.snapshot() == before, f"{name}{tuple(args)!r} raised but changed the state"
        manager.check_invariants()


pool_calls = st.one_of(
    st.tuples(st.just("allocate"), st.one_of(st.integers(-1, 6), st.sampled_from(NASTY))),
    st.tuples(st.just("release"), st.one_of(st.lists(block_ids, max_size=4), st.sampled_from(NASTY))),
    st.tuples(st.just("incref"), block_ids),
    st.tuples(st.just("take"), st.one_of(st.lists(block_ids, max_size=3), st.sampled_from(NASTY))),
    st.tuples(st.just("ref_count"), block_ids),
)


@fuzz(200)
@given(size=st.integers(1, 12), policy=st.sampled_from(["fifo", "lifo"]), calls=st.lists(pool_calls, max_size=40))
def test_random_pool_calls_keep_the_queue_and_the_counts_in_step(size, policy, calls):
    pool = BlockPool(size, policy)
    for name, *args in calls:
        before = (pool.free_queue(), pool.ref_counts())
        try:
            getattr(pool, name)(*args)
        except SimError:
            assert (pool.free_queue(), pool.ref_counts()) == before, f"{name}{tuple(args)!r} changed the pool"
        queue, refs = pool.free_queue(), pool.ref_counts()
        assert len(set(queue)) == len(queue), "a block is twice in the free queue"
        assert set(queue) == {block for block, count in enumerate(refs) if count == 0}
