"""Hypothesis strategies shared by the data-plane tests (CPU and GPU)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

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

    def args(self) -> tuple:
        return (self.query, self.key_cache, self.value_cache, self.block_tables, self.seq_lens, self.scale)


@st.composite
def attention_cases(draw, max_len: int = 700, max_seqs: int = 4, dtypes=(np.float16, np.float32)) -> AttentionCase:
    """Shapes and contents for paged attention.

    block sizes 1..256 (not only powers of two), the HEAD_DIMS above, GQA
    ratios 1..32, lengths that include 1 and exact multiples of the block
    size, tables that share physical blocks, and sometimes large-magnitude
    queries and keys so that one token dominates the softmax."""
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
    vc = rng.standard_normal(shape).astype(dtype)
    q = (rng.standard_normal((num_seqs, num_kv_heads * group, head_dim)) * magnitude).astype(dtype)
    scale = float(draw(st.sampled_from([head_dim**-0.5, 1.0, 0.01])))
    partition_size = draw(st.sampled_from([128, 256, 512]))
    return AttentionCase(q, kc, vc, tables, lens, scale, partition_size)
