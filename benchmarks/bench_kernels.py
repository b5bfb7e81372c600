"""Kernel benchmark: bytes moved / median time, as a fraction of a device-to-device copy.

Run on a GPU machine (it never asserts on time; it prints figures)::

    python benchmarks/bench_kernels.py                 # every case, every baseline
    python benchmarks/bench_kernels.py --quick         # fewer repeats, no FlexAttention (slow to compile)
    python benchmarks/bench_kernels.py --cases gqa     # the grouped-query cases only
    python benchmarks/bench_kernels.py --variants      # also each variant / V-staging choice of ours
    python benchmarks/bench_kernels.py --chunks 32,128 # also ours with the plan's chunk forced (auto variant)

For each case: CUDA events around each launch, warm-up first, the median of
several repeats, inputs larger than L2, pages scattered at random. Every
implementation of a case is timed in turn, ``--rounds`` times over (3 by
default), and its best median kept, so that a drift of the GPU's clocks
during the run does not favour whichever came first. Bytes are
the fewest the kernel must move: every input byte read once, every output
byte written once. Baselines, in the same run, on the same K/V:

* PyTorch's ``scaled_dot_product_attention`` on K/V gathered into contiguous
  tensors beforehand (the bar a paged kernel is measured against), and the
  gather followed by that call;
* FlexAttention driven by PyTorch's paged-KV helper, compiled, at the case's
  page size and at 128-token pages (its best in our runs);
* FlashInfer's ``BatchDecodeWithPagedKVCacheWrapper`` on the same pages (CSR
  page table, NHD layout), when FlashInfer is importable (it is not a
  dependency of the project: ``pip install flashinfer-python``).

The last table gives, per case, ours as a fraction of copy bandwidth and the
ratios ours / SDPA and ours / FlashInfer (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from unittest import mock

import cupy as cp
import numpy as np
from gpu_timing import device_properties, time_cupy, time_torch
from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.gpu import launchers

ROWS: list[tuple[str, float, float]] = []  # (name, seconds, fraction of copy)


@dataclass(frozen=True)
class Case:
    B: int
    L: int
    Hq: int
    Hkv: int
    D: int = 128
    bs: int = 16

    @property
    def tag(self) -> str:
        return f"B={self.B} L={self.L} Hq={self.Hq} Hkv={self.Hkv} D={self.D} bs={self.bs}"


#: The issue's cases: batch x context x heads, 16-token pages, and 128-token pages for the
#: GQA shapes; head dims 64 and 256; a GQA-8 shape (64 query heads on 8 KV heads).
CASES = {
    "mha": [Case(64, 4096, 32, 32), Case(1, 65536, 32, 32), Case(8, 32768, 32, 32)],
    "gqa": [Case(64, 4096, 32, 8), Case(1, 65536, 32, 8), Case(8, 32768, 32, 8), Case(64, 4096, 64, 8)],
    "dims": [Case(64, 4096, 32, 8, D=64), Case(64, 4096, 32, 8, D=256)],
    "pages": [Case(64, 4096, 32, 8, bs=128), Case(8, 32768, 32, 8, bs=128)],
}


@dataclass
class Result:
    case: Case
    nbytes: int
    times: dict[str, float] = field(default_factory=dict)


def report(name: str, nbytes: float, seconds: float, copy_bw: float) -> None:
    bw = nbytes / seconds
    ROWS.append((name, seconds, bw / copy_bw))
    print(f"{name:<66s} {seconds * 1e3:9.3f} ms {bw / 1e12:7.3f} TB/s {bw / copy_bw:6.2f} of copy", flush=True)


def copy_bandwidth(reps: int) -> float:
    n = 1 << 30  # 1 GiB, far larger than the 50-60 MB L2
    a = cp.random.random(n // 4, dtype=cp.float32)
    b = cp.empty_like(a)
    t = time_cupy(lambda: cp.copyto(b, a), reps)
    bw = 2 * n / t
    print(f"{'device-to-device copy (1 GiB, read + write)':<66s} {t * 1e3:9.3f} ms {bw / 1e12:7.3f} TB/s   1.00 of copy")
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


def ours(q, kc, vc, tables, lens, scale, variant="auto", partition_size=None) -> Callable[[], object]:
    """Our launcher, validated once, launched many times (the one place that knows its signature)."""
    batch = DecodeBatch(kc.shape[1], tables, lens)
    return launchers.prepare_paged_attention(q, kc, vc, batch, scale, variant, partition_size)


def forced_chunk(chunk: int) -> contextlib.AbstractContextManager:
    """Within the block, the GPU launcher plans ``chunk``-token chunks whatever the row length.

    For measuring the chunk rule of :func:`tinyserve_sim.data.geometry.make_plan` (session 7
    of the kernel notes) on another GPU. Only the launcher's plan changes, and only its chunk:
    the variant and partition stay those of the default plan (``auto`` would otherwise see the
    forced plan's shared memory), and the output is that of a twin given the same plan."""
    original = launchers.plan_launch

    def plan_launch(*args):
        plan, variant, partition = original(*args)
        return dataclasses.replace(plan, chunk=chunk), variant, partition

    return mock.patch.object(launchers, "plan_launch", plan_launch)


def bench_attention(c: Case, copy_bw: float, reps: int, opts: argparse.Namespace) -> Result:
    B, L, Hq, Hkv, D, bs = c.B, c.L, c.Hq, c.Hkv, c.D, c.bs
    nblk = L // bs
    nb = B * nblk
    rng = np.random.default_rng(2)
    kc = cp.random.standard_normal((nb, bs, Hkv, D), dtype=cp.float32).astype(cp.float16)
    vc = cp.random.standard_normal((nb, bs, Hkv, D), dtype=cp.float32).astype(cp.float16)
    q = cp.random.standard_normal((B, Hq, D), dtype=cp.float32).astype(cp.float16)
    tables = rng.permutation(nb).reshape(B, nblk).astype(np.int32)  # scattered pages
    lens = np.full(B, L, np.int32)
    nbytes = kc.nbytes + vc.nbytes + 2 * q.nbytes + tables.nbytes
    result = Result(c, nbytes)

    # (label, function, timer): everything this case times, then timed in rounds.
    timed: list[tuple[str, Callable[[], object], Callable[..., float]]] = []
    timed.append(("ours (auto)", ours(q, kc, vc, tables, lens, D**-0.5), time_cupy))
    if opts.variants:
        for variant, part in (("one_pass", 1024), *(("split_k", p) for p in (256, 512, 1024, 2048, 4096))):
            label = f"ours {variant}" + (f"/{part}" if variant == "split_k" else "")
            timed.append((label, ours(q, kc, vc, tables, lens, D**-0.5, variant, part), time_cupy))
    for chunk in opts.chunks:
        with forced_chunk(chunk):
            try:
                launch = ours(q, kc, vc, tables, lens, D**-0.5)
            except Exception as exc:  # noqa: BLE001 - a chunk too large for this plan: say so, go on
                print(f"ours chunk {chunk} {c.tag}: not launchable ({type(exc).__name__}: {str(exc)[:120]})")
                continue
        timed.append((f"ours (auto), chunk {chunk}", launch, time_cupy))
    if not opts.no_torch:
        timed += _torch_baselines(q, kc, vc, tables, c, opts)
    best = {label: float("inf") for label, _, _ in timed}
    for _ in range(opts.rounds):
        for label, fn, timer in timed:
            best[label] = min(best[label], timer(fn, reps))
    for label, seconds in best.items():
        result.times[label] = seconds
        report(f"{label:<30s} {c.tag}", nbytes, seconds, copy_bw)
    return result


def _torch_baselines(q, kc, vc, tables, c: Case, opts: argparse.Namespace) -> list[tuple[str, Callable[[], object], Callable[..., float]]]:
    """SDPA on contiguous K/V, gather + SDPA, FlashInfer and FlexAttention on the same K/V."""
    B, L, Hq, Hkv, D, bs = c.B, c.L, c.Hq, c.Hkv, c.D, c.bs
    timed = []
    import torch
    import torch.nn.functional as F

    tq = torch.from_dlpack(q).view(B, Hq, 1, D)
    tkc, tvc = torch.from_dlpack(kc), torch.from_dlpack(vc)
    tt = torch.from_dlpack(cp.asarray(tables)).long()
    k_contig = tkc[tt].reshape(B, L, Hkv, D).transpose(1, 2).contiguous()
    v_contig = tvc[tt].reshape(B, L, Hkv, D).transpose(1, 2).contiguous()
    gqa = Hq != Hkv
    sdpa = lambda: F.scaled_dot_product_attention(tq, k_contig, v_contig, enable_gqa=gqa)  # noqa: E731
    timed.append(("torch SDPA, contiguous K/V", sdpa, time_torch))

    def gather_sdpa():
        k = tkc[tt].reshape(B, L, Hkv, D).transpose(1, 2)
        v = tvc[tt].reshape(B, L, Hkv, D).transpose(1, 2)
        return F.scaled_dot_product_attention(tq, k, v, enable_gqa=gqa)

    timed.append(("torch gather + SDPA", gather_sdpa, time_torch))
    if not opts.no_flashinfer:
        try:
            timed.append(("FlashInfer batch decode", _flashinfer(tq, tkc, tvc, tables, c), time_torch))
        except ImportError as exc:
            print(f"FlashInfer batch decode {c.tag}: skipped, FlashInfer is not importable ({exc})")
        except Exception as exc:  # noqa: BLE001 - report, don't stop the run
            print(f"FlashInfer batch decode {c.tag}: failed ({type(exc).__name__}: {str(exc)[:300]})")
    if opts.flex:
        pages = [bs] if bs == 128 else [bs, 128]
        for page in pages:
            try:
                timed.append((f"FlexAttention paged, {page}-tok pages", _flex_paged(tq, k_contig, v_contig, c, page), time_torch))
            except Exception as exc:  # experimental API: report, don't stop
                print(f"FlexAttention paged {c.tag} page {page}: unavailable ({type(exc).__name__}: {str(exc)[:200]})")
    return timed


def _flashinfer(tq, tkc, tvc, tables, c: Case):
    """FlashInfer's paged decode on the same pages: CSR page table, kv_cache [pages, 2, page, Hkv, D] (NHD)."""
    import flashinfer
    import torch

    dev = tq.device
    kv = torch.stack([tkc, tvc], dim=1)  # one extra copy of the cache, outside the timed call
    nblk = tables.shape[1]
    indptr = torch.arange(0, (c.B + 1) * nblk, nblk, dtype=torch.int32, device=dev)
    indices = torch.as_tensor(tables.reshape(-1), dtype=torch.int32, device=dev)
    last = torch.full((c.B,), c.L - (nblk - 1) * c.bs, dtype=torch.int32, device=dev)
    workspace = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=dev)
    q = tq.view(c.B, c.Hq, c.D)
    best = None
    for tensor_cores in (False, True):  # report the faster of its two code paths
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=tensor_cores)
        wrapper.plan(indptr, indices, last, c.Hq, c.Hkv, c.D, c.bs, q_data_type=torch.float16, kv_data_type=torch.float16)
        fn = lambda w=wrapper: w.run(q, kv)  # noqa: E731
        t = time_torch(fn, 5)
        if best is None or t < best[0]:
            best = (t, fn)
    return best[1]


