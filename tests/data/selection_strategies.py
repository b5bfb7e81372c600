"""Hypothesis strategies of the query-aware selection tests, shared by the CPU tests (tests/data)
and the GPU tests (tests/gpu/test_gpu_selection.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data import page_metadata_from_cache


@dataclass
class ScoreCase:
    query: np.ndarray  # [S, Hq, D]
    key_cache: np.ndarray  # [nb, bs, Hkv, D]
    key_min: np.ndarray
    key_max: np.ndarray
    batch: DecodeBatch

    @property
    def group(self) -> int:
        return self.query.shape[1] // self.key_cache.shape[2]


@st.composite
def score_cases(draw, max_pages: int = 12) -> ScoreCase:
    """Keys and queries of every kind the bound must survive: mixed signs, all-negative (or
    all-positive) queries, one huge key channel, exact zeros; GQA groups 1..8; tables with
    or without a head axis; pages past a row's end."""
    dtype = np.dtype(draw(st.sampled_from([np.float16, np.float32])))
    head_dim = draw(st.sampled_from([8, 16, 24, 40, 64, 128]))
    Hkv = draw(st.integers(1, 3))
    G = draw(st.sampled_from([1, 2, 3, 4, 8]))
    bs = draw(st.sampled_from([1, 2, 5, 16]))
    S = draw(st.integers(1, 3))
    per_head = draw(st.booleans())
    W = draw(st.integers(1, max_pages))
    nb = draw(st.integers(1, 3 * W))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    keys = rng.standard_normal((nb, bs, Hkv, head_dim))
    kind = draw(st.sampled_from(["plain", "huge_channel", "zeros", "positive"]))
    if kind == "huge_channel":
        keys[..., int(rng.integers(head_dim))] *= 1e4 if dtype == np.float16 else 1e6
        keys = np.clip(keys, -6e4, 6e4)  # finite in float16 (max 65504)
    elif kind == "zeros":
        keys[rng.random(keys.shape) < 0.5] = 0.0
    elif kind == "positive":
        keys = np.abs(keys)
    key_cache = keys.astype(dtype)
    q = rng.standard_normal((S, Hkv * G, head_dim)) * draw(st.sampled_from([1.0, 30.0]))
    sign = draw(st.sampled_from(["mixed", "negative", "positive"]))
    if sign == "negative":
        q = -np.abs(q)
    elif sign == "positive":
        q = np.abs(q)
    shape = (S, Hkv, W) if per_head else (S, W)
    tables = rng.integers(0, nb, size=shape).astype(np.int32)
    lens = rng.integers(1, W * bs + 1, size=shape[:-1]).astype(np.int32)
    batch = DecodeBatch(bs, tables, lens, np.zeros(0, np.int64))
    key_min, key_max = page_metadata_from_cache(key_cache, np.full(nb, bs))
    return ScoreCase(q.astype(dtype), key_cache, key_min, key_max, batch)


@st.composite
def selection_cases(draw):
    """Scores with many ties (drawn from a few values), NaN and -0 sometimes; tables with or
    without a head axis; budgets from 2 pages to more than the widest row."""
    bs = draw(st.sampled_from([1, 3, 16]))
    S = draw(st.integers(1, 3))
    Hkv = draw(st.integers(1, 3))
    W = draw(st.integers(1, 40))
    per_head = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (S, Hkv, W) if per_head else (S, W)
    tables = rng.permutation(S * Hkv * W).reshape(S, Hkv, W)[:, 0 if not per_head else slice(None)]
    tables = np.ascontiguousarray(tables).astype(np.int32).reshape(shape)
    lens = rng.integers(1, W * bs + 1, size=shape[:-1]).astype(np.int32)
    batch = DecodeBatch(bs, tables, lens, np.zeros(0, np.int64))
    values = draw(st.sampled_from(["continuous", "ties", "special"]))
    if values == "continuous":
        scores = rng.standard_normal((S, Hkv, W))
    elif values == "ties":
        scores = rng.integers(0, 3, size=(S, Hkv, W)).astype(np.float64)
    else:
        scores = rng.choice([np.nan, -0.0, 0.0, np.inf, -np.inf, 1.0], size=(S, Hkv, W))
    budget = draw(st.integers(2 * bs, (W + 2) * bs))
    return scores.astype(np.float32), batch, budget
