"""Session 9: the new fallback of variant="auto" (least estimated time when no grid fills the
waves) on shapes it was not fitted to. Each: every alternative (one pass, split-K 256..4096)
alternated over ROUNDS rounds, best median, L2 flushed before each repetition; the old rule
(the shortest of 512..4096) and the new; and the launcher's auto bits against the named choice."""
import sys
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_timing import device_properties  # noqa: E402
from split_timing import best_times, variants  # noqa: E402
from tinyserve_sim.gpu import launchers  # noqa: E402

from tinyserve_sim.data.geometry import (  # noqa: E402
    AUTO_PARTITIONS,
    choose_split,
    make_plan,
    split_candidates,
)

ROUNDS, REPS = 3, 20
rng = np.random.default_rng(19)
# (B, L or lengths, Hq, Hkv, D, dtype, block size)
CASES = [
    (1, 1200, 32, 8, 128, np.float16, 16), (1, 5000, 32, 32, 128, np.float16, 16), (3, 6000, 32, 8, 128, np.float16, 16),
    (2, 12000, 64, 8, 128, np.float16, 16), (6, 2500, 32, 32, 128, np.float16, 16), (12, 2000, 32, 8, 128, np.float16, 16),
    (1, 3000, 32, 8, 64, np.float16, 16), (2, 4000, 32, 8, 256, np.float16, 16), (4, 3000, 32, 8, 128, np.float32, 16),
    (1, 10000, 16, 8, 128, np.float16, 16), (5, 1800, 32, 4, 128, np.float16, 16), (1, 7000, 32, 8, 128, np.float16, 128),
    (4, np.array([500, 3000, 1200, 4000]), 32, 8, 128, np.float16, 16), (3, 20000, 32, 32, 128, np.float16, 16),
]


def named(v, p):
    return "one_pass" if v == "one_pass" else f"split/{p}"


name = device_properties(Path(__file__).name.removesuffix(".py"))["name"]  # no GPU: one line, exit 2
print(name.decode() if isinstance(name, bytes) else name, flush=True)
for B, L, Hq, Hkv, D, dt, bs in CASES:
    lens = np.full(B, L, np.int32) if np.isscalar(L) else np.asarray(L, np.int32)
    plan = make_plan(D, dt, Hq // Hkv)
    new = named(*choose_split(plan, Hq, Hkv, lens))
    fallback = any("estimated time is the least" in c.why for c in split_candidates(plan, Hq, Hkv, lens) if c.accepted)
    old = f"split/{min(p for p in AUTO_PARTITIONS if p < lens.max())}" if fallback else new
    fns, (q, kc, vc, batch) = variants(lens, Hq, Hkv, D, dt, bs, rng, (256, 512, 1024, 2048, 4096))
    auto = launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5)
    same = bool((auto().view(np.uint8) == fns[new]().view(np.uint8)).all())
    best = best_times(fns, ROUNDS, REPS)
    win = min(best, key=best.get)
    tag = f"B={B} L={'mixed ' + str(int(lens.min())) + '-' + str(int(lens.max())) if not np.isscalar(L) else L} Hq={Hq} Hkv={Hkv} D={D} {np.dtype(dt).name} bs={bs}"
    cells = "  ".join(f"{k} {t * 1e3:.1f}" for k, t in best.items())
    print(f"{tag}: {'fallback' if fallback else 'fills'}; old {old} {best[old] * 1e3:.1f} us = {best[win] / best[old]:.3f} of best, "
          f"new {new} {best[new] * 1e3:.1f} us = {best[win] / best[new]:.3f} of best ({win}); auto bits = new's: {same} | {cells}", flush=True)
    del kc, vc, fns, auto
    cp.get_default_memory_pool().free_all_blocks()
