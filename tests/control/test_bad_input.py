"""Every bad input that issue 11 found escaping as a raw Python error, with what it gets now.

Each case names the project's error class, a part of its message, and (for a
trace) the line; manager and pool cases also check that the state did not change.
"""

import json

import numpy as np
import pytest

from tinyserve_sim import BlockManager, BlockPool
from tinyserve_sim.control.pool import MAX_NUM_BLOCKS
from tinyserve_sim.control.trace import MAX_LINE_CHARS, MAX_NESTING, load, loads
from tinyserve_sim.errors import (
    BlockIdError,
    ConfigError,
    DoubleFreeError,
    InvalidArgumentError,
    InvalidTokenCountError,
    SimError,
    TraceFormatError,
    UnknownSequenceError,
)

HEAD = {"format": "tinyserve-sim-trace", "version": 1, "block_size": 4, "num_blocks": 8}
ADD = '{"op": "add", "seq": "a", "prompt": %s}'


def header(**changes):
    return json.dumps({**HEAD, **changes})


def trace_error(text, line, match):
    with pytest.raises(TraceFormatError, match=match) as info:
        loads(text)
    assert info.value.line == line
    assert str(info.value).startswith(f"line {line}: ")


# ------------------------------------------------------------------- trace reader
def test_bytes_that_are_not_utf8_name_the_line_and_column(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(header().encode() + b'\n{"op": "free", "seq": "a\xff"}\n')
    with pytest.raises(TraceFormatError, match=r"line 2: not UTF-8 \(byte 0xff at column 25\)") as info:
        load(path)
    assert info.value.line == 2


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 5000, 100_000])
def test_deep_nesting_is_refused_before_parsing(depth):
    trace_error(header() + "\n" + ADD % ("[" * depth + "]" * depth), 2, f"nested more than {MAX_NESTING} levels")


def test_nesting_inside_a_string_is_only_text():
    trace = loads(header() + "\n" + '{"op": "add", "seq": "a", "prompt": 3, "note": "%s"}' % ("[" * 100))
    assert trace.ops[0].note == "[" * 100


def test_number_literals_of_thousands_of_digits():
    trace_error(header() + "\n" + ADD % ("9" * 5000), 2, "more than 4,300 digits")
    trace_error(header() + "\n" + ADD % ("9" * 4000), 2, "field 'prompt'")
    trace_error(header() + "\n" + ADD % "[%s]" % ("9" * 30), 2, "64-bit")


@pytest.mark.parametrize("field, limit", [("num_blocks", "4,194,304"), ("block_size", "1,048,576")])
@pytest.mark.parametrize("value", [10**30, 2**63, 10**8])
def test_header_sizes_above_the_limits(field, limit, value):
    trace_error(header(**{field: value}), 1, f"field '{field}': expected a positive integer no larger than {limit}")


def test_the_largest_header_sizes_load():
    trace = loads(header(num_blocks=MAX_NUM_BLOCKS, block_size=1 << 20))
    assert trace.header.num_blocks == MAX_NUM_BLOCKS


def test_too_long_a_line():
    trace_error(header() + "\n" + '{"op": "free", "seq": "%s"}' % ("x" * MAX_LINE_CHARS), 2, "more than the limit")


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c"])
def test_notes_may_hold_any_character_but_newline(char):
    op = json.dumps({"op": "add", "seq": "a", "prompt": 3, "note": f"x{char}y"}, ensure_ascii=False)
    trace = loads(header() + "\n" + op + "\n")
    assert trace.ops[0].note == f"x{char}y"
    assert loads(trace.dumps()).ops == trace.ops


def test_a_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + header().encode() + b"\r\n" + (ADD % 3).encode() + b"\r\n")
    assert load(path).ops[0].prompt == 3
    assert len(loads("\ufeff" + header()).ops) == 0


@pytest.mark.parametrize("version", [True, 1.0, "1", None, 2])
def test_version_must_be_the_integer_one(version):
    trace_error(header(version=version), 1, "field 'version': unsupported version")


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"op": ["add"]}', "field 'op': expected one of"),
        ('{"op": {"a": 1}, "seq": "a"}', "field 'op': expected one of"),
        ('{"op": "free", "seq": 1.5}', "field 'seq': a sequence id must be"),
        ('{"op": "free", "seq": %d}' % 2**64, "field 'seq'"),
        ('{"op": "add", "seq": "a", "prompt": [true]}', "field 'prompt'"),
        ('{"op": "add", "seq": "a", "prompt": NaN}', "field 'prompt'"),
        ('{"op": "decode", "seqs": []}', "field 'seqs'"),
        ('{"op": "decode", "seqs": ["a", "b"], "tokens": [1]}', "field 'tokens': expected one token id per sequence"),
        ('{"op": "move", "moves": [[1, 2, 3]]}', "field 'moves'"),
        ('{"op": "evict", "blocks": 1e3}', "field 'blocks'"),
        ('{"op": "free", "seq": "a", "line": 3}', "field 'line': not a field of 'free'"),
        ('"just a string"', "expected a JSON object"),
    ],
)
def test_operation_fields(line, match):
    trace_error(header() + "\n" + line, 2, match)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"policy": ["fifo"]}, "field 'policy': expected one of"),
        ({"evictor": "mru"}, "field 'evictor': expected one of \\['lru'\\]"),
        ({"prefix_caching": 1}, "field 'prefix_caching'"),
        ({"num_blocks": 8.0}, "field 'num_blocks'"),
        ({"name": 5}, "field 'name'"),
    ],
)
def test_header_fields(changes, match):
    trace_error(header(**changes), 1, match)


