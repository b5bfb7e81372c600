"""Inputs for the tensor-core model (``tinyserve_sim.data.tensor_core``), shared by its CPU
tests, its GPU test and ``benchmarks/experiments/mma_probe.py`` (which fitted the model on
them).

Seven kinds of tiles, each aimed at one part of the rule: ``ints`` (exact: checks the
register layout), ``normal`` (typical values), ``spread`` (exponents far apart: the cut),
``cancel`` (``c`` close to minus the dot product: the cut seen through a small result),
``subnormal`` (float16 and float32 subnormals: the exponent fields), ``prob`` (attention's
``P V``: probabilities times values), ``anybits`` (any finite bit pattern). ``specials``
adds infinities, NaNs and signed zeros.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

KINDS = ("ints", "normal", "spread", "cancel", "subnormal", "prob", "anybits")


def _f16(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.asarray(x, np.float64).astype(np.float16)


def _finite_f16_bits(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.integers(0, 2**16, shape).astype(np.uint16).view(np.float16)
    return np.where(np.isfinite(x), x, np.float16(0.5))


def _signed(rng: np.random.Generator, m: np.ndarray) -> np.ndarray:
    return np.where(rng.random(m.shape) < 0.5, -m, m)


def draw_tiles(kind: str, tiles: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A [tiles, 16, 16] float16, B^T [tiles, 8, 16] float16, C [tiles, 16, 8] float32."""
    sa, sb, sc = (tiles, 16, 16), (tiles, 8, 16), (tiles, 16, 8)
    if kind == "ints":
        a, b = _f16(rng.integers(-4, 5, sa)), _f16(rng.integers(-4, 5, sb))
        c = rng.integers(-64, 65, sc).astype(np.float32)
    elif kind == "normal":
        a, b = _f16(rng.standard_normal(sa)), _f16(rng.standard_normal(sb))
        c = (rng.standard_normal(sc) * 4).astype(np.float32)
    elif kind == "spread":  # |x| in [2**-14, 2**15): no infinities
        a = _f16(_signed(rng, 1 + rng.random(sa)) * 2.0 ** rng.integers(-14, 15, sa))
        b = _f16(_signed(rng, 1 + rng.random(sb)) * 2.0 ** rng.integers(-14, 15, sb))
        c = (_signed(rng, 1 + rng.random(sc)) * 2.0 ** rng.integers(-60, 40, sc)).astype(np.float32)
    elif kind == "cancel":  # c is minus the dot product, give or take a few ulps
        a, b = _f16(rng.standard_normal(sa)), _f16(rng.standard_normal(sb))
        c = (-np.einsum("tik,tjk->tij", a.astype(np.float64), b.astype(np.float64))).astype(np.float32)
        for _ in range(3):
            step = rng.integers(-1, 2, sc)
            c = np.where(step > 0, np.nextafter(c, np.float32(np.inf)), c)
            c = np.where(step < 0, np.nextafter(c, np.float32(-np.inf)), c).astype(np.float32)
    elif kind == "subnormal":
        a = _f16(_signed(rng, 1 + rng.random(sa)) * 2.0 ** rng.integers(-24, -8, sa))
        b = _f16(_signed(rng, 1 + rng.random(sb)) * 2.0 ** rng.integers(-10, 4, sb))
        bits = rng.integers(0, 2**26, sc).astype(np.uint32) | (rng.integers(0, 2, sc).astype(np.uint32) << 31)
        c = bits.view(np.float32)
    elif kind == "prob":
        a, b = _f16(rng.random(sa) ** 3), _f16(rng.standard_normal(sb))
        c = (rng.standard_normal(sc) * 10).astype(np.float32)
    elif kind == "anybits":
        a, b = _finite_f16_bits(rng, sa), _finite_f16_bits(rng, sb)
        x = rng.integers(0, 2**32, sc, dtype=np.uint64).astype(np.uint32).view(np.float32)
        c = np.where(np.isfinite(x), x, np.float32(1.0))
    elif kind == "specials":  # a few infinities, NaNs and zeros among normal values
        a, b = _f16(rng.standard_normal(sa)), _f16(rng.standard_normal(sb))
        c = rng.standard_normal(sc).astype(np.float32)
        pick = [np.float16(np.inf), np.float16(-np.inf), np.float16(np.nan), np.float16(0.0), np.float16(-0.0)]
        for arr, p in ((a, 0.02), (b, 0.02)):
            where = rng.random(arr.shape) < p
            arr[where] = np.array(pick, np.float16)[rng.integers(0, len(pick), where.sum())]
        where = rng.random(sc) < 0.1
        c[where] = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)[rng.integers(0, 5, where.sum())]
        zero_rows = rng.random(tiles) < 0.2  # whole tiles of signed zeros: the sign of a zero sum
        a[zero_rows] = np.where(rng.random(a[zero_rows].shape) < 0.5, np.float16(0.0), np.float16(-0.0))
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return a.astype(np.float16), b.astype(np.float16), c.astype(np.float32)


def float16s(finite: bool = True) -> st.SearchStrategy[np.float16]:
    """Any float16 bit pattern (finite ones only, by default)."""
    bits = st.integers(0, 2**16 - 1).map(lambda v: np.array(v, np.uint16).view(np.float16)[()])
    return bits.filter(np.isfinite) if finite else bits


def float32s() -> st.SearchStrategy[np.float32]:
    """Any finite float32 bit pattern."""
    bits = st.integers(0, 2**32 - 1).map(lambda v: np.array(v, np.uint32).view(np.float32)[()])
    return bits.filter(np.isfinite)


@st.composite
def dot_rows(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """One output's inputs: 16 float16 a, 16 float16 b, a float32 c. Half the rows keep
    every exponent within a narrow band, where the cut and the carries interact most."""
    if draw(st.booleans()):
        return (
            np.array(draw(st.lists(float16s(), min_size=16, max_size=16)), np.float16),
            np.array(draw(st.lists(float16s(), min_size=16, max_size=16)), np.float16),
            np.float32(draw(float32s())),
        )
    base = draw(st.integers(-10, 10))
    f16 = st.builds(lambda m, e, s: np.float16(s * (1 + m / 1024) * 2.0**e),
                    st.integers(0, 1023), st.integers(base - 4, base + 4), st.sampled_from((-1, 1)))
    a = np.array(draw(st.lists(f16, min_size=16, max_size=16)), np.float16)
    b = np.array(draw(st.lists(f16, min_size=16, max_size=16)), np.float16)
    c = np.float32(draw(st.floats(-(2.0 ** (2 * base + 12)), 2.0 ** (2 * base + 12), width=32)))
    return a, b, c
