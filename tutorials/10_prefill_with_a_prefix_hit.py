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
# # 10. Prefill over a prefix-cache hit: the work it saves, the bits it keeps
#
# In [tutorial 3](../03_prefix_caching_and_eviction/) a second request with the same
# system prompt found its blocks in the **prefix cache**. That saves memory. It also
# saves *compute*: the cached tokens' keys and values are already there, so the
# server runs attention only for the tokens after them, which read the cached keys.
#
# Here you run that **prefill** step twice on the same prompt, once from scratch and
# once over a prefix-cache hit, count the attention work each needs, and check that
# the new tokens' outputs are the same **bit for bit**. Then you cut the same prompt
# into chunks (chunked prefill) and get the same bits again.
#
# ## A prompt, and the tensors a model would give it
#
# A real model computes each token's query, key and value from the token and from the
# layers below; here they are random, but *fixed per token*: the same token at the same
# position always gets the same tensors, as in a real model.

# %%
import numpy as np

from tinyserve_sim import BlockManager
from tinyserve_sim.control.prefill_batch import PrefillBatch
from tinyserve_sim.data import KVCache
from tinyserve_sim.data.backends import get_backend
from tinyserve_sim.errors import BackendUnavailableError

HEAD_DIM, KV_HEADS, QUERY_HEADS, BLOCK = 64, 2, 8, 16
system_prompt = list(range(1000, 1096))  # 96 tokens: six full blocks
question = [7, 42, 3, 99, 15, 8, 23]
prompt = system_prompt + question
print(f"{len(prompt)} prompt tokens: {len(system_prompt)} of system prompt, {len(question)} of question")

rng = np.random.default_rng(0)
query = rng.standard_normal((len(prompt), QUERY_HEADS, HEAD_DIM)).astype(np.float16)
keys = rng.standard_normal((len(prompt), KV_HEADS, HEAD_DIM)).astype(np.float16)
values = rng.standard_normal((len(prompt), KV_HEADS, HEAD_DIM)).astype(np.float16)


def tensors_of(batch: PrefillBatch):
    """The new tokens' query, keys and values: the last rows of the prompt's."""
    n = batch.num_query_tokens
    return query[-n:], keys[-n:], values[-n:]


# %% [markdown]
# ## From scratch: every token is computed
#
# The manager's `add` returns its record; `PrefillBatch.from_records` turns it into
# what the attention kernel needs: the block tables, each sequence's total length, and
# where its new tokens start in the packed query (`query_start_loc`, vLLM's name; it is
# FlashInfer's `qo_indptr`). `KVCache.prefill` then does what a server does: write the
# new tokens' keys and values into their slots, and run causal attention over the
# sequence's blocks.

# %%
manager = BlockManager(num_blocks=32, block_size=BLOCK, prefix_caching=True)
cache = KVCache(32, BLOCK, KV_HEADS, HEAD_DIM)

first = manager.add("first", prompt)
print(first.explain())
batch = PrefillBatch.from_records(manager, [first])
print("new tokens:", batch.query_lens, " already cached:", batch.prefix_lens)
cold = cache.prefill(first, batch, *tensors_of(batch))
print(cold.explain())

# %% [markdown]
# Token `i` attends to keys `0 .. i`, so the prompt costs `1 + 2 + ... + 103` query-key
# pairs per head, each `4 x 64` floating-point operations (`q . k` and `p v`).
#
# ## Over a prefix-cache hit: only the question is computed
#
# The same prompt again. Its six full blocks are in the prefix cache, so `add` reuses
# them, and the step computes only the 7 tokens after them. (The manager never takes
# the *last* prompt token from the cache, as vLLM: its output starts decoding.)

# %%
second = manager.add("second", prompt)
print(second.explain())
batch = PrefillBatch.from_records(manager, [second])
print("new tokens:", batch.query_lens, " already cached:", batch.prefix_lens)
warm = cache.prefill(second, batch, *tensors_of(batch))
print(warm.explain())

# %%
work = warm.work[0]
print(f"tokens from the prefix cache: {work.num_prefix_cache_tokens}")
print(f"attention pairs per head: {work.attention_pairs:,} computed, {work.saved_pairs:,} saved")
print(f"attention FLOPs: {warm.flops:,} instead of {cold.flops:,} "
      f"({warm.flops / cold.flops:.1%} of the cold prefill)")

