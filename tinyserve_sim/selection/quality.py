"""What a selection costs in accuracy: recall of the softmax mass and the output's error, in float64.

Sparse attention over the selected pages is *exactly* attention with the
other tokens' weights set to zero and the rest renormalised. So its quality
is measured against dense attention, per (sequence, query head), with two
numbers:

recall
    the share of the dense softmax mass that falls on the selected tokens,
    ``sum_{t selected} softmax(x)_t``. 1.0 means nothing that mattered was
    skipped.
relative error
    ``|o_sparse - o_dense| / |o_dense|`` (Euclidean norms over the head
    dimension), where ``o_sparse`` is the softmax over the selected tokens
    only. Recall bounds it: ``|o_sparse - o_dense| <= 2 (1 - recall) max_t |v_t|``.

Both are computed in float64 from the cache's (exactly representable)
contents, like :func:`~tinyserve_sim.data.reference.reference_paged_attention`,
so they measure the selection, not the rounding of a kernel. The selected
tokens are read from the compacted per-head block tables that selection
returns: a token is selected when its cache slot appears in its head's table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.errors import InvalidArgumentError


@dataclass(frozen=True)
class StepQuality:
    """Quality of one step's selection.

    Attributes:
        recall: float64 ``[S, Hq]``, softmax mass on the selected tokens.
        rel_error: float64 ``[S, Hq]``, relative error of the sparse output.
        tokens_selected: int ``[S, Hkv]``, tokens each head attended to.
        tokens_total: int ``[S]``, each sequence's tokens (what dense attention reads).
    """

    recall: np.ndarray
    rel_error: np.ndarray
    tokens_selected: np.ndarray
    tokens_total: np.ndarray

    @property
    def mean_recall(self) -> float:
        return float(self.recall.mean()) if self.recall.size else 1.0

    @property
    def min_recall(self) -> float:
        return float(self.recall.min()) if self.recall.size else 1.0

    @property
    def mean_rel_error(self) -> float:
        return float(self.rel_error.mean()) if self.rel_error.size else 0.0

    @property
    def max_rel_error(self) -> float:
        return float(self.rel_error.max()) if self.rel_error.size else 0.0


def _slots(table: np.ndarray, length: int, block_size: int) -> np.ndarray:
    """Cache slots of tokens ``0 .. length - 1`` of a block-table row."""
    t = np.arange(length)
    return table[t // block_size].astype(np.int64) * block_size + t % block_size


def selected_token_mask(dense: DecodeBatch, selected: DecodeBatch, num_kv_heads: int) -> list[np.ndarray]:
    """For each sequence, a bool ``[Hkv, L]``: is logical token ``t`` in head ``h``'s selected table?"""
    if dense.per_head:
        raise InvalidArgumentError("the dense batch must have one table per sequence ([S, W])")
    sel_tables, sel_lens = selected.head_tables(num_kv_heads)
    if sel_tables.shape[0] != dense.num_seqs:
        raise InvalidArgumentError(f"{sel_tables.shape[0]} selected rows for {dense.num_seqs} sequences")
    bs = dense.block_size
    masks = []
    for s in range(dense.num_seqs):
        slots = _slots(dense.block_tables[s], int(dense.seq_lens[s]), bs)
        mask = np.zeros((num_kv_heads, slots.size), dtype=bool)
        for h in range(num_kv_heads):
            chosen = _slots(sel_tables[s, h], int(sel_lens[s, h]), bs)
            mask[h] = np.isin(slots, chosen)
        masks.append(mask)
    return masks


def step_quality(
    query: np.ndarray,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    dense: DecodeBatch,
    selected: DecodeBatch,
    scale: float | None = None,
) -> StepQuality:
    """Recall and relative error of ``selected`` against dense attention over ``dense``.

    Args:
        query: ``[S, Hq, D]`` (any float dtype).
        key_cache, value_cache: host arrays ``[num_blocks, block_size, Hkv, D]``.
        dense: the step's batch, one table per sequence.
        selected: the same sequences with per-head tables (what selection returns).
        scale: softmax scale, default ``1 / sqrt(D)`` (rounded to float32, as the kernels get it).
    """
    S, Hq, D = query.shape
    Hkv = key_cache.shape[2]
    if Hq % Hkv:
        raise InvalidArgumentError(f"{Hq} query heads is not a multiple of {Hkv} KV heads")
    group = Hq // Hkv
    scale64 = float(np.float32(1.0 / np.sqrt(D) if scale is None else scale))
    masks = selected_token_mask(dense, selected, Hkv)
    kc = key_cache.reshape(-1, Hkv, D)
    vc = value_cache.reshape(-1, Hkv, D)
    recall = np.empty((S, Hq))
    rel_error = np.empty((S, Hq))
    chosen = np.zeros((S, Hkv), dtype=np.int64)
    total = np.asarray(dense.seq_lens, dtype=np.int64).copy()
    for s in range(S):
        slots = _slots(dense.block_tables[s], int(dense.seq_lens[s]), dense.block_size)
        k = kc[slots].astype(np.float64)  # [L, Hkv, D]
        v = vc[slots].astype(np.float64)
        chosen[s] = masks[s].sum(axis=1)
        for g in range(Hq):
            h = g // group
            x = (k[:, h, :] @ query[s, g].astype(np.float64)) * scale64
            w = np.exp(x - x.max())
            total_weight = w.sum()
            dense_out = (w / total_weight) @ v[:, h, :]
            keep = masks[s][h]
            recall[s, g] = w[keep].sum() / total_weight  # exactly 1.0 when every token is kept
            if keep.any():
                xs = x[keep]
                ws = np.exp(xs - xs.max())
                sparse_out = (ws / ws.sum()) @ v[keep, h, :]
            else:
                sparse_out = np.zeros(D)
            norm = np.linalg.norm(dense_out)
            rel_error[s, g] = np.linalg.norm(sparse_out - dense_out) / norm if norm > 0 else 0.0
    return StepQuality(recall, rel_error, chosen, total)
