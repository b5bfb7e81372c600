"""Shared by the session-9 experiments: random caches for one decode shape, every launch
variant of ``paged_attention`` on them, and their best median time over alternating rounds."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
from bench_selection import time_ms  # noqa: E402  (L2 flushed before each repetition)
from tinyserve_sim.gpu import launchers  # noqa: E402

from tinyserve_sim.control.batch import DecodeBatch  # noqa: E402


def variants(lens: np.ndarray, Hq: int, Hkv: int, D: int, dt: type, bs: int, rng: np.random.Generator,
             partitions: tuple[int, ...]) -> tuple[dict[str, Callable[[], cp.ndarray]], tuple]:
    """One pass and split-K at each of ``partitions`` shorter than the longest row, prepared on
    random caches (pages in random order); also returns ``(q, key_cache, value_cache, batch)``."""
    B, W = len(lens), -(-int(lens.max()) // bs)
    nb = B * W
    kc = cp.random.standard_normal((nb, bs, Hkv, D), dtype=cp.float32).astype(dt)
    vc = cp.random.standard_normal((nb, bs, Hkv, D), dtype=cp.float32).astype(dt)
    q = cp.random.standard_normal((B, Hq, D), dtype=cp.float32).astype(dt)
    batch = DecodeBatch(bs, rng.permutation(nb).reshape(B, W).astype(np.int32), lens)
    fns = {"one_pass": launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5, "one_pass")}
    for part in partitions:
        if part < lens.max():
            fns[f"split/{part}"] = launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5, "split_k", part)
    return fns, (q, kc, vc, batch)


def best_times(fns: dict[str, Callable[[], cp.ndarray]], rounds: int, reps: int) -> dict[str, float]:
    """Each variant's best median (milliseconds) over ``rounds`` rounds that alternate the variants."""
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            best[k] = min(best[k], time_ms(fn, reps))
    return best


def same_bits(first: Callable[[], cp.ndarray], second: Callable[[], cp.ndarray]) -> bool:
    """Whether two prepared launches write the same bytes (the first output is copied before
    the second runs, in case both write into one buffer)."""
    return bool((first().copy().view(cp.uint8) == second().view(cp.uint8)).all())


def fit_or_validate(script: str, run: Callable[[list], None], fit: list, validate: list) -> None:
    """The command line of a sweep with two lists of shapes: ``fit`` or ``validate``."""
    if len(sys.argv) != 2 or sys.argv[1] not in ("fit", "validate"):
        print(f"{script}: say `fit` or `validate`", file=sys.stderr)
        raise SystemExit(2)
    run(fit if sys.argv[1] == "fit" else validate)
