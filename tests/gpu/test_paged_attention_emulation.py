"""The CUDA source of paged_attention (decode), run on the CPU (host emulation), equals its
NumPy twin bit for bit.

Not a GPU test: like ``test_prefill_emulation.py``, it compiles the very ``.cu`` file the
GPU runs with g++ and ``host_emulation/cuda_shim.h`` (a std::thread per CUDA thread,
barriers, warp shuffles, cp.async copies done at the latest moment their wait allows,
dynamic shared memory poisoned with NaN before every block), launches the main kernel
and, for split-K, the reduce kernel, on the grid the launcher would use, and compares
the output with the twin's. So the decode kernel's indexing, chunking, head slices,
reduce-scatter trees and split-K combine are checked on a machine without a GPU, in CI;
races, timing and NVRTC's own code are left to the GPU tests and compute-sanitizer.
``TS_EMULATION_EXAMPLES=50`` runs more random cases than the default 6.

The CPU has no tensor cores: the shim does ``ldmatrix`` and ``mma.sync`` with a warp of
threads and the measured rule of ``tinyserve_sim/data/tensor_core.py`` (ported to C++), so
the tensor-core logits of float16 GQA plans (``tensor_core_logits``) and their ``P V`` from
GQA-4 up (``tensor_core_values``: ``ldmatrix .trans``, the probabilities' float16 parts in
shared memory, the zeroed padding rows of V) are emulated too: their fragment indexing and
the swizzled tiles are checked here, the rule itself against the hardware in
``test_gpu_tensor_core.py``.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from gpu_helpers import assert_bits_equal  # also puts tests/data on the path
from hypothesis import given, settings
from hypothesis import strategies as st
from kv_strategies import AttentionCase, attention_cases, fixed_attention_case, select_pages

from tinyserve_sim.data import paged_attention
from tinyserve_sim.data.geometry import make_plan, partition_count
from tinyserve_sim.gpu import build

sys.path.insert(0, str(Path(__file__).resolve().parent / "host_emulation"))
import emulate  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(emulate.compiler() is None, reason="the host emulation needs g++"),
]

#: Dynamic shared memory of the emulated block (every plan's fits: at most about 100 KB),
#: and room for the reduce kernel's weights (one float per partition, and 4 floats of slack).
SMEM_CAPACITY = 128 * 1024
MAX_PARTITIONS = 4096


def _driver(main: str, ctype: str) -> str:
    return f"""