def _flex_paged(tq, k_contig, v_contig, c: Case, page: int):
    """FlexAttention over ``page``-token pages through torch's experimental PagedAttention helper.

    The pages are laid out afresh (scattered at random) from the contiguous K/V,
    so 128-token pages can be measured on the same data as 16-token ones."""
    import torch
    from torch.nn.attention.experimental._paged_attention import PagedAttention
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, L, Hq, Hkv, D = c.B, c.L, c.Hq, c.Hkv, c.D
    dev = tq.device
    nblk = L // page
    n_pages = B * nblk
    perm = torch.randperm(n_pages, device=dev)
    table = perm.view(B, nblk)
    # [1, Hkv, n_pages * page, D]: page p of sequence b holds tokens p*page.. of b.
    k_cache = torch.empty(1, Hkv, n_pages * page, D, dtype=tq.dtype, device=dev)
    v_cache = torch.empty_like(k_cache)
    slots = (table[:, :, None] * page + torch.arange(page, device=dev)).reshape(B, L)
    for b in range(B):
        k_cache[0, :, slots[b]] = k_contig[b]
        v_cache[0, :, slots[b]] = v_contig[b]
    pa = PagedAttention(n_pages, page, B, device=dev)
    pa.page_table[:, :nblk] = table
    pa.physical_to_logical.scatter_(1, table, torch.arange(nblk, device=dev).expand(B, -1).contiguous())
    pa.capacity[:] = L
    if hasattr(pa, "seq_lens"):  # newer torch masks tokens past seq_lens: every token is real here
        pa.seq_lens[:B] = L
    logical = create_block_mask(lambda b, h, q_idx, kv_idx: kv_idx >= 0, B, None, 1, L, device=dev, BLOCK_SIZE=(128, page))
    mask = pa.convert_logical_block_mask(logical, torch.arange(B, device=dev))
    score_mod = pa.get_score_mod(None)
    # Every case compiles afresh. Without the reset, the cases' shapes and page sizes use up
    # dynamo's recompile limit (8) within a few cases, after which flex_attention silently
    # runs unfused, materialising every score: 0.00-0.03 of the copy bandwidth at GQA, and
    # out of memory at the larger cases (benchmarks/results/h200_s13_bench_kernels_flex.log).
    torch._dynamo.reset()
    compiled = torch.compile(flex_attention)
    gqa = Hq != Hkv
    errors = []
    # Inductor picks its own tile sizes; with small pages some shapes need smaller KV tiles.
    for opts in (None, {"BLOCK_N": page}, {"BLOCK_M": 16, "BLOCK_N": min(page, 64)}):
        fn = lambda o=opts: compiled(tq, k_cache, v_cache, score_mod=score_mod, block_mask=mask, enable_gqa=gqa, kernel_options=o)  # noqa: E731
        try:
            with warnings.catch_warnings():  # the unfused fallback is not FlexAttention's figure: refuse it
                warnings.filterwarnings("error", message=".*without torch.compile.*")
                fn()
            torch.cuda.synchronize()
            if opts:
                print(f"  (FlexAttention needed kernel_options={opts})")
            return fn
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{opts}: {type(exc).__name__}: {str(exc)[:120]}")
    raise RuntimeError("; ".join(errors))


