"""The control-plane benchmark's ``--bound`` loop does a decode's work: the same state as ``decode``.

``benchmarks/bench_control_plane.py --bound`` times a bare per-token loop as a lower
bound on any batched decode written in Python. The bound means something only if that
loop does all of a decode's work on the benchmark's trace; this test holds it to that.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from tinyserve_sim import BlockManager

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_control_plane.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_control_plane", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bare_decode_leaves_the_state_decode_leaves():
    bench = _bench_module()
    batched = bench.batch_decodes(bench.generate_serving(6_000, seed=3))
    assert sum(1 for op, _, _ in batched if op == "decode") > 20
    ours = BlockManager(100_000, 16, prefix_caching=True)
    bare = BlockManager(100_000, 16, prefix_caching=True)
    for op, seq, arg in batched:
        if op == "decode":
            ours.decode(seq, arg)
            bench.bare_decode(bare, seq, arg)
        elif op == "add":
            ours.add(seq, arg)
            bare.add(seq, arg)
        else:
            ours.free(seq)
            bare.free(seq)
        # The bare loop numbers no operation; everything else must be equal, step by step.
        expected = dataclasses.replace(ours.snapshot(), op_index=0)
        assert dataclasses.replace(bare.snapshot(), op_index=0) == expected
    assert ours.cache.cached_blocks(), "the trace must fill and hash blocks"
