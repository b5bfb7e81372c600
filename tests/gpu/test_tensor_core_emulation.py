"""The tensor-core probe kernel (``gpu/kernels/tensor_core_mma.cu``) run on the CPU (host
emulation) equals the NumPy model of the instruction bit for bit.

Not a GPU test. The emulation's ``mma.sync`` (``host_emulation/cuda_shim.h``) is a C++ port
of the rule in ``tinyserve_sim/data/tensor_core.py``, written apart from it (doubles and
``std::trunc`` against NumPy arrays), and the decode kernel's tensor-core logits run on it in
``test_paged_attention_emulation.py``. This test holds the two implementations of the rule
to each other, and the probe kernel's fragment layout to the twin's, on every kind of input
of the GPU test; the GPU test holds the rule to the hardware.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np
import pytest
from gpu_helpers import bits  # also puts tests/data on the path
from tensor_core_strategies import KINDS, draw_tiles

from tinyserve_sim.data.tensor_core import mma_m16n8k16

sys.path.insert(0, str(Path(__file__).resolve().parent / "host_emulation"))
import emulate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(emulate.compiler() is None, reason="the host emulation needs g++"),
]

_DRIVER = """
#include "tensor_core_mma.cu"
alignas(16) uint4 smem_u4[1];
extern "C" void run(const void* a, const void* b_t, const float* c, float* d, long long tiles) {
    const unsigned blocks = static_cast<unsigned>((tiles + 3) / 4);  // 4 warps, one tile each
    ts_emu::launch(blocks, 1, 128, smem_u4, 0, [&] {
        tensor_core_mma_kernel(static_cast<const __half*>(a), static_cast<const __half*>(b_t), c, d, tiles);
    });
}
"""


def emulated_mma(a: np.ndarray, b_t: np.ndarray, c: np.ndarray) -> np.ndarray:
    lib = emulate.load(_DRIVER, "tensor_core_mma")
    lib.run.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_longlong]
    a, b_t, c = (np.ascontiguousarray(x) for x in (a, b_t, c))
    d = np.full(c.shape, np.nan, np.float32)  # poison
    lib.run(a.ctypes.data, b_t.ctypes.data, c.ctypes.data, d.ctypes.data, a.shape[0])
    return d


@pytest.mark.parametrize("kind", [*KINDS, "specials"])
def test_the_emulated_instruction_equals_the_model(kind):
    # 63 tiles: 16 blocks of 4 warps, the last with one warp past the end (it must return).
    a, b_t, c = draw_tiles(kind, 63, np.random.default_rng(200 + [*KINDS, "specials"].index(kind)))
    with np.errstate(invalid="ignore", over="ignore"):
        twin = mma_m16n8k16(a, b_t, c)
    got = emulated_mma(a, b_t, c)
    same = (bits(got) == bits(twin)) | (np.isnan(got) & np.isnan(twin))
    assert same.all(), f"{int((~same).sum())} of {same.size} outputs differ; first at {np.argwhere(~same)[0]}"
