"""Session 10: the sparse decode step as three kernels against one persistent kernel
(``schedule="fused"``), at bench_selection's shape (batch 8, 32,768 tokens, Hq 32, Hkv 8,
D 128, float16), every step preceded by the fused write + metadata update and timed as a
CUDA graph with L2 flushed. For each fused variant (lag in rows, pages per score item) the
output, tables and scores are compared bit for bit with the three-kernel step's at the same
split-K partition. Rounds alternate the variants; the best median of each is printed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
from bench_selection import Case, as_graph, flush_l2, time_ms
from tinyserve_sim.gpu import selection_launchers as sl
from tinyserve_sim.gpu import sparse_step


def timeline(name: str, step, write) -> None:
    """One traced launch of a fused step: when each phase ran, and how long blocks waited."""
    launch = step._launches[0]
    work = launch.work
    trace = cp.zeros((len(work), 4), dtype=cp.int64)
    flush_l2()
    write()
    launch(trace)
    cp.cuda.get_current_stream().synchronize()
    t = trace.get()
    t0 = t[:, 0].min()
    start, mid, end = ((t[:, k] - t0) / 1e3 for k in range(3))
    extra = (t[:, 3] & 1) == 1
    sc, at = work[:, 0] == 0, work[:, 0] == 1
    sel = sc & extra
    red = at & extra
    sms = len(set((t[:, 3] >> 1).tolist()))
    print(f"  timeline {name}: {launch.grid[0]} blocks on {sms} SMs, end {end.max():.1f} us")
    print(f"    scores   start {start[sc].min():6.1f}..{start[sc].max():6.1f}  end {mid[sc].min():6.1f}..{mid[sc].max():6.1f}"
          f"  item {np.median(mid[sc] - start[sc]):5.1f} us (median), {np.max(mid[sc] - start[sc]):5.1f} max")
    print(f"    selects  end {end[sel].min():6.1f}..{end[sel].max():6.1f}  each {np.median(end[sel] - mid[sel]):5.1f} us (median),"
          f" {np.max(end[sel] - mid[sel]):5.1f} max")
    print(f"    attends  start {start[at].min():6.1f}..{start[at].max():6.1f}  waited {np.sum(mid[at] - start[at]):8.1f} us in all"
          f" ({np.median(mid[at] - start[at]):5.1f} median, {np.max(mid[at] - start[at]):5.1f} max)"
          f"  work {np.median(end[at & ~extra] - mid[at & ~extra]):5.1f} us (median)  end {end[at].max():6.1f}")
    print(f"    reduces  each {np.median(end[red] - mid[red]):5.1f} us (median, with the item)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[16])
    parser.add_argument("--budgets", type=int, nargs="+", default=[8])
    parser.add_argument("--lags", type=int, nargs="+", default=[0, 4, 16, 64])
    parser.add_argument("--ppi", type=int, nargs="+", default=[0], help="pages per score item (0: the default)")
    parser.add_argument("--partitions", type=int, nargs="+", default=[0], help="split-K partitions (0: auto's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--trace", action="store_true", help="print each fused variant's timeline")
    args = parser.parse_args()
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    print(f"device: {props['name'].decode() if isinstance(props['name'], bytes) else props['name']}", flush=True)
    with cp.cuda.Stream(non_blocking=True):
        for bs in args.block_sizes:
            case = Case(8, 32768, 32, 8, 128, bs)
            write = sl.prepare_reshape_and_cache_with_metadata(
                case.new_k, case.new_v, case.key_cache, case.value_cache, case.slots, case.key_min, case.key_max)
            for div in args.budgets:
                budget = case.L // div
                steps, bases = {}, {}
                for part in args.partitions:
                    base = sparse_step.prepare_sparse_decode_step(
                        case.query, case.key_cache, case.value_cache, case.key_min, case.key_max, case.batch, budget,
                        case.scale, variant="split_k", partition_size=part or None)
                    bases[base.partition_size] = base
                    steps[f"kernels, split-K {base.partition_size}"] = base
                    for lag in args.lags:
                        for ppi in args.ppi:
                            steps[f"fused {base.partition_size} lag {lag} ppi {ppi or 'default'}"] = (
                                sparse_step.prepare_sparse_decode_step(
                                    case.query, case.key_cache, case.value_cache, case.key_min, case.key_max,
                                    case.batch, budget, case.scale, variant="split_k",
                                    partition_size=base.partition_size, schedule="fused", lag_rows=lag,
                                    pages_per_item=ppi or None))
                graphs = {}
                for name, step in steps.items():
                    def full(step=step, write=write):
                        write()
                        step()
                    graphs[name] = as_graph(full)
                # bits: every fused variant against the three kernels (after one more run each)
                for name, g in graphs.items():
                    g()
                cp.cuda.get_current_stream().synchronize()
                for name, step in steps.items():
                    base = bases[step.partition_size]
                    same = all(bool((a.view(cp.uint32 if a.dtype.itemsize == 4 else cp.uint16) ==
                                     b.view(cp.uint32 if b.dtype.itemsize == 4 else cp.uint16)).all())
                               for a, b in ((step.out, base.out), (step.tables, base.tables),
                                            (step.scores, base.scores), (step.lens, base.lens), (step.logical, base.logical)))
                    print(f"  bits {name}: {'equal' if same else 'DIFFER'}", flush=True)
                best = {name: float("inf") for name in graphs}
                for _ in range(args.rounds):
                    for name, g in graphs.items():
                        best[name] = min(best[name], time_ms(g, args.reps))
                if args.trace:
                    for name, step in steps.items():
                        if name.startswith("fused"):
                            timeline(name, step, write)
                t0 = min(t for name, t in best.items() if name.startswith("kernels"))
                print(f"block size {bs}, budget 1/{div} (speeds relative to the fastest three-kernel step):", flush=True)
                for name, t in best.items():
                    print(f"  {name:36s} {t * 1e3:7.1f} us   {t0 / t:5.3f}x the kernels' speed", flush=True)


if __name__ == "__main__":
    main()
