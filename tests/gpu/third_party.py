"""Shared by the third-party agreement tests: a replayed state, and what they must agree within.

Pure NumPy and the simulator (no torch, no FlashInfer), so the CPU suite checks it too
(tests/gpu/test_third_party_state.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.data import KVCache, attention_error_bound, external_kernel_error_bound


@dataclass
class ReplayedState:
    """A manager after a trace with forks and copy-on-write, the caches it wrote, a query."""

    manager: BlockManager
    batch: DecodeBatch
    key_cache: np.ndarray  # host copies, [num_blocks, block_size, Hkv, D]
    value_cache: np.ndarray
    query: np.ndarray  # [S, Hq, D]
    copies: int  # copy-on-write copies the trace made

    @property
    def scale(self) -> float:
        return float(np.float32(self.query.shape[-1] ** -0.5))


def replay_with_forks(
    lens: list[int], block_size: int, num_kv_heads: int, group: int, head_dim: int,
    seed: int, magnitude: float = 1.0, dtype=np.float16, write_values: bool = True,
) -> ReplayedState:
    """Sequences of about ``lens`` tokens, grown round-robin (so their pages interleave
    in memory), the first one forked twice near the end and both children extended
    (copy-on-write of the shared, partly filled last page), every step applied to a
    NumPy KVCache. ``write_values=False`` skips the per-step writes and fills the cache
    with random values at the end instead (for the benchmark's large shapes); the
    copy-on-write copies then act on those values.
    """
    rng = np.random.default_rng(seed)
    num_blocks = sum(-(-n // block_size) + 1 for n in lens) + 16  # + room for the forks' copy-on-write
    manager = BlockManager(num_blocks, block_size, policy="fifo")
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    cache = KVCache(*shape, dtype=dtype, fill=0.0) if write_values else None
    cow_pairs: list[tuple[int, int]] = []

    def kv(n: int) -> tuple[np.ndarray, np.ndarray]:
        k = (rng.standard_normal((n, num_kv_heads, head_dim)) * magnitude).astype(dtype)
        return k, rng.standard_normal((n, num_kv_heads, head_dim)).astype(dtype)

    def apply(record, n: int = 0) -> None:
        cow_pairs.extend(record.copies)
        if cache is not None:
            cache.apply(record, *(kv(n) if n else (None, None)))

    # Everyone starts with a short prompt, then grows a chunk at a time, round-robin.
    targets = [max(1, n - 3) for n in lens]
    for i, n in enumerate(targets):
        first = min(n, block_size + 1)
        apply(manager.add(i, first), first)
    chunk = 3 * block_size + 1
    while any(manager.num_tokens(i) < n for i, n in enumerate(targets)):
        for i, n in enumerate(targets):
            grow = min(chunk, n - manager.num_tokens(i))
            if grow > 0:
                apply(manager.append(i, grow), grow)
    # Forks: two children share sequence 0's pages, then every sequence decodes 3 tokens.
    for child in ("fork-a", "fork-b"):
        apply(manager.fork(0, child))
    for seq in manager.seq_ids():
        for _ in range(3):
            apply(manager.append(seq, 1), 1)
    if cache is not None:
        key_cache, value_cache = cache.to_numpy()
    else:
        key_cache = (rng.standard_normal(shape, dtype=np.float32) * np.float32(magnitude)).astype(dtype)
        value_cache = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        # Replay the copy-on-write copies on the random contents, as a server would have.
        for src, dst in cow_pairs:
            key_cache[dst], value_cache[dst] = key_cache[src], value_cache[src]
    batch = DecodeBatch.from_manager(manager)
    query = (rng.standard_normal((batch.num_seqs, num_kv_heads * group, head_dim)) * magnitude).astype(dtype)
    return ReplayedState(manager, batch, key_cache, value_cache, query, len(cow_pairs))


def agreement_bound(state: ReplayedState, tokens_per_rescale: int = 1) -> np.ndarray:
    """What a third-party kernel's output may differ from this project's by: its own
    bound against float64 plus ours (both are bounds against the same reference)."""
    args = (state.query, state.key_cache, state.value_cache, state.batch, state.scale)
    return external_kernel_error_bound(*args, tokens_per_rescale=tokens_per_rescale) + attention_error_bound(*args)


def check_agreement(theirs: np.ndarray, ours: np.ndarray, allowed: np.ndarray, who: str) -> None:
    theirs = np.asarray(theirs, dtype=np.float64)
    assert theirs.shape == ours.shape, (who, theirs.shape, ours.shape)
    assert np.isfinite(theirs).all(), f"{who}: non-finite output"
    excess = np.abs(theirs - ours.astype(np.float64)) - allowed
    worst = np.unravel_index(int(excess.argmax()), excess.shape)
    assert (excess <= 0).all(), (
        f"{who}: {int((excess > 0).sum())} elements outside the bound; worst at {worst}: "
        f"|diff| = {abs(theirs[worst] - ours[worst]):.3g}, allowed {allowed[worst]:.3g}"
    )


def head_subset(state: ReplayedState, kv_heads: list[int]) -> tuple[ReplayedState, np.ndarray]:
    """The same state restricted to some KV heads (and their query heads), and the query-head
    columns they are in the full output. A head's output depends on its own K/V only, so the
    bound of the subset is the bound of those columns: at the benchmark's large shapes the
    float64 bound is computed for a few heads of every sequence, not all 32."""
    Hq, Hkv = state.query.shape[1], state.key_cache.shape[2]
    group = Hq // Hkv
    columns = np.concatenate([np.arange(h * group, (h + 1) * group) for h in kv_heads])
    sub = ReplayedState(
        state.manager, state.batch,
        np.ascontiguousarray(state.key_cache[:, :, kv_heads]), np.ascontiguousarray(state.value_cache[:, :, kv_heads]),
        np.ascontiguousarray(state.query[:, columns]), state.copies,
    )
    return sub, columns
