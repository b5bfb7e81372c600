"""The prefill kernel's three float16 plans in one process on the GPU machine: everything on
CUDA cores; the scores on tensor cores (prefill_plan.TENSOR_CORE_SCORES, session 16); and
``P V`` on tensor cores too (prefill_plan.TENSOR_CORE_VALUES, session 17). What decides
whether each switch goes on (kernel notes).

    python benchmarks/experiments/prefill_tensor_core_ab.py [--reps N]

1. Bits: with both switches on, the GPU equals the twin on every float16 instantiation shape
   (prefill_plan.INSTANTIATION_SHAPES), on a peaked softmax (tiny probabilities: subnormal
   float16 parts) and on the benchmark's shape at a smaller size.
2. Time: bench_prefill.py's four cases (8 x 2,048 new tokens over 0 and 6,144 cached, 8 and
   32 KV heads, head dim 128) and head dims 64, 192 and 256, the three plans alternated in
   three rounds, best median of each; the rate as a fraction of the float32 CUDA-core peak
   (the figure issue 16 asks for; above 100% is possible on tensor cores), and the ratios.

It prints; it asserts nothing (a bit mismatch is printed as DIFFER).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_prefill import fp32_peak, gpu_prefill, make_case  # noqa: E402
from gpu_timing import run_experiment, time_cupy  # noqa: E402

from tinyserve_sim.control.prefill_batch import PrefillBatch  # noqa: E402
from tinyserve_sim.data import paged_prefill_attention, prefill_plan  # noqa: E402
from tinyserve_sim.data.prefill_plan import INSTANTIATION_SHAPES  # noqa: E402
from tinyserve_sim.data.prefill_step import causal_pairs  # noqa: E402
from tinyserve_sim.gpu import prefill_launchers  # noqa: E402


#: The plans compared: (name, TENSOR_CORE_SCORES, TENSOR_CORE_VALUES).
PLANS = [("CUDA cores", False, False), ("TC scores", True, False), ("TC scores + P V", True, True)]


def switch(scores: bool, values: bool = True) -> None:
    prefill_plan.TENSOR_CORE_SCORES = scores
    prefill_plan.TENSOR_CORE_VALUES = values


def bits(rng: np.random.Generator) -> None:
    print("== bits: tensor-core scores and P V, GPU against the twin ==", flush=True)
    switch(True, True)
    cases = [c for c in INSTANTIATION_SHAPES if c[0] == np.float16]
    for dtype, D, bs, g, lens, qlens in cases:
        blocks = [-(-n // bs) for n in lens]
        perm = rng.permutation(sum(blocks) + 3)
        tables = [t.tolist() for t in np.split(perm[: sum(blocks)], np.cumsum(blocks)[:-1])]
        batch = PrefillBatch.from_tables(tables, lens, qlens, bs)
        shape = (sum(blocks) + 3, bs, 2, D)
        for peak in (2.0, 12.0):  # 12: a peaked softmax, tiny probabilities
            kc = (rng.standard_normal(shape) * peak).astype(dtype)
            vc = rng.standard_normal(shape).astype(dtype)
            q = rng.standard_normal((sum(qlens), 2 * g, D)).astype(dtype)
            same = np.array_equal(gpu_prefill(q, kc, vc, batch, D**-0.5).view(np.uint16),
                                  paged_prefill_attention(q, kc, vc, batch, D**-0.5).view(np.uint16))
            print(f"  D={D} bs={bs} G={g} lens={lens} new={qlens} keys x{peak:g}: {'equal' if same else 'DIFFER'}", flush=True)
    q, kc, vc, batch = make_case(rng, 2, 256, 512, 32, 8, 128, 16, np.float16, on_gpu=False)
    same = np.array_equal(gpu_prefill(q, kc, vc, batch, 128**-0.5).view(np.uint16),
                          paged_prefill_attention(q, kc, vc, batch, 128**-0.5).view(np.uint16))
    print(f"  2 x 256 new over 512 cached, GQA-4, D 128: {'equal' if same else 'DIFFER'}", flush=True)


def timings(reps: int) -> None:
    dev = cp.cuda.runtime.getDeviceProperties(0)
    peak, peak_text = fp32_peak(dev)
    print(f"== time: float32 CUDA-core peak {peak / 1e12:.1f} TFLOP/s ({peak_text}) ==", flush=True)
    rng = np.random.default_rng(1)
    B, N, Hq, bs = 8, 2048, 32, 16
    for P, Hkv, D in [(0, 8, 128), (0, 32, 128), (6144, 8, 128), (6144, 32, 128), (0, 8, 64), (0, 8, 192), (0, 8, 256)]:
        q, kc, vc, batch = make_case(rng, B, N, P, Hq, Hkv, D, bs, np.float16)
        flops = 4.0 * D * Hq * B * causal_pairs(P, N)
        launches = {}
        for name, scores, values in PLANS:
            switch(scores, values)
            launches[name] = prefill_launchers.prepare_paged_prefill_attention(q, kc, vc, batch, D**-0.5)
        best = {name: float("inf") for name in launches}
        for _ in range(3):
            for name, launch in launches.items():
                best[name] = min(best[name], time_cupy(launch, reps))
        text = "  ".join(f"{name} {t * 1e3:7.2f} ms ({flops / t / peak:6.1%})" for name, t in best.items())
        (_, cuda), (_, scores_only), (_, both) = best.items()
        print(f"  prefix={P} Hkv={Hkv} D={D}: {text}  (of fp32 peak)  P V on tensor cores: {scores_only / both:.3f}x, "
              f"all: {cuda / both:.3f}x", flush=True)
        del launches, q, kc, vc
        cp.get_default_memory_pool().free_all_blocks()


def main() -> int:
    return run_experiment(__doc__, bits, timings, default_reps=5)


if __name__ == "__main__":
    sys.exit(main())
