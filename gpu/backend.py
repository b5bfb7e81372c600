"""``CupyBackend``: the data plane on a CUDA GPU, bit-identical to ``NumpyBackend``."""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from typing import Any

import numpy as np

from tinyserve_sim.errors import BackendUnavailableError


def no_device_reason() -> str | None:
    """Why this machine has no CUDA device at all, or None when it may have one.

    Without an NVIDIA driver, CuPy's first call fails with
    ``cudaErrorInsufficientDriver: CUDA driver version is insufficient``, which
    sends a reader looking for a driver upgrade on a machine that has no GPU.
    So look first: no driver library (``libcuda.so.1`` cannot be loaded) or no
    device files (``/dev/nvidia*``) means "no CUDA device"; the CUDA error
    is kept for a machine that has both (a real driver mismatch).
    """
    if not sys.platform.startswith("linux"):
        return None  # only Linux is looked at; elsewhere CuPy's own message stands
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no CUDA device (no NVIDIA driver: libcuda.so.1 cannot be loaded)"
    if not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/dxg"):  # /dev/dxg: a GPU under WSL
        return "no CUDA device (the NVIDIA driver library is here, but there is no /dev/nvidia* device)"
    return None


def _require_gpu() -> Any:
    try:
        import cupy as cp
    except Exception as exc:  # ImportError or a broken CUDA install
        raise BackendUnavailableError(f"CuPy is not importable: {exc}") from exc
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        reason = no_device_reason()
        if reason is not None:
            raise BackendUnavailableError(reason) from exc
        raise BackendUnavailableError(f"no usable CUDA device: {exc}") from exc
    if count < 1:
        raise BackendUnavailableError("no CUDA device (the driver reports none)")
    return cp


class CupyBackend:
    """CuPy arrays on the current device; kernels from ``gpu/kernels`` via RawModule."""

    name = "cupy"

    def __init__(self) -> None:
        self.cp = _require_gpu()
        from . import launchers

        self._launchers = launchers

    def asarray(self, a: Any) -> Any:
        return a if isinstance(a, self.cp.ndarray) else self.cp.asarray(np.ascontiguousarray(a))

    def to_numpy(self, a: Any) -> np.ndarray:
        return self.cp.asnumpy(a)

    def full(self, shape: tuple[int, ...], value: float, dtype: np.dtype) -> Any:
        return self.cp.full(shape, value, dtype=dtype)

    def reshape_and_cache(self, key, value, key_cache, value_cache, slot_mapping) -> None:
        self._launchers.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)

    def copy_blocks(self, key_cache, value_cache, block_mapping) -> None:
        self._launchers.copy_blocks(key_cache, value_cache, block_mapping)

    def paged_attention(
        self, query, key_cache, value_cache, batch, scale, variant="auto", partition_size=None
    ) -> Any:
        return self._launchers.paged_attention(query, key_cache, value_cache, batch, scale, variant, partition_size)

    def paged_prefill_attention(self, query, key_cache, value_cache, batch, scale) -> Any:
        from . import prefill_launchers

        return prefill_launchers.paged_prefill_attention(query, key_cache, value_cache, batch, scale)

    def synchronize(self) -> None:
        self.cp.cuda.get_current_stream().synchronize()

    # ------------------------------------------------ query-aware selection
    # (kernels: gpu/selection_launchers.py; same arguments as NumpyBackend)
    @property
    def _selection(self) -> Any:
        from . import selection_launchers

        return selection_launchers

    def reset_page_metadata(self, blocks, key_min, key_max) -> None:
        self._selection.reset_page_metadata(blocks, key_min, key_max)

    def update_page_metadata(self, key, slot_mapping, key_min, key_max, block_size) -> None:
        self._selection.update_page_metadata(key, slot_mapping, key_min, key_max, block_size)

    def copy_page_metadata(self, key_min, key_max, block_mapping) -> None:
        self._selection.copy_page_metadata(key_min, key_max, block_mapping)

    def reshape_and_cache_with_metadata(
        self, key, value, key_cache, value_cache, slot_mapping, key_min, key_max
    ) -> None:
        self._selection.reshape_and_cache_with_metadata(
            key, value, key_cache, value_cache, slot_mapping, key_min, key_max
        )

    def page_scores(self, query, key_min, key_max, batch) -> Any:
        return self._selection.page_scores(query, key_min, key_max, batch)

    def select_pages(self, scores, batch, budget_tokens):
        """The compacted DecodeBatch; its tables are copied back to the host (a DecodeBatch
        holds NumPy arrays). The benchmark keeps them on the device instead."""
        _, tables, lens = self._selection.select_pages(scores, batch, budget_tokens)
        return batch.with_head_tables(self.cp.asnumpy(tables), self.cp.asnumpy(lens))

    def select_page_indices(self, scores, batch, budget_tokens) -> np.ndarray:
        logical, _, _ = self._selection.select_pages(scores, batch, budget_tokens)
        return self.cp.asnumpy(logical)

    def query_analysis(self, queries, low_threshold=0.2, high_threshold=0.5):
        return self._selection.query_analysis(queries, low_threshold, high_threshold)

    def cache_selection(self, complexity, requirement, history, threshold):
        return self._selection.cache_selection(complexity, requirement, history, threshold)

    def adaptive_cache_management(
        self, hit_rates, access_frequencies, allocation, hit_rate_threshold, frequency_threshold
    ):
        return self._selection.adaptive_cache_management(
            hit_rates, access_frequencies, allocation, hit_rate_threshold, frequency_threshold
        )
