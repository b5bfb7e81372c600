"""``CupyBackend``: the data plane on a CUDA GPU, bit-identical to ``NumpyBackend``."""

from __future__ import annotations

from typing import Any

import numpy as np

from tinyserve_sim.errors import BackendUnavailableError


def _require_gpu() -> Any:
    try:
        import cupy as cp
    except Exception as exc:  # ImportError or a broken CUDA install
        raise BackendUnavailableError(f"CuPy is not importable: {exc}") from exc
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            raise BackendUnavailableError("no CUDA device found")
    except BackendUnavailableError:
        raise
    except Exception as exc:
        raise BackendUnavailableError(f"no usable CUDA device: {exc}") from exc
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
        self, query, key_cache, value_cache, batch, scale, variant="auto", partition_size=1024
    ) -> Any:
        return self._launchers.paged_attention(query, key_cache, value_cache, batch, scale, variant, partition_size)

    def synchronize(self) -> None:
        self.cp.cuda.get_current_stream().synchronize()
