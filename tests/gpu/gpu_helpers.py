"""Helpers for the GPU tests: settings, raw-bit comparison, the shared strategies' path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "data"))

#: Optional override of the number of examples (a short run under compute-sanitizer):
#: ``TS_GPU_MAX_EXAMPLES=5 pytest -m gpu ...``. Otherwise the Hypothesis profile decides.
_MAX = os.environ.get("TS_GPU_MAX_EXAMPLES")
GPU_SETTINGS = settings(deadline=None, max_examples=int(_MAX)) if _MAX else settings(deadline=None)


def bits(a: np.ndarray) -> np.ndarray:
    """The raw bits, so that NaN == NaN and -0 != +0 in comparisons."""
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_bits_equal(gpu: np.ndarray, twin: np.ndarray) -> None:
    assert gpu.shape == twin.shape and gpu.dtype == twin.dtype, (gpu.shape, gpu.dtype, twin.shape, twin.dtype)
    diff = bits(gpu) != bits(twin)
    assert not diff.any(), f"{int(diff.sum())} of {diff.size} elements differ; first at {np.argwhere(diff)[0]}"