#include "paged_attention.cu"
alignas(16) uint4 smem_u4[{SMEM_CAPACITY} / 16];
alignas(16) float w_s[{MAX_PARTITIONS} + 4];
extern "C" void run(void* out, float* part_out, float* part_m, float* part_l, const void* q, const void* kc,
                    const void* vc, const int* tables, const int* lens, float scale, int Hq, int Hkv, int D, int bs,
                    int W, int seq_stride, int head_stride, int partition, int max_parts, int grid_x, int S,
                    int split, long long smem) {{
    using T = {ctype};
    ts_emu::launch(grid_x, S, 128, smem_u4, smem, [&] {{
        {main}(static_cast<T*>(out), part_out, part_m, part_l, static_cast<const T*>(q),
               static_cast<const T*>(kc), static_cast<const T*>(vc), tables, lens, scale, Hq, Hkv, D, bs, W,
               seq_stride, head_stride, partition, max_parts);
    }}, split ? max_parts : 1);
    if (split)
        ts_emu::launch(Hq, S, 128, w_s, 4 * (max_parts + 4), [&] {{
            paged_attention_reduce_kernel<T>(static_cast<T*>(out), part_out, part_m, part_l, lens, Hq, Hkv, D,
                                             seq_stride, head_stride, partition, max_parts);
        }});
}}
"""


def emulated_paged_attention(case: AttentionCase, variant: str) -> np.ndarray:
    """The kernels' output for ``case``, computed by the host emulation (output poisoned first)."""
    q, kc = case.query, case.key_cache
    S, Hq, D = q.shape
    bs, Hkv = kc.shape[1], kc.shape[2]
    batch = case.batch
    plan = make_plan(D, q.dtype, Hq // Hkv)
    split = variant == "split_k"
    main = build.paged_attention_kernel_name(plan, q.dtype, split)
    lib = emulate.load(_driver(main, build.CTYPE[np.dtype(q.dtype)]), "paged_attention")
    assert plan.shared_memory_bytes <= SMEM_CAPACITY
    max_parts = partition_count(int(np.max(batch.seq_lens)), case.partition_size) if split else 1
    assert max_parts <= MAX_PARTITIONS
    grid_x, _, _ = plan.grid(S, Hq, Hkv)
    out = np.full(q.shape, np.nan, q.dtype)
    parts = [np.full(shape, np.nan, np.float32) for shape in ((S, Hq, max_parts, D), (S, Hq, max_parts), (S, Hq, max_parts))]
    tables = np.ascontiguousarray(batch.block_tables, np.int32)
    lens = np.ascontiguousarray(batch.seq_lens, np.int32)
    seq_stride, head_stride = batch.row_strides(Hkv)
    ptr = ctypes.c_void_p
    lib.run.argtypes = [ptr] * 9 + [ctypes.c_float] + [ctypes.c_int] * 12 + [ctypes.c_longlong]
    lib.run(out.ctypes.data, *(p.ctypes.data for p in parts), q.ctypes.data, kc.ctypes.data,
            case.value_cache.ctypes.data, tables.ctypes.data, lens.ctypes.data, np.float32(case.scale),
            Hq, Hkv, D, bs, batch.max_blocks, seq_stride, head_stride, case.partition_size, max_parts,
            grid_x, S, int(split), plan.shared_memory_bytes)
    return out


def _twin(case: AttentionCase, variant: str) -> np.ndarray:
    return paged_attention(*case.args(), variant=variant, partition_size=case.partition_size)


@pytest.mark.parametrize("variant", ["one_pass", "split_k"])
@pytest.mark.parametrize(
    "dtype, head_dim, group",
    [(np.float16, 128, 4), (np.float16, 128, 8), (np.float16, 64, 8), (np.float32, 128, 8), (np.float16, 64, 1),
     (np.float32, 96, 3), (np.float16, 256, 2), (np.float32, 8, 32), (np.float16, 48, 4), (np.float16, 128, 16)],
    # float16 GQA-4 at D 128, GQA-8 at D 128 and 64 (two slices of 4 heads): logits and P V on
    # tensor cores; GQA-2 at D 256: logits only; GQA-8 in float32 (one slice of 8); MHA; a partial
    # head tile; tiles x slices; and float16 GQA on CUDA cores (D 48: under 64; 16 heads a block:
    # more than the instruction's 8)
)
def test_fixed_shapes_equal_the_twin(variant, dtype, head_dim, group):
    # 300 tokens: several chunks (32, 64 or 128 tokens by the plan), the last one partial; a
    # second sequence 37 shorter; 128-token partitions.
    case = fixed_attention_case(head_dim * group, dtype, 2, 2 * group, 2, head_dim, 16, [300, 263], 128)
    assert_bits_equal(emulated_paged_attention(case, variant), _twin(case, variant))


@settings(max_examples=int(os.environ.get("TS_EMULATION_EXAMPLES", "6")), deadline=None)
@given(
    case=attention_cases(max_len=400, max_seqs=3),
    variant=st.sampled_from(["one_pass", "split_k"]),
    per_head=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_cases_equal_the_twin(case: AttentionCase, variant: str, per_head: bool, seed: int):
    """Shared or per-(sequence, KV head) tables (query-aware selection's compacted pages)."""
    if per_head:
        case = select_pages(case, seed)
    assert_bits_equal(emulated_paged_attention(case, variant), _twin(case, variant))
