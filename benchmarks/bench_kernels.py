"""Kernel benchmark: bytes moved / median time, as a fraction of a device-to-device copy.

Run on a GPU machine (it never asserts on time; it prints figures)::

    python benchmarks/bench_kernels.py            # everything
    python benchmarks/bench_kernels.py --quick    # fewer repeats, no torch.compile baseline

For each case: CUDA events around each launch, warm-up first, the median of
several repeats, inputs larger than L2. Bytes are the fewest the kernel must
move: every input byte read once, every output byte written once. Baselines,
in the same run: PyTorch's scaled_dot_product_attention on the same K/V
gathered into contiguous tensors, the gather followed by that call, and
FlexAttention driven by PyTorch's paged-KV helper, compiled.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable

import cupy as cp
import numpy as np
from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.gpu import launchers

ROWS: list[tuple[str, float, float]] = []  # (name, seconds, fraction of copy)


def time_cupy(fn: Callable[[], object], reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    cp.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(reps):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
    return statistics.median(times)


def time_torch(fn: Callable[[], object], reps: int, warmup: int = 3) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def report(name: str, nbytes: float, seconds: float, copy_bw: float) -> None:
    bw = nbytes / seconds
    ROWS.append((name, seconds, bw / copy_bw))
    print(f"{name:<58s} {seconds * 1e3:9.3f} ms {bw / 1e12:7.3f} TB/s {bw / copy_bw:6.2f} of copy", flush=True)


def copy_bandwidth(reps: int) -> float:
    n = 1 << 30  # 1 GiB, far larger than the 50 MB L2
    a = cp.random.random(n // 4, dtype=cp.float32)
    b = cp.empty_like(a)
    t = time_cupy(lambda: cp.copyto(b, a), reps)
    bw = 2 * n / t
    print(f"{'device-to-device copy (1 GiB, read + write)':<58s} {t * 1e3:9.3f} ms {bw / 1e12:7.3f} TB/s   1.00 of copy")
    return bw


def bench_reshape_and_cache(copy_bw: float, reps: int) -> None:
    T, H, D, bs = 65536, 8, 128, 16
    nb = 2 * T // bs
    kc = cp.zeros((nb, bs, H, D), cp.float16)
    vc = cp.zeros_like(kc)
    key = cp.random.standard_normal((T, H, D), dtype=cp.float32).astype(cp.float16)
    value = cp.random.standard_normal((T, H, D), dtype=cp.float32).astype(cp.float16)
    slots = np.random.default_rng(0).permutation(nb * bs)[:T].astype(np.int64)
    launch = launchers.prepare_reshape_and_cache(key, value, kc, vc, slots)
    report(f"reshape_and_cache  T={T} Hkv={H} D={D} fp16", 4 * key.nbytes + slots.nbytes, time_cupy(launch, reps), copy_bw)


def bench_copy_blocks(copy_bw: float, reps: int) -> None:
    P, H, D, bs = 8192, 8, 128, 16
    nb = 2 * P
    kc = cp.random.standard_normal((nb, bs, H, D), dtype=cp.float32).astype(cp.float16)
    vc = cp.random.standard_normal((nb, bs, H, D), dtype=cp.float32).astype(cp.float16)
    perm = np.random.default_rng(1).permutation(nb)
    mapping = np.stack([perm[:P], perm[P:]], axis=1).astype(np.int64)
    launch = launchers.prepare_copy_blocks(kc, vc, mapping)
    block_bytes = bs * H * D * 2
    report(f"copy_blocks        P={P} blocks of {block_bytes // 1024} KiB x 2 caches", 4 * P * block_bytes, time_cupy(launch, reps), copy_bw)


def bench_attention(B: int, L: int, Hq: int, Hkv: int, copy_bw: float, reps: int, torch_ok: bool, flex: bool) -> None:
    D, bs = 128, 16
    nblk = L // bs
    nb = B * nblk
    rng = np.random.default_rng(2)
    kc = cp.random.standard_normal((nb, bs, Hkv, D), dtype=cp.float32).astype(cp.float16)
    vc = cp.random.standard_normal((nb, bs, Hkv, D), dtype=cp.float32).astype(cp.float16)
    q = cp.random.standard_normal((B, Hq, D), dtype=cp.float32).astype(cp.float16)
    tables = rng.permutation(nb).reshape(B, nblk).astype(np.int32)  # scattered pages
    lens = np.full(B, L, np.int32)
    nbytes = kc.nbytes + vc.nbytes + 2 * q.nbytes + tables.nbytes
    tag = f"B={B} L={L} Hq={Hq} Hkv={Hkv}"
    for variant, part in (("one_pass", 1024), ("split_k", 512), ("split_k", 1024), ("auto", 1024)):
        launch = launchers.prepare_paged_attention(q, kc, vc, DecodeBatch(bs, tables, lens), D**-0.5, variant, part)
        name = f"paged_attention {variant}" + (f"/{part}" if variant == "split_k" else "")
        report(f"{name:<26s} {tag}", nbytes, time_cupy(launch, reps), copy_bw)
    if not torch_ok:
        return
    import torch
    import torch.nn.functional as F

    tq = torch.from_dlpack(q).view(B, Hq, 1, D)
    tkc, tvc = torch.from_dlpack(kc), torch.from_dlpack(vc)
    tt = torch.from_dlpack(cp.asarray(tables)).long()
    k_contig = tkc[tt].reshape(B, L, Hkv, D).transpose(1, 2).contiguous()
    v_contig = tvc[tt].reshape(B, L, Hkv, D).transpose(1, 2).contiguous()
    gqa = Hq != Hkv
    sdpa = lambda: F.scaled_dot_product_attention(tq, k_contig, v_contig, enable_gqa=gqa)  # noqa: E731
    report(f"{'torch SDPA, contiguous K/V':<26s} {tag}", nbytes, time_torch(sdpa, reps), copy_bw)

    def gather_sdpa():
        k = tkc[tt].reshape(B, L, Hkv, D).transpose(1, 2)
        v = tvc[tt].reshape(B, L, Hkv, D).transpose(1, 2)
        return F.scaled_dot_product_attention(tq, k, v, enable_gqa=gqa)

    report(f"{'torch gather + SDPA':<26s} {tag}", nbytes, time_torch(gather_sdpa, reps), copy_bw)
    del k_contig, v_contig
    if flex:
        try:
            fn = _flex_paged(tq, tkc, tvc, tables, B, L, Hq, Hkv, D, bs)
            report(f"{'torch FlexAttention paged':<26s} {tag}", nbytes, time_torch(fn, reps), copy_bw)
        except Exception as exc:  # experimental API: report, don't stop
            print(f"torch FlexAttention paged {tag}: unavailable ({type(exc).__name__}: {str(exc)[:200]})")


def _flex_paged(tq, tkc, tvc, tables, B, L, Hq, Hkv, D, bs):
    """FlexAttention over the same pages, through torch's experimental PagedAttention helper.

    Its cache layout is [1, H, n_pages * page_size, D]; the page table is the
    same block table (page i of sequence b is physical block tables[b, i])."""
    import torch
    from torch.nn.attention.experimental._paged_attention import PagedAttention
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n_pages = tkc.shape[0]
    dev = tq.device
    pa = PagedAttention(n_pages, bs, B, device=dev)
    table = torch.as_tensor(tables, device=dev, dtype=torch.int64)
    pa.page_table[:, : table.shape[1]] = table
    pa.physical_to_logical.scatter_(1, table, torch.arange(table.shape[1], device=dev).expand(B, -1).contiguous())
    pa.capacity[:] = L
    k_cache = tkc.reshape(n_pages * bs, Hkv, D).transpose(0, 1).contiguous().unsqueeze(0)
    v_cache = tvc.reshape(n_pages * bs, Hkv, D).transpose(0, 1).contiguous().unsqueeze(0)
    logical = create_block_mask(lambda b, h, q_idx, kv_idx: kv_idx >= 0, B, None, 1, L, device=dev, BLOCK_SIZE=(128, bs))
    mask = pa.convert_logical_block_mask(logical, torch.arange(B, device=dev))
    score_mod = pa.get_score_mod(None)
    compiled = torch.compile(flex_attention)
    gqa = Hq != Hkv
    errors = []
    # Inductor picks its own tile sizes; with 16-token pages some shapes need
    # smaller KV tiles, so try the default first, then 16-wide tiles.
    for opts in (None, {"BLOCK_N": 16}, {"BLOCK_M": 16, "BLOCK_N": 16}):
        fn = lambda o=opts: compiled(tq, k_cache, v_cache, score_mod=score_mod, block_mask=mask, enable_gqa=gqa, kernel_options=o)  # noqa: E731
        try:
            fn()
            torch.cuda.synchronize()
            if opts:
                print(f"  (FlexAttention needed kernel_options={opts})")
            return fn
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{opts}: {type(exc).__name__}: {str(exc)[:120]}")
    raise RuntimeError("; ".join(errors))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-flex", action="store_true")
    args = ap.parse_args()
    reps = 5 if args.quick else 20
    dev = cp.cuda.runtime.getDeviceProperties(0)
    print(f"device: {dev['name'].decode()}, {dev['multiProcessorCount']} SMs, L2 {dev['l2CacheSize'] >> 20} MiB; cupy {cp.__version__}")
    torch_ok = not args.no_torch
    if torch_ok:
        try:
            import torch

            print(f"torch {torch.__version__}")
        except ImportError:
            torch_ok = False
    copy_bw = copy_bandwidth(reps)
    bench_reshape_and_cache(copy_bw, reps)
    bench_copy_blocks(copy_bw, reps)
    for B, L in ((64, 4096), (1, 65536), (8, 32768)):
        for Hkv in (32, 8):
            bench_attention(B, L, 32, Hkv, copy_bw, reps, torch_ok, flex=not args.no_flex and not args.quick)
            cp.get_default_memory_pool().free_all_blocks()
    print("\nsummary (fraction of copy bandwidth):")
    for name, t, frac in ROWS:
        print(f"  {frac:5.2f}  {name}")


if __name__ == "__main__":
    sys.exit(main())
