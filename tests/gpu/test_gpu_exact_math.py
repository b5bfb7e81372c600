"""The NumPy emulation of a fused multiply-add against the GPU's own ``__fmaf_rn``, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from tinyserve_sim.data.exact_math import fma_f32

pytestmark = pytest.mark.gpu

_SOURCE = r"""
extern "C" __global__ void fma_kernel(const float* a, const float* b, const float* c, float* out, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = __fmaf_rn(a[i], b[i], c[i]);
}
"""


def _gpu_fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    import cupy as cp

    from tinyserve_sim.gpu.build import load_module

    # Built the way the backend builds its kernels (CuPy's own compile would add -ftz=true).
    kernel = load_module(_SOURCE, "fma.cu").get_function("fma_kernel")
    da, db, dc = (cp.asarray(x) for x in (a, b, c))
    out = cp.full(a.shape, np.nan, np.float32)  # poison
    kernel((1024,), (256,), (da, db, dc, out, np.int64(a.size)))
    return out.get()


def _triples(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four kinds of operands, n of each: any finite float32 bit pattern (subnormals included),
    near-cancellation (c close to -a*b), the PV product (probability x float16 + accumulator),
    and logits (float16 x float16 + partial sum)."""
    def any_finite(k):
        x = rng.integers(0, 2**32, k, dtype=np.uint64).astype(np.uint32).view(np.float32)
        return np.where(np.isfinite(x), x, np.float32(1.5))

    a1, b1, c1 = any_finite(n), any_finite(n), any_finite(n)
    a2, b2 = (rng.standard_normal(n) * 2.0 ** rng.integers(-60, 60, n)).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    with np.errstate(over="ignore"):
        c2 = -(a2.astype(np.float64) * b2).astype(np.float32)
    c2 = np.nextafter(c2, np.where(rng.random(n) < 0.5, np.float32(np.inf), np.float32(-np.inf)))
    a3 = rng.random(n).astype(np.float32)
    b3 = rng.standard_normal(n).astype(np.float16).astype(np.float32)
    c3 = (rng.standard_normal(n) * 10).astype(np.float32)
    a4 = rng.standard_normal(n).astype(np.float16).astype(np.float32)
    b4 = rng.standard_normal(n).astype(np.float16).astype(np.float32)
    c4 = (rng.standard_normal(n) * 3).astype(np.float32)
    cat = np.concatenate
    return cat([a1, a2, a3, a4]), cat([b1, b2, b3, b4]), cat([c1, c2, c3, c4])


@pytest.mark.parametrize("seed", [0, 1])
def test_fma_f32_equals_the_gpu_fmaf_rn(seed):
    # 2 x 4 x 2.5M = 20M triples, in slices so the host memory stays small.
    rng = np.random.default_rng(seed)
    for _ in range(4):
        a, b, c = _triples(rng, 625_000)
        with np.errstate(over="ignore", invalid="ignore"):
            gpu, twin = _gpu_fma(a, b, c), fma_f32(a, b, c)
        bad = np.flatnonzero(gpu.view(np.uint32) != twin.view(np.uint32))
        detail = [f"fma({a[i]!r}, {b[i]!r}, {c[i]!r}): gpu {gpu[i]!r}, twin {twin[i]!r}" for i in bad[:8]]
        assert bad.size == 0, f"{bad.size} of {a.size} differ:\n" + "\n".join(detail)


_EXP_SOURCE = r"""
#include "exact_math.cuh"
extern "C" __global__ void exp_kernel(const float* x, float* out, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = ts_exp(x[i]);
}
"""


def test_exp_f32_equals_the_gpu_ts_exp():
    """The kernels' exponential against its twin, bit for bit, on softmax-like arguments (the
    range the kernels use), the whole finite float32 range, and the special values."""
    import cupy as cp

    from tinyserve_sim.data.exact_math import exp_f32
    from tinyserve_sim.gpu.build import inline_includes, load_module

    kernel = load_module(inline_includes(_EXP_SOURCE), "exp.cu").get_function("exp_kernel")
    rng = np.random.default_rng(4)
    bits = rng.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = np.concatenate([
        -rng.exponential(8.0, 4_000_000).astype(np.float32),  # x - max <= 0, as in every softmax
        rng.uniform(-104, 90, 2_000_000).astype(np.float32),
        bits,  # any bit pattern: NaNs, infinities, subnormals
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 88.7, -87.3], np.float32),
    ])
    out = cp.full(x.shape, np.nan, np.float32)
    kernel((1024,), (256,), (cp.asarray(x), out, np.int64(x.size)))
    gpu = out.get()
    with np.errstate(invalid="ignore", over="ignore"):
        twin = exp_f32(x)
    same = (gpu.view(np.uint32) == twin.view(np.uint32)) | (np.isnan(gpu) & np.isnan(twin))
    bad = np.flatnonzero(~same)
    assert bad.size == 0, f"{bad.size} of {x.size} differ, e.g. " + ", ".join(
        f"exp({x[i]!r}): gpu {gpu[i]!r}, twin {twin[i]!r}" for i in bad[:6])
