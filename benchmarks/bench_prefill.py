"""Prefill benchmark (and a first-run self-check): paged_prefill_attention against FlashInfer and SDPA.

Run on a GPU machine; it prints figures and never asserts on time::

    python benchmarks/bench_prefill.py                 # the checks (PASS/FAIL), then the benchmark
    python benchmarks/bench_prefill.py --checks-only   # the checks alone (a minute)
    python benchmarks/bench_prefill.py --skip-checks --quick

**Checks** (each line says PASS or FAIL; the script exits with status 1 if any fails):
the kernel against its NumPy twin, bit for bit with the output poisoned, for every
instantiation (dtype x padded head dim) and a benchmark-shaped case; that case within
the float64 bound; a prefix-cache hit giving the bits of the whole prompt on the GPU.

**Benchmark**: 8 sequences x 2,048 new tokens over 0 and over 6,144 cached prefix
tokens, 32 query heads over 8 and 32 KV heads, head dim 128, float16, 16-token pages
scattered at random. For each: our time and arithmetic rate (FLOPs = 4 D Hq per
causal (query, key) pair: 2 D for q.k, 2 D for p.v), as a fraction of the GPU's
float32 CUDA-core peak (SMs x 128 lanes x 2 FLOP x clock: the honest ceiling of a
kernel without tensor cores, and issue 16's yardstick; float16 plans run their scores and
P V on tensor cores by default, so their rate can pass it), beside FlashInfer's
``BatchPrefillWithPagedKVCacheWrapper``
on the same pages (tensor cores) and PyTorch's SDPA with a causal mask on
contiguous K/V (tensor cores): their time and the ratio (> 1: ours faster).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import cupy as cp
import numpy as np
from gpu_timing import time_torch
from gpu_timing import time_cupy as time_fn
from tinyserve_sim.control.prefill_batch import PrefillBatch
from tinyserve_sim.data import (
    make_prefill_plan,
    paged_prefill_attention,
    prefill_error_bound,
    reference_paged_prefill_attention,
)
from tinyserve_sim.data.prefill_plan import INSTANTIATION_SHAPES, prefill_cost
from tinyserve_sim.data.prefill_step import causal_pairs
from tinyserve_sim.gpu import prefill_launchers

FAILED: list[str] = []
#: Boost clock assumed when the device will not say (H100 SXM and H200: 1,980 MHz).
ASSUMED_CLOCK_MHZ = 1980


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f"  ({detail})" if detail else ""), flush=True)
    if not ok:
        FAILED.append(name)


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16 if a.dtype == np.float16 else np.uint32)


# ------------------------------------------------------------------ inputs
def make_case(rng, B, N, P, Hq, Hkv, D, bs, dtype, on_gpu=True, shared_prefix=False):
    """B sequences of P cached + N new tokens in scattered pages; random contents."""
    L = P + N
    nblk = -(-L // bs)
    nb = B * nblk + 1
    perm = rng.permutation(nb)[: B * nblk].reshape(B, nblk).astype(np.int32)
    if shared_prefix:  # every sequence's prefix blocks are the first one's (a prefix-cache hit)
        perm[1:, : P // bs] = perm[0, : P // bs]
    batch = PrefillBatch.from_tables(perm.tolist(), [L] * B, [N] * B, bs)
    shape = (nb, bs, Hkv, D)
    if on_gpu:
        kc = cp.random.standard_normal(shape, dtype=cp.float32).astype(dtype)
        vc = cp.random.standard_normal(shape, dtype=cp.float32).astype(dtype)
        q = cp.random.standard_normal((B * N, Hq, D), dtype=cp.float32).astype(dtype)
    else:
        kc = (rng.standard_normal(shape) * 2).astype(dtype)
        vc = rng.standard_normal(shape).astype(dtype)
        q = rng.standard_normal((B * N, Hq, D)).astype(dtype)
    return q, kc, vc, batch


def gpu_prefill(q, kc, vc, batch, scale):
    """Our kernel on host arrays, output poisoned with NaN first; returns the host result."""
    out = cp.full(q.shape, np.nan, dtype=q.dtype)
    prefill_launchers.paged_prefill_attention(cp.asarray(q), cp.asarray(kc), cp.asarray(vc), batch, scale, out=out)
    return out.get()


# ------------------------------------------------------------------ checks
def run_checks() -> None:
    rng = np.random.default_rng(0)
    print("== checks: GPU against the NumPy twin, bit for bit (output poisoned with NaN) ==")
    for dtype, D, bs, g, lens, qlens in INSTANTIATION_SHAPES:
        blocks = [-(-n // bs) for n in lens]
        perm = rng.permutation(sum(blocks) + 3)
        tables = np.split(perm[: sum(blocks)], np.cumsum(blocks)[:-1])
        batch = PrefillBatch.from_tables([t.tolist() for t in tables], lens, qlens, bs)
        shape = (len(perm), bs, 2, D)
        kc = (rng.standard_normal(shape) * 3).astype(dtype)
        vc = rng.standard_normal(shape).astype(dtype)
        q = rng.standard_normal((sum(qlens), 2 * g, D)).astype(dtype)
        name = f"{np.dtype(dtype).name} D={D} (padded {make_prefill_plan(D).padded_dim}) bs={bs} G={g} lens={lens} new={qlens}"
        try:
            t0 = time.perf_counter()
            gpu = gpu_prefill(q, kc, vc, batch, D**-0.5)
            twin = paged_prefill_attention(q, kc, vc, batch, D**-0.5)
            differ = int((bits(gpu) != bits(twin)).sum())
            check(f"bits {name}", differ == 0, f"{differ} of {gpu.size} differ; {time.perf_counter() - t0:.1f} s")
        except Exception as exc:  # noqa: BLE001 - a failed launch is a FAIL line, not a crash
            check(f"bits {name}", False, f"{type(exc).__name__}: {str(exc)[:300]}")

    print("== checks: a benchmark-shaped case (2 x 128 new over 384 cached, Hq 32, Hkv 8, D 128, fp16) ==")
    q, kc, vc, batch = make_case(rng, 2, 128, 384, 32, 8, 128, 16, np.float16, on_gpu=False)
    try:
        gpu = gpu_prefill(q, kc, vc, batch, 128**-0.5)
        twin = paged_prefill_attention(q, kc, vc, batch, 128**-0.5)
        differ = int((bits(gpu) != bits(twin)).sum())
        check("bits benchmark-shaped case", differ == 0, f"{differ} of {gpu.size} differ")
        ref = reference_paged_prefill_attention(q, kc, vc, batch, 128**-0.5)
        bound = prefill_error_bound(q, kc, vc, batch, 128**-0.5)
        err = np.abs(gpu.astype(np.float64) - ref)
        check("float64 bound benchmark-shaped case", bool(np.all(err <= bound)), f"max error / bound {np.max(err / bound):.3f}")
    except Exception as exc:  # noqa: BLE001
        check("benchmark-shaped case", False, f"{type(exc).__name__}: {str(exc)[:300]}")

    print("== checks: a prefix-cache hit gives the whole prompt's bits (GPU only, 8 x 2,048 over 6,144) ==")
    try:
        B, N, P, Hq, Hkv, D = 8, 2048, 6144, 32, 8, 128
        q, kc, vc, batch = make_case(rng, B, N, P, Hq, Hkv, D, 16, np.float16)
        L = P + N
        full_q = cp.random.standard_normal((B * L, Hq, D), dtype=cp.float32).astype(np.float16)
        rows = (np.arange(B)[:, None] * L + P + np.arange(N)).reshape(-1)
        q = cp.ascontiguousarray(full_q[cp.asarray(rows)])
        whole = PrefillBatch(16, batch.block_tables, batch.seq_lens, np.arange(B + 1, dtype=np.int32) * L)
        a = prefill_launchers.paged_prefill_attention(full_q, kc, vc, whole, D**-0.5)[cp.asarray(rows)].get()
        b = prefill_launchers.paged_prefill_attention(q, kc, vc, batch, D**-0.5).get()
        differ = int((bits(a) != bits(b)).sum())
        check("prefix hit == whole prompt, bit for bit", differ == 0, f"{differ} of {a.size} differ")
    except Exception as exc:  # noqa: BLE001
        check("prefix hit == whole prompt", False, f"{type(exc).__name__}: {str(exc)[:300]}")
    cp.get_default_memory_pool().free_all_blocks()


# --------------------------------------------------------------- the device
def fp32_peak(dev: dict) -> tuple[float, str]:
    """Float32 CUDA-core peak FLOP/s: SMs x 128 lanes x 2 (an FMA) x the max SM clock."""
    sms = int(dev["multiProcessorCount"])
    mhz, source = None, ""
    try:
        khz = cp.cuda.runtime.deviceGetAttribute(13, 0)  # cudaDevAttrClockRate, kHz
        if khz > 0:
            mhz, source = khz / 1000, "device attribute ClockRate"
    except Exception:  # noqa: BLE001 - removed in some CUDA versions
        pass
    if mhz is None and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
            mhz, source = float(out.splitlines()[0]), "nvidia-smi clocks.max.sm"
        except Exception:  # noqa: BLE001
            pass
    if mhz is None:
        mhz, source = ASSUMED_CLOCK_MHZ, "assumed boost clock"
    return sms * 128 * 2 * mhz * 1e6, f"{sms} SMs x 128 x 2 x {mhz:.0f} MHz ({source})"


def clock_under_load(fn: Callable[[], object], seconds: float = 1.5) -> str:
    """The SM clock nvidia-smi reports while ``fn`` runs back to back (for the record)."""
    if not shutil.which("nvidia-smi"):
        return "nvidia-smi not found"
    samples: list[str] = []

    def sample() -> None:
        time.sleep(seconds / 2)
        try:
            samples.append(subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm", "--format=csv,noheader,nounits", "-i", "0"],
                                          capture_output=True, text=True, timeout=20).stdout.strip())
        except Exception as exc:  # noqa: BLE001
            samples.append(f"? ({exc})")

    t = threading.Thread(target=sample)
    t.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        fn()
        cp.cuda.Device().synchronize()
    t.join()
    return f"{samples[0]} MHz" if samples else "?"


# ------------------------------------------------------------- baselines
def flashinfer_prefill(q, kc, vc, batch: PrefillBatch, Hq, Hkv, D):
    """FlashInfer's paged prefill on the same pages (NHD, K and V as a tuple), causal."""
    import flashinfer
    import torch

    dev = torch.device("cuda")
    bs = batch.block_size
    pages = [batch.block_tables[s, : -(-int(n) // bs)] for s, n in enumerate(batch.seq_lens)]
    kv_indptr = torch.tensor(np.r_[0, np.cumsum([len(p) for p in pages])], dtype=torch.int32, device=dev)
    kv_indices = torch.tensor(np.concatenate(pages), dtype=torch.int32, device=dev)
    last = torch.tensor((batch.seq_lens.astype(np.int64) - 1) % bs + 1, dtype=torch.int32, device=dev)
    qo_indptr = torch.tensor(batch.query_start_loc, dtype=torch.int32, device=dev)
    workspace = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=dev)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD")
    wrapper.plan(qo_indptr, kv_indptr, kv_indices, last, Hq, Hkv, D, bs, causal=True,
                 q_data_type=torch.float16, kv_data_type=torch.float16)
    tq, tk, tv = torch.from_dlpack(q), torch.from_dlpack(kc), torch.from_dlpack(vc)
    return lambda: wrapper.run(tq, (tk, tv))


def sdpa_prefill(q, kc, vc, batch: PrefillBatch, B, N, P, Hq, Hkv, D):
    """PyTorch SDPA on K/V gathered into contiguous [B, Hq, L, D] beforehand (KV heads repeated
    for GQA, outside the timed call, so that its fused tensor-core kernels apply); causal, the
    mask aligned to the bottom right when there is a prefix (query i sees keys <= P + i)."""
    import torch
    import torch.nn.functional as F

    L = P + N
    tt = torch.from_dlpack(cp.asarray(batch.block_tables)).long()
    tk, tv = torch.from_dlpack(kc), torch.from_dlpack(vc)
    k = tk[tt].reshape(B, -1, Hkv, D)[:, :L].transpose(1, 2)
    v = tv[tt].reshape(B, -1, Hkv, D)[:, :L].transpose(1, 2)
    k = k.repeat_interleave(Hq // Hkv, dim=1).contiguous()
    v = v.repeat_interleave(Hq // Hkv, dim=1).contiguous()
    tq = torch.from_dlpack(q).view(B, N, Hq, D).transpose(1, 2).contiguous()
    if P == 0:
        return lambda: F.scaled_dot_product_attention(tq, k, v, is_causal=True)
    from torch.nn.attention.bias import causal_lower_right

    mask = causal_lower_right(N, L)
    return lambda: F.scaled_dot_product_attention(tq, k, v, attn_mask=mask)


# --------------------------------------------------------------- benchmark
def run_benchmark(opts) -> None:
    dev = cp.cuda.runtime.getDeviceProperties(0)
    peak, peak_text = fp32_peak(dev)
    print(f"\n== benchmark: float32 CUDA-core peak {peak / 1e12:.1f} TFLOP/s = {peak_text} ==")
    reps = 3 if opts.quick else 10
    B, N, Hq, D, bs = 8, 2048, 32, 128, 16
    rows = []
    rng = np.random.default_rng(1)
    for P in (0, 6144):
        for Hkv in (8, 32):
            q, kc, vc, batch = make_case(rng, B, N, P, Hq, Hkv, D, bs, np.float16)
            cost = prefill_cost(batch.query_start_loc, batch.seq_lens, Hq, Hkv, D, 2)
            flops = cost.flops
            assert flops == 4 * D * Hq * B * causal_pairs(P, N)
            tag = f"B={B} new={N} prefix={P} Hq={Hq} Hkv={Hkv} D={D} fp16 bs={bs}"
            launch = prefill_launchers.prepare_paged_prefill_attention(q, kc, vc, batch, D**-0.5)
            t_ours = time_fn(launch, reps)
            rate = flops / t_ours
            line = (f"ours        {tag}: {t_ours * 1e3:8.2f} ms  {rate / 1e12:6.1f} TFLOP/s  {rate / peak:5.1%} of fp32 peak"
                    f"  [executed/counted FLOPs {cost.executed_flops / flops:.3f}; K/V into shared memory "
                    f"{cost.tile_bytes / 1e9:.1f} GB, {cost.tile_bytes / t_ours / 1e12:.1f} TB/s]")
            if P and Hkv == 8 and not opts.quick:
                line += f"  (SM clock under load: {clock_under_load(launch)})"
            print(line, flush=True)
            row = {"tag": tag, "ours": t_ours, "frac": rate / peak, "flops": flops}
            if not opts.no_torch:
                try:
                    fn = flashinfer_prefill(q, kc, vc, batch, Hq, Hkv, D)
                    row["fi"] = time_torch(fn, reps)
                    print(f"FlashInfer  {tag}: {row['fi'] * 1e3:8.2f} ms  {flops / row['fi'] / 1e12:6.1f} TFLOP/s  "
                          f"ours/FlashInfer {row['fi'] / t_ours:5.2f}x", flush=True)
                except ImportError as exc:
                    print(f"FlashInfer  {tag}: skipped, not importable ({exc})")
                except Exception as exc:  # noqa: BLE001 - report, don't stop
                    print(f"FlashInfer  {tag}: failed ({type(exc).__name__}: {str(exc)[:300]})")
                try:
                    fn = sdpa_prefill(q, kc, vc, batch, B, N, P, Hq, Hkv, D)
                    row["sdpa"] = time_torch(fn, reps)
                    print(f"SDPA        {tag}: {row['sdpa'] * 1e3:8.2f} ms  {flops / row['sdpa'] / 1e12:6.1f} TFLOP/s  "
                          f"ours/SDPA {row['sdpa'] / t_ours:5.2f}x  (contiguous K/V, KV heads repeated)", flush=True)
                except Exception as exc:  # noqa: BLE001
                    print(f"SDPA        {tag}: failed ({type(exc).__name__}: {str(exc)[:300]})")
            rows.append(row)
            del q, kc, vc
            cp.get_default_memory_pool().free_all_blocks()
    print("\nsummary (ours/X > 1: ours faster)")
    print(f"  {'case':<58s} {'ours ms':>8s} {'of fp32':>8s} {'FI ms':>7s} {'ours/FI':>8s} {'SDPA ms':>8s} {'ours/SDPA':>9s}")
    for r in rows:
        fi, sd = r.get("fi"), r.get("sdpa")
        print(f"  {r['tag']:<58s} {r['ours'] * 1e3:8.2f} {r['frac']:8.1%} "
              + (f"{fi * 1e3:7.2f} {fi / r['ours']:7.2f}x " if fi else f"{'-':>7s} {'-':>8s} ")
              + (f"{sd * 1e3:8.2f} {sd / r['ours']:8.2f}x" if sd else f"{'-':>8s} {'-':>9s}"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checks-only", action="store_true")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("--quick", action="store_true", help="3 repeats instead of 10, no clock sampling")
    ap.add_argument("--no-torch", action="store_true", help="ours only (no FlashInfer, no SDPA)")
    ap.add_argument("--cuda-core-scores", action="store_true",
                    help="float16 scores on CUDA cores, not the default tensor cores "
                         "(prefill_plan.TENSOR_CORE_SCORES = False; checks and timings both)")
    ap.add_argument("--cuda-core-values", action="store_true",
                    help="float16 P V on CUDA cores, not the default tensor cores "
                         "(prefill_plan.TENSOR_CORE_VALUES = False; checks and timings both)")
    opts = ap.parse_args()
    from tinyserve_sim.data import prefill_plan

    if opts.cuda_core_scores:
        prefill_plan.TENSOR_CORE_SCORES = False
        print("float16 scores and P V on CUDA cores (prefill_plan.TENSOR_CORE_SCORES = False)")
    if opts.cuda_core_values:
        prefill_plan.TENSOR_CORE_VALUES = False
        print("float16 P V on CUDA cores (prefill_plan.TENSOR_CORE_VALUES = False)")
    dev = cp.cuda.runtime.getDeviceProperties(0)
    print(f"device: {dev['name'].decode()}, {dev['multiProcessorCount']} SMs; cupy {cp.__version__}")
    if not opts.no_torch:
        try:
            import torch

            print(f"torch {torch.__version__}", end="")
            try:
                import flashinfer

                print(f", flashinfer {flashinfer.__version__}")
            except ImportError:
                print(", FlashInfer not importable (its rows are skipped)")
        except ImportError:
            opts.no_torch = True
            print("torch is not importable: ours only")
    if not opts.skip_checks:
        run_checks()
    if not opts.checks_only:
        run_benchmark(opts)
    if FAILED:
        print(f"\n{len(FAILED)} check(s) FAILED: {FAILED}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
