"""Real third-party kernels on the simulator's exported tables and caches (GPU).

A replayed trace (forks and copy-on-write included) is exported with
``DecodeBatch.to_vllm`` / ``to_flashinfer`` and its caches converted with
``tinyserve_sim.data.layouts``; then

* PyTorch's FlexAttention, through its paged-KV helper
  (``torch.nn.attention.experimental._paged_attention.PagedAttention``), reads the
  vLLM-style page table, and
* FlashInfer's ``BatchDecodeWithPagedKVCacheWrapper`` reads the CSR page table
  (NHD and HND caches, CUDA-core and tensor-core paths),

and their outputs must agree with this project's ``paged_attention`` within
``external_kernel_error_bound + attention_error_bound`` (their bound against float64
plus ours; docs/how-to/export-to-a-server.md derives it). Different kernels: bits are
not expected to match. A kernel reading a wrong page breaks the bound
(tests/data/test_paged_attention.py::test_the_agreement_bound_still_catches_a_wrong_page).

torch and FlashInfer are not dependencies of the project: each test skips, saying so,
where its library is not importable. Shapes: the benchmark's (``benchmarks/bench_kernels.py``:
32 query heads, head dim 128, float16, 16-token pages) and Hypothesis-drawn small cases.
``TS_THIRD_PARTY_QUICK=1`` runs one benchmark shape instead of six.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from gpu_helpers import GPU_SETTINGS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from third_party import ReplayedState, agreement_bound, check_agreement, head_subset, replay_with_forks

from tinyserve_sim.data import paged_attention
from tinyserve_sim.data.layouts import to_flashinfer_cache, to_flex_attention_cache
from tinyserve_sim.data.reference import EPS_EXP_EXTERNAL

pytestmark = pytest.mark.gpu

#: (batch, tokens, KV heads) of bench_kernels.py's attention cases; 32 query heads, D = 128.
BENCH_SHAPES = [(64, 4096, 32), (64, 4096, 8), (1, 65536, 32), (1, 65536, 8), (8, 32768, 32), (8, 32768, 8)]
if os.environ.get("TS_THIRD_PARTY_QUICK"):
    BENCH_SHAPES = [(8, 4096, 8)]
#: Hypothesis cases compile new kernels (torch.compile, FlashInfer's JIT): keep them few.
FEW = settings(GPU_SETTINGS, max_examples=min(GPU_SETTINGS.max_examples, 12),
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _torch():
    return pytest.importorskip("torch", reason="PyTorch is not importable here (it is not a project dependency)")


def _flashinfer():
    _torch()
    return pytest.importorskip(
        "flashinfer", reason="FlashInfer is not importable here (not a project dependency; see how-to/run-gpu-tests)"
    )


def _ours(state: ReplayedState) -> np.ndarray:
    """This project's output: the CUDA kernel (bit-identical to the twin, tested elsewhere)."""
    import cupy as cp

    from tinyserve_sim.gpu import launchers

    out = launchers.paged_attention(
        cp.asarray(state.query), cp.asarray(state.key_cache), cp.asarray(state.value_cache), state.batch, state.scale
    )
    return out.get()


def _bench_state(B: int, L: int, Hkv: int, seed: int = 0) -> ReplayedState:
    return replay_with_forks([L] * B, block_size=16, num_kv_heads=Hkv, group=32 // Hkv, head_dim=128, seed=seed,
                             magnitude=2.0, write_values=False)


# ----------------------------------------------------------------------- FlashInfer
def run_flashinfer(state: ReplayedState, layout: str, use_tensor_cores: bool) -> np.ndarray:
    """FlashInfer's batch decode on the CSR export of ``state.batch``."""
    import cupy as cp
    import torch

    flashinfer = _flashinfer()
    csr = state.batch.to_flashinfer()
    dev = torch.device("cuda")
    S, Hq, D = state.query.shape
    Hkv = state.key_cache.shape[2]
    workspace = torch.empty(128 * 1024 * 1024, dtype=torch.uint8, device=dev)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, layout, use_tensor_cores=use_tensor_cores)
    wrapper.plan(
        torch.from_numpy(csr.kv_indptr.copy()).to(dev),
        torch.from_numpy(csr.kv_indices.copy()).to(dev),
        torch.from_numpy(csr.kv_last_page_len.copy()).to(dev),
        Hq, Hkv, D, csr.page_size,
        q_data_type=torch.float16, kv_data_type=torch.float16, sm_scale=state.scale,
    )
    kv = torch.from_dlpack(to_flashinfer_cache(cp.asarray(state.key_cache), cp.asarray(state.value_cache), layout))
    q = torch.from_numpy(state.query.copy()).to(dev)
    out = wrapper.run(q, kv)
    torch.cuda.synchronize()
    return out.float().cpu().numpy()


