"""paged_attention twin: the documented operation order, the float64 bound, properties, errors."""

from __future__ import annotations

from dataclasses import replace
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from kv_strategies import (
    BAD_ATTENTION_INPUTS,
    AttentionCase,
    attention_cases,
    fixed_attention_case,
    good_attention_args,
    select_pages,
)

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data import (
    attention_error_bound,
    external_kernel_error_bound,
    make_plan,
    paged_attention,
    reference_paged_attention,
)
from tinyserve_sim.data import geometry
from tinyserve_sim.data.exact_math import exp_f32, fma_f32  # fma_f32 is checked against exact rationals
from tinyserve_sim.data.tensor_core import mma_dot

from tinyserve_sim.errors import KernelInputError

F32 = np.float32
#: The twin is vectorised but still heavy: a quarter of the profile's examples.
HEAVY = settings(max_examples=max(8, settings.default.max_examples // 4), deadline=None)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16 if a.dtype == np.float16 else np.uint32)


def _halving(vals: list[np.float32]) -> np.float32:
    while len(vals) > 1:
        h = len(vals) // 2
        vals = [F32(vals[i] + vals[i + h]) for i in range(h)]
    return vals[0]


def _pairwise(vals: list[np.float32]) -> np.float32:
    while len(vals) > 1:
        vals = [F32(vals[i] + vals[i + 1]) for i in range(0, len(vals), 2)]
    return vals[0]


def _spec_logit(q, k, scale, plan):
    """Step 1 for one token: lanes then a butterfly, or (tensor_core_logits) a chain of
    one-instruction steps over 16 dims each, by ``mma_dot`` itself."""
    if plan.tensor_core_logits:
        dot = np.float32(0)
        for s0 in range(0, q.size, 16):
            dot = mma_dot(k[s0 : s0 + 16].astype(np.float16), q[s0 : s0 + 16].astype(np.float16), dot)
        return F32(F32(dot) * scale)
    parts = []
    for lane in range(plan.lanes):
        p = F32(0)
        for i in range(plan.vecs_per_lane):
            vec = lane + i * plan.lanes
            if vec < plan.num_vecs:
                for d in range(vec * plan.vec, (vec + 1) * plan.vec):
                    p = fma_f32(q[d], k[d], p)  # one rounding, as __fmaf_rn
        parts.append(p)
    return F32(_halving(parts) * scale)


def _spec_softmax_step(q, ks, m, scale, plan):
    """Steps 1-3 for one chunk of keys: the new running max, the rescale factor and the
    probabilities."""
    xs = [_spec_logit(q, k, scale, plan) for k in ks]
    m_new = F32(max(m, max(xs)))
    return m_new, exp_f32(F32(m - m_new)), [exp_f32(F32(x - m_new)) for x in xs]


def spec_partition_tensor_core_values(q, keys, values, scale, plan):
    """Steps 4' and 5' of the module docstring (``tensor_core_values``), literally: the
    normaliser lane by lane then a butterfly, three float16 parts per probability, one
    ``mma_dot`` per 16 tokens, part and dim."""
    D = q.size
    m, l, acc = F32(-np.inf), F32(0), np.zeros(D, np.float32)
    for c0 in range(0, len(keys), plan.chunk):
        ks, vs = keys[c0 : c0 + plan.chunk], values[c0 : c0 + plan.chunk]
        m_new, alpha, ps = _spec_softmax_step(q, ks, m, scale, plan)
        lanes = [F32(0)] * 32
        for j, p in enumerate(ps):  # token j is lane j % 32's, in increasing j
            lanes[j % 32] = F32(lanes[j % 32] + p)
        l = fma_f32(l, alpha, _pairwise(lanes))
        acc = acc * alpha
        for g0 in range(0, len(ks), 16):
            n = min(16, len(ks) - g0)
            v = np.zeros((16, D), np.float16)
            v[:n] = vs[g0 : g0 + n]
            rest = np.zeros(16, np.float32)
            rest[:n] = np.array(ps[g0 : g0 + n], np.float32) * np.float32(2.0**15)
            for _ in range(3):  # h1, h2, h3: each the rest so far, rounded to float16
                part = rest.astype(np.float16)
                rest = rest - part.astype(np.float32)
                acc = mma_dot(v.T, np.broadcast_to(part, (D, 16)), acc)
        m = m_new
    return [F32(a / F32(l * F32(2.0**15))) for a in acc], m, l


def spec_partition(q, keys, values, scale, plan):
    """One partition of one (sequence, head), written literally from the
    module docstring with scalar float32 operations (slow, independent of the
    twin's vectorisation; its fused multiply-adds are scalar ``fma_f32`` calls,
    which tests/data/test_exact_math.py checks against exact rational arithmetic).
    Returns (o, m, l)."""
    if plan.tensor_core_values:
        return spec_partition_tensor_core_values(q, keys, values, scale, plan)
    D = q.size
    rows = plan.rows
    m = F32(-np.inf)
    l_r = [F32(0)] * rows
    acc = [[F32(0)] * D for _ in range(rows)]
    for c0 in range(0, len(keys), plan.chunk):
        ks, vs = keys[c0 : c0 + plan.chunk], values[c0 : c0 + plan.chunk]
        m_new, alpha, ps = _spec_softmax_step(q, ks, m, scale, plan)
        for r in range(rows):
            l_r[r] = F32(l_r[r] * alpha)
            acc[r] = [F32(a * alpha) for a in acc[r]]
            for j in range(r, len(ks), rows):
                l_r[r] = F32(l_r[r] + ps[j])
                acc[r] = [fma_f32(ps[j], vs[j][d], a) for d, a in enumerate(acc[r])]
        m = m_new
    l_tot = _pairwise(l_r)
    o = [F32(_pairwise([acc[r][d] for r in range(rows)]) / l_tot) for d in range(D)]
    return o, m, l_tot


def spec_attention(case: AttentionCase, variant: str) -> np.ndarray:
    S, Hq, D = case.query.shape
    _, bs, Hkv, _ = case.key_cache.shape
    G = Hq // Hkv
    plan = make_plan(D, case.key_cache.dtype, G)
    scale = F32(case.scale)
    out = np.empty_like(case.query)
    for s in range(S):
        L = int(case.seq_lens[s])
        t = np.arange(L)
        blocks, offs = case.block_tables[s, t // bs], t % bs
        for h in range(Hq):
            keys = case.key_cache[blocks, offs, h // G]
            vals = case.value_cache[blocks, offs, h // G]
            q = case.query[s, h]
            if variant == "one_pass":
                o, _, _ = spec_partition(q, keys, vals, scale, plan)
            else:
                P = case.partition_size
                parts = [spec_partition(q, keys[a : a + P], vals[a : a + P], scale, plan) for a in range(0, L, P)]
                gmax = F32(max(p[1] for p in parts))
                num, den = [F32(0)] * D, F32(0)
                for o_i, m_i, l_i in parts:
                    w = F32(l_i * exp_f32(F32(m_i - gmax)))
                    num = [fma_f32(w, o_i[d], n) for d, n in enumerate(num)]
                    den = F32(den + w)
                o = [F32(n / den) for n in num]
            out[s, h] = np.array(o, dtype=F32).astype(case.query.dtype)
    return out


@settings(max_examples=max(4, settings.default.max_examples // 10), deadline=None)
@given(case=attention_cases(max_len=260, max_seqs=2), variant=st.sampled_from(["one_pass", "split_k"]))
def test_twin_follows_the_documented_operation_order(case, variant):
    # At most 4 query heads per KV head: the scalar spec is slow.
    case.query = np.ascontiguousarray(case.query[:, : min(case.query.shape[1], 4 * case.key_cache.shape[2])])
    twin = paged_attention(*case.args(), variant=variant, partition_size=case.partition_size)
    spec = spec_attention(case, variant)
    assert (_bits(twin) == _bits(spec)).all()


@pytest.mark.parametrize("variant", ["one_pass", "split_k"])
@pytest.mark.parametrize("values_on_tensor_cores", [True, False])
def test_tensor_core_plans_follow_the_documented_operation_order(variant, values_on_tensor_cores, monkeypatch):
    # float16 GQA-4 at head dim 64: logits on tensor cores, and P V on tensor cores or not
    # (geometry.TENSOR_CORE_VALUES). Lengths with partial 16-token groups and chunks, over
    # several chunks and partitions; the scalar spec against the twin, bit for bit.
    monkeypatch.setattr(geometry, "TENSOR_CORE_VALUES", values_on_tensor_cores)
    case = fixed_attention_case(3, np.float16, 2, 8, 2, 64, 16, [300, 77], 128)
    plan = make_plan(64, np.float16, 4)
    assert plan.tensor_core_logits and plan.tensor_core_values == values_on_tensor_cores
    twin = paged_attention(*case.args(), variant=variant, partition_size=case.partition_size)
    assert (_bits(twin) == _bits(spec_attention(case, variant))).all()


def test_values_on_tensor_cores_round_apart_from_cuda_cores_within_the_bound(monkeypatch):
    # The two P V paths of one float16 GQA plan: different bits (the switch really changes
    # the arithmetic), both within the float64 bound.
    case = fixed_attention_case(4, np.float16, 2, 8, 2, 128, 16, [700, 333], 256)
    ref = reference_paged_attention(*case.args())
    bound = attention_error_bound(*case.args(), partition_size=256)
    outs = {}
    for on in (True, False):
        monkeypatch.setattr(geometry, "TENSOR_CORE_VALUES", on)
        outs[on] = paged_attention(*case.args(), variant="split_k", partition_size=256)
        assert (np.abs(outs[on].astype(np.float64) - ref) <= bound).all()
    assert (_bits(outs[True]) != _bits(outs[False])).any()


@settings(max_examples=200, deadline=None)
@given(p=st.floats(0.0, 1.0, width=32))
def test_the_float16_parts_of_a_probability_add_up_to_it(p):
    # tensor_core_values: p * 2**15 = h1 + h2 + h3, exactly from p = 2**-16 up (every bit of
    # p * 2**15 is then a multiple of float16's smallest subnormal), within 2**-25 below.
    from tinyserve_sim.data.tensor_core import float16_parts

    parts = float16_parts(np.array([p], np.float32))
    total = sum(float(h[0]) for h in parts)  # float64: exact
    want = float(np.float32(p)) * 2.0**15
    if p >= 2.0**-16:
        assert total == want
    assert abs(total - want) <= 2.0**-25


@HEAVY
@given(case=attention_cases(), variant=st.sampled_from(["one_pass", "split_k"]))
def test_twin_is_within_the_derived_float64_bound(case, variant):
    out = paged_attention(*case.args(), variant=variant, partition_size=case.partition_size).astype(np.float64)
    ref = reference_paged_attention(*case.args())
    bound = attention_error_bound(*case.args(), partition_size=case.partition_size)
    assert np.isfinite(out).all()
    excess = np.abs(out - ref) - bound
    assert (excess <= 0).all(), f"bound exceeded by {excess.max()} at {np.unravel_index(excess.argmax(), excess.shape)}"


def test_bound_is_tight_enough_to_catch_a_wrong_result():
    """The bound must be able to fail: scaling the output by 1.01 breaks it."""
    rng = np.random.default_rng(5)
    case = AttentionCase(
        rng.standard_normal((2, 4, 64)).astype(np.float32),
        rng.standard_normal((20, 16, 2, 64)).astype(np.float32),
        rng.standard_normal((20, 16, 2, 64)).astype(np.float32),
        rng.permutation(20)[:16].reshape(2, 8).astype(np.int32), np.array([128, 77], np.int32), 0.125, 128,
    )
    out = paged_attention(*case.args()).astype(np.float64)
    ref = reference_paged_attention(*case.args())
    bound = attention_error_bound(*case.args())
    assert (np.abs(out - ref) <= bound).all()
    assert (np.abs(out * 1.01 - ref) > bound).any()


@pytest.mark.parametrize("variant", ["one_pass", "split_k"])
def test_the_bound_holds_when_the_values_are_subnormal(variant):
    """float32 values of about 2**-140 are subnormal: every p * v underflows, off by up
    to 2**-150 absolute, which no relative term covers (the bound exceeded 2.7 times
    before its underflow term). The bound must hold, and stay far below the values."""
    worst = 0.0
    for seed in range(6):
        case = fixed_attention_case(seed, np.float32, 2, 4, 2, 64, 16, [300, 77], 128)
        case.value_cache[:] = case.value_cache * np.float32(2.0**-140)
        out = paged_attention(*case.args(), variant=variant, partition_size=128).astype(np.float64)
        ref = reference_paged_attention(*case.args())
        bound = attention_error_bound(*case.args(), partition_size=128)
        assert (np.abs(out - ref) <= bound).all()
        assert bound.max() < 2.0**-125  # not vacuous: the values are about 2**-140
        worst = max(worst, float((np.abs(out - ref) / bound).max()))
    assert worst > 0  # the outputs really are off (the case exercises the underflow)


@HEAVY
@given(case=attention_cases(max_len=400), seed=st.integers(0, 2**32 - 1))
def test_output_depends_only_on_logical_content_not_on_physical_placement(case, seed):
    """Relabel the physical blocks (a permutation of the cache and the tables):
    the output must be bit-identical."""
    perm = np.random.default_rng(seed).permutation(case.key_cache.shape[0])
    moved = AttentionCase(
        case.query, np.ascontiguousarray(case.key_cache[np.argsort(perm)]),
        np.ascontiguousarray(case.value_cache[np.argsort(perm)]),
        perm[case.block_tables].astype(np.int32), case.seq_lens, case.scale, case.partition_size,
    )
    for variant in ("one_pass", "split_k"):
        a = paged_attention(*case.args(), variant=variant, partition_size=case.partition_size)
        b = paged_attention(*moved.args(), variant=variant, partition_size=case.partition_size)
        assert (_bits(a) == _bits(b)).all()


@HEAVY
@given(case=attention_cases(max_len=300, max_seqs=2))
def test_gqa_equals_attention_over_replicated_kv_heads(case):
    """Grouped-query attention is ordinary attention with each KV head repeated
    for its group: same bits, as long as both use the same rows and chunk and compute
    their logits the same way (the per-head arithmetic depends on the geometry and on
    CUDA against tensor cores, not on how heads are tiled: a tensor-core output is one
    (token, head) pair's chain whatever the other columns hold). float16 GQA plans take
    tensor-core logits and MHA plans do not, so the MHA side is given the GQA plan's
    choice. Large groups are split into head slices with fewer rows each, so they are
    left out here; the GPU tests cover them against the twin."""
    G = case.query.shape[1] // case.key_cache.shape[2]
    D, dtype = case.query.shape[2], case.query.dtype
    gqa, mha = make_plan(D, dtype, G), make_plan(D, dtype, 1)
    assume((gqa.rows, gqa.chunk) == (mha.rows, mha.chunk))
    rep = AttentionCase(
        case.query, np.ascontiguousarray(np.repeat(case.key_cache, G, axis=2)),
        np.ascontiguousarray(np.repeat(case.value_cache, G, axis=2)),
        case.block_tables, case.seq_lens, case.scale, case.partition_size,
    )
    a = paged_attention(*case.args(), variant="split_k", partition_size=case.partition_size)
    original = geometry.make_plan
    with mock.patch.object(geometry, "make_plan",
                           lambda *args: replace(original(*args), tensor_core_logits=gqa.tensor_core_logits,
                                                 tensor_core_values=gqa.tensor_core_values)):
        b = paged_attention(*rep.args(), variant="split_k", partition_size=case.partition_size)
    assert (_bits(a) == _bits(b)).all()


def test_one_dominant_token_wins_the_softmax():
    rng = np.random.default_rng(7)
    L, D = 300, 64
    kc = rng.standard_normal((L, 1, 1, D)).astype(np.float16)
    vc = rng.standard_normal((L, 1, 1, D)).astype(np.float16)
    q = np.zeros((1, 1, D), np.float16)
    q[0, 0, :] = 40.0
    kc[137, 0, 0, :] = 40.0  # logit 40*40*64/8 = 12800 above a typical one
    tables = np.arange(L, dtype=np.int32)[None, :]
    for variant in ("one_pass", "split_k"):
        out = paged_attention(q, kc, vc, DecodeBatch(1, tables, np.array([L], np.int32)), D**-0.5, variant, 128)
        np.testing.assert_array_equal(out[0, 0], vc[137, 0, 0])


def test_length_one_and_exact_block_multiples():
    rng = np.random.default_rng(3)
    kc = rng.standard_normal((8, 16, 1, 32)).astype(np.float16)
    vc = rng.standard_normal((8, 16, 1, 32)).astype(np.float16)
    q = rng.standard_normal((2, 1, 32)).astype(np.float16)
    tables = np.array([[3, 1, 4, 0], [5, 2, 6, 7]], np.int32)
    batch = DecodeBatch(16, tables, np.array([1, 64], np.int32))
    out = paged_attention(q, kc, vc, batch, 1.0)
    np.testing.assert_array_equal(out[0, 0], vc[3, 0, 0])  # one token: softmax weight exactly 1
    ref = reference_paged_attention(q, kc, vc, batch, 1.0)
    assert np.abs(out.astype(np.float64) - ref).max() < 2e-3


@pytest.mark.parametrize("case", BAD_ATTENTION_INPUTS)
@pytest.mark.parametrize("function", ["twin", "reference", "bound"])
def test_bad_inputs_raise_before_any_work(case, function):
    """The twin, the reference and the bound accept exactly the same inputs, and
    refuse every bad one with KernelInputError naming it."""
    change, match, applies = (*case, "twin reference bound")[:3]
    if function not in applies.split():
        pytest.skip(f"{function} takes no such argument")
    args = good_attention_args()
    change(args)
    if function != "twin":
        args.pop("variant")
        if function == "reference":
            args.pop("partition_size")
    fn = {"twin": paged_attention, "reference": reference_paged_attention, "bound": attention_error_bound}[function]
    with pytest.raises(KernelInputError, match=match):
        fn(**args)


# ------------------------------------------------- per-(sequence, KV head) tables
@HEAVY
@given(case=attention_cases(max_len=400), variant=st.sampled_from(["one_pass", "split_k"]))
def test_every_head_given_the_full_table_is_the_shared_call_bit_for_bit(case, variant):
    per_head = case.batch.broadcast_heads(case.key_cache.shape[2])
    assert per_head.per_head
    shared = paged_attention(*case.args(), variant=variant, partition_size=case.partition_size)
    heads = paged_attention(
        case.query, case.key_cache, case.value_cache, per_head, case.scale, variant, case.partition_size
    )
    assert (_bits(shared) == _bits(heads)).all()


@HEAVY
@given(case=attention_cases(max_len=500), variant=st.sampled_from(["one_pass", "split_k"]), seed=st.integers(0, 2**32 - 1))
def test_a_head_given_a_subset_of_pages_is_the_twin_on_a_batch_of_only_those_pages(case, variant, seed):
    """Head h's outputs from a per-head batch equal, bit for bit, the same heads of a
    plain (shared-table) call whose tables hold only head h's pages."""
    selected = select_pages(case, seed)
    out = paged_attention(*selected.args(), variant=variant, partition_size=case.partition_size)
    Hkv = case.key_cache.shape[2]
    G = case.query.shape[1] // Hkv
    for h in range(Hkv):
        only_h = DecodeBatch(
            case.key_cache.shape[1], np.ascontiguousarray(selected.block_tables[:, h]),
            np.ascontiguousarray(selected.seq_lens[:, h]),
        )
        alone = paged_attention(case.query, case.key_cache, case.value_cache, only_h, case.scale, variant,
                                case.partition_size)
        assert (_bits(out[:, h * G : (h + 1) * G]) == _bits(alone[:, h * G : (h + 1) * G])).all()


@HEAVY
@given(case=attention_cases(max_len=500), variant=st.sampled_from(["one_pass", "split_k"]), seed=st.integers(0, 2**32 - 1))
def test_per_head_twin_is_within_the_derived_float64_bound(case, variant, seed):
    selected = select_pages(case, seed)
    out = paged_attention(*selected.args(), variant=variant, partition_size=case.partition_size).astype(np.float64)
    ref = reference_paged_attention(*selected.args())
    bound = attention_error_bound(*selected.args(), partition_size=case.partition_size)
    assert (np.abs(out - ref) <= bound).all()


def test_per_head_lengths_change_the_split_k_partition_count_per_row():
    """Head 0 attends to 300 tokens (3 partitions of 128), head 1 to 40 (one): the
    split-K result of each equals its own one-row call, and differs from the other's."""
    rng = np.random.default_rng(11)
    kc = rng.standard_normal((24, 16, 2, 32)).astype(np.float32)
    vc = rng.standard_normal((24, 16, 2, 32)).astype(np.float32)
    q = rng.standard_normal((1, 2, 32)).astype(np.float32)
    tables = np.full((1, 2, 19), -1, np.int32)
    tables[0, 0] = np.arange(19)
    tables[0, 1, :3] = [20, 21, 22]
    batch = DecodeBatch(16, tables, np.array([[300, 40]], np.int32))
    out = paged_attention(q, kc, vc, batch, 0.2, "split_k", 128)
    for h, (row, n) in enumerate([(tables[0, 0], 300), (tables[0, 1], 40)]):
        alone = paged_attention(q, kc, vc, DecodeBatch(16, row[None, :], np.array([n], np.int32)), 0.2, "split_k", 128)
        assert (_bits(out[:, h]) == _bits(alone[:, h])).all()
    ref = reference_paged_attention(q, kc, vc, batch, 0.2)
    assert (np.abs(out - ref) <= attention_error_bound(q, kc, vc, batch, 0.2, 128)).all()


# ---------------------------------------- the bound for kernels outside the project
@HEAVY
@given(case=attention_cases(max_len=500, dtypes=(np.float16,)))
def test_the_twin_also_meets_the_external_kernel_bound(case):
    """The external bound only assumes what any decent kernel does; this project's twin
    does all of it (and better), so it must be inside that bound too."""
    out = paged_attention(*case.args(), partition_size=case.partition_size).astype(np.float64)
    ref = reference_paged_attention(*case.args())
    assert (np.abs(out - ref) <= external_kernel_error_bound(*case.args())).all()


def test_the_agreement_bound_still_catches_a_wrong_page():
    """The GPU agreement tests allow |theirs - ours| <= external bound + our bound. That
    must stay small enough to see a kernel that reads one page in the wrong place."""
    rng = np.random.default_rng(2)
    S, Hkv, G, D, bs, L = 2, 2, 4, 128, 16, 1000
    nb = S * (-(-L // bs))
    kc = (rng.standard_normal((nb, bs, Hkv, D)) * 4).astype(np.float16)
    vc = rng.standard_normal((nb, bs, Hkv, D)).astype(np.float16)
    q = (rng.standard_normal((S, Hkv * G, D)) * 4).astype(np.float16)
    tables = rng.permutation(nb).reshape(S, -1).astype(np.int32)
    good = DecodeBatch(bs, tables, np.full(S, L, np.int32))
    wrong = tables.copy()
    wrong[0, [3, 40]] = wrong[0, [40, 3]]  # two pages of sequence 0 swapped: tokens in the wrong places
    scale = D**-0.5
    ours = paged_attention(q, kc, vc, good, scale).astype(np.float64)
    allowed = external_kernel_error_bound(q, kc, vc, good, scale) + attention_error_bound(q, kc, vc, good, scale)
    assert (np.abs(ours - reference_paged_attention(q, kc, vc, good, scale)) <= allowed).all()
    # same tokens, same set of pages: only positions differ, and attention has no positions...
    swapped = paged_attention(q, kc, vc, DecodeBatch(bs, wrong, good.seq_lens), scale).astype(np.float64)
    assert (np.abs(swapped - ours) <= allowed).all()
    # ...but a page read from the wrong block is caught: take the page holding the
    # token that dominates query head 0 of sequence 0, and read sequence 1's instead.
    t = np.arange(L)
    keys = kc[tables[0, t // bs], t % bs, 0].astype(np.float64)
    page = int(np.argmax(keys @ q[0, 0].astype(np.float64))) // bs
    foreign = tables.copy()
    foreign[0, page] = tables[1, page]
    bad = paged_attention(q, kc, vc, DecodeBatch(bs, foreign, good.seq_lens), scale).astype(np.float64)
    assert (np.abs(bad - ours) > allowed).any()


@settings(max_examples=40, deadline=None)
@given(
    lens=st.lists(st.integers(1, 20_000), min_size=1, max_size=80),
    hkv=st.sampled_from([1, 2, 8, 32]),
    group=st.sampled_from([1, 2, 4, 8]),
    given_partition=st.sampled_from([None, 256, 1024]),
)
@example(lens=[4096] * 64, hkv=32, group=1, given_partition=None)  # MHA: 3.1 waves are not enough
@example(lens=[4096] * 64, hkv=32, group=4, given_partition=None)  # ... where GQA takes them
@example(lens=[4096] * 64, hkv=16, group=2, given_partition=None)  # GQA-2: 1.94 waves 97% busy are not
@example(lens=[4096] * 24, hkv=16, group=2, given_partition=None)  # ... one wave 73% busy is
@example(lens=[1000, 8000] * 16, hkv=16, group=2, given_partition=None)  # one pass, one wave, mixed lengths
def test_auto_split_is_the_longest_grid_that_fills_the_waves_else_the_least_estimated_time(lens, hkv, group, given_partition):
    """Whatever the lengths: rows no longer than one partition take one pass; otherwise the
    first grid, longest work per block first (one pass unless a row is more than twice the
    mean, then the split partitions), that fills the waves: a grid of one wave or less keeps
    70% of its places busy (one pass counts each row's tokens against the longest row's); a
    longer one 90% of its waves' places (not for blocks of two query heads) or runs three
    waves or more (not for plans that copy through L1). When none does, the grid of least
    estimated time, waves rounded up x (tokens per block + the fixed cost), among one pass
    (not with a row over twice the mean), the split partitions and the shortest partition,
    ties to the longer blocks."""
    from tinyserve_sim.data.geometry import (
        AUTO_PARTITIONS, BLOCK_COST_TOKENS, REFERENCE_SMS, SHORTEST_PARTITION, blocks_per_sm, choose_split,
        split_candidates,
    )

    plan = make_plan(128, np.float16, group)
    rows = np.asarray(lens)
    variant, part = choose_split(plan, hkv * group, hkv, rows, given_partition)
    limit = 1024 if given_partition is None else given_partition
    if rows.max() <= limit:
        assert (variant, part) == ("one_pass", limit)
        return
    slots = REFERENCE_SMS * blocks_per_sm(plan)
    tiles = -(-group // plan.heads_per_block)

    def blocks(p: int | None) -> int:  # None: one pass, a block per row and tile
        return tiles * hkv * (len(rows) if p is None else sum(-(-int(n) // p) for n in rows))

    def fills_waves(n: int, slots: int, work: float | None = None) -> bool:
        busy = (n if work is None else work) / (-(-n // slots) * slots)
        if n <= slots:  # one wave
            return busy >= 0.7
        if group == 2:  # two query heads a block: many waves only
            return n >= 3 * slots
        return busy >= 0.9 or (group > 1 and n >= 3 * slots)  # MHA (through L1): no many-waves exception

    one_pass_work = tiles * hkv * rows.sum() / rows.max()  # one pass, one wave: as long as the longest row
    one_pass_fits = rows.max() <= 2 * rows.mean() and fills_waves(blocks(None), slots, one_pass_work)
    if given_partition is not None:
        assert (variant, part) == ("one_pass", limit) if one_pass_fits else ("split_k", given_partition)
        return
    filling = [p for p in AUTO_PARTITIONS if p < rows.max() and fills_waves(blocks(p), slots)]
    if one_pass_fits:
        expected = None
    elif filling:
        expected = filling[0]
    else:
        options = [None] if rows.max() <= 2 * rows.mean() else []  # a long row would run alone
        options += [p for p in (*AUTO_PARTITIONS, SHORTEST_PARTITION) if p < rows.max()]
        costs = [-(-blocks(p) // slots) * ((p or int(rows.max())) + BLOCK_COST_TOKENS) for p in options]
        expected = options[costs.index(min(costs))]
        weighed = split_candidates(plan, hkv * group, hkv, rows)
        assert [c.partition for c in weighed if c.accepted] == [expected]  # one grid, and it is named
    assert (variant, part) == (("one_pass", limit) if expected is None else ("split_k", expected))
    if rows.max() > 2 * rows.mean():
        assert variant == "split_k"  # never one pass when one row is more than twice the mean


def test_auto_output_is_the_named_variants_output_bit_for_bit():
    """The twin's ``"auto"`` output is, bit for bit, the output of the variant and partition
    the rule names; the two variants' trees differ, so the check can fail."""
    from tinyserve_sim.data.geometry import resolve_launch

    rng = np.random.default_rng(0)
    S, Hkv, G, D, bs = 64, 8, 1, 8, 16
    lens = np.full(S, 200, np.int32)
    blocks = -(-200 // bs)
    tables = rng.permutation(S * blocks).reshape(S, blocks).astype(np.int32)
    batch = DecodeBatch(bs, tables, lens)
    kc = rng.standard_normal((S * blocks, bs, Hkv, D)).astype(np.float16)
    vc = rng.standard_normal((S * blocks, bs, Hkv, D)).astype(np.float16)
    q = rng.standard_normal((S, Hkv * G, D)).astype(np.float16)
    plan = make_plan(D, np.float16, G)
    for partition in (64, None):  # a partition given, and chosen by the rule (one pass here)
        variant, part = resolve_launch("auto", partition, plan, Hkv * G, Hkv, lens)
        auto = paged_attention(q, kc, vc, batch, 0.35, "auto", partition)
        named = paged_attention(q, kc, vc, batch, 0.35, variant, part)
        assert (auto.view(np.uint16) == named.view(np.uint16)).all()
    one = paged_attention(q, kc, vc, batch, 0.35, "one_pass", 64)
    split = paged_attention(q, kc, vc, batch, 0.35, "split_k", 64)
    assert (one.view(np.uint16) != split.view(np.uint16)).any()  # the variants' trees differ


@settings(max_examples=30, deadline=None)
@given(
    num_seqs=st.integers(1, 96),
    length=st.integers(1, 40_000),
    hkv=st.sampled_from([1, 8, 32]),
    group=st.sampled_from([1, 4, 8]),
)
def test_split_candidates_count_the_launchers_grid_and_the_choice_is_the_first_accepted(num_seqs, length, hkv, group):
    """What :func:`split_candidates` shows a learner is what would be launched: each
    candidate's block count is the product of the grid the launcher uses (rows of one
    length, so every block is live); and ``choose_split`` takes the first accepted one,
    longest work per block first."""
    from tinyserve_sim.data.geometry import choose_split, partition_count, split_candidates

    plan = make_plan(128, np.float16, group)
    lens = np.full(num_seqs, length)
    cands = split_candidates(plan, hkv * group, hkv, lens)
    parts = [c.partition for c in cands]
    assert parts[0] is None and parts[1:] == sorted(parts[1:], reverse=True)
    for c in cands:
        n = 1 if c.partition is None else partition_count(length, c.partition)
        assert c.blocks == int(np.prod(plan.grid(num_seqs, hkv * group, hkv, n)))
    first = next(c for c in cands if c.accepted)
    variant, part = choose_split(plan, hkv * group, hkv, lens)
    assert (variant == "one_pass") == (first.partition is None)
    if variant == "split_k":
        assert part == first.partition


def test_auto_with_a_partition_the_rule_chooses_is_that_split_bit_for_bit():
    """One row of 3,000 tokens: no grid fills the waves, so the rule takes the least
    estimated time, 1 wave x (256 + 128) tokens: 256-token partitions; the twin's ``auto``
    output is split-K at 256 bit for bit, and differs from split-K at 512 and at the old
    fixed 1,024 (so the check can fail)."""
    from tinyserve_sim.data.geometry import choose_split

    rng = np.random.default_rng(1)
    S, Hkv, G, D, bs, L = 1, 1, 2, 16, 16, 3000
    blocks = -(-L // bs)
    batch = DecodeBatch(bs, rng.permutation(blocks).reshape(1, blocks).astype(np.int32), np.array([L], np.int32))
    kc = rng.standard_normal((blocks, bs, Hkv, D)).astype(np.float32)
    vc = rng.standard_normal((blocks, bs, Hkv, D)).astype(np.float32)
    q = rng.standard_normal((S, Hkv * G, D)).astype(np.float32)
    assert choose_split(make_plan(D, np.float32, G), Hkv * G, Hkv, np.array([L])) == ("split_k", 256)
    auto = paged_attention(q, kc, vc, batch, 0.25)
    assert (auto.view(np.uint32) == paged_attention(q, kc, vc, batch, 0.25, "split_k", 256).view(np.uint32)).all()
    for other in (512, 1024):
        assert (auto.view(np.uint32) != paged_attention(q, kc, vc, batch, 0.25, "split_k", other).view(np.uint32)).any()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(num_heads=32, num_kv_heads=0), "KV heads"),
        (dict(num_heads=30, num_kv_heads=8), "KV heads"),
        (dict(num_heads=4, num_kv_heads=8), "KV heads"),
        (dict(lens=np.array([5000, -1])), "negative"),
        (dict(lens=np.full(4, 5000.0)), "integers"),
        (dict(lens=np.ones((2, 3), int)), "integers"),
        (dict(partition_size=0), "multiple of 64"),
    ],
)
def test_the_split_rule_refuses_bad_shapes_with_a_named_error(kwargs, words):
    """``choose_split`` and ``split_candidates`` are public: a careless call gets the
    project's error, never a ZeroDivisionError or a silent answer."""
    from tinyserve_sim.data.geometry import choose_split, split_candidates

    args = dict(plan=make_plan(128, np.float16, 4), num_heads=32, num_kv_heads=8, lens=np.full(4, 5000)) | kwargs
    for fn in (choose_split, split_candidates):
        with pytest.raises(KernelInputError, match=words):
            fn(**args)


@pytest.mark.parametrize(
    "args, words",
    [((7, np.float16, 4), "head_dim"), ((512, np.float16, 4), "head_dim"), ((128.0, np.float16, 4), "head_dim"),
     ((128, np.int8, 4), "dtype"), ((128, "nope", 4), "dtype"), ((128, np.float16, 0), "group_size")],
)
def test_make_plan_refuses_what_the_kernels_are_not_built_for(args, words):
    """``make_plan`` is public (and behind ``tinyserve-sim plan``): a head dim of 7 raised a
    raw ValueError from a bit shift before."""
    with pytest.raises(KernelInputError, match=words):
        make_plan(*args)


@pytest.mark.parametrize(
    "call, words",
    [(lambda g: g.wave_verdict(10, 0), "slots >= 1"), (lambda g: g.wave_verdict(-1, 5), "blocks >= 0"),
     (lambda g: g.wave_verdict(1.5, 5), "integers"), (lambda g: g.wave_verdict(5, 5, "MHA"), "WaveRule"),
     (lambda g: g.wave_verdict(5, 5, busy_blocks=9), "busy_blocks"),
     (lambda g: g.wave_verdict(5, 5, busy_blocks=float("nan")), "busy_blocks"),
     (lambda g: g.wave_rule("a plan"), "AttentionPlan"), (lambda g: g.WaveRule("x", one_wave_percent=500), "one_wave_percent"),
     (lambda g: g.WaveRule("x", many_waves=0), "many_waves"), (lambda g: g.WaveRule("x", more_waves_percent=True), "more_waves_percent")],
)
def test_the_wave_rule_refuses_a_careless_call(call, words):
    """``wave_rule``, ``WaveRule`` and ``wave_verdict`` are documented on the kernel page: a
    careless call gets the project's error, never a ZeroDivisionError or an AttributeError."""
    from tinyserve_sim.data import geometry

    with pytest.raises(KernelInputError, match=words):
        call(geometry)


def test_a_rule_with_no_test_for_longer_grids_says_so_in_words():
    """``WaveRule`` may leave out both tests for grids longer than one wave; such a grid is
    then refused, and the verdict says why rather than printing ``None``."""
    from tinyserve_sim.cli.plan import _rule_text
    from tinyserve_sim.data.geometry import WaveRule, wave_verdict

    rule = WaveRule("single waves only", more_waves_percent=None, many_waves=None)
    accepted, why = wave_verdict(1100, 528, rule)
    assert not accepted and why.endswith("single waves only takes no grid of more than one wave")
    assert wave_verdict(500, 528, rule)[0]
    assert "None" not in why and _rule_text(rule).endswith("longer grids never")
