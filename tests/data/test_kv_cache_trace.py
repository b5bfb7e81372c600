"""Random traces through BlockManager, applied to a NumPy KVCache: after every step,
each live sequence's tokens read back through its block table are the ones written."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from trace_driver import gathered, run_trace

from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.data import KVCache


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16 if a.dtype == np.float16 else np.uint32)


@given(seed=st.integers(0, 2**32 - 1), block_size=st.sampled_from([1, 2, 5, 16]))
def test_cache_holds_every_live_token_after_every_step(seed, block_size):
    rng = np.random.default_rng(seed)
    manager = BlockManager(num_blocks=20, block_size=block_size, policy="fifo")
    cache = KVCache(20, block_size, 2, 8, np.float16, fill=np.nan)
    steps = []

    def check(step, model):
        kc, vc = cache.to_numpy()
        for seq, rows in model.items():
            table = manager.block_table(seq)
            assert manager.num_tokens(seq) == len(rows)
            for (k, v), (ck, cv) in zip(rows, gathered(kc, vc, table, len(rows))):
                assert (_bits(ck) == _bits(k)).all() and (_bits(cv) == _bits(v)).all()
        steps.append(step.op)

    data_steps = run_trace(manager, [cache], rng, num_ops=30, on_step=check)
    assert steps and data_steps >= 1
