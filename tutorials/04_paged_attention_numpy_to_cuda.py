# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Paged attention from NumPy to CUDA
#
# So far we moved block ids around. Now the bytes: in this tutorial you fill a paged KV
# cache with keys and values exactly where the block manager says, run **paged
# attention** over it with the kernel's NumPy **twin**, check the twin against a float64
# **reference** and its proven error bound, and, where a CUDA GPU is present, run the
# real kernel and compare it with the twin **bit for bit**.
#
# ## Set up

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["svg"]
import numpy as np

from tinyserve_sim import BlockManager
from tinyserve_sim.data import (
    DecodeBatch,
    KVCache,
    attention_error_bound,
    paged_attention,
    reference_paged_attention,
)
from tinyserve_sim.data.backends import get_backend
from tinyserve_sim.data.geometry import make_plan
from tinyserve_sim.data.tensor_core import mma_dot
from tinyserve_sim.errors import BackendUnavailableError
from tinyserve_sim.render import show_state

rng = np.random.default_rng(0)

# %% [markdown]
# ## The control plane decides where tokens go
#
# Three requests of different lengths share a pool of 24 blocks of 8 tokens. We add them
# one after the other, then grow the first and the last: each takes its new blocks from
# the free queue, after the blocks of the others, so its block table jumps over memory.
# The kernel must follow the tables. We also free the middle one: with the default
# first-in, first-out free queue its blocks go to the back of the queue, so no request
# reuses them here; they are the gap in the picture.

# %%
BLOCK_SIZE, NUM_BLOCKS = 8, 24
NUM_KV_HEADS, NUM_Q_HEADS, HEAD_DIM = 2, 4, 64  # grouped-query attention: 2 query heads per KV head