def _bench_bound(state: ReplayedState, tokens_per_rescale: int) -> tuple[np.ndarray, np.ndarray]:
    """The agreement bound for the first and the last KV head of every sequence (the float64
    bound of all 32 heads at these lengths would take minutes of CPU), and their columns."""
    Hkv = state.key_cache.shape[2]
    sub, columns = head_subset(state, sorted({0, Hkv - 1}))
    return agreement_bound(sub, tokens_per_rescale), columns


@pytest.mark.parametrize("B,L,Hkv", BENCH_SHAPES)
def test_flashinfer_agrees_on_the_benchmark_shapes(B, L, Hkv):
    state = _bench_state(B, L, Hkv)
    ours = _ours(state)
    allowed, columns = _bench_bound(state, 1)
    for layout, tensor_cores in (("NHD", False), ("HND", False), ("NHD", True)):
        theirs = run_flashinfer(state, layout, tensor_cores)
        assert np.isfinite(theirs).all()
        check_agreement(theirs[:, columns], ours[:, columns], allowed,
                        f"FlashInfer {layout} tensor_cores={tensor_cores} B={B} L={L} Hkv={Hkv}")


@FEW
@given(
    lens=st.lists(st.integers(1, 700), min_size=1, max_size=4),
    block_size=st.sampled_from([1, 5, 16, 32]),
    num_kv_heads=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 2, 4, 8]),
    magnitude=st.sampled_from([1.0, 3.0]),
    layout=st.sampled_from(["NHD", "HND"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_flashinfer_agrees_on_small_replayed_traces(lens, block_size, num_kv_heads, group, magnitude, layout, seed):
    _flashinfer()
    state = replay_with_forks(lens, block_size, num_kv_heads, group, 128, seed, magnitude)
    ours = paged_attention(state.query, state.key_cache, state.value_cache, state.batch, state.scale)
    check_agreement(run_flashinfer(state, layout, False), ours, agreement_bound(state), f"FlashInfer {layout}")


# ---------------------------------------------------------------- FlexAttention
_COMPILED = {}


def run_flex_attention(state: ReplayedState) -> np.ndarray:
    """FlexAttention over the vLLM-style export, through PyTorch's PagedAttention helper.

    Its caches are ``[1, Hkv, num_pages * page_size, D]`` (``to_flex_attention_cache``);
    its page table is the exported block table, row by row, with the inverse map
    (physical page -> logical block) filled for the pages each sequence uses."""
    import cupy as cp
    import torch

    paged = pytest.importorskip("torch.nn.attention.experimental._paged_attention",
                                reason="this torch has no FlexAttention paged-KV helper")
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    dev = torch.device("cuda")
    tables = state.batch.to_vllm()
    S, Hq, D = state.query.shape
    num_pages, page_size, Hkv, _ = state.key_cache.shape
    lens = tables.seq_lens.astype(np.int64)
    pa = paged.PagedAttention(num_pages, page_size, S, device=dev)
    for s in range(S):
        used = -(-int(lens[s]) // page_size)
        pages = torch.as_tensor(tables.block_tables[s, :used].astype(np.int64), device=dev)
        pa.page_table[s, :used] = pages
        pa.physical_to_logical[s, pages] = torch.arange(used, device=dev)
        pa.capacity[s] = used * page_size
    lens_t = torch.as_tensor(lens, device=dev)
    if hasattr(pa, "seq_lens"):
        pa.seq_lens[:S] = lens_t

    def within_length(b, h, q_idx, kv_idx):
        return kv_idx < lens_t[b]

    kv_len = tables.block_tables.shape[1] * page_size
    logical = create_block_mask(within_length, S, None, 1, kv_len, device=dev, BLOCK_SIZE=(128, page_size))
    mask = pa.convert_logical_block_mask(logical, torch.arange(S, device=dev))
    k = torch.from_dlpack(to_flex_attention_cache(cp.asarray(state.key_cache)))
    v = torch.from_dlpack(to_flex_attention_cache(cp.asarray(state.value_cache)))
    q = torch.from_numpy(state.query.copy()).to(dev).view(S, Hq, 1, D)
    compiled = _COMPILED.setdefault("flex", torch.compile(flex_attention))
    errors = []
    # Inductor picks its tiles; with 16-token pages some shapes need 16-wide KV tiles.
    for options in (None, {"BLOCK_N": 16}, {"BLOCK_M": 16, "BLOCK_N": 16}):
        try:
            # Past dynamo's recompile limit, flex_attention silently runs an unfused fallback
            # that materialises every score; agreeing with it would say nothing about
            # FlexAttention's kernel, so its warning is an error here.
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message=".*without torch.compile.*")
                out = compiled(q, k, v, block_mask=mask, scale=state.scale, enable_gqa=Hq != Hkv, kernel_options=options)
            torch.cuda.synchronize()
            return out.reshape(S, Hq, D).float().cpu().numpy()
        except Exception as exc:  # noqa: BLE001 - report every attempt if none works
            errors.append(f"{options}: {type(exc).__name__}: {str(exc)[:200]}")
    raise AssertionError("FlexAttention did not run: " + "; ".join(errors))


@pytest.mark.parametrize("B,L,Hkv", BENCH_SHAPES)
def test_flex_attention_agrees_on_the_benchmark_shapes(B, L, Hkv):
    _torch()
    state = _bench_state(B, L, Hkv, seed=1)
    ours = _ours(state)
    # FlexAttention's KV loop takes >= 16 tokens (one tile) per online-softmax rescale.
    allowed, columns = _bench_bound(state, 16)
    theirs = run_flex_attention(state)
    assert np.isfinite(theirs).all()
    check_agreement(theirs[:, columns], ours[:, columns], allowed, f"FlexAttention B={B} L={L} Hkv={Hkv}")


@FEW
@given(
    lens=st.lists(st.integers(1, 700), min_size=1, max_size=4),
    num_kv_heads=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 4]),
    magnitude=st.sampled_from([1.0, 3.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_flex_attention_agrees_on_small_replayed_traces(lens, num_kv_heads, group, magnitude, seed):
    _torch()
    state = replay_with_forks(lens, 16, num_kv_heads, group, 64, seed, magnitude)
    ours = paged_attention(state.query, state.key_cache, state.value_cache, state.batch, state.scale)
    check_agreement(run_flex_attention(state), ours, agreement_bound(state, tokens_per_rescale=16), "FlexAttention")


# ------------------------------------------------------- the assumed exp accuracy
def test_ex2_approx_is_as_accurate_as_the_external_bound_assumes():
    """Both libraries' softmax uses PTX ex2.approx (Triton's exp2, FlashInfer's ptx_exp2).
    The external bound assumes a relative error <= EPS_EXP_EXTERNAL = 2**-21; measure it
    on 2**22 arguments in [-126, 0] (softmax arguments are <= 0), both flavours."""
    import cupy as cp

    source = r'''
    extern "C" __global__ void ex2(const float* x, float* y, float* y_ftz, long long n) {
        long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
        if (i >= n) return;
        float r, r_ftz;
        asm("ex2.approx.f32 %0, %1;" : "=f"(r) : "f"(x[i]));
        asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r_ftz) : "f"(x[i]));
        y[i] = r; y_ftz[i] = r_ftz;
    }'''
    kernel = cp.RawKernel(source, "ex2")
    n = 1 << 22
    rng = np.random.default_rng(0)
    x = np.concatenate([-rng.random(n - 4096) * 126, -np.linspace(0, 1, 4096)]).astype(np.float32)
    xd, y, y_ftz = cp.asarray(x), cp.empty(n, cp.float32), cp.empty(n, cp.float32)
    kernel(((n + 255) // 256,), (256,), (xd, y, y_ftz, np.int64(n)))
    exact = np.exp2(x.astype(np.float64))
    for name, got in (("ex2.approx.f32", y.get()), ("ex2.approx.ftz.f32", y_ftz.get())):
        rel = np.abs(got.astype(np.float64) - exact) / exact
        print(f"{name}: max relative error {rel.max():.3g} (2**{np.log2(rel.max()):.2f})")
        assert rel.max() <= EPS_EXP_EXTERNAL, name
