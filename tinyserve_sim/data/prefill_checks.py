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
from tinyserve_sim.data.validation import check_batch_kind, check_caches, check_query, check_rows_fit
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
    num_tokens, _ = check_query(query, key_cache, num_kv_heads, head_dim, "T")
    check_batch_kind(batch, PrefillBatch, block_size)
    if batch.num_query_tokens != num_tokens:
        raise KernelInputError(
            f"batch has {batch.num_query_tokens} new tokens (query_start_loc[-1]) but query has {num_tokens} rows"
        )
    check_rows_fit(batch, num_blocks)
    tables, lens = batch.block_tables, batch.seq_lens
    return tables, lens, batch.query_start_loc
