"""KVCache.prefill: apply a step's records, then attention over the cached prefix and the new
tokens. A prefix-cache hit, or a prompt cut into chunks, gives every token the bits the
whole prompt gives it; the step record counts the work done and saved; a refused call
changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyserve_sim import BlockManager
from tinyserve_sim.control.prefill_batch import PrefillBatch
from tinyserve_sim.data import KVCache, paged_prefill_attention
from tinyserve_sim.data.prefill_step import causal_pairs
from tinyserve_sim.errors import KernelInputError

D, HKV, HQ = 32, 2, 4


def _bits(a):
    return a.view(np.uint16 if a.dtype == np.float16 else np.uint32)


def _tensors(n, seed=0, dtype=np.float16):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, HQ, D)).astype(dtype),
        rng.standard_normal((n, HKV, D)).astype(dtype),
        rng.standard_normal((n, HKV, D)).astype(dtype),
    )


def _prefill(m, cache, rec, q, k, v):
    batch = PrefillBatch.from_records(m, [rec])
    n = batch.num_query_tokens
    return cache.prefill(rec, batch, q[-n:], k[-n:], v[-n:])


@settings(max_examples=25, deadline=None)
@given(
    block_size=st.sampled_from([1, 4, 16]),
    shared=st.integers(1, 70),
    tail=st.integers(0, 30),
    dtype=st.sampled_from([np.float16, np.float32]),
    page_metadata=st.booleans(),
)
def test_a_prefix_cache_hit_gives_the_bits_of_a_prefill_without_it(block_size, shared, tail, dtype, page_metadata):
    # "a" fills the prefix cache; "b" shares its first `shared` tokens and then differs.
    # With the hit, b computes only its tokens after the cached blocks; without a prefix
    # cache it computes them all. Its new tokens get the same bits either way.
    qa, ka, va = _tensors(shared + 5, seed=2, dtype=dtype)
    qb, kb, vb = _tensors(shared + tail, seed=3, dtype=dtype)
    qb[:shared], kb[:shared], vb[:shared] = qa[:shared], ka[:shared], va[:shared]  # same tokens, same tensors
    prompt_a = list(range(shared + 5))
    prompt_b = prompt_a[:shared] + [1000 + i for i in range(tail)]
    m = BlockManager(256, block_size, prefix_caching=True)
    cache = KVCache(256, block_size, HKV, D, dtype=dtype, page_metadata=page_metadata)
    _prefill(m, cache, m.add("a", prompt_a), qa, ka, va)
    rec = m.add("b", prompt_b)
    warm = _prefill(m, cache, rec, qb, kb, vb)
    m0 = BlockManager(256, block_size)
    cold = _prefill(m0, KVCache(256, block_size, HKV, D, dtype=dtype), m0.add("b", len(prompt_b)), qb, kb, vb)
    hit = len(rec.cache_hits) * block_size
    assert hit == min(shared, len(prompt_b) - 1) // block_size * block_size
    n = len(prompt_b) - hit
    assert np.array_equal(_bits(warm.output), _bits(cold.output[-n:]))
    (work,) = warm.work
    assert (work.num_new_tokens, work.num_prefix_tokens, work.num_prefix_cache_tokens) == (n, hit, hit)
    assert work.attention_pairs == causal_pairs(hit, n) and work.saved_pairs == hit * (hit + 1) // 2
    assert cold.work[0].attention_pairs == work.attention_pairs + work.saved_pairs  # nothing lost, nothing added
    assert cold.work[0].saved_pairs == 0
    assert warm.flops == 4 * D * HQ * work.attention_pairs
    assert warm.saved_flops == 4 * D * HQ * work.saved_pairs


@settings(max_examples=25, deadline=None)
@given(
    block_size=st.sampled_from([3, 16]),
    length=st.integers(2, 90),
    chunk=st.integers(1, 40),
    fork=st.booleans(),
)
def test_chunked_prefill_through_appends_gives_the_bits_of_the_whole_prompt(block_size, length, chunk, fork):
    q, k, v = _tensors(length, seed=1)
    m = BlockManager(100, block_size)
    cache = KVCache(100, block_size, HKV, D)
    whole = _prefill(m, cache, m.add("whole", length), q, k, v).output
    m2 = BlockManager(100, block_size)
    cache2 = KVCache(100, block_size, HKV, D, fill=np.nan)  # unused slots are NaN: never read
    first = min(chunk, length)
    outs = [_prefill(m2, cache2, m2.add("a", first), q[:first], k[:first], v[:first]).output]
    seq = "a"
    if fork and first < length:
        # A fork shares the partly filled last block: the next chunk's append copies it first.
        m2.fork("a", "c")
        seq = "c"
    done = first
    while done < length:
        n = min(chunk, length - done)
        rec = m2.append(seq, n)
        if fork and done == first and first % block_size:
            assert rec.copies, "a shared partial block is copied before the write"
        outs.append(_prefill(m2, cache2, rec, q[: done + n], k[: done + n], v[: done + n]).output)
        done += n
    assert np.array_equal(_bits(np.concatenate(outs)), _bits(whole))


def test_several_sequences_in_one_step_and_the_explanation():
    m = BlockManager(32, 4, prefix_caching=True)
    cache = KVCache(32, 4, HKV, D)
    q, k, v = _tensors(20)
    rw = m.add("warm", list(range(12)))
    cache.prefill(rw, PrefillBatch.from_records(m, [rw]), q[:12], k[:12], v[:12])
    ra = m.add("a", list(range(10)))  # 2 blocks from the cache, 2 tokens new
    rb = m.add("b", [7] * 5)
    batch = PrefillBatch.from_records(m, [ra, rb])
    rows = np.r_[8:10, 0:5]
    step = cache.prefill([ra, rb], batch, q[rows], k[rows], v[rows])
    assert [w.num_prefix_cache_tokens for w in step.work] == [8, 0]
    assert [w.attention_pairs for w in step.work] == [9 + 10, 15]
    text = step.explain()
    assert "'a': computed 2 new token(s) over 8 cached token(s) (8 from the prefix cache)" in text
    assert "36 saved" in text and "the prefix cache saved" in text
    alone = paged_prefill_attention(q[rows], *cache.to_numpy(), batch, D**-0.5)
    assert np.array_equal(_bits(step.output), _bits(alone))


def _state(cache):
    kc, vc = cache.to_numpy()
    return kc.copy(), vc.copy()


@pytest.mark.parametrize(
    "spoil, match",
    [
        (lambda c: c.update(batch=PrefillBatch.from_tables([[0]], [3], [3], 4)), "slot mappings, concatenated, differ"),
        (lambda c: c.update(batch="batch"), "PrefillBatch"),
        (lambda c: c.update(keys=c["keys"][:, :1]), "key must have shape"),
        (lambda c: c.update(query=np.ascontiguousarray(c["query"][:, :3])), "multiple of num_kv_heads"),
        (lambda c: c.update(query=c["query"][:5]), "query has 5 rows"),
        (lambda c: c.update(records=["not a record"]), "OpRecords"),
        (lambda c: c.update(scale=float("inf")), "finite"),
    ],
)
def test_a_refused_prefill_writes_nothing(spoil, match):
    m = BlockManager(16, 4)
    cache = KVCache(16, 4, HKV, D)
    q, k, v = _tensors(6)
    rec = m.add("a", 6)
    call = dict(records=rec, batch=PrefillBatch.from_records(m, [rec]), query=q, keys=k, values=v, scale=None)
    spoil(call)
    before = _state(cache)
    with pytest.raises(KernelInputError, match=match):
        cache.prefill(**call)
    after = _state(cache)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
