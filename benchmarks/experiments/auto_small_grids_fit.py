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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_timing import device_properties  # noqa: E402
from split_timing import best_times, variants  # noqa: E402  (L2 flushed before each repetition)

import tinyserve_sim.data.geometry as geometry  # noqa: E402

ROUNDS, REPS = 3, 20
OLD, NEW = (4096, 2048, 1024, 512), (4096, 2048, 1024, 512, 256)
HEADS = ((32, 32), (32, 8), (64, 8))
#: Session 8's wave rule, for every plan: 90% of the waves' places busy, one wave or more, or
#: three waves (session 12 relaxed one wave to 70%; this experiment restates the rule it ran under).
SESSION_8 = geometry.WaveRule("session 8", one_wave_percent=90)
SHAPES = [(1, 2048), (1, 8192), (1, 16384), (2, 4096), (4, 2048), (4, 4096), (8, 1536), (8, 2048), (8, 3072), (16, 3072)]


def rule(partitions, plan, Hq, Hkv, lens):
    """Session 8's rule (before this experiment), with the given partitions: one pass if its
    grid fills the waves and no row is over twice the mean, else the longest partition whose
    grid fills them, else the shortest."""
    slots = geometry.REFERENCE_SMS * geometry.blocks_per_sm(plan)
    tiles = plan.head_tiles(Hq // Hkv)

    def fills(part):
        blocks = tiles * Hkv * (len(lens) if part is None else int((-(-lens // part)).sum()))
        return geometry.wave_verdict(blocks, slots, SESSION_8)[0]

    if lens.max() <= 2 * lens.mean() and fills(None):
        return "one_pass"
    parts = [p for p in partitions if p < lens.max()]
    return f"split/{next((p for p in parts if fills(p)), parts[-1])}"


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
        fns, _ = variants(lens, Hq, Hkv, D, dt, bs, rng, (256, 512, 1024, 2048))
        best = best_times(fns, ROUNDS, REPS)
        win = min(best, key=best.get)
        cells = "  ".join(f"{k} {t * 1e3:.1f}" for k, t in best.items())
        print(f"B={B} L={L} Hq={Hq} Hkv={Hkv} D={D}: old {old} {best[old] * 1e3:.1f} us = {best[win] / best[old]:.3f} of best, "
              f"new {new} {best[new] * 1e3:.1f} us = {best[win] / best[new]:.3f} of best ({win}) | {cells}", flush=True)
        del fns
        cp.get_default_memory_pool().free_all_blocks()
