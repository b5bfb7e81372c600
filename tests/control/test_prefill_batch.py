"""PrefillBatch: built from the manager's records (an add with prefix-cache hits, the appended
chunks of a chunked prefill), checked on construction, frozen, and consistent with the
manager (slots, positions) over random operation sequences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.control.prefill_batch import PrefillBatch
from tinyserve_sim.errors import InvalidArgumentError, SimError, UnknownSequenceError


def test_an_add_with_prefix_hits_computes_only_the_tokens_after_the_cached_blocks():
    m = BlockManager(16, 4, prefix_caching=True)
    m.add("a", list(range(13)))
    rec = m.add("b", list(range(12)) + [99])  # 3 full blocks cached, the 13th token new
    batch = PrefillBatch.from_records(m, [rec])
    assert len(rec.cache_hits) == 3
    assert batch.prefix_lens.tolist() == [12] and batch.query_lens.tolist() == [1]
    assert batch.positions().tolist() == [12]
    assert batch.slot_mapping.tolist() == rec.slot_mapping.tolist()
    assert batch.block_tables[0, :4].tolist() == list(m.block_table("b"))
    assert batch.seq_ids == ("b",)


def test_the_whole_prompt_is_recomputed_at_most_up_to_its_last_token():
    # A prompt made of whole cached blocks still computes its last token (its logits start decoding).
    m = BlockManager(16, 4, prefix_caching=True)
    m.add("a", list(range(8)))
    rec = m.add("b", list(range(8)))
    batch = PrefillBatch.from_records(m, [rec])
    assert batch.prefix_lens.tolist() == [4] and batch.query_lens.tolist() == [4]


def test_chunked_prefill_through_appends():
    m = BlockManager(16, 4)
    first = m.add("a", 6)
    second = m.append("a", 7)
    batch = PrefillBatch.from_records(m, [second])
    assert batch.prefix_lens.tolist() == [6] and batch.query_lens.tolist() == [7]
    assert batch.positions().tolist() == list(range(6, 13))
    assert batch.slot_mapping.tolist() == second.slot_mapping.tolist()
    with pytest.raises(InvalidArgumentError, match="no longer matches"):
        PrefillBatch.from_records(m, [first])  # 'a' has moved on since its add


def test_several_sequences_pack_their_new_tokens_in_record_order():
    m = BlockManager(32, 4, prefix_caching=True)
    ra = m.add("a", list(range(10)))
    rb = m.add("b", list(range(8)) + [50, 51])
    batch = PrefillBatch.from_records(m, [rb, ra])
    assert batch.seq_ids == ("b", "a")
    assert batch.query_start_loc.tolist() == [0, 2, 12]
    assert batch.seq_index().tolist() == [0, 0] + [1] * 10
    assert batch.positions().tolist() == [8, 9, *range(10)]
    assert batch.causal_pairs().tolist() == [9 + 10, 55]
    assert batch.slot_mapping.tolist() == rb.slot_mapping.tolist() + ra.slot_mapping.tolist()


def test_from_manager_defaults_to_every_token_of_every_sequence():
    m = BlockManager(16, 4)
    m.add("a", 5)
    m.add("b", 2)
    batch = PrefillBatch.from_manager(m)
    assert batch.query_lens.tolist() == [5, 2] and batch.prefix_lens.tolist() == [0, 0]
    assert batch.slot_mapping.tolist() == m.slot_mapping("a").tolist() + m.slot_mapping("b").tolist()
    decode = batch.as_decode_batch()
    assert isinstance(decode, DecodeBatch) and decode.seq_lens.tolist() == [5, 2]


@pytest.mark.parametrize(
    "records, match",
    [
        ("fork", "add or append records"),
        ("twice", "two records of 'a'"),
    ],
)
def test_from_records_refuses_what_is_not_a_prefill(records, match):
    m = BlockManager(16, 4)
    rec = m.add("a", 5)
    fork = m.fork("a", "c")
    recs = [fork] if records == "fork" else [rec, rec]
    with pytest.raises(InvalidArgumentError, match=match):
        PrefillBatch.from_records(m, recs)


def test_from_manager_refuses_unknown_sequences_and_too_many_new_tokens():
    m = BlockManager(16, 4)
    m.add("a", 5)
    with pytest.raises(UnknownSequenceError):
        PrefillBatch.from_manager(m, {"zzz": 1})
    with pytest.raises(InvalidArgumentError, match="5 tokens; 6 of them"):
        PrefillBatch.from_manager(m, {"a": 6})
    with pytest.raises(InvalidArgumentError, match="non-negative"):
        PrefillBatch.from_manager(m, {"a": -1})
    with pytest.raises(InvalidArgumentError, match="map a seq id"):
        PrefillBatch.from_manager(m, [("a", 1)])


def _good():
    return dict(
        block_size=4,
        block_tables=np.array([[0, 1], [2, -1]], np.int32),
        seq_lens=np.array([6, 3], np.int32),
        query_start_loc=np.array([0, 2, 5], np.int32),
    )


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(block_size=0), "block_size"),
        (dict(block_tables=np.array([[0, 1], [2, -1]], np.int64)), "block_tables must be int32"),
        (dict(block_tables=np.zeros((2, 1, 2), np.int32)), "block_tables must be int32"),
        (dict(seq_lens=np.array([6, 3], np.int64)), "seq_lens must be int32"),
        (dict(seq_lens=np.array([6], np.int32)), "seq_lens must be int32"),
        (dict(seq_lens=np.array([6, 0], np.int32)), "at least 1"),
        (dict(query_start_loc=np.array([0, 2], np.int32)), "query_start_loc must be int32 of shape"),
        (dict(query_start_loc=np.array([1, 2, 5], np.int32)), "start at 0"),
        (dict(query_start_loc=np.array([0, 3, 2], np.int32)), "never decrease"),
        (dict(query_start_loc=np.array([0, 7, 8], np.int32)), "7 new tokens but only 6"),
        (dict(slot_mapping=np.arange(4, dtype=np.int64)), "one slot per new token"),
        (dict(slot_mapping=np.arange(5, dtype=np.int32)), "slot_mapping must be int64"),
        (dict(seq_ids=("a",)), "one id per table row"),
        (dict(block_tables=[[0, 1], [2]]), "block_tables must be a host"),
    ],
)
def test_the_constructor_checks_the_structure(change, match):
    kwargs = _good() | change
    with pytest.raises(InvalidArgumentError, match=match):
        PrefillBatch(**kwargs)


def test_a_batch_is_frozen_and_owns_its_arrays():
    args = _good()
    batch = PrefillBatch(**args)
    args["seq_lens"][0] = 99
    assert batch.seq_lens[0] == 6
    for a in (batch.block_tables, batch.seq_lens, batch.query_start_loc, batch.slot_mapping):
        with pytest.raises(ValueError):
            a[...] = 0
    with pytest.raises(AttributeError):
        batch.block_size = 8  # type: ignore[misc]


@settings(max_examples=60, deadline=None)
@given(
    prompts=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=30), min_size=1, max_size=5),
    chunk=st.integers(1, 12),
    block_size=st.integers(1, 8),
)
def test_records_of_adds_and_chunk_appends_always_describe_the_managers_tokens(prompts, chunk, block_size):
    # Random prompts (small alphabets share prefixes), each added by its first chunk and then
    # appended chunk by chunk: every step's batch covers exactly the tokens it writes.
    m = BlockManager(400, block_size, prefix_caching=True)
    for i, prompt in enumerate(prompts):
        try:
            rec = m.add(i, prompt[:chunk])
        except SimError:
            continue
        done = len(prompt[:chunk])
        steps = [rec]
        while done < len(prompt):
            steps.append(m.append(i, prompt[done : done + chunk]))
            done += len(prompt[done : done + chunk])
        batch = PrefillBatch.from_records(m, steps[-1:])
        n = m.num_tokens(i)
        assert batch.seq_lens.tolist() == [n]
        assert batch.positions().tolist() == list(range(n - batch.num_query_tokens, n))
        assert batch.slot_mapping.tolist() == m.slot_mapping(i, n - batch.num_query_tokens, n).tolist()
