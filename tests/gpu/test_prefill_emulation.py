"""The CUDA source of paged_prefill_attention, run on the CPU (host emulation), equals its
NumPy twin bit for bit.

Not a GPU test: ``host_emulation/cuda_shim.h`` turns the kernel's CUDA threads into
std::threads (barriers for ``__syncthreads``, a per-warp exchange for shuffles,
cp.async copies done at the latest moment their wait allows, shared memory
poisoned with NaN before every block), and g++ compiles the very source the GPU
runs. So the kernel's indexing, tiling, masking and operation order are checked
on any machine with g++; what only hardware shows (races, timing, NVRTC's code)
is left to the GPU tests and compute-sanitizer. Slow: each instantiation is
compiled once (cached in the temp folder), and a thread block is 256 or 512 threads;
``TS_EMULATION_EXAMPLES=50`` runs more random cases than the default 6."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from gpu_helpers import assert_bits_equal  # also puts tests/data on the path
from hypothesis import example, given, settings
from prefill_strategies import fixed_prefill_case, minus_zero_prefill_case, prefill_cases

from tinyserve_sim.control.prefill_batch import PrefillBatch
from tinyserve_sim.data import paged_prefill_attention
from tinyserve_sim.data import prefill_plan
from tinyserve_sim.data.prefill_plan import prefill_plan_for, work_items
from tinyserve_sim.gpu import build

sys.path.insert(0, str(Path(__file__).resolve().parent / "host_emulation"))
import emulate  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(emulate.compiler() is None, reason="the host emulation needs g++"),
]

#: Dynamic shared memory of the emulated block: the largest plan's (H100's opt-in limit).
SMEM_CAPACITY = 232448


def _driver(name: str, ctype: str, threads: int) -> str:
    return f"""
#include "paged_prefill_attention.cu"
alignas(16) float4 ts_smem[{SMEM_CAPACITY} / 16];
extern "C" void run(void* out, const void* q, const void* kc, const void* vc, const int* tables, const int* lens,
                    const int* starts, const int* work, int n_items, int Hkv, float scale, int Hq, int D, int bs,
                    int W, long long smem) {{
    using T = {ctype};
    ts_emu::launch(n_items, Hkv, {threads}, ts_smem, smem, [&] {{
        {name}(static_cast<T*>(out), static_cast<const T*>(q), static_cast<const T*>(kc),
               static_cast<const T*>(vc), tables, lens, starts, work, scale, Hq, Hkv, D, bs, W);
    }});
}}
"""


def emulated_prefill(q, kc, vc, batch: PrefillBatch, scale: float) -> np.ndarray:
    """The kernel's output, computed by the host emulation (output poisoned with NaN first)."""
    T, Hq, D = q.shape
    Hkv = kc.shape[2]
    plan = prefill_plan_for(D, q.dtype)
    name = build.paged_prefill_attention_kernel_name(plan, q.dtype)
    lib = emulate.load(_driver(name, build.CTYPE[np.dtype(q.dtype)], plan.threads), "paged_prefill_attention")
    smem = plan.shared_memory_bytes(q.dtype)
    assert smem <= SMEM_CAPACITY
    work = work_items(batch.query_start_loc, batch.seq_lens, Hq // Hkv, plan.row_tile)
    out = np.full(q.shape, np.nan, q.dtype)
    ints = [np.ascontiguousarray(a) for a in (batch.block_tables, batch.seq_lens, batch.query_start_loc, work)]
    ptr = ctypes.c_void_p
    lib.run.argtypes = [ptr] * 8 + [ctypes.c_int, ctypes.c_int, ctypes.c_float] + [ctypes.c_int] * 4 + [ctypes.c_longlong]
    lib.run(out.ctypes.data, q.ctypes.data, kc.ctypes.data, vc.ctypes.data, *(a.ctypes.data for a in ints),
            len(work), Hkv, np.float32(scale), Hq, D, kc.shape[1], batch.max_blocks, smem)
    return out


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("head_dim", [40, 128, 192, 256])
def test_every_instantiation_equals_the_twin(dtype, head_dim):
    # Two sequences: one whose new tokens span several row tiles and key tiles over a
    # prefix that ends mid-block, and a one-token one; GQA groups of 3.
    case = fixed_prefill_case(head_dim, dtype, head_dim, 7, 3, seq_lens=[120, 9], query_lens=[50, 1], spare_blocks=2)
    twin = paged_prefill_attention(*case.args())
    assert_bits_equal(emulated_prefill(*case.args()), twin)


@pytest.mark.parametrize("head_dim", [40, 128, 192, 256])
@pytest.mark.parametrize("scores, values", [(False, False), (True, False)])
def test_cuda_core_paths_equal_the_twin(monkeypatch, head_dim, scores, values):
    # float16 with part of the tensor-core work switched off (prefill_plan.TENSOR_CORE_SCORES
    # and TENSOR_CORE_VALUES; the other tests here run the default, both on: the shim's
    # ldmatrix and mma.sync, the kernel's fragment indexing, the raw dot products' trip
    # through the probabilities' buffer, the probabilities' float16 parts, against the
    # twin's mma_chain and accumulate_values). Each path rounds apart from the default.
    case = fixed_prefill_case(head_dim, np.float16, head_dim, 7, 3, seq_lens=[120, 9], query_lens=[50, 1], spare_blocks=2)
    plan = prefill_plan_for(head_dim, np.float16)
    assert plan.tensor_core_scores and plan.tensor_core_values
    tensor_cores = paged_prefill_attention(*case.args())
    monkeypatch.setattr(prefill_plan, "TENSOR_CORE_SCORES", scores)
    monkeypatch.setattr(prefill_plan, "TENSOR_CORE_VALUES", values)
    plan = prefill_plan_for(head_dim, np.float16)
    assert (plan.tensor_core_scores, plan.tensor_core_values) == (scores, values)
    twin = paged_prefill_attention(*case.args())
    assert_bits_equal(emulated_prefill(*case.args()), twin)
    assert not np.array_equal(tensor_cores.view(np.uint16), twin.view(np.uint16))


@settings(max_examples=int(os.environ.get("TS_EMULATION_EXAMPLES", "6")), deadline=None)
@given(case=prefill_cases(max_len=160, max_new=48, head_dims=(8, 64, 96, 160)))
@example(case=fixed_prefill_case(0, np.float16, 128, 16, 4, seq_lens=[64, 200], query_lens=[64, 72], spare_blocks=2))  # whole key tiles
def test_random_cases_equal_the_twin(case):
    twin = paged_prefill_attention(*case.args())
    assert_bits_equal(emulated_prefill(*case.args()), twin)


def test_tiles_past_a_row_leave_no_sign_of_zero():
    # Token 0's accumulator in dim 0 is -0 after the first key tile; the kernel's walk over
    # the second tile for it (its block's later rows need that tile) adds fma(0, 1, -0) =
    # +0. The output's + 0 makes both sides +0: before it, the twin gave -0 and the kernel +0.
    case = minus_zero_prefill_case(np.float32)
    twin = paged_prefill_attention(*case.args())
    assert twin[0, 0, 0] == 0 and not np.signbit(twin[0, 0, 0])
    assert_bits_equal(emulated_prefill(*case.args()), twin)
