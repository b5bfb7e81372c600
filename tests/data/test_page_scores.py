"""page_scores: the upper-bound property in float64, the float32 twin within a derived bound of it,
the documented operation order (a scalar spec, bit for bit), the GQA rule, -inf past the end, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given
from selection_strategies import ScoreCase, score_cases

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data import (
    empty_page_metadata,
    make_plan,
    page_metadata_from_cache,
    page_scores,
    page_scores_reference,
)
from tinyserve_sim.data.exact_math import fma_f32
from tinyserve_sim.errors import KernelInputError

F32 = np.float32
U32 = 2.0**-24


def _gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


def true_max_dot(case: ScoreCase) -> tuple[np.ndarray, np.ndarray]:
    """For each (s, h, page): max over the group's heads and the page's tokens of q . k,
    exactly rounded (float64 products are exact; math.fsum), and sum_d |q_d| max(|min_d|, |max_d|)
    (the scale of the float32 rounding error), maxed over the group."""
    tables, lens = case.batch.head_tables(case.key_cache.shape[2])
    S, Hkv, W = tables.shape
    bs = case.batch.block_size
    G = case.group
    q = case.query.astype(np.float64).reshape(S, Hkv, G, -1)
    best = np.full((S, Hkv, W), -np.inf)
    scale = np.zeros((S, Hkv, W))
    for s in range(S):
        for h in range(Hkv):
            n = int(lens[s, h])
            for p in range(-(-n // bs)):
                blk = tables[s, h, p]
                toks = case.key_cache[blk, : min(bs, n - p * bs), h].astype(np.float64)
                for g in range(G):
                    for k in toks:
                        best[s, h, p] = max(best[s, h, p], math.fsum(q[s, h, g] * k))
                    ext = np.maximum(np.abs(case.key_min[blk, h]), np.abs(case.key_max[blk, h])).astype(np.float64)
                    scale[s, h, p] = max(scale[s, h, p], float(np.abs(q[s, h, g]) @ ext))
    return best, scale


@given(case=score_cases())
@example(  # one token per page: the bound is tight, q . k itself
    case=ScoreCase(
        np.array([[[-1.5] * 8]], np.float16),
        np.arange(16, dtype=np.float16).reshape(2, 1, 1, 8) - 7,
        *page_metadata_from_cache(np.arange(16, dtype=np.float16).reshape(2, 1, 1, 8) - 7, [1, 1]),
        DecodeBatch.from_tables([[1, 0]], [2], block_size=1),
    )
)
def test_scores_bound_the_true_maximum(case: ScoreCase):
    best, scale = true_max_dot(case)
    ref = page_scores_reference(case.query, case.key_min, case.key_max, case.batch)
    live = np.isfinite(best)
    # 1. the float64 bound is never below the true maximum (exact: no tolerance)
    assert (ref[live] >= best[live]).all()
    assert np.isneginf(ref[~live]).all()
    # 2. the float32 scores are within the derived rounding bound of it
    score = page_scores(case.query, case.key_min, case.key_max, case.batch)
    assert score.dtype == np.float32 and score.shape == best.shape
    D = case.query.shape[-1]
    err = _gamma(D + 2) * scale[live] + U32 * np.abs(ref[live])
    assert (np.abs(score[live].astype(np.float64) - ref[live]) <= err).all()
    assert (score[live].astype(np.float64) >= best[live] - err).all()
    assert np.isneginf(score[~live]).all()


# --------------------------------------------------------- the documented order
def spec_score(q_group: np.ndarray, lo: np.ndarray, hi: np.ndarray, plan) -> np.float32:
    """One page, written literally from the module docstring with scalar float32 operations."""
    totals = []
    for q in q_group:
        parts = []
        for lane in range(plan.lanes):
            p = F32(0)
            for i in range(plan.vecs_per_lane):
                vec = lane + i * plan.lanes
                if vec < plan.num_vecs:
                    for d in range(vec * plan.vec, (vec + 1) * plan.vec):
                        qd = F32(q[d])
                        if qd > 0:
                            p = F32(fma_f32(qd, F32(hi[d]), p))  # one rounding
                        elif qd < 0:
                            p = F32(fma_f32(qd, F32(lo[d]), p))
                        else:  # 0 or NaN
                            p = F32(p + F32(0))
            parts.append(p)
        while len(parts) > 1:  # butterfly with masks 1, 2, 4, ...: adjacent pairs
            parts = [F32(parts[i] + parts[i + 1]) for i in range(0, len(parts), 2)]
        totals.append(parts[0])
    return F32(max(totals))


@given(case=score_cases(max_pages=4))
def test_twin_follows_the_documented_order_bit_for_bit(case: ScoreCase):
    score = page_scores(case.query, case.key_min, case.key_max, case.batch)
    tables, lens = case.batch.head_tables(case.key_cache.shape[2])
    S, Hkv, _ = tables.shape
    G, D = case.group, case.query.shape[-1]
    plan = make_plan(D, case.query.dtype, G)
    bs = case.batch.block_size
    for s in range(S):
        for h in range(Hkv):
            for p in range(-(-int(lens[s, h]) // bs)):
                blk = tables[s, h, p]
                expect = spec_score(case.query[s, h * G : (h + 1) * G], case.key_min[blk, h], case.key_max[blk, h], plan)
                assert score[s, h, p].view(np.uint32) == expect.view(np.uint32), (s, h, p)


@given(case=score_cases(max_pages=6))
def test_a_group_scores_a_page_by_the_maximum_of_its_heads(case: ScoreCase):
    """Each query head alone (a batch with Hq = Hkv) gives its own bound; the group's score is
    their maximum, bit for bit, whatever the order of the heads."""
    S, Hq, D = case.query.shape
    Hkv, G = case.key_cache.shape[2], case.group
    group = page_scores(case.query, case.key_min, case.key_max, case.batch)
    singles = [
        page_scores(np.ascontiguousarray(case.query.reshape(S, Hkv, G, D)[:, :, g]), case.key_min, case.key_max, case.batch)
        for g in range(G)
    ]
    assert (group.view(np.uint32) == np.fmax.reduce(np.stack(singles), axis=0).view(np.uint32)).all()
    flipped = np.ascontiguousarray(case.query.reshape(S, Hkv, G, D)[:, :, ::-1].reshape(S, Hq, D))
    assert (page_scores(flipped, case.key_min, case.key_max, case.batch).view(np.uint32) == group.view(np.uint32)).all()


def test_scores_by_hand():
    # 1 head, D = 8; block 0 spans [-1, 2] in every channel, block 1 [0, 0.5]; block 2 is empty.
    key_min, key_max = empty_page_metadata(3, 1, 8, np.float32)
    key_min[0], key_max[0] = -1.0, 2.0
    key_min[1], key_max[1] = 0.0, 0.5
    q = np.zeros((1, 2, 8), np.float32)  # two query heads share the KV head
    q[0, 0, :2] = [1.0, -1.0]  # head 0: 1*2 + (-1)*(-1) = 3 on block 0; 0.5 + 0 on block 1
    q[0, 1, 0] = -4.0  # head 1: (-4)*(-1) = 4 on block 0; (-4)*0 = 0 on block 1
    batch = DecodeBatch.from_tables([[0, 1, 2, 0]], [40], block_size=16)  # 3 pages: the 4th is past the end
    score = page_scores(q, key_min, key_max, batch)
    assert score.tolist() == [[[4.0, 0.5, -np.inf, -np.inf]]]  # empty block 2: the bound of no token


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda q, m, b: (q.astype(np.float32), m, b), "dtype"),
        (lambda q, m, b: (q[:, :3].copy(), m, b), "multiple"),
        (lambda q, m, b: (q, m, DecodeBatch.from_tables([[0, 9]], [20], 16)), "outside"),
        (lambda q, m, b: (q, m, DecodeBatch.from_tables([[0, 1]], [33], 16)), "does not fit"),
        (lambda q, m, b: (q, m, DecodeBatch.from_tables([[0], [1]], [3, 3], 16)), "sequences"),
        (lambda q, m, b: (q, m, "not a batch"), "DecodeBatch"),
        (lambda q, m, b: (q, m, b.with_head_tables(np.zeros((1, 3, 2), np.int32), np.ones((1, 3), np.int32))), "KV heads"),
    ],
)
def test_bad_inputs_raise(change, match):
    key_min, key_max = empty_page_metadata(4, 2, 8, np.float16)
    q = np.zeros((1, 4, 8), np.float16)
    batch = DecodeBatch.from_tables([[0, 1]], [20], 16)
    q, meta, batch = change(q, (key_min, key_max), batch)
    with pytest.raises(KernelInputError, match=match):
        page_scores(q, *meta, batch)
