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
