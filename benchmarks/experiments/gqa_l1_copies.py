"""Session 12: do grouped-query plans gain from copies through L1, as MHA plans do?

For GQA-2 and GQA-4 (head dims 64 and 128), float16, 16-token pages: the kernel as shipped
(``l1_copies=False`` for these plans, ``cp.async.cg``) and the same kernel with
``l1_copies`` forced on (``.ca``), at one pass and at every split partition, best median over
alternating rounds (L2 flushed before each repetition, ``split_timing``); the bits of each
forced launch are compared with the shipped one's (the cache operator moves bytes only).

    python benchmarks/experiments/gqa_l1_copies.py

H200 log: ``benchmarks/results/h200_s12_gqa_l1.log`` (GQA-2 4-8% slower through L1, GQA-4
0.1-1% slower: the rule ``l1_copies = group_size == 1`` stands). An H100 run is owed."""
import sys
from dataclasses import replace
from pathlib import Path
from unittest import mock

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_timing import device_properties  # noqa: E402
from split_timing import best_times, same_bits, variants  # noqa: E402
from tinyserve_sim.data.geometry import choose_split, make_plan  # noqa: E402
from tinyserve_sim.gpu import launchers  # noqa: E402

SHAPES = [  # (batch, tokens, Hq, Hkv, D)
    (64, 4096, 32, 16, 128), (8, 32768, 32, 16, 128), (1, 65536, 32, 16, 128),
    (64, 4096, 32, 8, 64), (8, 32768, 32, 8, 64), (64, 4096, 32, 8, 128), (8, 32768, 32, 8, 128),
    (64, 4096, 16, 8, 64),
]
PARTS = (4096, 2048, 1024, 512, 256)


def forced(flag: bool):
    """Within the block, the launcher plans every call with ``l1_copies=flag``."""
    original = launchers.plan_launch
    return mock.patch.object(launchers, "plan_launch",
                             lambda *a, **k: (lambda r: (replace(r[0], l1_copies=flag), *r[1:]))(original(*a, **k)))


def run() -> None:
    print(device_properties("gqa_l1_copies")["name"].decode(), flush=True)
    for B, L, Hq, Hkv, D in SHAPES:
        lens = np.full(B, L, np.int32)
        cp.random.seed(3)
        fns_cg, data = variants(lens, Hq, Hkv, D, np.float16, 16, np.random.default_rng(5), PARTS)
        q, kc, vc, batch = data
        fns = {f"cg {k}": f for k, f in fns_cg.items()}
        with forced(True):
            fns["ca one_pass"] = launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5, "one_pass")
            for part in PARTS:
                if part < L:
                    fns[f"ca split/{part}"] = launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5, "split_k", part)
        equal = all(same_bits(fns["cg " + k[3:]], fns[k]) for k in fns if k.startswith("ca"))
        best = best_times(fns, 3, 15)
        plan = make_plan(D, np.float16, Hq // Hkv)
        auto = choose_split(plan, Hq, Hkv, lens)
        key = "one_pass" if auto[0] == "one_pass" else f"split/{auto[1]}"
        cg_best = min(v for k, v in best.items() if k.startswith("cg"))
        ca_best = min(v for k, v in best.items() if k.startswith("ca"))
        nbytes = 2.0 * B * L * Hkv * D * 2
        print(f"B={B} L={L} Hq={Hq} Hkv={Hkv} D={D}: auto {key}: cg {best['cg ' + key]*1e3:.1f} us, ca {best['ca ' + key]*1e3:.1f} us "
              f"(cg/ca {best['cg ' + key] / best['ca ' + key]:.3f}); best cg {cg_best*1e3:.1f} us ({nbytes/cg_best/1e9:.2f} TB/s), "
              f"best ca {ca_best*1e3:.1f} us (cg/ca {cg_best/ca_best:.3f}); bits {'equal' if equal else 'DIFFER'}", flush=True)
        print("   " + "  ".join(f"{k} {v*1e3:.1f}" for k, v in best.items()), flush=True)
        del fns, fns_cg, kc, vc


if __name__ == "__main__":
    run()
