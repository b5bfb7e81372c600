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
``h200_s11_decode_l1_validation.log`` (validate: this script's loop). An H100 run is owed."""
import sys
from dataclasses import replace
from pathlib import Path
from unittest import mock

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
from gpu_timing import device_properties, time_cupy  # noqa: E402

from tinyserve_sim.control.batch import DecodeBatch  # noqa: E402
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


def run(shapes) -> None:
    print(device_properties("l1_copies")["name"].decode(), flush=True)
    for B, L, H, D, dt in shapes:
        lens = np.full(B, L, np.int32) if np.isscalar(L) else np.asarray(L, np.int32)
        bs, width = 16, -(-int(lens.max()) // 16)
        kc = cp.random.standard_normal((B * width, bs, H, D), dtype=cp.float32).astype(dt)
        vc = cp.random.standard_normal((B * width, bs, H, D), dtype=cp.float32).astype(dt)
        q = cp.random.standard_normal((B, H, D), dtype=cp.float32).astype(dt)
        batch = DecodeBatch(bs, np.random.default_rng(2).permutation(B * width).reshape(B, width).astype(np.int32), lens)
        plan = make_plan(D, dt, 1)
        before, now = choose_split(replace(plan, l1_copies=False), H, H, lens), choose_split(plan, H, H, lens)
        longest = int(lens.max())
        grids = ([("one_pass", 1024)] if longest <= 2 * lens.mean() else []) + [("split_k", p) for p in (4096, 2048, 1024, 512, 256) if p < longest]
        fns = {}
        with around_l1():
            fns["before"] = launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5, *before)
        fns["now"] = launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5)
        for g in grids:
            if g != now:
                fns[g] = launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5, *g)
        same = launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5, *before)().copy()
        bits = bool((same.view(cp.uint8) == fns["before"]().view(cp.uint8)).all())
        best = {k: float("inf") for k in fns}
        for _ in range(ROUNDS):
            for k, fn in fns.items():
                best[k] = min(best[k], time_cupy(fn, REPS))
        nbytes = 2.0 * float(lens.sum()) * H * D * np.dtype(dt).itemsize
        others = "  ".join(f"{k[0][:5]}/{k[1]} {best[k] * 1e6:.1f}" for k in fns if isinstance(k, tuple))
        print(f"B={B} L={L if np.isscalar(L) else 'mixed'} H={H} D={D} {np.dtype(dt).name}: "
              f"before {before[0]}/{before[1]} {best['before'] * 1e6:.1f} us ({nbytes / best['before'] / 1e12:.2f} TB/s) | "
              f"now {now[0]}/{now[1]} {best['now'] * 1e6:.1f} us ({nbytes / best['now'] / 1e12:.2f} TB/s) "
              f"before/now {best['before'] / best['now']:.3f}x, fastest/now {min(best.values()) / best['now']:.3f} | "
              f"others: {others} | bits at the old grid {'equal' if bits else 'DIFFER'}", flush=True)
        del fns, kc, vc
        cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("fit", "validate"):
        print("l1_copies: say `fit` or `validate`", file=sys.stderr)
        raise SystemExit(2)
    run(FIT if sys.argv[1] == "fit" else VALIDATE)
