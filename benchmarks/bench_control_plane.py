"""Control-plane throughput: replay a generated trace of >= 1,000,000 operations.

Run: ``python benchmarks/bench_control_plane.py [--ops N] [--blocks N]``

Prints operations per second with step records on and off, and the memory a
1,000,000-block manager holding a 131,072-token sequence takes. It never asserts
on time: figures are for reading and comparing.
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc

import numpy as np

from tinyserve_sim import BlockManager
from tinyserve_sim.control.trace import Op, Trace, TraceHeader


def generate(num_ops: int, num_blocks: int, block_size: int, seed: int = 0) -> Trace:
    """A valid random trace: requests arrive, decode, fork (sampling) and finish, with prefix caching on."""
    rng = random.Random(seed)
    header = TraceHeader(block_size, num_blocks, "fifo", True, "bench", "generated control-plane benchmark")
    manager = header.new_manager(record_ops=False)
    # 64 prompts built from 8 shared "system prompts": many prefix-cache hits.
    systems = [tuple(rng.randrange(50_000) for _ in range(rng.choice([32, 64, 128]))) for _ in range(8)]
    prompts = [systems[i % 8] + tuple(rng.randrange(50_000) for _ in range(rng.randrange(1, 200))) for i in range(64)]
    ops: list[Op] = []
    live: list[str] = []
    next_id = 0
    while len(ops) < num_ops:
        r = rng.random()
        if (r < 0.04 or not live) and len(live) < 2000:
            next_id += 1
            sid = f"r{next_id}"
            op = Op("add", seq=sid, prompt=rng.choice(prompts) if rng.random() < 0.7 else rng.randrange(1, 400))
            if not manager.can_add(op.prompt if isinstance(op.prompt, int) else list(op.prompt)):
                op = Op("free", seq=live.pop(rng.randrange(len(live))))
            else:
                live.append(sid)
        elif r < 0.05:
            next_id += 1
            child = f"r{next_id}"
            op = Op("fork", parent=rng.choice(live), child=child)
            live.append(child)
        elif r < 0.09 or manager.num_available < 64:
            op = Op("free", seq=live.pop(rng.randrange(len(live))))
        else:
            op = Op("append", seq=rng.choice(live), tokens=1)
        op.apply(manager)
        ops.append(op)
    return Trace(header, ops)


def replay(trace: Trace, record_ops: bool) -> float:
    """Seconds to replay every operation on a fresh manager."""
    manager = trace.header.new_manager(record_ops)
    start = time.perf_counter()
    for op in trace.ops:
        op.apply(manager)
    return time.perf_counter() - start


def memory_of_a_million_blocks() -> tuple[float, float]:
    """(MB for an empty 1M-block manager, MB after adding a 131,072-token sequence with prefix caching)."""
    tracemalloc.start()
    manager = BlockManager(1_000_000, 16, prefix_caching=True)
    empty = tracemalloc.get_traced_memory()[0] / 1e6
    manager.add("long", np.arange(131_072))
    manager.append("long", 1)
    full = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    return empty, full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--block-size", type=int, default=16)
    args = parser.parse_args()

    t0 = time.perf_counter()
    trace = generate(args.ops, args.blocks, args.block_size)
    counts = {name: sum(1 for op in trace.ops if op.op == name) for name in ("add", "append", "fork", "free")}
    print(f"generated {len(trace.ops):,} operations over {args.blocks:,} blocks in {time.perf_counter() - t0:.1f} s: "
          + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    off = replay(trace, record_ops=False)
    on = replay(trace, record_ops=True)
    print(f"replay, step records off: {len(trace.ops) / off:>10,.0f} ops/s ({off:.2f} s)")
    print(f"replay, step records on:  {len(trace.ops) / on:>10,.0f} ops/s ({on:.2f} s)")
    print(f"records on / off time ratio: {on / off:.2f}")
    empty, full = memory_of_a_million_blocks()
    print(f"memory, 1,000,000-block manager: {empty:.0f} MB empty, {full:.0f} MB holding a 131,072-token sequence")


if __name__ == "__main__":
    main()
