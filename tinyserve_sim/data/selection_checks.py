"""Host-side checks of the query-aware selection kernels, shared by the twins and the GPU launchers.

Like :mod:`tinyserve_sim.data.validation` (which checks the cache kernels),
these functions look only at ``.shape``, ``.dtype`` and ``.flags`` of the big
arrays (so NumPy and CuPy arrays pass through them alike) and inspect the
small index arrays by value, on the host. A twin and its launcher call the
same check first, so the two backends accept and reject exactly the same
inputs, and a bad input is a :class:`~tinyserve_sim.errors.KernelInputError`
naming the argument, never an out-of-bounds access on the device.

The page metadata of a cache is a pair of arrays ``key_min`` and ``key_max``
of shape ``[num_blocks, num_kv_heads, head_dim]``, in the cache's dtype
(:mod:`tinyserve_sim.data.page_metadata`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data.validation import (
    CACHE_DTYPES,
    HEAD_DIM_MULTIPLE,
    MAX_HEAD_DIM,
    check_array,
    check_contiguous,
    check_positive_lengths,
    check_rows_fit,
    check_slots,
    positive_int,
    to_host,
)
from tinyserve_sim.errors import KernelInputError

#: Scores are float32, whatever the cache dtype.
SCORE_DTYPE = np.dtype(np.float32)
#: page_scores stages one GQA group's queries (as float32) in shared memory: at most
#: this many elements (128 KiB), e.g. 128 query heads per KV head of 256 elements.
MAX_GROUP_ELEMENTS = 32768


def check_page_metadata(key_min: Any, key_max: Any) -> tuple[int, int, int]:
    """Check a metadata pair; return ``(num_blocks, num_kv_heads, head_dim)``."""
    for name, a in (("key_min", key_min), ("key_max", key_max)):
        check_array(name, a)
        if a.ndim != 3:
            raise KernelInputError(
                f"{name} must have 3 dims [num_blocks, num_kv_heads, head_dim], got shape {tuple(a.shape)}"
            )
        if np.dtype(a.dtype) not in CACHE_DTYPES:
            raise KernelInputError(f"{name} has dtype {a.dtype}; expected float16 or float32")
        check_contiguous(name, a)
    if key_min.shape != key_max.shape or key_min.dtype != key_max.dtype:
        raise KernelInputError(
            f"key_min {tuple(key_min.shape)} {key_min.dtype} and key_max "
            f"{tuple(key_max.shape)} {key_max.dtype} must match"
        )
    num_blocks, num_kv_heads, head_dim = (int(s) for s in key_min.shape)
    if min(num_blocks, num_kv_heads) < 1:
        raise KernelInputError(f"metadata shape {tuple(key_min.shape)} has an empty dimension")
    if head_dim % HEAD_DIM_MULTIPLE or not 0 < head_dim <= MAX_HEAD_DIM:
        raise KernelInputError(
            f"head_dim must be a multiple of {HEAD_DIM_MULTIPLE} in 8..{MAX_HEAD_DIM}, got {head_dim}"
        )
    return num_blocks, num_kv_heads, head_dim


def check_block_list(blocks: Any, num_blocks: int, name: str = "blocks") -> np.ndarray:
    """An int64 ``[B]`` list of block ids, each in ``0 .. num_blocks - 1`` (repeats allowed)."""
    check_array(name, blocks)
    if np.dtype(blocks.dtype) != np.dtype(np.int64):
        raise KernelInputError(f"{name} must be int64, got {blocks.dtype}")
    b = to_host(blocks)
    if b.ndim != 1:
        raise KernelInputError(f"{name} must be 1-D [B], got shape {b.shape}")
    if b.size and (int(b.min()) < 0 or int(b.max()) >= num_blocks):
        raise KernelInputError(f"{name} has a block id outside 0..{num_blocks - 1}")
    return np.ascontiguousarray(b)


def check_update_page_metadata(
    key: Any, slot_mapping: Any, key_min: Any, key_max: Any, block_size: Any
) -> tuple[np.ndarray, int]:
    """Check ``update_page_metadata`` inputs; return ``(slot_mapping on the host, block_size)``."""
    num_blocks, num_kv_heads, head_dim = check_page_metadata(key_min, key_max)
    block_size = positive_int("block_size", block_size)
    check_array("key", key)
    check_array("slot_mapping", slot_mapping)
    if key.ndim != 3 or tuple(key.shape[1:]) != (num_kv_heads, head_dim):
        raise KernelInputError(f"key must have shape [T, {num_kv_heads}, {head_dim}], got {tuple(key.shape)}")
    if key.dtype != key_min.dtype:
        raise KernelInputError(f"key dtype {key.dtype} differs from the metadata's {key_min.dtype}")
    check_contiguous("key", key)
    if np.dtype(slot_mapping.dtype) != np.dtype(np.int64):
        raise KernelInputError(f"slot_mapping must be int64, got {slot_mapping.dtype}")
    slots = to_host(slot_mapping)
    if slots.shape != (key.shape[0],):
        raise KernelInputError(f"slot_mapping must have shape [{key.shape[0]}], got {slots.shape}")
    check_slots(slots, num_blocks * block_size, "the metadata covers")
    return np.ascontiguousarray(slots), block_size


def check_metadata_matches_cache(key_min: Any, key_cache: Any) -> None:
    """The metadata describes this cache: ``[num_blocks, Hkv, D]`` of a ``[num_blocks, bs, Hkv, D]`` cache."""
    if len(getattr(key_cache, "shape", ())) != 4:
        raise KernelInputError(f"key_cache must be [num_blocks, block_size, Hkv, D], got shape {getattr(key_cache, 'shape', None)}")
    nb, _, hkv, d = (int(s) for s in key_cache.shape)
    if tuple(key_min.shape) != (nb, hkv, d) or key_min.dtype != key_cache.dtype:
        raise KernelInputError(
            f"the metadata {tuple(key_min.shape)} {key_min.dtype} does not describe a cache "
            f"{tuple(key_cache.shape)} {key_cache.dtype} (expected {(nb, hkv, d)} {key_cache.dtype})"
        )


def check_batch_tables(batch: Any, num_kv_heads: int, num_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Check a :class:`~tinyserve_sim.control.batch.DecodeBatch` against a cache of ``num_blocks``
    blocks and ``num_kv_heads`` KV heads; return its tables ``[S, Hkv, W]`` and lengths
    ``[S, Hkv]`` (read-only broadcasts when the batch has no head axis)."""
    if not isinstance(batch, DecodeBatch):
        raise KernelInputError(f"batch must be a DecodeBatch, got {type(batch).__name__}")
    try:
        tables, lens = batch.head_tables(num_kv_heads)
    except Exception as exc:  # InvalidArgumentError: a head axis of the wrong size
        raise KernelInputError(str(exc)) from exc
    check_positive_lengths(batch)
    check_rows_fit(batch, num_blocks)
    return tables, lens


