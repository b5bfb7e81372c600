"""paged_prefill_attention twin: the documented operation order, the float64 bound, the
properties a prefix-cache hit relies on (a token's bits do not depend on its chunk), the
relation to decode attention, and errors."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prefill_strategies import BAD_PREFILL_INPUTS, PrefillCase, fixed_prefill_case, good_prefill_args, prefill_cases

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.control.prefill_batch import PrefillBatch
from tinyserve_sim.data import (
    attention_error_bound,
    make_prefill_plan,
    paged_attention,
    paged_prefill_attention,
    prefill_error_bound,
    reference_paged_prefill_attention,
)
from tinyserve_sim.data import prefill_plan
from tinyserve_sim.data.exact_math import exp_f32, fma_f32
from tinyserve_sim.data.tensor_core import mma_dot
from tinyserve_sim.errors import KernelInputError

F32 = np.float32
#: The twin loops over the head dim and the key tiles: a quarter of the profile's examples.
HEAVY = settings(max_examples=max(8, settings.default.max_examples // 4), deadline=None)


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16 if a.dtype == np.float16 else np.uint32)


def _pairwise(vals: list) -> np.float32:
    while len(vals) > 1:
        vals = [F32(vals[i] + vals[i + 1]) for i in range(0, len(vals), 2)]
    return vals[0]


def spec_score(q, k, padded_dim: int, tensor_cores: bool):
    """One raw score q . k: a fused multiply-add per dim in increasing order, or (tensor-core
    scores) a chain of one-instruction steps over the head dim padded with zeros to
    ``padded_dim``, 16 dims a step from +0, by ``mma_dot`` itself."""
    if tensor_cores:
        qp, kp = np.zeros(padded_dim, np.float16), np.zeros(padded_dim, np.float16)
        qp[: q.size], kp[: k.size] = q, k
        s = np.float32(0)
        for s0 in range(0, padded_dim, 16):
            s = mma_dot(kp[s0 : s0 + 16], qp[s0 : s0 + 16], s)
        return F32(s)
    s = F32(0)
    for d in range(q.size):
        s = fma_f32(q[d], k[d], s)
    return s


def spec_parts(p):
    """Step 5''s three float16 parts of ``p * 2**15``, each the rest so far rounded to nearest."""
    ps = F32(p * F32(2.0**15))
    h1 = np.float16(ps)
    r1 = F32(ps - F32(h1))
    h2 = np.float16(r1)
    h3 = np.float16(F32(r1 - F32(h2)))
    return h1, h2, h3


def spec_row(q, keys, values, pos, scale, key_tile, lanes=16, padded_dim=0, tensor_cores=False, tensor_core_values=False):
    """One row (a new token at ``pos``, one query head) written literally from the twin's
    docstring with scalar float32 operations; ``keys``/``values`` are the sequence's
    ``[L, D]`` (keys past ``L`` are zeros). Slow, and independent of the twin's vectorisation."""
    D = q.size
    L = len(keys)
    m, l, acc = F32(-np.inf), F32(0), [F32(0)] * D
    for c0 in range(0, pos + 1, key_tile):
        xs = []
        for j in range(c0, c0 + key_tile):
            if j > pos:
                xs.append(F32(-np.inf))
                continue
            xs.append(F32(spec_score(q, keys[j], padded_dim, tensor_cores) * scale))
        m_new = F32(max(m, max(xs)))
        alpha = exp_f32(F32(m - m_new))
        ps = [exp_f32(F32(x - m_new)) for x in xs]
        lane_sums = []
        for c in range(lanes):
            t = F32(0)
            for i in range(key_tile // lanes):
                t = F32(t + ps[c + lanes * i])
            lane_sums.append(t)
        l = F32(F32(l * alpha) + _pairwise(lane_sums))
        acc = [F32(a * alpha) for a in acc]
        tile_values = [values[c0 + j] if c0 + j < L else np.zeros(D, values.dtype) for j in range(key_tile)]
        if tensor_core_values:  # 5'.: per 16 keys, per part, one mma.sync step (mma_dot itself)
            parts = [spec_parts(p) for p in ps]
            for g0 in range(0, key_tile, 16):
                for part in range(3):
                    a16 = np.array([parts[g0 + j][part] for j in range(16)], np.float16)
                    for d in range(D):
                        v16 = np.array([tile_values[g0 + j][d] for j in range(16)], np.float16)
                        acc[d] = F32(mma_dot(a16, v16, acc[d]))
        else:
            for j, p in enumerate(ps):
                acc = [fma_f32(p, tile_values[j][d], a) for d, a in enumerate(acc)]
        m = m_new
    if tensor_core_values:
        return [F32(a / F32(l * F32(2.0**15))) for a in acc]
    return [F32(a / l) for a in acc]


def spec_prefill(case: PrefillCase) -> np.ndarray:
    T, Hq, D = case.query.shape
    _, bs, Hkv, _ = case.key_cache.shape
    G = Hq // Hkv
    plan = prefill_plan.prefill_plan_for(D, case.query.dtype)
    tile = plan.key_tile
    out = np.empty_like(case.query)
    b = case.batch
    for s, (a, e) in enumerate(zip(b.query_start_loc[:-1], b.query_start_loc[1:])):
        L = int(b.seq_lens[s])
        t = np.arange(L)
        blocks, offs = b.block_tables[s, t // bs], t % bs
        for i, row in enumerate(range(a, e)):
            pos = int(b.prefix_lens[s]) + i
            for h in range(Hq):
                keys = case.key_cache[blocks, offs, h // G]
                vals = case.value_cache[blocks, offs, h // G]
                out[row, h] = np.array(spec_row(case.query[row, h], keys, vals, pos, F32(case.scale), tile,
                                                padded_dim=plan.padded_dim, tensor_cores=plan.tensor_core_scores,
                                                tensor_core_values=plan.tensor_core_values))
    return out


@settings(max_examples=max(3, settings.default.max_examples // 12), deadline=None)
@given(case=prefill_cases(max_len=90, max_new=6, max_seqs=2, head_dims=(8, 16, 40), groups=(1, 2), max_kv_heads=1))
def test_twin_follows_the_documented_operation_order(case):
    assert np.array_equal(_bits(paged_prefill_attention(*case.args())), _bits(spec_prefill(case)))


@pytest.mark.parametrize("scores, values", [(True, True), (True, False), (False, False)])
def test_float16_twin_follows_the_documented_order_on_either_core(scores, values, monkeypatch):
    # A float16 case with a cached prefix that ends mid-block, for the settings of
    # prefill_plan.TENSOR_CORE_SCORES and TENSOR_CORE_VALUES (the default: both on): the
    # scalar spec, bit for bit.
    monkeypatch.setattr(prefill_plan, "TENSOR_CORE_SCORES", scores)
    monkeypatch.setattr(prefill_plan, "TENSOR_CORE_VALUES", values)
    plan = prefill_plan.prefill_plan_for(40, np.float16)
    assert (plan.tensor_core_scores, plan.tensor_core_values) == (scores, values)
    case = fixed_prefill_case(3, np.float16, 40, 5, 2, seq_lens=[70, 9], query_lens=[4, 2], num_kv_heads=1)
    assert np.array_equal(_bits(paged_prefill_attention(*case.args())), _bits(spec_prefill(case)))


@HEAVY
@given(case=prefill_cases())
def test_twin_is_within_the_derived_float64_bound(case):
    out = paged_prefill_attention(*case.args()).astype(np.float64)
    ref = reference_paged_prefill_attention(*case.args())
    bound = prefill_error_bound(*case.args())
    assert np.all(np.abs(out - ref) <= bound), float(np.max(np.abs(out - ref) - bound))


@HEAVY
@given(case=prefill_cases(dtypes=(np.float16,)))
def test_cuda_core_scores_are_within_the_same_bound(case):
    # float16 with the tensor-core scores switched off (prefill_plan.TENSOR_CORE_SCORES =
    # False): one fused multiply-add per dim, within gamma(D + 1) sum m(q) m(k) like the
    # default tensor-core chain, whose (0.66 D + 2.5) u the other bound tests check
    # (reference._magnitudes has the derivation).
    with mock.patch.object(prefill_plan, "TENSOR_CORE_SCORES", False):
        out = paged_prefill_attention(*case.args()).astype(np.float64)
    ref = reference_paged_prefill_attention(*case.args())
    bound = prefill_error_bound(*case.args())
    assert np.all(np.abs(out - ref) <= bound), float(np.max(np.abs(out - ref) - bound))


@pytest.mark.parametrize("head_dim, dtype", [(-8, np.float16), (12, np.float16), (264, np.float32), (True, np.float16),
                                             (128, np.int8), (128, "nope")])
def test_the_plan_refuses_what_no_kernel_is_built_for(head_dim, dtype):
    with pytest.raises(KernelInputError):
        prefill_plan.prefill_plan_for(head_dim, dtype)


def test_bound_is_tight_enough_to_catch_a_wrong_result():
    # Skip the diagonal key (attend to keys 0..pos-1 only): the bound must notice.
    rng = np.random.default_rng(3)
    kc = rng.standard_normal((4, 16, 1, 64)).astype(np.float32)
    vc = rng.standard_normal((4, 16, 1, 64)).astype(np.float32)
    q = rng.standard_normal((8, 2, 64)).astype(np.float32)
    batch = PrefillBatch.from_tables([[0, 1, 2, 3]], [40], [8], 16)
    shifted = PrefillBatch.from_tables([[0, 1, 2, 3]], [39], [8], 16)  # every row one key short
    ref = reference_paged_prefill_attention(q, kc, vc, batch, 0.125)
    bound = prefill_error_bound(q, kc, vc, batch, 0.125)
    wrong = paged_prefill_attention(q, kc, vc, shifted, 0.125).astype(np.float64)
    assert np.any(np.abs(wrong - ref) > bound)


def test_the_bound_holds_when_the_values_are_subnormal():
    # float32 values of about 2**-140: every p * v underflows (module doc of the decode
    # reference). The bound exceeded 6.5 times before its underflow term.
    for seed in range(4):
        case = fixed_prefill_case(seed, np.float32, 64, 16, 2, [300, 77], [120, 40])
        q, kc, vc, batch, scale = case.args()
        vc[:] = vc * np.float32(2.0**-140)
        out = paged_prefill_attention(q, kc, vc, batch, scale).astype(np.float64)
        ref = reference_paged_prefill_attention(q, kc, vc, batch, scale)
        bound = prefill_error_bound(q, kc, vc, batch, scale)
        assert np.all(np.abs(out - ref) <= bound), float(np.max(np.abs(out - ref) / bound))
        assert bound.max() < 2.0**-125


def _sequence_keys(rng, dtype, L, Hkv, D, block_size, num_blocks, magnitude=1.0):
    """A cache holding one sequence of L tokens in shuffled blocks; its table."""
    kc = np.zeros((num_blocks, block_size, Hkv, D), dtype)
    vc = np.zeros_like(kc)
    table = rng.permutation(num_blocks)[: -(-L // block_size)]
    t = np.arange(L)
    kc[table[t // block_size], t % block_size] = (rng.standard_normal((L, Hkv, D)) * magnitude).astype(dtype)
    vc[table[t // block_size], t % block_size] = rng.standard_normal((L, Hkv, D)).astype(dtype)
    return kc, vc, table


@HEAVY
@given(
    dtype=st.sampled_from([np.float16, np.float32]),
    block_size=st.sampled_from([1, 5, 16]),
    head_dim=st.sampled_from([8, 64, 136]),
    group=st.sampled_from([1, 3]),
    length=st.integers(1, 200),
    cuts=st.lists(st.integers(1, 199), max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
@example(dtype=np.float16, block_size=16, head_dim=64, group=1, length=130, cuts=[64, 65], seed=0)
def test_a_tokens_bits_do_not_depend_on_its_chunk(dtype, block_size, head_dim, group, length, cuts, seed):
    # The whole prompt in one prefill, or cut into chunks (each chunk attending to the
    # ones before it in the cache): every token gets the same bits. This is why a
    # prefix-cache hit, or chunked prefill, changes nothing in the output.
    rng = np.random.default_rng(seed)
    Hkv = 2
    kc, vc, table = _sequence_keys(rng, dtype, length, Hkv, head_dim, block_size, -(-length // block_size) + 3)
    q = rng.standard_normal((length, Hkv * group, head_dim)).astype(dtype)
    whole = paged_prefill_attention(q, kc, vc, PrefillBatch.from_tables([table], [length], [length], block_size), 0.3)
    bounds = sorted({0, length, *(c for c in cuts if c < length)})
    for a, b in zip(bounds[:-1], bounds[1:]):
        chunk = PrefillBatch.from_tables([table], [b], [b - a], block_size)
        part = paged_prefill_attention(np.ascontiguousarray(q[a:b]), kc, vc, chunk, 0.3)
        assert np.array_equal(_bits(part), _bits(whole[a:b])), (a, b)


@HEAVY
@given(case=prefill_cases(max_new=20), seed=st.integers(0, 2**32 - 1))
def test_output_depends_only_on_logical_content_not_on_physical_placement(case, seed):
    # Move every block to a new place (other ids, other order): the same bits.
    rng = np.random.default_rng(seed)
    nb = case.key_cache.shape[0]
    perm = rng.permutation(nb)  # block b moves to perm[b]
    kc, vc = np.empty_like(case.key_cache), np.empty_like(case.value_cache)
    kc[perm], vc[perm] = case.key_cache, case.value_cache
    b = case.batch
    tables = np.where(b.block_tables >= 0, perm[np.maximum(b.block_tables, 0)], -1).astype(np.int32)
    moved = PrefillBatch(b.block_size, tables, b.seq_lens, b.query_start_loc)
    before = paged_prefill_attention(*case.args())
    after = paged_prefill_attention(case.query, kc, vc, moved, case.scale)
    assert np.array_equal(_bits(before), _bits(after))


@HEAVY
@given(case=prefill_cases(max_new=16, groups=(2, 4)))
def test_gqa_equals_attention_over_replicated_kv_heads(case):
    Hq, Hkv = case.query.shape[1], case.key_cache.shape[2]
    G = Hq // Hkv
    kc, vc = np.repeat(case.key_cache, G, axis=2), np.repeat(case.value_cache, G, axis=2)
    a = paged_prefill_attention(*case.args())
    b = paged_prefill_attention(case.query, kc, vc, case.batch, case.scale)
    assert np.array_equal(_bits(a), _bits(b))


@HEAVY
@given(case=prefill_cases(max_new=1))
def test_one_new_token_is_decode_attention_within_both_bounds(case):
    # With one new token per sequence a prefill step is a decode step. The bits differ in
    # general (the decode kernel splits each dot product over lanes and each sequence over
    # rows; this kernel keeps both sequential), but both are within their float64 bounds
    # of the same reference, hence within the sum of the bounds of each other.
    decode_batch = DecodeBatch(case.batch.block_size, case.batch.block_tables, case.batch.seq_lens)
    pre = paged_prefill_attention(*case.args()).astype(np.float64)
    dec = paged_attention(case.query, case.key_cache, case.value_cache, decode_batch, case.scale).astype(np.float64)
    slack = prefill_error_bound(*case.args()) + attention_error_bound(
        case.query, case.key_cache, case.value_cache, decode_batch, case.scale
    )
    assert np.all(np.abs(pre - dec) <= slack)


def test_one_new_token_is_the_last_row_of_the_whole_prompt():
    # What does hold bit for bit: a decode-like step through the prefill kernel gives the
    # token exactly the bits it gets inside the whole prompt's prefill.
    rng = np.random.default_rng(11)
    kc, vc, table = _sequence_keys(rng, np.float16, 300, 2, 128, 16, 24, magnitude=3.0)
    q = rng.standard_normal((300, 8, 128)).astype(np.float16)
    whole = paged_prefill_attention(q, kc, vc, PrefillBatch.from_tables([table], [300], [300], 16), 128**-0.5)
    last = paged_prefill_attention(q[-1:].copy(), kc, vc, PrefillBatch.from_tables([table], [300], [1], 16), 128**-0.5)
    assert np.array_equal(_bits(last), _bits(whole[-1:]))


def test_one_dominant_key_wins_and_the_mask_holds():
    # Row i sees keys 0..i only: a huge logit on a later key must not leak into it.
    kc = np.zeros((2, 16, 1, 32), np.float32)
    vc = np.zeros_like(kc)
    vc[0, :, 0, 0] = np.arange(16)  # value of key t: t in channel 0
    q = np.zeros((16, 1, 32), np.float32)
    q[:, 0, 1] = 1.0
    kc[0, 10, 0, 1] = 60.0  # key 10 dominates every row that sees it
    batch = PrefillBatch.from_tables([[0, 1]], [16], [16], 16)
    out = paged_prefill_attention(q, kc, vc, batch, 1.0)[:, 0, 0]
    assert np.allclose(out[:10], [np.arange(i + 1).mean() for i in range(10)], rtol=1e-6)
    assert np.allclose(out[10:], 10.0, atol=1e-6)


def test_sequences_without_new_tokens_and_empty_batches():
    kc = np.ones((2, 4, 1, 8), np.float32)
    batch = PrefillBatch.from_tables([[0], [1]], [3, 2], [0, 2], 4)
    out = paged_prefill_attention(np.ones((2, 1, 8), np.float32), kc, kc, batch, 1.0)
    assert out.shape == (2, 1, 8) and np.all(out == 1.0)
    empty = PrefillBatch.from_tables([[0]], [3], [0], 4)
    assert paged_prefill_attention(np.ones((0, 1, 8), np.float32), kc, kc, empty, 1.0).shape == (0, 1, 8)


@pytest.mark.parametrize("change, match", BAD_PREFILL_INPUTS)
@pytest.mark.parametrize("function", [paged_prefill_attention, reference_paged_prefill_attention, prefill_error_bound])
def test_bad_inputs_raise_before_any_work(change, match, function):
    args = good_prefill_args()
    change(args)
    with pytest.raises(KernelInputError, match=match):
        function(**args)
