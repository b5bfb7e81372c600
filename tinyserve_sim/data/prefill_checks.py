"""Host-side checks of a paged prefill-attention call, shared by the twin and the GPU launcher.

As for every kernel (:mod:`~tinyserve_sim.data.validation`), the big arrays are
checked by ``.shape``, ``.dtype`` and ``.flags`` only (NumPy or CuPy alike), the
small index arrays of the :class:`~tinyserve_sim.control.prefill_batch.PrefillBatch`
by value on the host. Every failure is a
:class:`~tinyserve_sim.errors.KernelInputError` naming the argument, raised
before any work.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tinyserve_sim.control.prefill_batch import PrefillBatch
from tinyserve_sim.data.validation import check_array, check_caches
from tinyserve_sim.errors import KernelInputError


def check_paged_prefill_attention(
    query: Any, key_cache: Any, value_cache: Any, batch: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the inputs; return the batch's ``block_tables``, ``seq_lens`` and
    ``query_start_loc`` (host arrays).

    ``query`` is ``[T, Hq, D]`` in the caches' dtype, C-contiguous, with ``T``
    the batch's new tokens and ``Hq`` a multiple of the caches' KV heads; the
    batch counts blocks of the caches' size, every sequence fits its table row,
    and every block a sequence uses is a block of the caches.
    """
    num_blocks, block_size, num_kv_heads, head_dim = check_caches(key_cache, value_cache)
    check_array("query", query)
    if query.ndim != 3 or query.shape[2] != head_dim:
        raise KernelInputError(f"query must have shape [T, Hq, {head_dim}], got {tuple(query.shape)}")
    if query.dtype != key_cache.dtype:
        raise KernelInputError(f"query dtype {query.dtype} differs from the cache's {key_cache.dtype}")
    if not query.flags.c_contiguous:
        raise KernelInputError("query must be C-contiguous (the kernel ignores strides)")
    num_tokens, num_heads = int(query.shape[0]), int(query.shape[1])
    if num_heads < 1 or num_heads % num_kv_heads:
        raise KernelInputError(
            f"num query heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})"
        )
    if not isinstance(batch, PrefillBatch):
        raise KernelInputError(
            f"batch must be a PrefillBatch (tinyserve_sim.control.prefill_batch), got {type(batch).__name__}"
        )
    if batch.block_size != block_size:
        raise KernelInputError(
            f"batch: its tables count blocks of {batch.block_size} tokens, the cache's blocks hold {block_size}"
        )
    if batch.num_query_tokens != num_tokens:
        raise KernelInputError(
            f"batch has {batch.num_query_tokens} new tokens (query_start_loc[-1]) but query has {num_tokens} rows"
        )
    lens = batch.seq_lens
    capacity = batch.max_blocks * block_size
    if batch.num_seqs and int(lens.max()) > capacity:
        s = int(lens.argmax())
        raise KernelInputError(
            f"batch.seq_lens[{s}]: a sequence of {int(lens[s])} tokens does not fit a table of "
            f"{batch.max_blocks} blocks of {block_size}"
        )
    tables = batch.block_tables
    used = np.arange(batch.max_blocks) < ((lens[:, None].astype(np.int64) + block_size - 1) // block_size)
    ids = tables[used]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_blocks):
        bad = np.argwhere(used & ((tables < 0) | (tables >= num_blocks)))[0]
        raise KernelInputError(
            f"batch.block_tables{bad.tolist()} = {int(tables[tuple(bad)])} is a block id outside 0..{num_blocks - 1}"
        )
    return tables, lens, batch.query_start_loc
