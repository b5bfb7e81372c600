"""Control-plane throughput: replay generated traces through the block manager (and nano-vllm's).

Two modes:

``--mode mixed`` (the default)
    A random trace of ``--ops`` operations (default 1,000,000): requests arrive,
    decode, fork (sampling) and finish, with prefix caching on. Prints
    operations per second with records on and off, and the memory a
    1,000,000-block manager holding a 131,072-token sequence takes.

``--mode serving``
    The shape of a server's workload (issue 11): block size 16, 100,000
    blocks, prefix caching on; requests arrive with token ids that start with
    one of a few shared system prompts, every running request decodes one
    token id per scheduler step, and finished requests are freed. 200,000
    operations by default. It replays the trace through our manager one
    operation at a time (``add`` / ``append`` / ``free``, records on and off),
    and with one ``decode`` call per scheduler step (records on); with
    ``--nano-vllm PATH`` (a checkout of github.com/GeeeekExplorer/nano-vllm,
    the folder holding ``nanovllm/``; it needs ``pip install xxhash``), it
    replays the same trace through nano-vllm's ``BlockManager`` in the same run
    and prints the ratios. nano-vllm is not a dependency: without the path, one
    line says the comparison is skipped and why.

With ``--bound`` (serving mode) it also measures how far *any* batched decode written as a
Python loop over the batch could go: the same replay with each decode done by a bare
per-token loop (only what must be done per token: count it, find its slot, take a new
block when the last one is full, keep its id, hash the block it fills; no checks, no
copy-on-write, no record), and with the decodes skipped (``add`` and ``free`` alone).

Run: ``python benchmarks/bench_control_plane.py [--mode serving] [--nano-vllm PATH] [--ops N] [--bound]``

It never asserts on time: figures are for reading and comparing. Each replay
runs ``--repeat`` times (default 5), the variants taking turns, and the fastest
run is reported. Times are the process's CPU time (``time.process_time``), so
other programs on a shared machine disturb them less than wall-clock time;
before each timed run the collector is run and everything alive is frozen
(``gc.freeze()``, as servers do after start-up), so the garbage collector only
sees what the replay itself allocates.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import platform
import random
import sys
import time
import tracemalloc
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tinyserve_sim import BlockManager
from tinyserve_sim.control.operations import Add, Append, Fork, Free, Operation
from tinyserve_sim.control.trace import Trace, TraceHeader


# ---------------------------------------------------------------------- timing
def timed(run: Callable[[], None]) -> float:
    """CPU seconds of ``run()``, with the collector frozen on everything allocated before it."""
    gc.collect()
    gc.freeze()
    try:
        start = time.process_time()
        run()
        return time.process_time() - start
    finally:
        gc.unfreeze()


def fastest(runs: dict[str, Callable[[], float]], repeat: int) -> dict[str, float]:
    """The fastest of ``repeat`` runs of each variant; the variants take turns, so a busy
    moment of the machine does not fall on one of them only."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            best[name] = min(best[name], run())
    return best


# ----------------------------------------------------------------- mixed mode
def generate_mixed(num_ops: int, num_blocks: int, block_size: int, seed: int = 0) -> Trace:
    """A valid random trace: requests arrive, decode, fork (sampling) and finish, with prefix caching on."""
    rng = random.Random(seed)
    header = TraceHeader(block_size, num_blocks, "fifo", True, "bench", "generated control-plane benchmark")
    manager = header.new_manager(record_ops=False)
    # 64 prompts built from 8 shared "system prompts": many prefix-cache hits.
    systems = [tuple(rng.randrange(50_000) for _ in range(rng.choice([32, 64, 128]))) for _ in range(8)]
    prompts = [systems[i % 8] + tuple(rng.randrange(50_000) for _ in range(rng.randrange(1, 200))) for i in range(64)]
    ops: list[Operation] = []
    live: list[str] = []
    next_id = 0
    while len(ops) < num_ops:
        r = rng.random()
        op: Operation
        if (r < 0.04 or not live) and len(live) < 2000:
            next_id += 1
            sid = f"r{next_id}"
            op = Add(sid, rng.choice(prompts) if rng.random() < 0.7 else rng.randrange(1, 400))
            if not manager.can_add(op.prompt):
                op = Free(live.pop(rng.randrange(len(live))))
            else:
                live.append(sid)
        elif r < 0.05:
            next_id += 1
            child = f"r{next_id}"
            op = Fork(rng.choice(live), child)
            live.append(child)
        elif r < 0.09 or manager.num_available < 64:
            op = Free(live.pop(rng.randrange(len(live))))
        else:
            op = Append(rng.choice(live), 1)
        op.apply(manager)
        ops.append(op)
    return Trace(header, ops)


