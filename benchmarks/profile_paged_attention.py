"""One paged-attention case, launched a few times, for Nsight Compute (``ncu``).

    ncu --clock-control none --section SpeedOfLight --section WarpStateStats \\
        --section SchedulerStats --section Occupancy --section LaunchStats \\
        -k regex:paged_attention_kernel --launch-skip 3 --launch-count 1 \\
        python benchmarks/profile_paged_attention.py --B 64 --L 4096 --Hq 32 --Hkv 8

Prints nothing useful by itself: ncu does the measuring. ``--variant`` and ``--partition``
pick the variant and the split-K partition.
"""

from __future__ import annotations

import argparse

import cupy as cp
import numpy as np

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.gpu import launchers


def main() -> None:
    ap = argparse.ArgumentParser()
    for name, default in (("B", 64), ("L", 4096), ("Hq", 32), ("Hkv", 8), ("D", 128), ("bs", 16), ("partition", 1024)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--variant", default="auto")
    ap.add_argument("--launches", type=int, default=5)
    a = ap.parse_args()
    nblk = a.L // a.bs
    nb = a.B * nblk
    kc = cp.random.standard_normal((nb, a.bs, a.Hkv, a.D), dtype=cp.float32).astype(cp.float16)
    vc = cp.random.standard_normal((nb, a.bs, a.Hkv, a.D), dtype=cp.float32).astype(cp.float16)
    q = cp.random.standard_normal((a.B, a.Hq, a.D), dtype=cp.float32).astype(cp.float16)
    tables = np.random.default_rng(0).permutation(nb).reshape(a.B, nblk).astype(np.int32)
    lens = np.full(a.B, a.L, np.int32)
    batch = DecodeBatch(a.bs, tables, lens)
    launch = launchers.prepare_paged_attention(q, kc, vc, batch, a.D**-0.5, a.variant, a.partition)
    for _ in range(a.launches):
        launch()
    cp.cuda.get_current_stream().synchronize()


if __name__ == "__main__":
    main()