def test_an_evictor_in_the_header_round_trips():
    trace = loads(header(evictor="lru", prefix_caching=True))
    assert trace.header.evictor == "lru" and "evictor" not in trace.dumps()  # the default is not written


def test_reading_what_is_not_a_trace(tmp_path):
    with pytest.raises(TraceFormatError, match="cannot read trace"):
        load(tmp_path)
    with pytest.raises(TraceFormatError, match="cannot read trace"):
        load("a\0b")
    with pytest.raises(TraceFormatError, match="a trace is text or bytes"):
        loads(None)


# ---------------------------------------------------------------------- manager
def unchanged(manager, call, error, match):
    before = manager.snapshot()
    with pytest.raises(error, match=match):
        call()
    assert manager.snapshot() == before


@pytest.mark.parametrize(
    "args, match",
    [
        ((10**30, 16), "num_blocks must be a positive integer no larger than 4,194,304"),
        ((2**63, 16), "num_blocks"),
        ((8, 10**30), "block_size must be a positive integer no larger than 1,048,576"),
        ((8, 2**63), "block_size"),
        ((8, 4.0), "block_size"),
    ],
)
def test_impossible_sizes_are_refused_at_construction(args, match):
    with pytest.raises(ConfigError, match=match):
        BlockManager(*args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"policy": ["fifo"]}, "unknown free-queue policy"),
        ({"evictor": "mru"}, "unknown evictor 'mru'"),
        ({"prefix_caching": "yes"}, "prefix_caching must be True or False"),
        ({"record_ops": np.array([1, 2])}, "record_ops must be True or False"),
    ],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BlockManager(8, 4, **kwargs)


def test_the_largest_block_size_leaves_state_intact_on_every_later_call():
    # Issue 11: BlockManager(8, 10**30) used to accept, then fail after changing state.
    m = BlockManager(8, 1 << 20)
    m.add("a", 3)
    m.add("b", 5)
    assert m.slot_mapping("b").tolist() == [(1 << 20) * 1 + t for t in range(5)]


@pytest.mark.parametrize("moves", [[(1,)], None, [1, 2], "ab", 5, [(1, 2, 3)], [{1: 2}]])
def test_move_with_malformed_pairs(moves):
    m = BlockManager(8, 4)
    m.add("a", 5)
    unchanged(m, lambda: m.move(moves), InvalidArgumentError, "move needs a list of \\(src, dst\\) block-id pairs")


@pytest.mark.parametrize("moves", [[("x", "y")], [(0, 99)], [(-1, 3)], [(True, 3)]])
def test_move_with_bad_block_ids(moves):
    m = BlockManager(8, 4)
    m.add("a", 5)
    unchanged(m, lambda: m.move(moves), BlockIdError, "out of range")


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: m.append(True), UnknownSequenceError, "unknown sequence True"),
        (lambda m: m.append(1.0), UnknownSequenceError, "unknown sequence 1.0"),
        (lambda m: m.append(np.int64(1)), UnknownSequenceError, "unknown sequence"),
        (lambda m: m.free([1]), UnknownSequenceError, "unknown sequence"),
        (lambda m: m.append(1, [2**63]), InvalidTokenCountError, "64-bit"),
        (lambda m: m.append(1, 10**30), InvalidTokenCountError, "too many tokens"),
        (lambda m: m.add("b", [1, "2"]), InvalidTokenCountError, "token"),
        (lambda m: m.add("b", {1, 2}), InvalidTokenCountError, "token"),
        (lambda m: m.add("b", np.array([[1, 2]])), InvalidTokenCountError, "token"),
        (lambda m: m.add("b", 10**30), InvalidTokenCountError, "too many tokens"),
        (lambda m: m.add(2**70, 3), InvalidArgumentError, "a sequence id must be a str or an int"),
        (lambda m: m.evict(1.5), InvalidArgumentError, "positive number"),
        (lambda m: m.decode("ab"), InvalidArgumentError, "a list of sequence ids"),
        (lambda m: m.decode([]), InvalidArgumentError, "at least one sequence"),
        (lambda m: m.decode([1, 1]), InvalidArgumentError, "appears twice"),
        (lambda m: m.decode([1, "zz"]), UnknownSequenceError, "unknown sequence 'zz'"),
        (lambda m: m.decode([1], [1, 2]), InvalidTokenCountError, "one integer token id"),
        (lambda m: m.decode([1], [1.5]), InvalidTokenCountError, "one integer token id"),
        (lambda m: m.slot_mapping(1, -1), InvalidArgumentError, "start"),
        (lambda m: m.slot_mapping(1, 0, 10**30), InvalidArgumentError, "end"),
        (lambda m: m.blocks_for(-1), InvalidArgumentError, "num_tokens"),
        (lambda m: m.snapshot().table("zz"), UnknownSequenceError, "unknown sequence 'zz'"),
    ],
)
def test_manager_calls_with_bad_arguments(call, error, match):
    m = BlockManager(8, 4, prefix_caching=True)
    m.add(1, [1, 2, 3, 4, 5])
    unchanged(m, lambda: call(m), error, match)


