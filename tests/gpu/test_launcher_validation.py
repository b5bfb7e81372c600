"""Host-side validation of the GPU launchers. Runs without a GPU: every check
happens before anything touches the device, so NumPy inputs are enough to
reach (and trip) it. The lists of bad inputs are the twins' (tests/data), so
the launchers and the twins refuse exactly the same inputs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cupy", reason="the launchers need CuPy importable (no GPU needed)")

from gpu_helpers import GPU_SETTINGS  # noqa: E402,F401  (puts tests/data on the path)
from kv_strategies import (  # noqa: E402
    BAD_ATTENTION_INPUTS,
    BAD_COPY_INPUTS,
    BAD_RESHAPE_INPUTS,
    good_attention_args,
    good_copy_args,
    good_reshape_args,
)

from tinyserve_sim.control.batch import DecodeBatch  # noqa: E402
from tinyserve_sim.errors import (  # noqa: E402
    BackendUnavailableError,
    CopyConflictError,
    KernelInputError,
)
from tinyserve_sim.gpu import launchers  # noqa: E402


@pytest.mark.parametrize("change, match", BAD_RESHAPE_INPUTS)
def test_reshape_and_cache_checks_everything_before_launch(change, match):
    args = good_reshape_args()
    change(args)
    with pytest.raises(KernelInputError, match=match):
        launchers.reshape_and_cache(**args)


@pytest.mark.parametrize("change, match", BAD_COPY_INPUTS)
def test_copy_blocks_checks_everything_before_launch(change, match):
    args = good_copy_args()
    change(args)
    with pytest.raises(KernelInputError, match=match):
        launchers.copy_blocks(**args)


@pytest.mark.parametrize("case", BAD_ATTENTION_INPUTS)
def test_paged_attention_checks_everything_before_launch(case):
    change, match = case[:2]
    args = good_attention_args()
    change(args)
    with pytest.raises(KernelInputError, match=match):
        launchers.paged_attention(**args)
    with pytest.raises(KernelInputError, match=match):
        launchers.prepare_paged_attention(**args)


def test_valid_host_inputs_get_as_far_as_the_device_check():
    """The good calls pass every host check; only the arrays' place stops them."""
    with pytest.raises(KernelInputError, match="cupy.ndarray"):
        launchers.reshape_and_cache(**good_reshape_args())
    with pytest.raises(KernelInputError, match="cupy.ndarray"):
        launchers.copy_blocks(**good_copy_args())
    with pytest.raises(KernelInputError, match="cupy.ndarray"):
        launchers.paged_attention(**good_attention_args())
    per_head = good_attention_args()
    per_head["batch"] = per_head["batch"].broadcast_heads(2)
    with pytest.raises(KernelInputError, match="cupy.ndarray"):
        launchers.paged_attention(**per_head)


def test_copy_conflicts_are_their_own_error():
    kc = np.zeros((4, 2, 1, 8), np.float16)
    with pytest.raises(CopyConflictError):
        launchers.copy_blocks(kc, kc.copy(), np.array([[0, 1], [1, 2]], np.int64))


def test_shapes_the_grid_cannot_hold_are_refused_on_the_host():
    kc = np.zeros((1, 1, 1, 8), np.float16)
    many = DecodeBatch(1, np.zeros((70_000, 1), np.int32), np.ones(70_000, np.int32))
    with pytest.raises(KernelInputError, match="at most 65535"):
        launchers.paged_attention(np.zeros((70_000, 1, 8), np.float16), kc, kc, many, 1.0)
    long = DecodeBatch(1, np.zeros((1, 2_000_000), np.int32), np.array([2_000_000], np.int32))
    with pytest.raises(KernelInputError, match="split-K partitions"):
        launchers.paged_attention(np.zeros((1, 1, 8), np.float16), kc, kc, long, 1.0, "split_k", 128)


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
