"""Host-side validation of the GPU launchers. Runs without a GPU: every check
happens before anything touches the device, so NumPy inputs are enough to
reach (and trip) it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cupy", reason="the launchers need CuPy importable (no GPU needed)")

from tinyserve_sim.gpu import launchers  # noqa: E402

from tinyserve_sim.errors import (  # noqa: E402
    BackendUnavailableError,
    CopyConflictError,
    KernelInputError,
)


def _cache(shape=(4, 16, 2, 32), dtype=np.float16):
    return np.zeros(shape, dtype), np.zeros(shape, dtype)


def test_reshape_and_cache_checks_slots_before_launch():
    kc, vc = _cache()
    key = np.zeros((2, 2, 32), np.float16)
    with pytest.raises(KernelInputError, match="out of range"):
        launchers.reshape_and_cache(key, key, kc, vc, np.array([0, 64], np.int64))
    with pytest.raises(KernelInputError, match="twice"):
        launchers.reshape_and_cache(key, key, kc, vc, np.array([5, 5], np.int64))
    with pytest.raises(KernelInputError, match="cupy.ndarray"):  # valid, but host arrays
        launchers.reshape_and_cache(key, key, kc, vc, np.array([0, 1], np.int64))


def test_copy_blocks_checks_conflicts_before_launch():
    kc, vc = _cache()
    with pytest.raises(CopyConflictError):
        launchers.copy_blocks(kc, vc, np.array([[0, 1], [1, 2]], np.int64))
    with pytest.raises(KernelInputError, match="outside"):
        launchers.copy_blocks(kc, vc, np.array([[0, 4]], np.int64))


def test_paged_attention_checks_tables_and_lengths_before_launch():
    kc, vc = _cache()
    q = np.zeros((1, 4, 32), np.float16)
    ok_table = np.array([[0, 1, 2, 3]], np.int32)
    with pytest.raises(KernelInputError, match="does not fit"):
        launchers.paged_attention(q, kc, vc, ok_table, np.array([65], np.int32), 1.0)
    with pytest.raises(KernelInputError, match="outside"):
        launchers.paged_attention(q, kc, vc, np.array([[0, 1, 2, 4]], np.int32), np.array([64], np.int32), 1.0)
    with pytest.raises(KernelInputError, match="contiguous"):
        launchers.paged_attention(np.zeros((1, 8, 32), np.float16)[:, ::2], kc, vc, ok_table, np.array([64], np.int32), 1.0)
    with pytest.raises(KernelInputError, match="cupy.ndarray"):
        launchers.paged_attention(q, kc, vc, ok_table, np.array([64], np.int32), 1.0)


def test_get_backend_reports_a_missing_gpu_clearly():
    import cupy

    from tinyserve_sim.data.backends import get_backend

    try:
        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a GPU is present: nothing to report")
    except Exception:  # noqa: BLE001 - no driver: exactly the case under test
        pass
    with pytest.raises(BackendUnavailableError):
        get_backend("cupy")
