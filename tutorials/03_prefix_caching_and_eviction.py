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
# # 3. Prefix caching and eviction under memory pressure
#
# Chat requests often start with the same system prompt. With **prefix caching**, a
# request reuses the blocks that an earlier request filled with the same tokens, even
# after that request has finished. In this tutorial you watch blocks being found by
# their content, kept after their sequence is gone, and finally **evicted** when memory
# runs short, least recently used first.
#
# ## Set up

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["svg"]
from tinyserve_sim import BlockManager
from tinyserve_sim.control.prefix_cache import hash_block, hash_blocks
from tinyserve_sim.render import show_state



# %% [markdown]
# ## Blocks are found by a chained hash
#
# Only **full** blocks are cached: their content can no longer change. Each full block is
# named by a hash of its tokens *and of the hash of the block before it*, so the hash names
# the whole prefix. The same four tokens after two different beginnings hash differently:

# %%
same_tokens = [7, 7, 7, 7]
after_x = hash_blocks([1, 2, 3, 4] + same_tokens, block_size=4)
after_y = hash_blocks([5, 6, 7, 8] + same_tokens, block_size=4)
print("second block after [1, 2, 3, 4]:", hex(after_x[1]))
print("second block after [5, 6, 7, 8]:", hex(after_y[1]))
print("the same as hashing it by hand:", after_x[1] == hash_block(after_x[0], same_tokens))

# %% [markdown]
# To hash, the manager needs the tokens themselves, so with prefix caching we give
# prompts as lists of token ids rather than as counts.
#
# ## A shared system prompt
#
# A pool of 12 blocks of 4 tokens, with prefix caching on. The system prompt is 8 tokens:
# two full blocks.

# %%
m = BlockManager(num_blocks=12, block_size=4, prefix_caching=True)
system = list(range(100, 108))

record = m.add("r1", system + [1, 2, 3])
print(record.explain())
print("cache misses (full blocks looked up, not found):", record.cache_misses)

# %% [markdown]
# The first request found nothing, and its two full blocks are now cached. A second
# request with the same system prompt finds them: its table starts with the *same*
# physical blocks, whose reference counts go to 2. Only its own last block is new.

# %%
record = m.add("r2", system + [4, 5, 6])
print(record.explain())
print("r1's table:", m.block_table("r1"), " r2's table:", m.block_table("r2"))
show_state(m, "r2 reuses r1's two system-prompt blocks")

# %% [markdown]
# ## Finished, but not forgotten
#
# When both requests finish, the system-prompt blocks reach a count of 0. They are free,
# but they keep their content: they wait in the cache (yellow in the pictures) instead of
# the free queue. A later request can still use them.

# %%
print(m.free("r1").explain())
print(m.free("r2").explain())
both_finished = m.snapshot()
print("free queue:", both_finished.free_queue)
print("cached free blocks, next eviction first:", both_finished.evictable)
show_state(m, "both requests finished: blocks 0 and 1 stay cached")

# %%
record = m.add("r3", system + [9])
print(record.explain())

# %% [markdown]
# Blocks 0 and 1 were reused although no live request held them: the work of computing
# the system prompt's keys and values is saved again.
#
# One subtlety: the model must compute at least the **last** prompt token, whose output
# starts the decoding, so at most `len(prompt) - 1` tokens can come from the cache. A
# prompt of exactly the 8 system tokens therefore reuses only one block:

# %%
record = m.add("r4", system)
print(record.explain())
print(m.free("r3").explain())
print(m.free("r4").explain())

# %% [markdown]
# ## Memory pressure: eviction
#
# The pool is small. Let us fill it with unrelated requests and see what happens to the
# cache. An allocation takes blocks from the **free queue** first; only when it is empty
# does it **evict** cached blocks, least recently used first.

# %%
before_big = m.snapshot()  # taken now, after r3 and r4 have come and gone
print(f"free: {len(before_big.free_queue)}, cached: {len(before_big.evictable)} {before_big.evictable}")
record = m.add("big", list(range(500, 544)))  # 44 tokens: 11 blocks
print(record.explain())
print("evicted:", record.evicted)
show_state(m, "a 44-token request evicted the least recently used cached block")

# %% [markdown]
# The request needed 11 blocks; the free queue had 10, so the last one came from the
# evictor. Which cached blocks went first? The evictor's order is *least recently used*,
# and among blocks released at the same moment, the **deepest** block of a prefix goes
# first (a finished sequence is released last block first): a deep block is useless
# without every block before it, so it is the cheaper loss.
#
# Now the system prompt arrives again:

# %%
print(m.free("big").explain())
record = m.add("r5", system + [1])
print(record.explain())
print("hits:", record.cache_hits, " misses:", record.cache_misses)
m.check_invariants()

# %% [markdown]
# Whatever survived eviction is reused; whatever was evicted is a miss, recomputed and
# cached again.
#
# ## Evicting by hand
#
# `evict(n)` forgets up to `n` cached free blocks, in the same order. Blocks in use are
# never evicted: only blocks with a reference count of 0 can be.

# %%
print(m.free("r5").explain())
print("cached before:", m.snapshot().evictable)
print(m.evict(3).explain())
print("cached after:", m.snapshot().evictable)
final = m.snapshot()
print(f"cache statistics: {final.cache_hits} hits, {final.cache_misses} misses, {final.evictions} evictions")

# %% [markdown]
# ## Recap
#
# - Full blocks are named by a **chained hash** of their tokens and everything before.
# - A new prompt reuses cached blocks in order, up to its first miss, and never its last
#   token.
# - A cached block whose count reaches 0 stays **cached**: free, yet reusable.
# - Allocation uses plain free blocks first, then **evicts** cached ones, least recently
#   used first and deepest first among equals.
#
# The [concept page](../../concepts/prefix-caching/) compares this with vLLM and shows
# how the free-queue policy (`"fifo"` or `"lifo"`) orders the plain free blocks.
# To try your own cases, [write a trace](../../how-to/write-a-trace/) with
# `"prefix_caching": true` and step through it with `tinyserve-sim trace`.
#
# Next: [paged attention from NumPy to CUDA](../04_paged_attention_numpy_to_cuda/), where
# the block tables lead the attention kernel to the keys and values themselves.