# %% [markdown]
# The new tokens still read all 96 cached keys (they attend to the system prompt), so
# the saving is the system prompt's *own* causal attention, `96 * 97 / 2` pairs per
# head (and, in a real model, its projections and MLP, which this simulator does not
# model).
#
# ## The same bits
#
# Are the 7 question tokens' outputs the same as in the cold prefill? Not merely close:
# identical, down to the last bit of every float16.

# %%
n = warm.output.shape[0]
same = np.array_equal(warm.output.view(np.uint16), cold.output[-n:].view(np.uint16))
print("question tokens, hit vs cold, identical bit for bit:", same)

# %% [markdown]
# Why can a kernel promise that? Each (token, query head) row is computed on its own,
# walking the keys in fixed tiles of 64 from position 0, in a documented order of
# operations: the float16 scores and the products of probabilities and values by the
# tensor-core instruction's measured rule, the softmax in float32
# ([kernel page](../../kernels/paged_prefill_attention/)). Which other rows share
# its thread block, and whether the keys before it were computed in this step or found in
# the cache, changes nothing in that order. A tile that lies wholly after a row's position
# is an exact no-op for it: every probability is 0 and every rescale factor exactly 1.
#
# ## Chunked prefill: the same bits again
#
# A server may also cut a long prompt into chunks, to interleave it with other requests'
# decode steps: the first chunk is an `add`, the next ones are `append`s, and each chunk
# attends to the chunks before it in the cache.

# %%
chunked = BlockManager(num_blocks=32, block_size=BLOCK)
chunk_cache = KVCache(32, BLOCK, KV_HEADS, HEAD_DIM)
outputs, done = [], 0
for size in (40, 50, 13):
    record = chunked.add("c", size) if done == 0 else chunked.append("c", size)
    batch = PrefillBatch.from_records(chunked, [record])
    n_new, done = batch.num_query_tokens, done + size
    step = chunk_cache.prefill(record, batch, query[done - n_new : done], keys[done - n_new : done],
                               values[done - n_new : done])
    print(step.work[0].explain())
    outputs.append(step.output)
same = np.array_equal(np.concatenate(outputs).view(np.uint16), cold.output.view(np.uint16))
print("three chunks vs one prefill, identical bit for bit:", same)

# %% [markdown]
# ## On the GPU
#
# The CUDA kernel (`gpu/kernels/paged_prefill_attention.cu`) does the same operations in
# the same order as the NumPy twin that ran above, so on a GPU the same steps give the
# same bits. This cell runs the hit step on the GPU backend where CuPy finds a device.

# %%
try:
    gpu = get_backend("cupy")
except BackendUnavailableError as reason:
    gpu = None
    print(f"No CUDA GPU here ({reason}).")
    print("The GPU cell is skipped; run this tutorial on a machine with a CUDA device to see it.")

if gpu is not None:
    gpu_manager = BlockManager(num_blocks=32, block_size=BLOCK, prefix_caching=True)
    gpu_cache = KVCache(32, BLOCK, KV_HEADS, HEAD_DIM, backend=gpu)
    try:
        for seq in ("first", "second"):
            record = gpu_manager.add(seq, prompt)
            batch = PrefillBatch.from_records(gpu_manager, [record])
            step = gpu_cache.prefill(record, batch, *tensors_of(batch))
    except BackendUnavailableError as reason:  # a GPU whose tensor cores the twin has no model of
        gpu = None
        print(f"This GPU cannot run this step bit for bit: {reason}.")

if gpu is not None:
    same = np.array_equal(gpu.to_numpy(step.output).view(np.uint16), warm.output.view(np.uint16))
    print("GPU hit step vs NumPy twin, identical bit for bit:", same)

# %% [markdown]
# ## Recap
#
# - A prefill step computes many new tokens per sequence; `PrefillBatch.from_records`
#   describes it (tables, total lengths, `query_start_loc`), and `KVCache.prefill` writes
#   the new keys and values, then runs causal attention over the cached prefix and the
#   new tokens.
# - A prefix-cache hit of `H` tokens saves their own attention, `H (H + 1) / 2` pairs per
#   head; the step record (`PrefillStep.work`) counts what was computed and what was saved.
# - Because every row is computed in a fixed order, independent of its chunk, the outputs
#   with and without the hit, and in chunks, are identical bit for bit.
#
# Next: go back to [the tutorials](../), or read the
# [paged prefill kernel page](../../kernels/paged_prefill_attention/).
