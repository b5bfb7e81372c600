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
# # 6. Hunting a kernel bug with Hypothesis
#
# Kernel bugs hide in corners: a sequence whose last block is only partly filled, a head
# count that does not divide evenly, a length that is exactly a multiple of the block size.
# Hand-written tests rarely hit all of them. A **property test** states what must hold for
# *every* input, and [Hypothesis](https://hypothesis.readthedocs.io/) searches for an input
# that breaks it, then **shrinks** it to the simplest one it can find.
#
# In this tutorial you plant a bug in a copy of the paged-attention twin, watch a property
# test catch it, and read the shrunk counterexample.
#
# ## Set up

# %%
import tempfile

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from tinyserve_sim.data import (
    DecodeBatch,
    attention_error_bound,
    paged_attention,
    reference_paged_attention,
)
from tinyserve_sim.data.backends import get_backend
from tinyserve_sim.errors import BackendUnavailableError

NUM_KV_HEADS, NUM_Q_HEADS, HEAD_DIM = 1, 2, 32

# Hypothesis keeps a cache in ./.hypothesis; this tutorial leaves nothing behind, so the
# cache goes to a temporary folder that is removed when the tutorial ends.
hypothesis_scratch = tempfile.TemporaryDirectory(prefix="tinyserve-tutorial-06-")
set_hypothesis_home_dir(hypothesis_scratch.name)

# %% [markdown]
# ## A deliberately buggy kernel
#
# A classic mistake: computing the number of blocks with a floor division,
# `seq_len // block_size`, instead of rounding up. The tokens of the last, partly filled
# block are then never read. We write that bug as a wrapper around the correct twin,
# which it calls with the truncated lengths (it keeps at least one block, so that it does
# not crash outright on short sequences; bugs that crash are easy).

# %%
def buggy_paged_attention(query, key_cache, value_cache, batch, scale):
    block_size = batch.block_size
    full_blocks = np.maximum(batch.seq_lens // block_size, 1)  # BUG: should round up
    truncated = np.minimum(batch.seq_lens, full_blocks * block_size).astype(np.int32)
    return paged_attention(query, key_cache, value_cache, DecodeBatch(block_size, batch.block_tables, truncated), scale)


# %% [markdown]
# ## The property
#
# For any sequence length, block size and contents, the kernel's output must be within
# the proven error bound of the float64 reference. The test builds a cache whose blocks are
# handed out in a shuffled order (as a busy pool would), fills it with random keys and
# values, and checks the bound.

# %%
def make_case(seq_len, block_size, seed):
    rng = np.random.default_rng(seed)
    num_blocks = -(-seq_len // block_size)
    shape = (num_blocks, block_size, NUM_KV_HEADS, HEAD_DIM)
    key_cache = rng.standard_normal(shape).astype(np.float32)
    value_cache = rng.standard_normal(shape).astype(np.float32)
    block_tables = rng.permutation(num_blocks).astype(np.int32)[None, :]
    batch = DecodeBatch(block_size, block_tables, np.array([seq_len], dtype=np.int32))
    query = rng.standard_normal((1, NUM_Q_HEADS, HEAD_DIM)).astype(np.float32)
    return query, key_cache, value_cache, batch, 1 / np.sqrt(HEAD_DIM)


def check_within_bound(kernel):
    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(seq_len=st.integers(1, 64), block_size=st.sampled_from([4, 8, 16]), seed=st.integers(0, 2**32 - 1))
    def test(seq_len, block_size, seed):
        case = make_case(seq_len, block_size, seed)
        out = kernel(*case).astype(np.float64)
        error = np.abs(out - reference_paged_attention(*case))
        assert (error <= attention_error_bound(*case)).all(), f"max error {error.max():.3g}"

    return test


# %% [markdown]
# ## The correct twin passes
#
# Run the property against the real twin first: 200 inputs, no failure.

# %%
check_within_bound(paged_attention)()
print("paged_attention: the property holds on 200 generated cases")

# %% [markdown]
# ## The buggy one does not
#
# Now the buggy version. Hypothesis finds a failing case, shrinks it, and reports the
# simplest failing input it found (in `__notes__`, Python's way of attaching such
# details to an exception).

# %%
try:
    check_within_bound(buggy_paged_attention)()
    print("no counterexample found?!")
except AssertionError as failure:
    print("caught:", failure)
    for note in getattr(failure, "__notes__", []):
        print(note)

# %% [markdown]
# ## Reading the counterexample
#
# Hypothesis shrinks towards small integers and the first choices of `sampled_from`, so
# the reported case is the *simplest* failure, and it explains the bug by itself:
#
# - `block_size=4`: the smallest block size offered;
# - `seq_len=5`: one full block and **one token in a partial block**. Every shorter
#   sequence passes, because the bug keeps at least one block; `seq_len=8` (two full
#   blocks) would pass too. The smallest failure is the first length with a partial block
#   after a full one;
# - `seed=0`: any contents will do; the bug does not depend on the values.
#
# So the report reads: *"the last, partly filled block is ignored"*, which is exactly
# the floor division we planted. A fixed-length unit test with lengths 4, 8 and 16 (nice
# multiples of the block size) would never have seen it.
#
# To keep a found bug from coming back, pin the shrunk case with `@example(seq_len=5,
# block_size=4, seed=0)` in the real test suite: it then runs on every CI run, even when
# Hypothesis is derandomized there.
#
# ## On a GPU
#
# The same property holds for the CUDA kernel, and a stricter one too: its output equals
# the twin's, bit for bit. Where a CUDA device is present, this cell runs the property
# against the GPU backend; elsewhere it says so and skips. (The site is built without a
# GPU: below the message it shows what this cell printed on a GPU machine, recorded there
# by `scripts/record_gpu_cells.py`.)

# %%
gpu_lines = []  # what this cell prints on a GPU (scripts/record_gpu_cells.py keeps it for the site)
try:
    gpu = get_backend("cupy")
except BackendUnavailableError as reason:
    gpu = None
    print(f"No CUDA GPU here: {reason}; the GPU property is skipped.")

if gpu is not None:
    def gpu_paged_attention(query, key_cache, value_cache, batch, scale):
        out = gpu.paged_attention(gpu.asarray(query), gpu.asarray(key_cache), gpu.asarray(value_cache), batch, scale)
        out = gpu.to_numpy(out)
        twin = paged_attention(query, key_cache, value_cache, batch, scale)
        assert np.array_equal(out.view(np.uint32), twin.view(np.uint32)), "GPU and twin differ"
        return out

    check_within_bound(gpu_paged_attention)()
    gpu_lines.append("CUDA kernel: within the bound, and identical to the twin, on 200 generated cases")
    print("\n".join(gpu_lines))

# %% [markdown]
# ## Recap
#
# - A property test states what must hold for every input; Hypothesis searches for a
#   counterexample and shrinks it.
# - The shrunk case points at the bug: here, the first length with a partial last block.
# - Pin found cases with `@example`, so that a derandomized CI keeps checking them.
#
# Next: [reproducing the memory-waste claim](../07_memory_waste_claim/), where we leave the
# kernels for the serving system and measure where its KV memory goes.