def check_page_scores(query: Any, key_min: Any, key_max: Any, batch: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check ``page_scores`` inputs; return the batch's tables ``[S, Hkv, W]`` and lengths ``[S, Hkv]``."""
    num_blocks, num_kv_heads, head_dim = check_page_metadata(key_min, key_max)
    check_array("query", query)
    if query.ndim != 3 or query.shape[2] != head_dim:
        raise KernelInputError(f"query must have shape [S, Hq, {head_dim}], got {tuple(query.shape)}")
    if query.dtype != key_min.dtype:
        raise KernelInputError(f"query dtype {query.dtype} differs from the metadata's {key_min.dtype}")
    check_contiguous("query", query)
    num_heads = int(query.shape[1])
    if num_heads < 1 or num_heads % num_kv_heads:
        raise KernelInputError(
            f"num query heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})"
        )
    if (num_heads // num_kv_heads) * head_dim > MAX_GROUP_ELEMENTS:
        raise KernelInputError(
            f"a GQA group of {num_heads // num_kv_heads} heads of {head_dim} elements is more than "
            f"{MAX_GROUP_ELEMENTS} elements (the GPU kernel stages it in shared memory)"
        )
    tables, lens = check_batch_tables(batch, num_kv_heads, num_blocks)
    if tables.shape[0] != query.shape[0]:
        raise KernelInputError(f"the batch has {tables.shape[0]} sequences, the query {query.shape[0]}")
    return tables, lens


def pages_in_budget(budget_tokens: Any, block_size: int) -> int:
    """How many pages a budget of ``budget_tokens`` tokens pays for: ``budget_tokens // block_size``,
    at least 2 (the attention sink and the newest page are always kept)."""
    budget = positive_int("budget_tokens", budget_tokens)
    block_size = positive_int("block_size", block_size)
    pages = budget // block_size
    if pages < 2:
        raise KernelInputError(
            f"a budget of {budget} tokens is less than two pages of {block_size} tokens: "
            "the first page (attention sink) and the newest page are always kept"
        )
    return pages


def check_select_pages(scores: Any, batch: Any, budget_tokens: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Check ``select_pages`` inputs; return ``(tables [S, Hkv, W], lengths [S, Hkv], pages K)``."""
    check_array("scores", scores)
    if scores.ndim != 3 or np.dtype(scores.dtype) != SCORE_DTYPE:
        raise KernelInputError(f"scores must be float32 [S, Hkv, W], got {scores.dtype} {tuple(scores.shape)}")
    check_contiguous("scores", scores)
    if not isinstance(batch, DecodeBatch):
        raise KernelInputError(f"batch must be a DecodeBatch, got {type(batch).__name__}")
    S, num_kv_heads, width = (int(s) for s in scores.shape)
    if (S, width) != (batch.num_seqs, batch.max_blocks):
        raise KernelInputError(
            f"scores {tuple(scores.shape)} do not match the batch: {batch.num_seqs} sequences, "
            f"tables {batch.max_blocks} wide"
        )
    if num_kv_heads < 1:
        raise KernelInputError("scores have no KV head")
    pages = pages_in_budget(budget_tokens, batch.block_size)
    # The block ids themselves are checked by whoever reads the cache through them.
    tables, lens = check_batch_tables(batch, num_kv_heads, np.iinfo(np.int32).max)
    return tables, lens, pages


def check_compact_tables(batch: Any, logical: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check ``compact_tables`` inputs; return the batch's tables ``[S, Hkv, W]``, its lengths
    ``[S, Hkv]`` and ``logical`` as int64 on the host.

    ``logical`` is an integer ``[S, Hkv, K']`` array whose rows list pages of their
    sequence (``0 .. pages - 1``) in increasing order, then ``-1`` padding: what
    ``select_page_indices`` returns. The message names the first culprit.
    """
    check_array("logical", logical)
    if logical.ndim != 3 or np.dtype(logical.dtype).kind not in "iu":
        raise KernelInputError(
            f"logical must be an integer array [S, Hkv, K'], got {logical.dtype} {tuple(logical.shape)}"
        )
    if not isinstance(batch, DecodeBatch):
        raise KernelInputError(f"batch must be a DecodeBatch, got {type(batch).__name__}")
    if logical.shape[0] != batch.num_seqs:
        raise KernelInputError(f"logical has {logical.shape[0]} rows of sequences, the batch {batch.num_seqs}")
    tables, lens = check_batch_tables(batch, int(logical.shape[1]), np.iinfo(np.int32).max)
    idx = to_host(logical)
    pages = (lens.astype(np.int64) + batch.block_size - 1) // batch.block_size  # [S, Hkv]
    kept = idx >= 0
    culprits = (idx < -1) | (idx >= pages[..., None])  # neither padding nor a page of the row
    culprits[..., 1:] |= kept[..., 1:] & ~kept[..., :-1]  # a page after the padding
    culprits[..., 1:] |= kept[..., 1:] & (idx[..., 1:] <= idx[..., :-1])  # not increasing
    if culprits.any():
        s, h, j = (int(i) for i in np.argwhere(culprits)[0])
        raise KernelInputError(
            f"logical[{s}, {h}, {j}] = {int(idx[s, h, j])}: a row lists pages of its sequence "
            f"(0..{int(pages[s, h]) - 1}) in increasing order, then -1 padding"
        )
    return tables, lens, idx.astype(np.int64)