def summary(results: list[Result], copy_bw: float) -> None:
    print("\nsummary: fraction of copy bandwidth, and ours / baseline as a throughput ratio (> 1: ours faster)")
    print(f"  {'case':<44s} {'ours':>6s} {'SDPA':>6s} {'ours/SDPA':>10s} {'FlashInfer':>11s} {'ours/FI':>8s} {'best Flex':>10s}")
    for r in results:
        c, nbytes = r.case, r.nbytes
        frac = {k: nbytes / t / copy_bw for k, t in r.times.items()}
        ours_t = r.times["ours (auto)"]
        sdpa = r.times.get("torch SDPA, contiguous K/V")
        fi = r.times.get("FlashInfer batch decode")
        flex = [t for k, t in r.times.items() if k.startswith("FlexAttention")]
        cells = [
            f"{frac['ours (auto)']:6.2f}",
            f"{nbytes / sdpa / copy_bw:6.2f}" if sdpa else f"{'-':>6s}",
            f"{sdpa / ours_t:9.2f}x" if sdpa else f"{'-':>10s}",
            f"{nbytes / fi / copy_bw:11.2f}" if fi else f"{'-':>11s}",
            f"{fi / ours_t:7.2f}x" if fi else f"{'-':>8s}",
            f"{nbytes / min(flex) / copy_bw:10.2f}" if flex else f"{'-':>10s}",
        ]
        print(f"  {c.tag:<44s} " + " ".join(cells))


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def chunk_list(text: str) -> list[int]:
    """An argparse type: comma-separated chunk lengths, each 32, 64 or 128."""
    chunks = [int(x) if x.strip().isdigit() else -1 for x in text.split(",")]
    if not chunks or any(x not in (32, 64, 128) for x in chunks):
        raise argparse.ArgumentTypeError(f"chunks are 32, 64 or 128 tokens, got {text!r}")
    return chunks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 repeats instead of 20; no FlexAttention")
    ap.add_argument("--cases", default="all", help=f"comma-separated groups: {', '.join(CASES)} or all")
    ap.add_argument("--variants", action="store_true", help="also time each variant and partition size of ours")
    ap.add_argument("--chunks", type=chunk_list, default=[], metavar="N,N",
                    help="also time ours with the plan's chunk forced to each (32, 64 or 128 tokens)")
    ap.add_argument("--no-torch", action="store_true", help="ours only")
    ap.add_argument("--no-flashinfer", action="store_true")
    ap.add_argument("--no-flex", dest="flex", action="store_false", help="skip FlexAttention (compiles for minutes)")
    ap.add_argument("--no-copy-kernels", action="store_true", help="skip reshape_and_cache and copy_blocks")
    ap.add_argument("--only", default="", help="run only the cases whose tag contains this text, e.g. 'B=64 L=4096 Hq=32 Hkv=8 D=128'")
    ap.add_argument("--reps", type=int, default=None, help="repeats per timing (default 20, 5 with --quick)")
    ap.add_argument("--rounds", type=positive, default=3, help="times every implementation of a case is timed in turn (best median kept)")
    opts = ap.parse_args()
    reps = opts.reps or (5 if opts.quick else 20)
    if opts.quick and opts.reps is None:
        opts.flex = False
    dev = device_properties("bench_kernels")
    print(f"device: {dev['name'].decode()}, {dev['multiProcessorCount']} SMs, L2 {dev['l2CacheSize'] >> 20} MiB; cupy {cp.__version__}")
    if not opts.no_torch:
        try:
            import torch

            print(f"torch {torch.__version__}")
        except ImportError:
            opts.no_torch = True
            print("torch is not importable: ours only")
    if not opts.no_torch and not opts.no_flashinfer:
        try:
            import flashinfer

            print(f"flashinfer {flashinfer.__version__}")
        except ImportError as exc:
            print(f"FlashInfer is not importable ({exc}): its rows are skipped (pip install flashinfer-python)")
            opts.no_flashinfer = True
    copy_bw = copy_bandwidth(reps)
    if not opts.no_copy_kernels:
        bench_reshape_and_cache(copy_bw, reps)
        bench_copy_blocks(copy_bw, reps)
    groups = list(CASES) if opts.cases == "all" else opts.cases.split(",")
    results = []
    for group in groups:
        for case in CASES[group]:
            if opts.only and opts.only not in case.tag:
                continue
            results.append(bench_attention(case, copy_bw, reps, opts))
            cp.get_default_memory_pool().free_all_blocks()
    summary(results, copy_bw)


if __name__ == "__main__":
    sys.exit(main())
