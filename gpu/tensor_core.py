"""Launcher of ``tensor_core_mma_kernel``: one ``mma.sync`` m16n8k16 per tile.

The twin is :func:`tinyserve_sim.data.tensor_core.mma_m16n8k16`; the test that compares
them bit for bit is ``tests/gpu/test_gpu_tensor_core.py``. Inputs are checked on the host
by the twin's own checks before anything is launched.
"""

from __future__ import annotations

from typing import Any

import cupy as cp
import numpy as np

from tinyserve_sim.data.tensor_core import check_mma_m16n8k16

from .build import get_module
from .launchers import _device

WARPS_PER_BLOCK = 4  #: one warp per tile


def mma_m16n8k16(a: Any, b_t: Any, c: Any) -> cp.ndarray:
    """GPU ``D = A B + C`` for a stack of tiles; same arguments and layout as the twin.

    ``a`` [tiles, 16, 16] float16, ``b_t`` [tiles, 8, 16] float16, ``c`` [tiles, 16, 8]
    float32, all ``cupy.ndarray`` on the GPU. Returns D [tiles, 16, 8] float32 on the GPU.
    """
    for name, x in (("a", a), ("b_t", b_t), ("c", c)):
        _device(x, name)
    tiles = check_mma_m16n8k16(a, b_t, c)
    a, b_t, c = (cp.ascontiguousarray(x) for x in (a, b_t, c))
    d = cp.empty((tiles, 16, 8), dtype=np.float32)
    if tiles == 0:
        return d
    kernel = get_module("tensor_core_mma.cu").get_function("tensor_core_mma_kernel")
    blocks = -(-tiles // WARPS_PER_BLOCK)
    kernel((blocks,), (32 * WARPS_PER_BLOCK,), (a, b_t, c, d, np.int64(tiles)))
    return d
