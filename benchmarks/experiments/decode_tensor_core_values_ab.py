"""P V on tensor cores (geometry.TENSOR_CORE_VALUES) against P V on CUDA cores, in one
process on the GPU machine: what decides whether the decode kernel's ``tensor_core_values``
stays on (kernel notes, session 16).

    python benchmarks/experiments/decode_tensor_core_values_ab.py [--reps N]

1. Bits: with the switch on, the GPU equals the twin on shapes that stress the new path
   (partial 16-token groups, block sizes 1 and 7, split-K, a partial tile of heads, a
   peaked softmax, head dims 64, 128 and 256, GQA-4 to GQA-8), and the count of outputs
   whose bits differ from the CUDA-core P V (it must not be zero: the path really ran).
   Since 95a1716 GQA-2 keeps P V on CUDA cores (geometry.TENSOR_CORE_VALUES_MIN_GROUP): its
   cases print "values on tensor cores False" and time a plan against itself (session 16's
   log was taken before, with P V on tensor cores at GQA-2 too).
2. Time: bench_kernels.py's grouped-query cases, both settings alternated in three rounds,
   best median of each, as fractions of the bytes of K and V over the time.

It prints; it asserts nothing (a bit mismatch is printed as DIFFER).
"""

from __future__ import annotations

import sys
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_timing import random_decode_case, run_experiment, time_cupy  # noqa: E402

from tinyserve_sim.control.batch import DecodeBatch  # noqa: E402
from tinyserve_sim.data import geometry  # noqa: E402
from tinyserve_sim.data.paged_attention import paged_attention as twin  # noqa: E402
from tinyserve_sim.gpu import launchers  # noqa: E402

BIT_CASES = [  # (S, Hq, Hkv, D, block size, lengths, variant, logit magnitude)
    (3, 64, 8, 128, 16, [1, 77, 300], "one_pass", 1.0),
    (3, 64, 8, 128, 16, [1, 77, 3000], "split_k", 1.0),
    (2, 32, 8, 128, 7, [129, 64], "one_pass", 1.0),
    (2, 32, 4, 128, 1, [17, 200], "split_k", 1.0),
    (2, 64, 8, 64, 16, [500, 33], "one_pass", 1.0),
    (2, 64, 8, 256, 16, [500, 1200], "split_k", 1.0),
    (2, 48, 8, 128, 16, [90, 2000], "one_pass", 1.0),   # GQA-6: a partial tile of heads
    (2, 64, 8, 128, 16, [300, 301], "one_pass", 30.0),  # peaked softmax: tiny p, subnormal parts
    (4, 16, 8, 128, 16, [64, 128, 129, 4000], "split_k", 1.0),  # GQA-2
    (2, 128, 8, 128, 16, [1000, 31], "split_k", 1.0),  # GQA-16: two tiles of 8 heads
]
TIME_CASES = [(64, 4096, 64, 8, 128), (8, 32768, 64, 8, 128), (1, 65536, 64, 8, 128),
              (64, 4096, 32, 8, 128), (8, 32768, 32, 8, 128), (1, 65536, 32, 8, 128),
              (64, 4096, 32, 8, 64), (64, 4096, 32, 8, 256), (64, 4096, 16, 8, 128)]


def switch(on: bool) -> None:
    geometry.TENSOR_CORE_VALUES = on


def bits(rng: np.random.Generator) -> None:
    print("== bits: P V on tensor cores, GPU against the twin ==", flush=True)
    for S, Hq, Hkv, D, bs, lens, variant, mag in BIT_CASES:
        lens = np.array(lens, np.int32)
        nb = int(-(-lens.max() // bs))
        blocks = S * nb + 3
        kc = (rng.standard_normal((blocks, bs, Hkv, D)) * mag).astype(np.float16)
        vc = rng.standard_normal((blocks, bs, Hkv, D)).astype(np.float16)
        q = (rng.standard_normal((S, Hq, D)) * mag).astype(np.float16)
        tables = rng.permutation(blocks)[: S * nb].reshape(S, nb).astype(np.int32)
        batch = DecodeBatch(bs, tables, lens)
        switch(True)
        plan = geometry.make_plan(D, np.float16, Hq // Hkv)
        want = twin(q, kc, vc, batch, D**-0.5, variant=variant)
        got = launchers.paged_attention(cp.asarray(q), cp.asarray(kc), cp.asarray(vc), batch, D**-0.5, variant=variant).get()
        switch(False)
        base = twin(q, kc, vc, batch, D**-0.5, variant=variant)
        same = np.array_equal(want.view(np.uint16), got.view(np.uint16))
        moved = int((base.view(np.uint16) != want.view(np.uint16)).sum())
        print(f"  S={S} Hq={Hq} Hkv={Hkv} D={D} bs={bs} lens={lens.tolist()} {variant}: values on tensor cores "
              f"{plan.tensor_core_values}, {'equal' if same else 'DIFFER'} (bits apart from CUDA-core P V: {moved} of {want.size})",
              flush=True)


def timings(reps: int) -> None:
    print("== time: P V on CUDA cores against tensor cores ==", flush=True)
    for B, L, Hq, Hkv, D in TIME_CASES:
        q, kc, vc, batch, nbytes = random_decode_case(B, L, Hq, Hkv, D, 16)
        launches = {}
        for on in (False, True):
            switch(on)
            launches[on] = launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5)
        best = {on: float("inf") for on in launches}
        for _ in range(3):
            for on, launch in launches.items():
                best[on] = min(best[on], time_cupy(launch, reps))
        cuda, tc = best[False], best[True]
        print(f"  B={B} L={L} Hq={Hq} Hkv={Hkv} D={D}: CUDA-core P V {cuda * 1e6:8.1f} us ({nbytes / cuda / 1e12:.2f} TB/s)"
              f"  tensor-core P V {tc * 1e6:8.1f} us ({nbytes / tc / 1e12:.2f} TB/s)  speed-up {cuda / tc:.3f}x", flush=True)
        del launches, kc, vc, q
        cp.get_default_memory_pool().free_all_blocks()
    switch(True)


def main() -> int:
    return run_experiment(__doc__, bits, timings, default_reps=20)


if __name__ == "__main__":
    sys.exit(main())
