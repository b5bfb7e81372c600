"""Benchmark: a one-hour ShareGPT-like workload at 2 requests/s through the paged manager.

Prints the CPU time and the steps per second of each manager (the time model is
the paper's setting, ``opt-13b-a100``; quiet steps are computed in stretches).
Also compares the two compaction strategies on a fragmented pool. Never asserts.

    python benchmarks/bench_workload.py [--requests 7200] [--rate 2.0]
    python benchmarks/bench_workload.py --requests 16000 --rate 0   # issue 13's saturated 16k run

The issue-13 target (16,000 saturated ShareGPT-like requests under four
managers in at most 30 s and 300 MB, on a 2-core machine) is for the whole
command, ``/usr/bin/time -v tinyserve-sim simulate --requests 16000``, which also
writes the step logs and plots; this script times the simulation alone.
"""

from __future__ import annotations

import argparse
import math
import time

from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.serving.catalog import KV_CAPACITY_TOKENS, make_memory
from tinyserve_sim.serving.compaction import plan_compaction
from tinyserve_sim.serving.generator import WorkloadSpec, generate
from tinyserve_sim.serving.scheduler import Scheduler, SchedulerConfig


def bench_managers(requests: int, rate: float) -> None:
    t0 = time.process_time()
    workload = generate(WorkloadSpec("sharegpt", num_requests=requests, rate=rate or math.inf, seed=0))
    load = f"{rate}/s ({workload.requests[-1].arrival / 3600:.2f} h of arrivals)" if rate else "once (saturated)"
    print(f"workload: {requests} ShareGPT-like requests arriving {load}, generated in {time.process_time() - t0:.2f} s")
    cap = 256 if rate else 2**31 - 1
    print(f"KV cache: {KV_CAPACITY_TOKENS:,} tokens; time model opt-13b-a100; at most {cap:,} sequences per batch")
    for name in ("paged-16", "max", "pow2", "oracle"):
        sched = Scheduler(workload, make_memory(name), SchedulerConfig(max_running_seqs=cap))
        t0 = time.process_time()
        result = sched.run()
        elapsed = time.process_time() - t0
        s = result.summary
        print(f"  {name:>9}: {elapsed:6.2f} s CPU, {s.steps:,} steps, {s.steps / elapsed:,.0f} steps/s, "
              f"{s.generated_tokens / elapsed:,.0f} tokens/s simulated; batch {s.mean_running_seqs:.1f}, "
              f"token states {100 * s.token_states:.1f}%, preemptions {s.preemptions}, "
              f"latency {s.mean_latency_per_token * 1000:.0f} ms/token")


def bench_compaction() -> None:
    """Fragment a pool with shared (beam-like) and single sequences, then plan both ways."""
    m = BlockManager(1200, 16, record_ops=False)
    next_id = 0
    for i in range(300):
        parent = next_id
        if not m.can_add(16 * (1 + i % 7)):
            break
        m.add(parent, 16 * (1 + i % 7))
        next_id += 1
        if i % 5 == 0:  # a hot prompt, read by 4 sequences
            for _ in range(3):
                m.fork(parent, next_id)
                next_id += 1
    for victim in list(m.seq_ids())[::3]:
        m.free(victim)
    for strategy in ("low", "weighted"):
        t0 = time.perf_counter()
        plan = plan_compaction(m, strategy)
        elapsed = time.perf_counter() - t0
        print(f"  compaction {strategy:>8}: {len(plan.moves):4d} block copies, {plan.table_entries:4d} table entries "
              f"rewritten, moved weight {plan.moved_weight:.0f}, free range starts at {plan.free_start} "
              f"(planned in {elapsed * 1000:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=7200)
    parser.add_argument("--rate", type=float, default=2.0)
    args = parser.parse_args()
    bench_managers(args.requests, args.rate)
    print("compaction of a fragmented 1,200-block pool:")
    bench_compaction()


if __name__ == "__main__":
    main()
