"""The step log: NumPy columns that grow, CSV written exactly, time averages."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tinyserve_sim.errors import InvalidArgumentError
from tinyserve_sim.serving.metrics import COLUMNS, StepLog, csv_text


@given(ints=arrays(np.int64, st.integers(1, 50), elements=st.integers(-(2**40), 2**40)),
       seconds=st.lists(st.floats(-1e7, 1e7, allow_nan=False), min_size=1, max_size=50))
def test_csv_text_writes_what_python_would(ints, seconds) -> None:
    count = min(len(ints), len(seconds))
    ints, floats = ints[:count], np.array(seconds[:count])
    text = csv_text([ints, floats, ints.astype(np.int32) if np.abs(ints).max() < 2**31 else ints])
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == count
    for row, i, f in zip(rows, ints, floats):
        assert row[0] == str(int(i)) and row[2] == str(int(i))
        _, _, decimals = row[1].partition(".")
        assert len(decimals) == 6  # always six decimals
        assert abs(float(row[1]) - f) <= 5e-7 + 1e-12 * abs(f)


def test_the_log_grows_and_keeps_every_row() -> None:
    log = StepLog(capacity=100, reserve=2)
    for i in range(7):
        log.append(**{name: i for name in COLUMNS})
    log.extend(**{name: np.arange(7, 12) for name in COLUMNS})
    assert len(log) == 12
    assert log.column("token_states").tolist() == list(range(12))
    assert log.columns["step"][-1] == 11
    log.column("finished")[-1] = 99  # a view: writing it writes the log
    assert log.array("finished")[-1] == 99.0
    lines = log.to_csv().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 13
    assert lines[3].startswith("2,2.000000,2.000000,2,")


def test_time_mean_weights_steps_by_their_duration() -> None:
    log = StepLog(capacity=10)
    log.extend(**{**{name: 0 for name in COLUMNS}, "running_requests": np.array([10, 20]),
                  "duration": np.array([0.1, 0.3])})
    assert log.time_mean("running_requests") == pytest.approx(17.5)
    assert np.isnan(StepLog(capacity=10).time_mean("running_requests"))


@pytest.mark.parametrize("capacity", [0, -1, 2**31])
def test_a_log_refuses_capacities_its_counts_cannot_hold(capacity) -> None:
    with pytest.raises(InvalidArgumentError):
        StepLog(capacity)