def replay_mixed(trace: Trace, record_ops: bool) -> float:
    """Seconds to replay every operation on a fresh manager."""
    manager = trace.header.new_manager(record_ops)

    def run() -> None:
        for op in trace.ops:
            op.apply(manager)

    return timed(run)


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


def run_mixed(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    trace = generate_mixed(args.ops, args.blocks, args.block_size)
    counts = {name: sum(1 for op in trace.ops if op.name == name) for name in ("add", "append", "fork", "free")}
    print(f"generated {len(trace.ops):,} operations over {args.blocks:,} blocks in {time.perf_counter() - t0:.1f} s: "
          + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    best = fastest({"off": lambda: replay_mixed(trace, False), "on": lambda: replay_mixed(trace, True)}, args.repeat)
    off, on = best["off"], best["on"]
    print(f"replay, records off: {len(trace.ops) / off:>10,.0f} ops/s ({off:.2f} s)")
    print(f"replay, records on:  {len(trace.ops) / on:>10,.0f} ops/s ({on:.2f} s)")
    print(f"records on / off time ratio: {on / off:.2f}")
    empty, full = memory_of_a_million_blocks()
    print(f"memory, 1,000,000-block manager: {empty:.0f} MB empty, {full:.0f} MB holding a 131,072-token sequence")


# --------------------------------------------------------------- serving mode
#: One operation of the serving trace: ("add", seq, prompt ids), ("append", seq, token id), ("free", seq, None).
Row = tuple[str, int, object]


def generate_serving(num_ops: int, seed: int = 0, max_running: int = 128) -> list[Row]:
    """A server's workload: adds with shared system prompts, one decode step for everyone, frees.

    Each scheduler step admits new requests (while fewer than ``max_running``
    run), appends one token id to every running request, then frees the
    requests that reached their output length. Prompts are one of four system
    prompts (64 to 512 tokens) plus 8 to 128 tokens of their own; outputs are
    16 to 256 tokens long. Token ids are drawn below 50,000.
    """
    rng = random.Random(seed)
    systems = [[rng.randrange(50_000) for _ in range(n)] for n in (64, 128, 256, 512)]
    rows: list[Row] = []
    remaining: dict[int, int] = {}  # running request -> tokens still to generate
    next_id = 0
    while len(rows) < num_ops:
        while len(remaining) < max_running and rng.random() < 0.5:
            prompt = rng.choice(systems) + [rng.randrange(50_000) for _ in range(rng.randrange(8, 129))]
            rows.append(("add", next_id, prompt))
            remaining[next_id] = rng.randrange(16, 257)
            next_id += 1
        for seq in remaining:
            rows.append(("append", seq, rng.randrange(50_000)))
            remaining[seq] -= 1
        for seq in [seq for seq, left in remaining.items() if left == 0]:
            rows.append(("free", seq, None))
            del remaining[seq]
    return rows[:num_ops]


def replay_per_operation(rows: list[Row], record_ops: bool) -> float:
    """Our manager, one ``add`` / ``append`` / ``free`` call per row."""
    manager = BlockManager(100_000, 16, prefix_caching=True, record_ops=record_ops)

    def run() -> None:
        for op, seq, arg in rows:
            if op == "append":
                manager.append(seq, [arg])
            elif op == "add":
                manager.add(seq, arg)
            else:
                manager.free(seq)

    return timed(run)


def batch_decodes(rows: list[Row]) -> list[tuple[str, object, object]]:
    """The same rows with each run of appends (one scheduler step) gathered into one decode."""
    batched: list[tuple[str, object, object]] = []
    for op, seq, arg in rows:
        if op == "append":
            # A new step starts after an add or a free, or when a sequence comes round again.
            if not batched or batched[-1][0] != "decode" or seq in batched[-1][1]:  # type: ignore[operator]
                batched.append(("decode", [], []))
            batched[-1][1].append(seq)  # type: ignore[union-attr]
            batched[-1][2].append(arg)  # type: ignore[union-attr]
        else:
            batched.append((op, seq, arg))
    return batched


def replay_batched(batched: list[tuple[str, object, object]], record_ops: bool) -> float:
    """Our manager, one ``decode`` call per scheduler step."""
    manager = BlockManager(100_000, 16, prefix_caching=True, record_ops=record_ops)

    def run() -> None:
        for op, seq, arg in batched:
            if op == "decode":
                manager.decode(seq, arg)  # type: ignore[arg-type]
            elif op == "add":
                manager.add(seq, arg)  # type: ignore[arg-type]
            else:
                manager.free(seq)  # type: ignore[arg-type]

    return timed(run)


def bare_decode(manager: BlockManager, seq_ids: list[int], token_ids: list[int]) -> None:
    """A lower bound on a batched decode as a Python loop: only the per-token work (see the
    module docstring), on the manager's own state, for ``--bound``. The serving trace has no
    forks, so no last block is shared and no copy-on-write is needed; the pool never runs
    short, so no block is evicted. Not an API: it checks nothing and records nothing."""
    bs, ref, queue = manager.block_size, manager._ref, manager._queue
    slots = []
    for seq, token in zip(map(manager._seqs.__getitem__, seq_ids), token_ids):
        n = seq.num_tokens
        seq.num_tokens = n + 1
        offset = n % bs
        if offset:
            block = seq.table[-1]
        else:  # the last block is full: a new one
            block = queue.pop()
            ref[block] = 1
            seq.table.append(block)
        slots.append(block * bs + offset)
        seq.tail.append(token)
        if offset == bs - 1:  # the token fills its block: hash it once
            manager._cache_full_block(seq, block)


def replay_bound(batched: list[tuple[str, object, object]], decodes: bool) -> float:
    """``--bound``: the batched replay with each decode done by :func:`bare_decode`, or skipped."""
    manager = BlockManager(100_000, 16, prefix_caching=True, record_ops=True)

    def run() -> None:
        for op, seq, arg in batched:
            if op == "decode":
                if decodes:
                    bare_decode(manager, seq, arg)  # type: ignore[arg-type]
            elif op == "add":
                manager.add(seq, arg)  # type: ignore[arg-type]
            else:
                manager.free(seq)  # type: ignore[arg-type]

    return timed(run)


def load_nano_vllm(path: Path) -> tuple[type, type] | str:
    """nano-vllm's ``BlockManager`` and ``Sequence`` from a checkout, or why they cannot be loaded.

    Only ``nanovllm/engine/block_manager.py``, ``nanovllm/engine/sequence.py`` and
    ``nanovllm/sampling_params.py`` are loaded (the package's ``__init__`` would
    import torch): the two packages are registered as empty namespaces first.
    """
    root = path / "nanovllm"
    if not (root / "engine" / "block_manager.py").is_file():
        return f"{root / 'engine' / 'block_manager.py'} does not exist (pass the folder that holds nanovllm/)"
    try:
        importlib.import_module("xxhash")
    except ImportError:
        return "nano-vllm's BlockManager needs xxhash: pip install xxhash"
    for name, folder in (("nanovllm", root), ("nanovllm.engine", root / "engine")):
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    try:
        block_manager = importlib.import_module("nanovllm.engine.block_manager")
        sequence = importlib.import_module("nanovllm.engine.sequence")
    except Exception as exc:  # a checkout of another shape
        return f"importing nano-vllm failed: {exc.__class__.__name__}: {exc}"
    return block_manager.BlockManager, sequence.Sequence


def nano_vllm_driver(manager_class: type, sequence_class: type, block_size: int) -> tuple[object, Callable, Callable, Callable]:
    """nano-vllm's manager and three functions that do what its scheduler does per add, append and free.

    Two API shapes exist: the current one (chunked prefill: ``allocate(seq,
    num_cached_blocks)``, and ``hash_blocks(seq)`` after each step) and the
    earlier one (``allocate(seq)``; ``may_append`` hashes a block that fills).
    """
    sequence_class.block_size = block_size
    manager = manager_class(100_000, block_size)
    current_api = hasattr(manager, "hash_blocks")

    def add(prompt: list[int]) -> object:
        seq = sequence_class(prompt)
        if current_api:
            cached = manager.can_allocate(seq)
            assert cached >= 0, "nano-vllm ran out of blocks"
            manager.allocate(seq, cached)
            seq.num_scheduled_tokens = seq.num_tokens - seq.num_cached_tokens
            manager.hash_blocks(seq)  # the prompt's full blocks, after the prefill step
            seq.num_cached_tokens += seq.num_scheduled_tokens
            seq.num_scheduled_tokens = 0
        else:
            assert manager.can_allocate(seq), "nano-vllm ran out of blocks"
            manager.allocate(seq)
        return seq

    def append(seq: object, token: int) -> None:
        seq.append_token(token)
        assert manager.can_append(seq), "nano-vllm ran out of blocks"
        manager.may_append(seq)
        if current_api:
            seq.num_scheduled_tokens = 1
            manager.hash_blocks(seq)  # a block that this token filled
            seq.num_cached_tokens += 1
            seq.num_scheduled_tokens = 0

    return manager, add, append, manager.deallocate


def replay_nano_vllm(rows: list[Row], manager_class: type, sequence_class: type) -> float:
    _, add, append, free = nano_vllm_driver(manager_class, sequence_class, 16)
    seqs: dict[int, object] = {}

    def run() -> None:
        for op, seq, arg in rows:
            if op == "append":
                append(seqs[seq], arg)
            elif op == "add":
                seqs[seq] = add(arg)
            else:
                free(seqs.pop(seq))

    return timed(run)


def run_serving(args: argparse.Namespace) -> None:
    rows = generate_serving(args.ops)
    counts = {name: sum(1 for row in rows if row[0] == name) for name in ("add", "append", "free")}
    batched = batch_decodes(rows)
    steps = sum(1 for row in batched if row[0] == "decode")
    print(f"serving trace: {len(rows):,} operations ({', '.join(f'{k} {v:,}' for k, v in counts.items())}), "
          f"block size 16, 100,000 blocks, prefix caching on; {steps:,} decode steps of "
          f"{counts['append'] / steps:.0f} sequences on average")
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
          f"CPU time, fastest of {args.repeat} runs")

    runs: dict[str, Callable[[], float]] = {
        "ours, per operation, records on": lambda: replay_per_operation(rows, True),
        "ours, per operation, records off": lambda: replay_per_operation(rows, False),
        "ours, batched decode, records on": lambda: replay_batched(batched, True),
    }
    if args.bound:
        runs["bound: bare per-token decode loop"] = lambda: replay_bound(batched, True)
        runs["bound: add and free only, no decode"] = lambda: replay_bound(batched, False)
    nano = load_nano_vllm(Path(args.nano_vllm)) if args.nano_vllm else "no --nano-vllm PATH given"
    if isinstance(nano, str):
        print(f"nano-vllm comparison skipped: {nano}")
    else:
        runs["nano-vllm BlockManager, per operation"] = lambda: replay_nano_vllm(rows, *nano)
    results = fastest(runs, args.repeat)
    reference = results.get("nano-vllm BlockManager, per operation")
    for name, seconds in results.items():
        ratio = f"  {reference / seconds:5.2f}x nano-vllm" if reference else ""
        print(f"  {name:<38} {len(rows) / seconds:>10,.0f} ops/s ({seconds:.3f} s){ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["mixed", "serving"], default="mixed")
    parser.add_argument("--ops", type=int, default=None, help="operations (mixed: 1,000,000; serving: 200,000)")
    parser.add_argument("--blocks", type=int, default=100_000, help="mixed mode: blocks in the pool")
    parser.add_argument("--block-size", type=int, default=16, help="mixed mode: tokens per block")
    parser.add_argument("--nano-vllm", metavar="PATH", help="serving mode: a nano-vllm checkout to compare with")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each replay; the fastest is reported")
    parser.add_argument("--bound", action="store_true", help="serving mode: also the bare-loop bounds (see above)")
    args = parser.parse_args()
    if args.mode == "mixed":
        args.ops = args.ops or 1_000_000
        run_mixed(args)
    else:
        args.ops = args.ops or 200_000
        run_serving(args)


if __name__ == "__main__":
    main()
