"""The kernel page's FLOP and byte table for paged_prefill_attention is what prefill_cost computes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tinyserve_sim.data.prefill_plan import prefill_cost

PAGE = Path(__file__).resolve().parents[2] / "docs" / "kernels" / "paged_prefill_attention.md"


def test_the_flop_and_byte_table_is_computed():
    rows = re.findall(r"^\| ([\d,]+) \| (\d+) \| (.+?) \|$", PAGE.read_text(), flags=re.MULTILINE)
    assert len(rows) == 4
    for prefix, kv_heads, rest in rows:
        P, Hkv = int(prefix.replace(",", "")), int(kv_heads)
        B, N, Hq, D = 8, 2048, 32, 128
        c = prefill_cost(np.arange(B + 1, dtype=np.int32) * N, np.full(B, P + N, np.int32), Hq, Hkv, D, 2)
        expected = [
            f"{c.flops / 1e9:,.1f} G",
            f"{c.min_bytes / 1e6:,.0f} MB",
            f"{c.flops / c.min_bytes:,.0f}",
            f"{c.executed_flops / c.flops:.3f}",
            f"{c.tile_bytes / 1e9:.1f} GB",
        ]
        assert [cell.strip() for cell in rest.split("|")] == expected, (prefix, kv_heads)
