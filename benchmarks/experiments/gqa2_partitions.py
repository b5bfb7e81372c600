"""Session 12: ``variant="auto"`` at GQA-2 (two query heads per KV head, as in Gemma 2), a
group size none of the earlier sweeps measured (sessions 8, 9 and 11 fitted the rule on MHA,
GQA-4, GQA-8 and head dim 64). Session 12 had seen it choose a grid of 1.94 waves that ran
4.5-5% slower than 3.88 waves (``h200_s12_gqa_l1.log``).

For each shape: one pass and split-K at 4,096 .. 256 tokens (those shorter than the longest
row), best median over alternating rounds, L2 flushed before each repetition
(``split_timing``); the rule's choice (``choose_split``), each grid's waves, and the
launcher's ``auto`` bits against the named choice. The two lists were fixed before any of
them ran: the rule may be fitted on FIT only, and VALIDATE then says whether it holds.

    python benchmarks/experiments/gqa2_partitions.py fit
    python benchmarks/experiments/gqa2_partitions.py validate
"""
import sys
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_timing import device_properties  # noqa: E402
from split_timing import best_times, fit_or_validate, same_bits, variants  # noqa: E402
from tinyserve_sim.gpu import launchers  # noqa: E402

from tinyserve_sim.data.geometry import choose_split, make_plan, split_candidates  # noqa: E402

ROUNDS, REPS = 3, 15
PARTS = (4096, 2048, 1024, 512, 256)
#: (batch, tokens or lengths, query heads, KV heads, head dim); float16, 16-token pages
FIT = [
    (64, 4096, 32, 16, 128), (8, 32768, 32, 16, 128), (1, 65536, 32, 16, 128), (16, 4096, 32, 16, 128),
    (32, 4096, 32, 16, 128), (48, 4096, 32, 16, 128), (96, 4096, 32, 16, 128), (128, 4096, 32, 16, 128),
    (2, 32768, 32, 16, 128), (4, 32768, 32, 16, 128), (4, 8192, 32, 16, 128), (24, 4096, 32, 16, 128),
    (1, 16384, 32, 16, 128),
]
VALIDATE = [
    (12, 4096, 32, 16, 128), (40, 4096, 32, 16, 128), (80, 4096, 32, 16, 128), (3, 32768, 32, 16, 128),
    (6, 32768, 32, 16, 128), (20, 8192, 32, 16, 128), (64, 4096, 16, 8, 256), (8, 32768, 16, 8, 256),
    (32, list(np.random.default_rng(12).integers(1000, 8000, 32)), 32, 16, 128), (16, 16384, 32, 16, 128),
    (160, 4096, 32, 16, 128), (1, 131072, 32, 16, 128),
]


def _key(variant: str, partition: int) -> str:
    return "one_pass" if variant == "one_pass" else f"split/{partition}"


def run(shapes) -> None:
    print(device_properties("gqa2_partitions")["name"].decode(), flush=True)
    for B, L, Hq, Hkv, D in shapes:
        lens = np.full(B, L, np.int32) if np.isscalar(L) else np.asarray(L, np.int32)
        plan = make_plan(D, np.float16, Hq // Hkv)
        chosen = _key(*choose_split(plan, Hq, Hkv, lens))
        waves = {("one_pass" if c.partition is None else f"split/{c.partition}"): c.waves
                 for c in split_candidates(plan, Hq, Hkv, lens)}
        fns, (q, kc, vc, batch) = variants(lens, Hq, Hkv, D, np.float16, 16, np.random.default_rng(5), PARTS)
        fns["auto"] = launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5, "auto")
        bits = same_bits(fns[chosen], fns["auto"])
        del fns["auto"]
        best = best_times(fns, ROUNDS, REPS)
        fastest = min(best, key=best.get)
        nbytes = 2.0 * float(lens.sum()) * Hkv * D * 2
        cells = "  ".join(f"{k} {best[k] * 1e3:.1f}" + (f" ({waves[k]:.2f}w)" if k in waves else "") for k in best)
        print(f"B={B} L={L if np.isscalar(L) else 'mixed'} Hq={Hq} Hkv={Hkv} D={D}: chosen {chosen} "
              f"{best[chosen] * 1e3:.1f} us, fastest {fastest} {best[fastest] * 1e3:.1f} us "
              f"({nbytes / best[fastest] / 1e9:.2f} TB/s), fastest/chosen {best[fastest] / best[chosen]:.3f} | "
              f"{cells} | auto bits {'equal' if bits else 'DIFFER'}", flush=True)
        del fns, kc, vc
        cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    fit_or_validate("gqa2_partitions", run, FIT, VALIDATE)
