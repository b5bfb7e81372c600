"""Launcher of the paged prefill-attention kernel: validate on the host, then launch.

Same rules as :mod:`.launchers`: the checks are the twin's
(:func:`~tinyserve_sim.data.prefill_checks.check_paged_prefill_attention`), the
big arrays must already be on the GPU, the batch's small index arrays are
uploaded once, and scalars are passed as ``np.int32``/``np.float32``.
``prepare_paged_prefill_attention`` splits validation from launching, so that
the benchmark times the kernel only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cupy as cp
import numpy as np

from tinyserve_sim.control.prefill_batch import PrefillBatch
from tinyserve_sim.data.prefill_checks import check_paged_prefill_attention
from tinyserve_sim.data.prefill_plan import check_prefill_launch_limits, prefill_plan_for, work_items
from tinyserve_sim.data.validation import check_scale

from .build import get_module, paged_prefill_attention_kernel_name
from .launchers import _check_out, _device, _index, require_modelled_tensor_cores


def prepare_paged_prefill_attention(
    query: Any,
    key_cache: Any,
    value_cache: Any,
    batch: PrefillBatch,
    scale: float,
    out: Any = None,
) -> Callable[[], cp.ndarray]:
    """Validate everything now (and upload the batch's arrays and the work list once);
    return a function that launches and returns ``out`` ``[T, Hq, D]``."""
    tables, lens, starts = check_paged_prefill_attention(query, key_cache, value_cache, batch)
    scale32 = check_scale(scale)
    T, Hq, D = (int(x) for x in query.shape)
    _, block_size, Hkv, _ = (int(x) for x in key_cache.shape)
    plan = prefill_plan_for(D, query.dtype)
    work = work_items(starts, lens, Hq // Hkv, plan.row_tile)
    check_prefill_launch_limits(T, Hq, Hkv, len(work))
    for n, a in (("query", query), ("key_cache", key_cache), ("value_cache", value_cache)):
        _device(a, n)
    dtype = np.dtype(query.dtype)
    out = _check_out(out, (T, Hq, D), dtype)
    if T == 0:
        return lambda: out
    if plan.tensor_core_scores:  # after the arrays' checks, as the decode launcher does
        require_modelled_tensor_cores()
    name = paged_prefill_attention_kernel_name(plan, dtype)
    kernel = get_module("paged_prefill_attention.cu", (name,)).get_function(name)
    smem = plan.shared_memory_bytes(dtype)
    kernel.max_dynamic_shared_size_bytes = smem  # above the default 48 KiB: an opt-in per kernel
    args = (
        out, query, key_cache, value_cache, _index(tables), _index(lens), _index(starts), _index(work), scale32,
        np.int32(Hq), np.int32(Hkv), np.int32(D), np.int32(block_size), np.int32(batch.max_blocks),
    )
    grid = (len(work), Hkv)

    def launch() -> cp.ndarray:
        kernel(grid, (plan.threads,), args, shared_mem=smem)
        return out

    return launch


def paged_prefill_attention(
    query: Any, key_cache: Any, value_cache: Any, batch: PrefillBatch, scale: float, out: Any = None
) -> cp.ndarray:
    """GPU paged prefill attention, bit-identical to ``tinyserve_sim.data.paged_prefill_attention``."""
    return prepare_paged_prefill_attention(query, key_cache, value_cache, batch, scale, out)()
