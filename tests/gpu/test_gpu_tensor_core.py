"""The tensor-core model against the tensor cores: ``mma.sync`` m16n8k16 (float16 in,
float32 out) on the GPU equals ``tinyserve_sim.data.tensor_core.mma_m16n8k16`` bit for bit.

The GPU's NaN bits are not part of the model: a NaN must meet a NaN, and every other
output must have the twin's bits exactly (signed zeros included)."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_helpers import GPU_SETTINGS
from hypothesis import given
from hypothesis import strategies as st
from tensor_core_strategies import KINDS, draw_tiles

from tinyserve_sim.data.tensor_core import mma_m16n8k16
from tinyserve_sim.errors import KernelInputError

pytestmark = pytest.mark.gpu


def _gpu(a: np.ndarray, b_t: np.ndarray, c: np.ndarray) -> np.ndarray:
    import cupy as cp
    from tinyserve_sim.gpu.tensor_core import mma_m16n8k16 as gpu_mma

    return gpu_mma(cp.asarray(a), cp.asarray(b_t), cp.asarray(c)).get()


def _assert_same(gpu: np.ndarray, twin: np.ndarray, a, b_t, c) -> None:
    same = (gpu.view(np.uint32) == twin.view(np.uint32)) | (np.isnan(gpu) & np.isnan(twin))
    if not same.all():
        t, i, j = np.argwhere(~same)[0]
        raise AssertionError(
            f"{int((~same).sum())} of {same.size} outputs differ; first: tile {t}, ({i}, {j}): "
            f"a={a[t, i].tolist()} b={b_t[t, j].tolist()} c={c[t, i, j]!r}: "
            f"gpu {gpu[t, i, j]!r}, twin {twin[t, i, j]!r}")


@pytest.mark.parametrize("kind", [*KINDS, "specials"])
def test_mma_equals_its_model_on_every_kind(kind):
    # 8,000 tiles = 1,024,000 outputs per kind, in two launches of different sizes.
    rng = np.random.default_rng(100 + [*KINDS, "specials"].index(kind))
    for tiles in (5_003, 2_997):
        a, b_t, c = draw_tiles(kind, tiles, rng)
        _assert_same(_gpu(a, b_t, c), mma_m16n8k16(a, b_t, c), a, b_t, c)


@st.composite
def _tiles(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tiles = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**16, (tiles, 16, 16)).astype(np.uint16).view(np.float16)
    b_t = rng.integers(0, 2**16, (tiles, 8, 16)).astype(np.uint16).view(np.float16)
    c = rng.integers(0, 2**32, (tiles, 16, 8), dtype=np.uint64).astype(np.uint32).view(np.float32)
    # Any bit pattern, then narrow some tiles' exponents so that the terms interact.
    if draw(st.booleans()):
        shift = np.uint16(draw(st.integers(1, 4)))
        a = ((a.view(np.uint16) & np.uint16(0x83FF)) | (np.uint16(15 - shift) << np.uint16(10))).view(np.float16)
    return a, b_t, c


@GPU_SETTINGS
@given(_tiles())
def test_mma_equals_its_model_on_any_bits(tiles):
    a, b_t, c = tiles
    with np.errstate(invalid="ignore", over="ignore"):
        twin = mma_m16n8k16(a, b_t, c)
    _assert_same(_gpu(a, b_t, c), twin, a, b_t, c)


def test_the_launcher_checks_before_launching():
    import cupy as cp
    from tinyserve_sim.gpu.tensor_core import mma_m16n8k16 as gpu_mma

    a = cp.zeros((2, 16, 16), cp.float16)
    b_t = cp.zeros((2, 8, 16), cp.float16)
    c = cp.zeros((2, 16, 8), cp.float32)
    with pytest.raises(KernelInputError, match="cupy.ndarray"):
        gpu_mma(a.get(), b_t, c)
    with pytest.raises(KernelInputError, match="b_t must have shape"):
        gpu_mma(a, b_t[:1], c)
    with pytest.raises(KernelInputError, match="c must be float32"):
        gpu_mma(a, b_t, c.astype(cp.float64))
    assert gpu_mma(a[:0], b_t[:0], c[:0]).shape == (0, 16, 8)
