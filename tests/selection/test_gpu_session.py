"""On a GPU: a selection session on the cupy backend makes exactly the NumPy session's choices.

The scores are bit-identical (the data plane's GPU tests prove it kernel by kernel), so every
step's selection, and therefore every fast-tier hit and miss, must be the same; the fast tier's
pages, copied host-to-device on a miss, must equal the host's. Run on the GPU machine:
``pytest -m gpu tests/selection``.
"""

from __future__ import annotations

import numpy as np
import pytest

from tinyserve_sim.selection import AttentionWorkloadSpec, SelectionConfig, SelectionSession, generate_attention_workload

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_cupy_session_equals_numpy_session(dtype: str) -> None:
    spec = AttentionWorkloadSpec(num_seqs=3, context_len=700, decode_steps=12, num_kv_heads=2, num_q_heads=8,
                                 head_dim=64, topic_stay=0.6, dtype=dtype, seed=21)
    workload = generate_attention_workload(spec)
    sessions = {
        name: SelectionSession(workload, SelectionConfig(budget=1 / 8, capacity=1.25, backend=name, move_data=True))
        for name in ("numpy", "cupy")
    }
    for _ in range(spec.decode_steps):
        cpu, gpu = sessions["numpy"].step(), sessions["cupy"].step()
        a, b = cpu.selection, gpu.selection
        assert np.array_equal(a.scores.view(np.uint32), b.scores.view(np.uint32))  # bit for bit
        assert np.array_equal(a.reasons, b.reasons)
        assert np.array_equal(a.sparse.block_tables, b.sparse.block_tables)
        assert np.array_equal(a.sparse.seq_lens, b.sparse.seq_lens)
        for name in cpu.tiers:
            assert cpu.tiers[name] == gpu.tiers[name]
        assert np.array_equal(cpu.quality.recall, gpu.quality.recall)
    gpu_session = sessions["cupy"]
    for name, tier in gpu_session.tiers.items():
        fast = gpu_session.fast[name]
        for block, head in tier.resident():
            keys, values = fast.page(tier.slot_of((block, head)))  # device -> host
            assert np.array_equal(keys, gpu_session.host.key_cache[block, :, head])
            assert np.array_equal(values, gpu_session.host.value_cache[block, :, head])
    kmin, kmax = gpu_session.cache.metadata_to_numpy()
    cmin, cmax = sessions["numpy"].cache.metadata_to_numpy()
    assert np.array_equal(kmin, cmin) and np.array_equal(kmax, cmax)