def test_an_unknown_operation_in_a_record_is_an_error():
    record = BlockManager(8, 4).add("a", 1)._replace(op="grow")
    with pytest.raises(InvalidArgumentError, match="no operation is called 'grow'"):
        record.explain()


# ------------------------------------------------------------------------- pool
def pool_unchanged(pool, call, error, match):
    before = (pool.free_queue(), pool.ref_counts())
    with pytest.raises(error, match=match):
        call()
    assert (pool.free_queue(), pool.ref_counts()) == before


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda p: p.incref(-1), BlockIdError, "block id -1 is out of range 0..7"),
        (lambda p: p.incref(10), BlockIdError, "block id 10 is out of range 0..7"),
        (lambda p: p.incref(5), InvalidArgumentError, "block 5 is free"),  # a queued block
        (lambda p: p.release([5]), DoubleFreeError, "double free"),  # "pushing" a free block again
        (lambda p: p.release([0, 0]), DoubleFreeError, "double free"),
        (lambda p: p.release(None), InvalidArgumentError, "a list of block ids"),
        (lambda p: p.allocate(-1), InvalidArgumentError, "non-negative integer"),
        (lambda p: p.allocate("2"), InvalidArgumentError, "non-negative integer"),
        (lambda p: p.take([0]), BlockIdError, "not in the free queue"),
        (lambda p: p.take([[1]]), BlockIdError, "out of range"),
    ],
)
def test_pool_methods_check_their_arguments(call, error, match):
    pool = BlockPool(8)
    pool.allocate(2)
    pool_unchanged(pool, lambda: call(pool), error, match)


def test_the_pool_methods_that_bypass_the_queue_are_private():
    # claim() and push_free() could put the queue and the counts out of step: only the
    # manager may use them, as _claim and _push.
    pool = BlockPool(8)
    assert not hasattr(pool, "claim") and not hasattr(pool, "push_free") and not hasattr(pool, "decref")


def test_every_error_here_is_a_sim_error():
    for error in (BlockIdError, ConfigError, DoubleFreeError, InvalidArgumentError, TraceFormatError):
        assert issubclass(error, SimError)


# ----------------------------------------------------------- replay, trace, prefix cache
def test_replay_and_trace_objects_check_what_they_are_given():
    from tinyserve_sim.control.trace import Replay, Trace, TraceHeader

    with pytest.raises(TraceFormatError, match="a replay needs a Trace"):
        Replay(None)
    with pytest.raises(TraceFormatError, match="a trace needs a TraceHeader"):
        Trace(None)
    with pytest.raises(TraceFormatError, match="must be a list of operations"):
        Trace(TraceHeader(4, 8), [{"op": "free"}])
    with pytest.raises(ConfigError, match="num_blocks must be a positive integer no larger than"):
        TraceHeader(4, 10**30)
    with pytest.raises(ConfigError, match="unknown evictor"):
        TraceHeader(4, 8, evictor="mru")
    replay = loads(header() + "\n" + ADD % 3).replay()
    with pytest.raises(InvalidArgumentError, match="until must be a non-negative integer"):
        replay.run(until="3")
    assert replay.position == 0


def test_the_prefix_cache_answers_queries_and_leaves_changes_to_the_manager():
    from tinyserve_sim.control.prefix_cache import PrefixCache

    cache = PrefixCache()
    for query in (cache.lookup, cache.hash_of, cache.is_evictable):
        with pytest.raises(InvalidArgumentError, match="must be an integer"):
            query([1])
    with pytest.raises(InvalidArgumentError, match="a list of block hashes"):
        cache.longest_prefix([[1]])
    assert not any(hasattr(cache, name) for name in ("register", "park", "revive", "rename", "evict"))
