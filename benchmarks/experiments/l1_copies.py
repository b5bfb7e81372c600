"""Session 11: MHA plans copy through L1 (``AttentionPlan.l1_copies``), with a split rule of
their own. For each MHA shape: "before" = the same kernel with ``l1_copies=False`` (exactly
session 10's code path: copies around L1) at the rule's choice for such plans; "now" =
``variant="auto"`` as shipped; and the kernel as shipped at every other grid (one pass, split-K
at 4,096 .. 256). The bits of the shipped kernel at the "before" grid are compared with
"before" (the cache operator moves bytes only: they must be equal).

    python benchmarks/experiments/l1_copies.py fit        # the 13 shapes the rule was fitted to
    python benchmarks/experiments/l1_copies.py validate   # 17 shapes it was not fitted to

The H200 logs: ``h200_s11_decode_ca_partitions.log`` (fit: made by an equivalent scratch
script that compiled the pre-change source with ``.ca`` swapped in) and
``h200_s11_decode_l1_validation.log`` (validate: an earlier form of this loop). Those timed
without flushing L2 between repetitions; this script flushes it (``split_timing``), which
at these sizes (268 MB to 17 GB of K and V) changes nothing. An H100 run is owed."""
import sys
from dataclasses import replace
from pathlib import Path
from unittest import mock

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_timing import device_properties  # noqa: E402
from split_timing import best_times, fit_or_validate, same_bits, variants  # noqa: E402  (L2 flushed before each repetition)

from tinyserve_sim.data.geometry import choose_split, make_plan  # noqa: E402
from tinyserve_sim.gpu import launchers  # noqa: E402

ROUNDS, REPS = 3, 15
F16, F32 = np.float16, np.float32
#: (batch, tokens or a list of lengths, heads (query = KV: MHA), head dim, dtype)
FIT = [(64, 4096, 32, 128, F16), (1, 65536, 32, 128, F16), (8, 32768, 32, 128, F16), (16, 4096, 32, 128, F16),
       (32, 4096, 32, 128, F16), (2, 32768, 32, 128, F16), (4, 32768, 32, 128, F16), (48, 4096, 32, 128, F16),
       (96, 4096, 32, 128, F16), (128, 4096, 32, 128, F16), (1, 16384, 32, 128, F16), (4, 8192, 32, 128, F16),
       (24, 4096, 32, 128, F16)]
VALIDATE = [
    (12, 4096, 32, 128, F16), (40, 4096, 32, 128, F16), (80, 4096, 32, 128, F16), (160, 4096, 32, 128, F16),
    (3, 32768, 32, 128, F16), (6, 32768, 32, 128, F16), (12, 32768, 32, 128, F16), (1, 131072, 32, 128, F16),
    (20, 8192, 32, 128, F16), (32, list(np.random.default_rng(11).integers(1000, 8000, 32)), 32, 128, F16),
    (64, 4096, 16, 128, F16), (64, 4096, 32, 64, F16), (8, 32768, 32, 64, F16), (32, 4096, 32, 256, F16),
    (4, 32768, 32, 256, F16), (32, 4096, 32, 128, F32), (4, 32768, 32, 128, F32),
]


def around_l1():
    """Within the block, the launcher plans every call with copies around L1 (``.cg``)."""
    original = launchers.plan_launch
    return mock.patch.object(launchers, "plan_launch", lambda *a, **k: (lambda r: (replace(r[0], l1_copies=False), *r[1:]))(original(*a, **k)))


def _key(variant: str, partition: int) -> str:
    return "one_pass" if variant == "one_pass" else f"split/{partition}"


def run(shapes) -> None:
    print(device_properties("l1_copies")["name"].decode(), flush=True)
    rng = np.random.default_rng(2)
    for B, L, H, D, dt in shapes:
        lens = np.full(B, L, np.int32) if np.isscalar(L) else np.asarray(L, np.int32)
        plan = make_plan(D, dt, 1)
        before, now = choose_split(replace(plan, l1_copies=False), H, H, lens), choose_split(plan, H, H, lens)
        # The kernel as shipped at one pass and every partition, on random caches ...
        fns, (q, kc, vc, batch) = variants(lens, H, H, D, dt, 16, rng, (4096, 2048, 1024, 512, 256))
        # ... and "before": the same caches, copies around L1, at the rule's choice for such plans.
        with around_l1():
            fns["before"] = launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5, *before)
        bits = same_bits(fns[_key(*before)], fns["before"])
        best = best_times(fns, ROUNDS, REPS)
        nbytes = 2.0 * float(lens.sum()) * H * D * np.dtype(dt).itemsize
        t_now = best[_key(*now)]
        others = "  ".join(f"{k} {best[k] * 1e3:.1f}" for k in fns if k not in ("before", _key(*now)))
        print(f"B={B} L={L if np.isscalar(L) else 'mixed'} H={H} D={D} {np.dtype(dt).name}: "
              f"before {before[0]}/{before[1]} {best['before'] * 1e3:.1f} us ({nbytes / best['before'] / 1e9:.2f} TB/s) | "
              f"now {now[0]}/{now[1]} {t_now * 1e3:.1f} us ({nbytes / t_now / 1e9:.2f} TB/s) "
              f"before/now {best['before'] / t_now:.3f}x, fastest/now {min(best.values()) / t_now:.3f} | "
              f"others: {others} | bits at the old grid {'equal' if bits else 'DIFFER'}", flush=True)
        del fns, kc, vc
        cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    fit_or_validate("l1_copies", run, FIT, VALIDATE)
