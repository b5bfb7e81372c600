"""The figures printed on docs/concepts/query-aware-selection.md are the code's."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.selection.selector import SelectionRecord

PAGE = Path(__file__).resolve().parents[2] / "docs" / "concepts" / "query-aware-selection.md"


def _ceiling_table() -> dict[tuple[Fraction, int], float]:
    text = PAGE.read_text()
    header = re.search(r"^\| budget \| block size (\d+) \| block size (\d+) \| block size (\d+) \|$", text, re.M)
    assert header, "the byte-ceiling table is gone"
    sizes = [int(x) for x in header.groups()]
    table = {}
    for budget, *cells in re.findall(r"^\| 1/(\d+) \| ([\d.]+)x \| ([\d.]+)x \| ([\d.]+)x \|$", text, re.M):
        for size, cell in zip(sizes, cells):
            table[Fraction(1, int(budget)), size] = float(cell)
    return table


def _record(budget: Fraction, block_size: int, pages: int = 64, head_dim: int = 64) -> SelectionRecord:
    """A step of one sequence of full pages, keeping ``budget`` of them, as the selector records it."""
    kept = int(pages * budget)
    dense = DecodeBatch.from_tables([list(range(pages))], [pages * block_size], block_size)
    sparse = dense.with_head_tables(np.arange(kept, dtype=np.int32).reshape(1, 1, kept),
                                    np.array([[kept * block_size]], dtype=np.int32))
    reasons = np.zeros((1, 1, pages), np.int8)
    return SelectionRecord(0, dense, sparse, np.zeros((1, 1, pages), np.float32), reasons, kept * block_size,
                           head_dim, 2)


def test_the_byte_ceiling_table_is_the_records_ceiling() -> None:
    table = _ceiling_table()
    assert len(table) == 9
    for (budget, block_size), shown in table.items():
        ceiling = _record(budget, block_size).byte_ceiling
        assert ceiling == pytest.approx(float(1 / (budget + Fraction(1, block_size))))
        assert f"{ceiling:.2f}" == f"{shown:.2f}", (budget, block_size)
