"""Timing on the GPU for the benchmark scripts: CUDA events, warm-up first, the median.

Both helpers time ``fn`` between two events recorded on the current stream,
after ``warmup`` untimed calls, ``reps`` times, and return the median in
seconds. ``time_cupy`` records CuPy's events (CuPy and PyTorch launches run on
the same default stream here); ``time_torch`` PyTorch's.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable


def time_cupy(fn: Callable[[], object], reps: int, warmup: int = 3) -> float:
    import cupy as cp

    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
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


def device_properties(script: str) -> dict:
    """Device 0's properties, or one line on stderr and exit status 2 where there is no
    usable CUDA device (as the project's command line does)."""
    import cupy as cp

    try:
        return cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    except cp.cuda.runtime.CUDARuntimeError as exc:
        print(f"{script}: no usable CUDA device: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def random_decode_case(B: int, L: int, Hq: int, Hkv: int, D: int, block_size: int):
    """The decode benchmarks' case: float16 K, V and queries of standard normals on the GPU,
    B sequences of L tokens each over shuffled blocks. Returns (q, kc, vc, batch, bytes of K
    and V read)."""
    import cupy as cp
    import numpy as np

    from tinyserve_sim.control.batch import DecodeBatch

    nblk = L // block_size
    shape = (B * nblk, block_size, Hkv, D)
    kc = cp.random.standard_normal(shape, dtype=cp.float32).astype(cp.float16)
    vc = cp.random.standard_normal(shape, dtype=cp.float32).astype(cp.float16)
    q = cp.random.standard_normal((B, Hq, D), dtype=cp.float32).astype(cp.float16)
    tables = np.random.default_rng(0).permutation(B * nblk).reshape(B, nblk).astype(np.int32)
    batch = DecodeBatch(block_size, tables, np.full(B, L, np.int32))
    return q, kc, vc, batch, 2.0 * B * L * Hkv * D * 2


def run_experiment(doc: str, bits: Callable[..., None], timings: Callable[[int], None], default_reps: int) -> int:
    """The body of an A/B experiment script (``benchmarks/experiments/``): its ``--reps``,
    the device's name, then ``bits(rng)`` and ``timings(reps)``."""
    import argparse

    import cupy as cp
    import numpy as np

    def positive(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
        return int(text)

    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--reps", type=positive, default=default_reps, help="timed launches per round (their median)")
    opts = ap.parse_args()
    print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}", flush=True)
    bits(np.random.default_rng(0))
    timings(opts.reps)
    return 0