m = BlockManager(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
cache = KVCache(NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, dtype=np.float16, backend="numpy")


def new_kv(num_tokens):
    """Made-up keys and values for some new tokens: [T, num_kv_heads, head_dim] each."""
    shape = (num_tokens, NUM_KV_HEADS, HEAD_DIM)
    return rng.standard_normal(shape).astype(np.float16), rng.standard_normal(shape).astype(np.float16)


# Each operation of the control plane is applied to the data plane: copies first, then the new tokens.
for seq, tokens in [("a", 20), ("b", 30), ("c", 9)]:
    cache.apply(m.add(seq, tokens), *new_kv(tokens))
cache.apply(m.free("b"))
for seq, tokens in [("a", 15), ("c", 40)]:
    cache.apply(m.append(seq, tokens), *new_kv(tokens))

for seq in m.seq_ids():
    print(f"{seq}: {m.num_tokens(seq):3} tokens in blocks {m.block_table(seq)}")
show_state(m, "three requests, one finished: scattered block tables")

# %% [markdown]
# `apply` is where the two planes meet: each `OpRecord` says which blocks to copy
# (`record.copies`, none here) and which slots the new tokens go to
# (`record.slot_mapping`); the data plane's `copy_blocks` and `reshape_and_cache` do it.
#
# ## The kernel's inputs
#
# What the control plane hands the data plane for a decode step is a `DecodeBatch`: the
# block tables as one padded int32 matrix (`-1` past each sequence's last block, never
# read), the sequence lengths, and the slots this step wrote. `from_manager` takes them
# from the manager's current state. Add one query per sequence (a decode step).

# %%
seqs = m.seq_ids()
batch = DecodeBatch.from_manager(m)
query = rng.standard_normal((len(seqs), NUM_Q_HEADS, HEAD_DIM)).astype(np.float16)
key_cache, value_cache = cache.to_numpy()
scale = 1 / np.sqrt(HEAD_DIM)
print("block_tables =\n", batch.block_tables)
print("seq_lens =", batch.seq_lens)

# %% [markdown]
# ## The twin
#
# `paged_attention` is the NumPy twin of `gpu/kernels/paged_attention.cu`: the same
# float32 operations in the same order, so that its output is the kernel's, bit for bit.
# It has two variants: `one_pass` (one thread block per sequence and head group) and
# `split_k` (long sequences cut into partitions, combined at the end).
#
# Here the cache is float16 and two query heads share each KV head, so the kernel
# computes the logits `q · k` on the GPU's tensor cores, and the twin follows that
# instruction's rounding by a rule measured on an H200
# ([logits on tensor cores](../../kernels/paged_attention/#logits-on-tensor-cores)).
# The sum of the probabilities times the values, `P·V`, stays on the CUDA cores here: only
# groups of four or more query heads per KV head compute it on tensor cores too
# ([P V on tensor cores](../../kernels/paged_attention/#p-v-on-tensor-cores)).
#
# The plan says which, and the instruction's rule can be tried on its own. Here four small
# products are added to 1.0: the tensor core cuts each term below 25 bits under the largest
# one before adding, so all four vanish; the exact sum, rounded once to nearest, keeps them
# as one more unit in the last place
# ([tensor_core_mma](../../kernels/tensor_core_mma/)).

# %%
plan = make_plan(HEAD_DIM, np.float16, NUM_Q_HEADS // NUM_KV_HEADS)
print("logits on tensor cores:", plan.tensor_core_logits)
a, b = np.zeros(16, np.float16), np.zeros(16, np.float16)
a[:4], b[:4] = 3 * 2.0**-14, 2.0**-13  # four products of 3 * 2**-27
print("tensor core:", mma_dot(a, b, np.float32(1.0)), "  exact sum, rounded to nearest:", np.float32(1 + 12 * 2.0**-27))

# %%
out_one_pass = paged_attention(query, key_cache, value_cache, batch, scale, variant="one_pass")
out_split_k = paged_attention(query, key_cache, value_cache, batch, scale, variant="split_k", partition_size=128)
print(out_one_pass.shape, out_one_pass.dtype)

# %% [markdown]
# ## How close to exact?
#
# A float64 reference computes the same attention as exactly as float64 allows, and
# `attention_error_bound` gives, per output element, a bound derived from the kernels'
# order of operations, which the tests check on every plan. Both variants are inside it:

# %%
reference = reference_paged_attention(query, key_cache, value_cache, batch, scale)
bound = attention_error_bound(query, key_cache, value_cache, batch, scale, partition_size=128)
for name, out in [("one_pass", out_one_pass), ("split_k", out_split_k)]:
    error = np.abs(out.astype(np.float64) - reference)
    print(f"{name:8}: max error {error.max():.2e}, max bound {bound.max():.2e}, "
          f"within bound everywhere: {bool((error <= bound).all())}")
print("the two variants agree bit for bit:", np.array_equal(out_one_pass, out_split_k))

# %% [markdown]
# The variants add in different orders. After the final rounding to float16 they often
# agree, as here, but nothing promises it: what is promised is that each is exactly
# reproducible, and that both stay within the bound.
#
# ## Paging is invisible to the result
#
# The block tables only say where the tokens are. Gathering each sequence's keys and
# values into contiguous arrays and computing ordinary attention gives the same answer
# (up to rounding):

# %%
def dense_attention(s):
    t = np.arange(batch.seq_lens[s])
    slots = batch.block_tables[s, t // BLOCK_SIZE] * BLOCK_SIZE + t % BLOCK_SIZE
    k = key_cache.reshape(-1, NUM_KV_HEADS, HEAD_DIM)[slots].astype(np.float64)  # [L, Hkv, D]
    v = value_cache.reshape(-1, NUM_KV_HEADS, HEAD_DIM)[slots].astype(np.float64)
    out = np.empty((NUM_Q_HEADS, HEAD_DIM))
    for h in range(NUM_Q_HEADS):
        kv_head = h // (NUM_Q_HEADS // NUM_KV_HEADS)
        x = scale * (k[:, kv_head] @ query[s, h].astype(np.float64))
        w = np.exp(x - x.max())
        out[h] = (w / w.sum()) @ v[:, kv_head]
    return out


dense = np.stack([dense_attention(s) for s in range(len(seqs))])
print("max |dense - reference|:", np.abs(dense - reference).max())

# %% [markdown]
# ## The CUDA kernel
#
# The GPU backend launches the real kernel on device arrays. It needs CuPy and a CUDA
# device; `get_backend("cupy")` raises `BackendUnavailableError`, with the reason, when
# either is missing, and this cell then says so and skips the comparison. (The site is
# built without a GPU: below the message it shows what this cell printed on a GPU
# machine, recorded there by `scripts/record_gpu_cells.py`.)

# %%
gpu_lines = []  # what this cell prints on a GPU (scripts/record_gpu_cells.py keeps it for the site)
try:
    gpu = get_backend("cupy")
except BackendUnavailableError as reason:
    gpu = None
    print(f"No CUDA GPU here: {reason}.")
    print("The GPU cells are skipped; run this tutorial on a machine with a CUDA device to see them.")

if gpu is not None:
    out_gpu = {}
    try:
        for variant, size in [("one_pass", 512), ("split_k", 128)]:
            result = gpu.paged_attention(gpu.asarray(query), gpu.asarray(key_cache), gpu.asarray(value_cache),
                                         batch, scale, variant=variant, partition_size=size)
            out_gpu[variant] = gpu.to_numpy(result)
    except BackendUnavailableError as reason:  # a GPU whose tensor cores the twin has no model of
        gpu = None
        print(f"This GPU cannot run this plan bit for bit: {reason}.")

if gpu is not None:
    for variant, twin in [("one_pass", out_one_pass), ("split_k", out_split_k)]:
        same = np.array_equal(out_gpu[variant].view(np.uint16), twin.view(np.uint16))
        gpu_lines.append(f"{variant:8}: GPU and twin identical bit for bit: {same}")
    print("\n".join(gpu_lines))

# %% [markdown]
# On a GPU, both lines print `True`: the kernel and its twin do the same operations in
# the same order (the logits by the tensor-core instruction's measured rule, the rest
# in float32), with an exponential built from correctly rounded
# operations (CUDA's `expf` would differ from NumPy's `exp` in the last bits) and no
# fused multiply-adds (`--fmad=false`). That is what lets the CPU tests stand in for
# the GPU: every property checked on the twin holds for the kernel.
#
# ## Recap
#
# - The control plane's operation records drive the data plane: `copy_blocks`, then
#   `reshape_and_cache` at the record's slots.
# - `paged_attention` takes a `DecodeBatch` (the block tables, the lengths) and follows its
#   tables; the result does not depend on where the blocks are.
# - The twin is checked against a float64 reference and a derived error bound; the kernel
#   is checked against the twin, bit for bit.
#
# The [data-plane concept page](../../concepts/data-plane/) explains the layout and the
# bit-exactness rules. Next: [query-aware selection](../05_query_aware_selection/), where
# attention reads only the pages that matter most to the query.
