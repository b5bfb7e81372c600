"""Session 9: should variant="auto" also consider 256-token partitions? On every shape where
adding 256 to AUTO_PARTITIONS changes the choice (short rows, small batches: no partition of
512..4096 fills the waves, so the rule falls back to the shortest), time one pass and split-K
at 256..2048, alternated over ROUNDS rounds (best median; L2 flushed before each repetition: these shapes fit in it), and say which the old rule (512)
and the new (256) pick. Shared tables, 16-token pages, float16, D 128."""
import sys
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
from bench_selection import time_ms  # noqa: E402
from gpu_timing import device_properties  # noqa: E402  (L2 flushed before each repetition)

import tinyserve_sim.data.geometry as geometry  # noqa: E402
from tinyserve_sim.control.batch import DecodeBatch  # noqa: E402
from tinyserve_sim.gpu import launchers  # noqa: E402

ROUNDS, REPS = 3, 20
OLD, NEW = (4096, 2048, 1024, 512), (4096, 2048, 1024, 512, 256)
HEADS = ((32, 32), (32, 8), (64, 8))
SHAPES = [(1, 2048), (1, 8192), (1, 16384), (2, 4096), (4, 2048), (4, 4096), (8, 1536), (8, 2048), (8, 3072), (16, 3072)]


def rule(table, plan, Hq, Hkv, lens):
    geometry.AUTO_PARTITIONS = table
    v, p = geometry.choose_split(plan, Hq, Hkv, lens)
    geometry.AUTO_PARTITIONS = OLD
    return "one_pass" if v == "one_pass" else f"split/{p}"


rng = np.random.default_rng(9)
name = device_properties(Path(__file__).name.removesuffix(".py"))["name"]  # no GPU: one line, exit 2
print(name.decode() if isinstance(name, bytes) else name, flush=True)
for B, L in SHAPES:
    for Hq, Hkv in HEADS:
        D, bs, dt = 128, 16, np.float16
        lens = np.full(B, L, np.int32)
        plan = geometry.make_plan(D, dt, Hq // Hkv)
        old, new = rule(OLD, plan, Hq, Hkv, lens), rule(NEW, plan, Hq, Hkv, lens)
        if old == new:
            continue
        W = -(-L // bs)
        nb = B * W
        kc = cp.random.standard_normal((nb, bs, Hkv, D), dtype=cp.float32).astype(dt)
        vc = cp.random.standard_normal((nb, bs, Hkv, D), dtype=cp.float32).astype(dt)
        q = cp.random.standard_normal((B, Hq, D), dtype=cp.float32).astype(dt)
        batch = DecodeBatch(bs, rng.permutation(nb).reshape(B, W).astype(np.int32), lens)
        fns = {"one_pass": launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5, "one_pass")}
        for part in (256, 512, 1024, 2048):
            if part < L:
                fns[f"split/{part}"] = launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5, "split_k", part)
        best = {k: 1e9 for k in fns}
        for _ in range(ROUNDS):
            for k, fn in fns.items():
                best[k] = min(best[k], time_ms(fn, REPS) / 1e3)
        win = min(best, key=best.get)
        cells = "  ".join(f"{k} {t * 1e6:.1f}" for k, t in best.items())
        print(f"B={B} L={L} Hq={Hq} Hkv={Hkv} D={D}: old {old} {best[old] * 1e6:.1f} us = {best[win] / best[old]:.3f} of best, "
              f"new {new} {best[new] * 1e6:.1f} us = {best[win] / best[new]:.3f} of best ({win}) | {cells}", flush=True)
        del kc, vc, fns
        cp.get_default_memory_pool().free_all_blocks()
