"""Random traces of add / append / fork / free, applied to one or more KV caches.

Shared by the CPU trace test (NumPy backend against a token-level model) and
the GPU trace test (NumPy and CuPy backends against each other)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.data import KVCache
from tinyserve_sim.errors import OutOfBlocksError


def run_trace(
    manager: BlockManager,
    caches: list[KVCache],
    rng: np.random.Generator,
    num_ops: int,
    on_step: Callable[[object, dict[int, list[np.ndarray]]], None],
) -> int:
    """Drive ``manager`` with ``num_ops`` random operations; apply each step to every
    cache; call ``on_step(step, model)`` after each, where ``model[seq]`` lists the
    (key, value) rows each live sequence should hold, in token order.
    Returns how many steps wrote tokens or copied blocks."""
    shape = caches[0].shape
    dtype = caches[0].dtype
    model: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    next_id = 0
    data_steps = 0

    def tokens(n: int) -> tuple[np.ndarray, np.ndarray]:
        k = rng.standard_normal((n, shape[2], shape[3])).astype(dtype)
        v = rng.standard_normal((n, shape[2], shape[3])).astype(dtype)
        return k, v

    for _ in range(num_ops):
        live = list(model)
        op = rng.choice(["add", "append", "append", "fork", "free"]) if live else "add"
        try:
            if op == "add":
                n = int(rng.integers(1, 3 * shape[1] + 2))
                step = manager.add(next_id, n)
                k, v = tokens(n)
                model[next_id] = [(k[i], v[i]) for i in range(n)]
                next_id += 1
            elif op == "append":
                seq = int(rng.choice(live))
                n = int(rng.integers(1, shape[1] + 2))
                step = manager.append(seq, n)
                k, v = tokens(n)
                model[seq] += [(k[i], v[i]) for i in range(n)]
            elif op == "fork":
                parent = int(rng.choice(live))
                step = manager.fork(parent, next_id)
                model[next_id] = list(model[parent])
                k = v = None
                next_id += 1
            else:
                seq = int(rng.choice(live))
                step = manager.free(seq)
                del model[seq]
                k = v = None
        except OutOfBlocksError:
            continue
        if op in ("fork", "free"):
            k = v = None
        for cache in caches:
            cache.apply(step, k, v)
        if len(step.slot_mapping) or len(step.copies):
            data_steps += 1
        on_step(step, model)
    return data_steps


def gathered(cache_k: np.ndarray, cache_v: np.ndarray, table: tuple[int, ...], n: int) -> Iterator:
    """The (key, value) rows of a sequence's first ``n`` tokens, read through its block table."""
    bs = cache_k.shape[1]
    for t in range(n):
        yield cache_k[table[t // bs], t % bs], cache_v[table[t // bs], t % bs]
