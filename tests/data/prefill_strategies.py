"""Hypothesis strategies for paged prefill attention (CPU twin tests, host emulation, GPU tests)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from hypothesis import strategies as st

from kv_strategies import value_scales

from tinyserve_sim.control.prefill_batch import PrefillBatch

HEAD_DIMS = (8, 32, 40, 64, 80, 96, 128, 160, 256)
GQA_RATIOS = (1, 2, 3, 4, 8)


@dataclass
class PrefillCase:
    query: np.ndarray
    key_cache: np.ndarray
    value_cache: np.ndarray
    batch: PrefillBatch
    scale: float

    def args(self) -> tuple:
        return (self.query, self.key_cache, self.value_cache, self.batch, self.scale)

    def with_dtype(self, dtype) -> PrefillCase:
        return replace(self, query=self.query.astype(dtype), key_cache=self.key_cache.astype(dtype),
                       value_cache=self.value_cache.astype(dtype))


def fixed_prefill_case(
    seed: int, dtype, head_dim: int, block_size: int, group: int, seq_lens: list[int], query_lens: list[int],
    num_kv_heads: int = 2, spare_blocks: int = 3,
) -> PrefillCase:
    """A reproducible case: each sequence's blocks drawn at random from a cache with
    ``spare_blocks`` blocks more than the sequences use; random keys (x 3), values and
    queries; the softmax scale ``head_dim ** -0.5``."""
    rng = np.random.default_rng(seed)
    blocks = [-(-n // block_size) for n in seq_lens]
    perm = rng.permutation(sum(blocks) + spare_blocks)
    tables, at = [], 0
    for n in blocks:
        tables.append(perm[at : at + n].tolist())
        at += n
    shape = (len(perm), block_size, num_kv_heads, head_dim)
    kc = (rng.standard_normal(shape) * 3).astype(dtype)
    vc = rng.standard_normal(shape).astype(dtype)
    q = rng.standard_normal((sum(query_lens), num_kv_heads * group, head_dim)).astype(dtype)
    return PrefillCase(q, kc, vc, PrefillBatch.from_tables(tables, seq_lens, query_lens, block_size), head_dim**-0.5)



def minus_zero_prefill_case(dtype=np.float32) -> PrefillCase:
    """A case built so that one output element's accumulator is ``-0``, not ``+0``, in
    the twin: 11 new tokens over 60 cached ones (one block of 64 query rows that reads
    two key tiles), every row's largest logit on key 0, whose value is 0 in dim 0, and
    the values of keys 1..63 ``-2**-149`` there (float32; ``-2**-24``, float16's
    smallest, for float16), so that ``p * v`` rounds to ``-0`` for every key after the
    first. Token 0 (position 60) sees only the first key tile; the kernel still walks
    the second for it (its other rows need it), where values of ``+1`` would turn a
    ``-0`` accumulator into ``+0`` (``0 * 1 + (-0) = +0``). Both must end at ``+0``."""
    case = fixed_prefill_case(0, dtype, 8, 16, 1, seq_lens=[71], query_lens=[11], num_kv_heads=1, spare_blocks=0)
    q, kc, vc, batch, _ = case.args()
    table = batch.block_tables[0]
    q[:] = 0
    kc[:] = 0
    vc[:] = 0
    q[:, 0, 0] = 10  # logits 10 * scale on key 0, 0 elsewhere: p = exp(-3.5) = 0.03 after key 0
    kc[table[0], 0, 0, 0] = 1
    tiny = -(2.0**-149) if np.dtype(dtype) == np.float32 else -(2.0**-24)
    for t in range(1, 71):
        vc[table[t // 16], t % 16, 0, 0] = tiny if t < 64 else 1.0
    return case

def _length(draw, block_size: int, most: int, least: int) -> int:
    """A length in ``least .. most``: 1, whole blocks, or anything (mid-block)."""
    if most <= least:
        return least
    kinds = [st.just(max(least, 1)), st.integers(least, most)]
    if most // block_size >= max(1, -(-least // block_size)):
        kinds.append(st.integers(max(1, -(-least // block_size)), most // block_size).map(lambda n: n * block_size))
    return min(most, max(least, draw(st.one_of(kinds))))


@st.composite
def prefill_cases(
    draw,
    max_len: int = 300,
    max_new: int = 80,
    max_seqs: int = 3,
    head_dims=HEAD_DIMS,
    groups=GQA_RATIOS,
    max_kv_heads: int = 2,
    dtypes=(np.float16, np.float32),
) -> PrefillCase:
    """A prefill step over a paged cache: 1..max_seqs sequences, each with a cached prefix
    (none, whole blocks, or ending mid-block) and 1..max_new new tokens (1, whole
    blocks, or any), block sizes 1..64, head dims with and without padding, GQA
    groups, tables that share their first blocks (a prefix-cache hit), sometimes
    large-magnitude queries and keys so that one key dominates the softmax, and
    sometimes tiny values (``kv_strategies.TINY_VALUES``: underflowing products)."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    block_size = draw(st.one_of(st.sampled_from([1, 16]), st.integers(1, 64)))
    head_dim = draw(st.sampled_from(head_dims))
    num_kv_heads = draw(st.integers(1, max_kv_heads))
    group = draw(st.sampled_from(groups))
    num_seqs = draw(st.integers(1, max_seqs))
    query_lens, seq_lens = [], []
    for _ in range(num_seqs):
        q = _length(draw, block_size, max_new, 1)
        prefix = _length(draw, block_size, max_len - q, 0) if draw(st.booleans()) else 0
        query_lens.append(q)
        seq_lens.append(prefix + q)
    max_blocks = max(-(-n // block_size) for n in seq_lens) + draw(st.integers(0, 2))
    needed = sum(-(-n // block_size) for n in seq_lens)
    num_blocks = max(1, needed + draw(st.integers(0, 4)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    perm = rng.permutation(num_blocks)
    tables, start = [], 0
    for n in seq_lens:
        used = -(-n // block_size)
        tables.append(perm[start : start + used].tolist())
        start += used
    if num_seqs > 1 and draw(st.booleans()):
        # A shared prefix: every sequence's first full blocks are the first sequence's.
        shared = min(len(t) for t in tables) - 1
        for t in tables[1:]:
            t[:shared] = tables[0][:shared]
    magnitude = draw(st.sampled_from([1.0, 1.0, 4.0, 16.0]))
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    kc = (rng.standard_normal(shape) * magnitude).astype(dtype)
    vc = (rng.standard_normal(shape) * draw(value_scales(dtype))).astype(dtype)
    T = sum(query_lens)
    q = (rng.standard_normal((T, num_kv_heads * group, head_dim)) * magnitude).astype(dtype)
    batch = PrefillBatch.from_tables(tables, seq_lens, query_lens, block_size)
    if max_blocks > batch.max_blocks:  # wider tables: padding entries are never read
        wide = np.full((num_seqs, max_blocks), -1, np.int32)
        wide[:, : batch.max_blocks] = batch.block_tables
        batch = PrefillBatch(block_size, wide, batch.seq_lens, batch.query_start_loc)
    scale = float(draw(st.sampled_from([head_dim**-0.5, 1.0, 0.05])))
    return PrefillCase(q, kc, vc, batch, scale)


# ------------------------------------------------------------ bad inputs
def good_prefill_args() -> dict:
    """A valid paged_prefill_attention call: 5 new tokens after 20 cached, blocks of 16."""
    return dict(
        query=np.zeros((5, 4, 32), np.float16),
        key_cache=np.zeros((4, 16, 2, 32), np.float16),
        value_cache=np.zeros((4, 16, 2, 32), np.float16),
        batch=PrefillBatch.from_tables([[2, 0]], [25], [5], 16),
        scale=0.5,
    )


def _batch(tables, lens, qlens, block_size=16):
    return lambda a: a.update(batch=PrefillBatch.from_tables(tables, lens, qlens, block_size))


#: Every way to call paged_prefill_attention wrongly, and the words the error must use.
BAD_PREFILL_INPUTS = [
    (_batch([[2, 0]], [33], [5]), "does not fit"),
    (_batch([[2, 7]], [25], [5]), r"block_tables\[0, 1\] = 7 .*outside"),
    (_batch([[2, -1]], [25], [5]), "outside"),
    (_batch([[2, 0, 1, 3]], [25], [5], block_size=8), "blocks of 8 tokens"),
    (_batch([[2, 0]], [25], [4]), "4 new tokens .* query has 5 rows"),
    (_batch([[2, 0], [1]], [25, 3], [2, 2]), "4 new tokens .* query has 5 rows"),
    (lambda a: a.update(batch=None), "PrefillBatch"),
    (lambda a: a.update(batch=(np.array([[2, 0]], np.int32), np.array([25], np.int32))), "PrefillBatch"),
    (lambda a: a.update(query=np.zeros((5, 3, 32), np.float16)), "multiple"),
    (lambda a: a.update(query=np.zeros((5, 4, 32), np.float32)), "dtype"),
    (lambda a: a.update(query=np.zeros((5, 4, 16), np.float16)), "query must have shape"),
    (lambda a: a.update(query=np.zeros((5, 8, 32), np.float16)[:, ::2]), "contiguous"),
    (lambda a: a.update(query=[[[0.0] * 32] * 4] * 5), "query must be a (numpy.ndarray|NumPy or CuPy array)"),
    (lambda a: a.update(key_cache="cache"), "key_cache must be a (numpy.ndarray|NumPy or CuPy array)"),
    (lambda a: a.update(value_cache=np.zeros((4, 16, 2, 32), np.float32)), "must match"),
    (lambda a: a.update(key_cache=np.zeros((4, 16, 2, 32), np.int16)), "dtype"),
    (lambda a: a.update(key_cache=np.zeros((16, 2, 32), np.float16)), "4 dims"),
    (lambda a: a.update(scale=float("nan")), "finite"),
    (lambda a: a.update(scale="0.5"), "real number"),
    (lambda a: a.update(scale=None), "real number"),
]
