"""Hypothesis strategies shared by the data-plane tests (CPU and GPU)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from tinyserve_sim.control.batch import DecodeBatch

#: Head dims the tests draw from: powers of two and others (40, 80, 96, 160).
HEAD_DIMS = (32, 40, 64, 80, 96, 128, 160, 256)
GQA_RATIOS = (1, 2, 3, 4, 5, 8, 16, 32)


@dataclass
class AttentionCase:
    query: np.ndarray
    key_cache: np.ndarray
    value_cache: np.ndarray
    block_tables: np.ndarray
    seq_lens: np.ndarray
    scale: float
    partition_size: int

    @property
    def batch(self) -> DecodeBatch:
        """The tables and lengths as the batch description the kernels take
        (``block_tables``/``seq_lens`` may carry a KV-head axis)."""
        return DecodeBatch(self.key_cache.shape[1], self.block_tables, self.seq_lens)

    def args(self) -> tuple:
        return (self.query, self.key_cache, self.value_cache, self.batch, self.scale)


#: Value scales that put a cache's values near the bottom of its dtype's range: float32
#: values of about 2**-140 are subnormal, so every ``p * v`` underflows (and can round to
#: -0); float16 values of about 2**-20 are near its subnormal range.
TINY_VALUES = {np.dtype(np.float32): 2.0**-140, np.dtype(np.float16): 2.0**-20}


def value_scales(dtype) -> st.SearchStrategy[float]:
    """1 most of the time, sometimes :data:`TINY_VALUES` for ``dtype``."""
    return st.sampled_from([1.0, 1.0, 1.0, TINY_VALUES[np.dtype(dtype)]])


@st.composite
def attention_cases(draw, max_len: int = 700, max_seqs: int = 4, dtypes=(np.float16, np.float32)) -> AttentionCase:
    """Shapes and contents for paged attention.

    block sizes 1..256 (not only powers of two), the HEAD_DIMS above, GQA
    ratios 1..32, lengths that include 1 and exact multiples of the block
    size, tables that share physical blocks, sometimes large-magnitude
    queries and keys so that one token dominates the softmax, and sometimes
    values so small (:data:`TINY_VALUES`) that the products ``p * v`` are
    subnormal or round to zero (underflow, and zeros of either sign)."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    block_size = draw(st.one_of(st.sampled_from([1, 16, 256]), st.integers(1, 256)))
    head_dim = draw(st.sampled_from(HEAD_DIMS))
    num_kv_heads = draw(st.integers(1, 3))
    group = draw(st.sampled_from(GQA_RATIOS))
    num_seqs = draw(st.integers(1, max_seqs))
    len_kind = st.one_of(
        st.just(1),
        st.integers(1, max(1, max_len // block_size)).map(lambda n: n * block_size),  # exact multiples
        st.integers(1, max_len),
    )
    lens = np.array([draw(len_kind) for _ in range(num_seqs)], dtype=np.int32)
    lens = np.minimum(lens, max(max_len, block_size))
    max_blocks = int(-(-lens.max() // block_size)) + draw(st.integers(0, 2))
    # A small pool of physical blocks makes sharing (and repeats) common.
    needed = int(sum(-(-int(n) // block_size) for n in lens))
    num_blocks = max(1, draw(st.integers(max(1, needed // 3), needed + 4)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    tables = rng.integers(0, num_blocks, size=(num_seqs, max_blocks)).astype(np.int32)
    if draw(st.booleans()) and num_seqs > 1:
        tables[1:, : max_blocks // 2] = tables[0, : max_blocks // 2]  # shared prefix
    magnitude = draw(st.sampled_from([1.0, 1.0, 8.0, 40.0]))
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    kc = (rng.standard_normal(shape) * magnitude).astype(dtype)
    vc = (rng.standard_normal(shape) * draw(value_scales(dtype))).astype(dtype)
    q = (rng.standard_normal((num_seqs, num_kv_heads * group, head_dim)) * magnitude).astype(dtype)
    scale = float(draw(st.sampled_from([head_dim**-0.5, 1.0, 0.01])))
    # 64 and 192 are not whole numbers of 128-token chunks: a partition's last chunk is partial.
    partition_size = draw(st.sampled_from([64, 128, 192, 256, 512]))
    return AttentionCase(q, kc, vc, tables, lens, scale, partition_size)


def fixed_attention_case(
    seed: int, dtype, num_seqs: int, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int,
    seq_lens: list[int], partition_size: int,
) -> AttentionCase:
    """A reproducible case: random queries, keys and values, each sequence's table a run of
    a random permutation of the cache's blocks (one block spare), every table as wide as the
    longest sequence needs; the softmax scale ``head_dim ** -0.5``."""
    rng = np.random.default_rng(seed)
    blocks = -(-max(seq_lens) // block_size)
    nb = num_seqs * blocks + 1
    return AttentionCase(
        rng.standard_normal((num_seqs, num_heads, head_dim)).astype(dtype),
        rng.standard_normal((nb, block_size, num_kv_heads, head_dim)).astype(dtype),
        rng.standard_normal((nb, block_size, num_kv_heads, head_dim)).astype(dtype),
        rng.permutation(nb)[: num_seqs * blocks].reshape(num_seqs, -1).astype(np.int32),
        np.array(seq_lens, np.int32), head_dim**-0.5, partition_size,
    )


def select_pages(case: AttentionCase, seed: int) -> AttentionCase:
    """The same case with one table per (sequence, KV head), as query-aware selection
    hands it over: each head keeps a random subset of its sequence's pages, compacted,
    always with the newest (partly filled) page last; its length shrinks to match."""
    rng = np.random.default_rng(seed)
    S, W = case.block_tables.shape
    Hkv = case.key_cache.shape[2]
    bs = case.key_cache.shape[1]
    tables = np.full((S, Hkv, W), -1, np.int32)
    lens = np.zeros((S, Hkv), np.int32)
    for s in range(S):
        length = int(case.seq_lens[s])
        n_pages = -(-length // bs)
        last_fill = length - (n_pages - 1) * bs
        for h in range(Hkv):
            older = np.flatnonzero(rng.random(n_pages - 1) < 0.5)  # the kept older pages, in order
            kept = [*case.block_tables[s, older], case.block_tables[s, n_pages - 1]]
            tables[s, h, : len(kept)] = kept
            lens[s, h] = (len(kept) - 1) * bs + last_fill
    return AttentionCase(case.query, case.key_cache, case.value_cache, tables, lens, case.scale, case.partition_size)


# ------------------------------------------------------------ bad inputs
def good_attention_args() -> dict:
    """A valid paged_attention call (keyword arguments), for the bad-input tests to spoil."""
    return dict(
        query=np.zeros((1, 2, 32), np.float16), key_cache=np.zeros((4, 16, 2, 32), np.float16),
        value_cache=np.zeros((4, 16, 2, 32), np.float16),
        batch=DecodeBatch(16, np.array([[0, 1, 2, 3]], np.int32), np.array([60], np.int32)),
        scale=1.0, variant="auto", partition_size=128,
    )


def _with_batch(tables, lens, block_size=16):
    return lambda a: a.update(batch=DecodeBatch(block_size, np.asarray(tables, np.int32), np.asarray(lens, np.int32)))


#: Every way to call paged_attention wrongly, and the words the error must use.
BAD_ATTENTION_INPUTS = [
    (_with_batch([[0, 1, 2, 3]], [65]), "does not fit"),
    (_with_batch([[0, 1, 2, 3]], [0]), "at least 1"),
    (_with_batch([[0, 9, 1, 2]], [60]), r"block_tables\[0, 1\] = 9 .*outside"),
    (_with_batch([[0, -1, 1, 2]], [60]), "outside"),
    (_with_batch([[0, 1, 2, 3]], [60], block_size=8), "blocks of 8 tokens"),
    (_with_batch([[0, 1], [2, 3]], [3, 4]), "2 sequences but query has 1"),
    (_with_batch([[[0, 1], [2, 3], [0, 1]]], [[3, 4, 5]]), "3 KV heads"),
    (_with_batch([[[0, 1], [2, 5]]], [[3, 17]]), r"block_tables\[0, 1, 1\] = 5"),
    (_with_batch([[[0, 1], [2, 3]]], [[3, 0]]), r"seq_lens\[0, 1\] is 0"),
    (lambda a: a.update(batch=(np.array([[0, 1, 2, 3]], np.int32), np.array([60], np.int32))), "DecodeBatch"),
    (lambda a: a.update(batch=None), "DecodeBatch"),
    (lambda a: a.update(query=np.zeros((1, 3, 32), np.float16)), "multiple"),
    (lambda a: a.update(query=np.zeros((1, 2, 32), np.float32)), "dtype"),
    (lambda a: a.update(query=np.zeros((1, 2, 16), np.float16)), "query must have shape"),
    (lambda a: a.update(query=np.zeros((1, 4, 32), np.float16)[:, ::2]), "contiguous"),
    (lambda a: a.update(query=[[[0.0] * 32] * 2]), "query must be a (numpy.ndarray|NumPy or CuPy array)"),
    (lambda a: a.update(query=np.zeros((1, 2, 32), object)), "dtype"),
    (lambda a: a.update(key_cache="cache"), "key_cache must be a (numpy.ndarray|NumPy or CuPy array)"),
    (lambda a: a.update(value_cache=np.zeros((4, 16, 2, 32), np.float32)), "must match"),
    (lambda a: a.update(key_cache=np.zeros((4, 16, 2, 32), np.int16)), "dtype"),
    (lambda a: a.update(key_cache=np.zeros((4, 16, 2, 33), np.float16)), "dtype|head_dim|must match"),
    (lambda a: a.update(key_cache=np.zeros((16, 2, 32), np.float16)), "4 dims"),
    (lambda a: a.update(scale=float("nan")), "finite"),
    (lambda a: a.update(scale=float("inf")), "finite"),
    (lambda a: a.update(scale=1e39), "finite"),
    (lambda a: a.update(scale="0.5"), "real number"),
    (lambda a: a.update(scale=True), "real number"),
    (lambda a: a.update(scale=None), "real number"),
    (lambda a: a.update(partition_size=100), "multiple of 64", "twin bound"),
    (lambda a: a.update(partition_size=128.0), "multiple of 64", "twin bound"),
    (lambda a: a.update(partition_size=2**40), "multiple of 64", "twin bound"),
    (lambda a: a.update(variant="v3"), "variant", "twin"),
    (lambda a: a.update(variant=["auto"]), "variant", "twin"),
]


def good_reshape_args() -> dict:
    """A valid reshape_and_cache call: two tokens into a cache of 4 blocks of 16."""
    return dict(
        key=np.zeros((2, 2, 32), np.float16), value=np.zeros((2, 2, 32), np.float16),
        key_cache=np.zeros((4, 16, 2, 32), np.float16), value_cache=np.zeros((4, 16, 2, 32), np.float16),
        slot_mapping=np.array([0, 17], np.int64),
    )


BAD_RESHAPE_INPUTS = [
    (lambda a: a.update(slot_mapping=np.array([0, 64], np.int64)), "out of range"),
    (lambda a: a.update(slot_mapping=np.array([5, 5], np.int64)), "twice"),
    (lambda a: a.update(slot_mapping=np.array([0, 1], np.int32)), "slot_mapping has dtype int32"),
    (lambda a: a.update(slot_mapping=np.array([0.0, 1.0])), "slot_mapping has dtype float64"),
    (lambda a: a.update(slot_mapping=[0, 1]), "slot_mapping must be a"),
    (lambda a: a.update(slot_mapping=np.array([0], np.int64)), "hold 2 tokens but slot_mapping has 1"),
    (lambda a: a.update(slot_mapping=np.array([[0, 1]], np.int64)), "slot_mapping must be 1-D"),
    (lambda a: a.update(key=np.zeros((2, 3, 32), np.float16)), r"key must have shape \[T, 2, 32\]"),
    (lambda a: a.update(value=np.zeros((3, 2, 32), np.float16)), "differ"),
    (lambda a: a.update(key=np.zeros((2, 2, 32), np.float32)), "key dtype"),
    (lambda a: a.update(key=np.zeros((2, 2, 64), np.float16)[:, :, ::2]), "contiguous"),
    (lambda a: a.update(key=None), "key must be a"),
    (lambda a: a.update(value="values"), "value must be a"),
    (lambda a: a.update(key_cache=np.zeros((4, 16, 2, 32), np.float32)), "must match"),
    (lambda a: a.update(key_cache=np.zeros((4, 16, 2, 32), np.float64)), "dtype"),
    (lambda a: a.update(value_cache=np.zeros((4, 16, 2), np.float16)), "4 dims"),
    (lambda a: a.update(value_cache=np.zeros((4, 16, 2, 64), np.float16)[..., ::2]), "contiguous"),
    (lambda a: a.update(key_cache=np.zeros((0, 16, 2, 32), np.float16), value_cache=np.zeros((0, 16, 2, 32), np.float16)), "empty"),
]


def good_copy_args() -> dict:
    """A valid copy_blocks call: block 0 into block 1."""
    return dict(
        key_cache=np.zeros((4, 16, 2, 32), np.float16), value_cache=np.zeros((4, 16, 2, 32), np.float16),
        block_mapping=np.array([[0, 1]], np.int64),
    )


BAD_COPY_INPUTS = [
    (lambda a: a.update(block_mapping=np.array([[0, 4]], np.int64)), "outside"),
    (lambda a: a.update(block_mapping=np.array([[-1, 2]], np.int64)), "outside"),
    (lambda a: a.update(block_mapping=np.array([[0, 1], [1, 2]], np.int64)), "both a source and a destination"),
    (lambda a: a.update(block_mapping=np.array([[0, 2], [1, 2]], np.int64)), "same destination"),
    (lambda a: a.update(block_mapping=np.array([[0, 0]], np.int64)), "both a source and a destination"),
    (lambda a: a.update(block_mapping=np.array([0, 1], np.int64)), r"shape \[P, 2\]"),
    (lambda a: a.update(block_mapping=np.array([[0, 1]], np.int32)), "dtype"),
    (lambda a: a.update(block_mapping=[(0, 1)]), "block_mapping must be a"),
    (lambda a: a.update(key_cache=np.zeros((4, 16, 2, 32), np.float32)), "must match"),
    (lambda a: a.update(key_cache=7), "key_cache must be a"),
]
