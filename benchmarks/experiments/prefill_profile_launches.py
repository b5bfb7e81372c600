"""One prefill launch per head dim, for Nsight Compute: 2 sequences x 2,048 new tokens, no
cached prefix, 32 query heads, 8 KV heads, float16, 16-token pages, the default plan (scores
and ``P V`` on tensor cores). Session 18's profile (kernel notes) ran it under::

    python benchmarks/experiments/prefill_profile_launches.py          # compile once, unprofiled
    ncu --clock-control base -k regex:paged_prefill \\
        --section SpeedOfLight --section Occupancy --section LaunchStats \\
        --section SchedulerStats --section WarpStateStats --section ComputeWorkloadAnalysis \\
        python benchmarks/experiments/prefill_profile_launches.py [64 128 256]

and once more with ``--metrics`` for the stall reasons and the pipes
(``benchmarks/results/h200_s18_ncu_prefill_tc.log`` names them). It launches; it measures
and asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_prefill import make_case  # noqa: E402

from tinyserve_sim.gpu import prefill_launchers  # noqa: E402


def main(head_dims: list[int]) -> None:
    rng = np.random.default_rng(3)
    for head_dim in head_dims:
        q, kc, vc, batch = make_case(rng, 2, 2048, 0, 32, 8, head_dim, 16, np.float16)
        launch = prefill_launchers.prepare_paged_prefill_attention(q, kc, vc, batch, head_dim**-0.5)
        launch()
        cp.cuda.Device().synchronize()
        print("D", head_dim, "launched", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("head_dims", nargs="*", type=int, default=[64, 128, 256], help="head dims to launch (default: 64 128 256)")
    main(parser.parse_args().head_dims)
