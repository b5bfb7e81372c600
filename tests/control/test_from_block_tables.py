"""BlockManager.from_block_tables: a state given as tables becomes a live manager."""

from __future__ import annotations

import pytest

from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.errors import BlockIdError, InvalidArgumentError, InvalidTokenCountError, SimError


def test_reference_counts_follow_the_tables_and_the_rest_is_free():
    m = BlockManager.from_block_tables(10, 4, {"a": ([7, 3, 9], 10), "b": ([7, 3], 6), 5: ([1], 1)})
    m.check_invariants()
    refs = m.pool.ref_counts()
    assert (refs[7], refs[3], refs[9], refs[1]) == (2, 2, 1, 1)
    assert m.pool.free_queue() == [0, 2, 4, 5, 6, 8]
    assert m.seq_ids() == ["a", "b", 5] and m.num_tokens("b") == 6
    # and it runs on: b writes into its shared, partly filled block 3 -> copy-on-write
    record = m.append("b", 1)
    assert record.copies == ((3, 0),)
    m.check_invariants()


@pytest.mark.parametrize(
    "sequences, error, match",
    [
        ({"a": ([1, 2], 9)}, InvalidArgumentError, "2 blocks for 9 tokens"),
        ({"a": ([1, 2, 3], 5)}, InvalidArgumentError, "3 blocks for 5 tokens"),
        ({"a": ([1, 1], 5)}, InvalidArgumentError, "twice"),
        ({"a": ([1, 12], 5)}, BlockIdError, "12"),
        ({"a": ([1, -1], 5)}, BlockIdError, "-1"),
        ({"a": ([1], 0)}, InvalidTokenCountError, "positive"),
        ({"a": ([1], True)}, InvalidTokenCountError, "positive"),
        ({"a": [1]}, InvalidArgumentError, "expected"),
        ({("a",): ([1], 1)}, InvalidArgumentError, "seq id|sequence id"),
        ([("a", ([1], 1))], InvalidArgumentError, "must map"),
    ],
)
def test_a_bad_table_is_refused_and_nothing_is_returned(sequences, error, match):
    with pytest.raises(error, match=match):
        BlockManager.from_block_tables(10, 4, sequences)
    assert issubclass(error, SimError)
