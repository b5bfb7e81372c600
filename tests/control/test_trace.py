"""The trace format: round trip, malformed input naming line and field, replay, recording."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyserve_sim import BlockManager
from tinyserve_sim.control.operations import Add, Append, Decode, Evict, Fork, Free, Move
from tinyserve_sim.control.trace import Recorder, Trace, TraceHeader, load, loads
from tinyserve_sim.errors import OutOfBlocksError, TraceFormatError

HEADER = '{"format": "tinyserve-sim-trace", "version": 1, "block_size": 4, "num_blocks": 4}'

ids = st.one_of(st.text(min_size=1, max_size=5), st.integers(-5, 50))
tokens = st.one_of(st.integers(1, 40), st.lists(st.integers(0, 2**31), min_size=1, max_size=6).map(tuple))
ops = st.one_of(
    st.builds(Add, seq=ids, prompt=tokens, note=st.text(max_size=10)),
    st.builds(Append, seq=ids, tokens=tokens),
    st.builds(Append, seq=ids),
    st.builds(Fork, parent=ids, child=ids),
    st.builds(Free, seq=ids),
    st.builds(Evict, blocks=st.integers(1, 9)),
    st.builds(Evict),
    st.builds(Move, moves=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=3).map(tuple)),
    st.lists(ids, min_size=1, max_size=4).flatmap(
        lambda seqs: st.builds(Decode, seqs=st.just(tuple(seqs)),
                               tokens=st.one_of(st.none(), st.tuples(*[st.integers(0, 2**31)] * len(seqs))))
    ),
)
headers = st.builds(
    TraceHeader,
    block_size=st.integers(1, 256),
    num_blocks=st.integers(1, 10**6),
    policy=st.sampled_from(["fifo", "lifo"]),
    prefix_caching=st.booleans(),
    name=st.text(max_size=8),
    description=st.text(max_size=20),
    evictor=st.sampled_from(["lru"]),
)


@given(header=headers, ops=st.lists(ops, max_size=12))
def test_save_load_round_trip(header, ops):
    trace = Trace(header, ops)
    again = loads(trace.dumps())
    assert again.header == trace.header
    assert again.ops == trace.ops
    assert again.dumps() == trace.dumps()


def test_save_and_load_a_file(tmp_path):
    rec = Recorder(BlockManager(8, 4, prefix_caching=True), name="t")
    rec.add("a", [1, 2, 3, 4, 5])
    rec.fork("a", "b")
    rec.append("b", 2)
    rec.free("a")
    path = tmp_path / "t.jsonl"
    rec.trace.save(path)
    replay = load(path).replay()
    replay.run()
    assert replay.error is None
    assert replay.manager.snapshot() == rec.manager.snapshot()


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"op": "add", "seq": "a"}', "line 2: field 'prompt': missing"),
        ('{"op": "add", "seq": "a", "prompt": 0}', "line 2: field 'prompt': needs at least one token"),
        ('{"op": "add", "seq": "a", "prompt": "abc"}', "line 2: field 'prompt': expected a positive token count"),
        ('{"op": "append", "seq": true}', "line 2: field 'seq': a sequence id must be a string or an integer"),
        ('{"op": "grow", "seq": "a"}', "line 2: field 'op': expected one of"),
        ('{"op": "free", "seq": "a", "tokns": 3}', "line 2: field 'tokns': not a field of 'free'"),
        ('{"op": "evict", "blocks": -1}', "line 2: field 'blocks': expected a positive integer"),
        ('{"op": "move", "moves": [[1]]}', "line 2: field 'moves': expected a non-empty list"),
        ('{"op": "free", "seq": "a", "note": 5}', "line 2: field 'note': expected a string"),
        ("[1, 2]", "line 2: expected a JSON object"),
        ('{"op": "free", ', "line 2: not valid JSON"),
    ],
)
def test_malformed_operation_names_line_and_field(line, message):
    with pytest.raises(TraceFormatError, match=message.replace("(", r"\(")) as info:
        loads(HEADER + "\n" + line + "\n")
    assert info.value.line == 2


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format": "other"}, "field 'format'"),
        ({"version": 2}, "field 'version': unsupported version 2"),
        ({"block_size": 0}, "field 'block_size': expected a positive integer"),
        ({"num_blocks": "8"}, "field 'num_blocks'"),
        ({"policy": "random"}, "field 'policy'"),
        ({"prefix_caching": "yes"}, "field 'prefix_caching'"),
        ({"colour": 1}, "field 'colour': unknown header field"),
    ],
)
def test_malformed_header(change, message):
    head = {**json.loads(HEADER), **change}
    with pytest.raises(TraceFormatError, match=message) as info:
        loads(json.dumps(head))
    assert info.value.line == 1


def test_empty_trace_and_missing_file(tmp_path):
    with pytest.raises(TraceFormatError, match="empty"):
        loads("\n\n")
    with pytest.raises(TraceFormatError, match="cannot read trace"):
        load(tmp_path / "nope.jsonl")


def test_blank_lines_keep_line_numbers():
    with pytest.raises(TraceFormatError, match="line 4"):
        loads(HEADER + "\n\n" + '{"op": "free", "seq": "a"}\n{"op": "nope"}\n')


def test_replay_stops_at_out_of_blocks_with_state_intact():
    text = HEADER + "\n" + "\n".join(
        [
            '{"op": "add", "seq": "a", "prompt": 8}',
            '{"op": "add", "seq": "b", "prompt": 4}',
            '{"op": "add", "seq": "c", "prompt": 8}',
            '{"op": "free", "seq": "a"}',
        ]
    )
    replay = loads(text).replay()
    before_failure = None
    for _ in replay:
        before_failure = replay.manager.snapshot()
    assert replay.position == 2 and replay.done
    assert replay.manager.snapshot() == before_failure
    assert "ran out of blocks at line 4 (add)" in replay.stop_message()
    assert replay.manager.seq_ids() == ["a", "b"]


def test_replay_until():
    replay = loads(HEADER + '\n{"op": "add", "seq": "a", "prompt": 1}\n{"op": "free", "seq": "a"}\n').replay()
    steps = replay.run(until=1)
    assert [s.op for s in steps] == ["add"] and replay.position == 1 and not replay.done


def test_recorder_records_only_successful_operations():
    rec = Recorder(BlockManager(1, 4))
    rec.add("a", 4)
    with pytest.raises(OutOfBlocksError):
        rec.add("b", 4)
    assert [op.name for op in rec.trace.ops] == ["add"]
