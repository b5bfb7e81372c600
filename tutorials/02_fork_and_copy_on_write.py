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
# # 2. Fork and copy-on-write, step by step
#
# Parallel sampling and beam search make several outputs from one prompt. Storing the
# prompt's keys and values once, and sharing them, is the first big saving of paged
# attention. In this tutorial you fork a sequence, watch reference counts go up, and see
# the one moment a shared block must be copied: **copy-on-write**.
#
# We replay the example of the vLLM paper's Fig. 8: two samples of the prompt
# *"Four score and seven years ago our"*.
#
# ## Set up
#
# As in tutorial 1, `show_state` draws the state for the notebook to show (and
# `.save(path)` would write it to a file).

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["svg"]
from tinyserve_sim import BlockManager
from tinyserve_sim.render import show_state



def ref_counts(manager, seq_id):
    """The reference count of each block in a sequence's table."""
    return [manager.pool.ref_count(block) for block in manager.block_table(seq_id)]


# %% [markdown]
# ## One prompt
#
# The prompt has 7 tokens (we use made-up token ids 11 to 17). With blocks of 4 tokens it
# needs 2 blocks; the second is 3/4 full.

# %%
m = BlockManager(num_blocks=8, block_size=4)
prompt = [11, 12, 13, 14, 15, 16, 17]  # "Four score and seven years ago our"
print(m.add("A1", prompt).explain())
print("A1's table:", m.block_table("A1"), " ref counts:", ref_counts(m, "A1"))

# %% [markdown]
# ## Fork: a second sample
#
# `fork` gives the child a copy of the parent's *block table*, not of its data. Every
# block gains one user, so its reference count goes to 2. Nothing is allocated: the
# number of free blocks does not change.

# %%
free_before = m.num_free
record = m.fork("A1", "A2")
print(record.explain())
print("A2's table:", m.block_table("A2"), " ref counts:", ref_counts(m, "A2"))
print("free blocks before and after:", free_before, m.num_free)
show_state(m, "after fork('A1', 'A2'): both blocks shared (x2)")

# %% [markdown]
# Pink blocks are shared; the `x2` is their reference count.
#
# ## The first sample writes: copy-on-write
#
# A1 generates "fathers". Its next token goes into its last block, which is partly
# filled **and shared**: if A1 wrote there, A2 would see A1's token. So `append` first
# gives A1 a private copy of that block, then writes into the copy.

# %%
record = m.append("A1", [18])  # "fathers"
print(record.explain())
print("copies for the data plane:", record.copies)
print("A1's table:", m.block_table("A1"), " A2's table:", m.block_table("A2"))

# %% [markdown]
# The operation's record carries the work for the GPU, **in order**: first copy block
# `src` into block `dst` (all the copies of an operation go into one `copy_blocks` launch),
# then write the new token into the slot given by the slot mapping, which is in the
# *new* block:

# %%
(src, dst), = record.copies
print(f"1. copy block {src} -> block {dst}")
print(f"2. write the new token at slot {record.slot_mapping[0]} = block {record.slot_mapping[0] // 4}, offset {record.slot_mapping[0] % 4}")
show_state(m, "after A1 appends: block 1 copied into block 2")

# %% [markdown]
# Block 0 is still shared (it is full, so nobody will ever write into it again). Block 1
# now has a single user, A2.
#
# ## The second sample writes: in place
#
# A2 generates "mothers". Its last block is partly filled but no longer shared, so it
# writes in place. No copy.

# %%
record = m.append("A2", [19])  # "mothers"
print(record.explain())
print("copies:", record.copies)

# %% [markdown]
# ## Both continue
#
# Both last blocks are now full. The next token of each needs a fresh block, like any
# sequence that grows; nothing is shared there, so nothing is copied.

# %%
print(m.append("A1", [20]).explain())  # "brought"
print(m.append("A2", [20]).explain())  # "brought"
m.check_invariants()
show_state(m, "both samples continue on their own blocks")

# %% [markdown]
# The two samples hold 9 tokens each, 18 in all, in 5 blocks. Without sharing they would
# need 3 blocks each, 6 in all: the shared block 0 is the saving. It grows with the
# length of the prompt.
#
# ## Parallel sampling at scale
#
# The same mechanism with a longer prompt and more samples. Each sample below gets 4
# tokens; we count the blocks the pool really uses and the blocks that separate copies
# would use.

# %%
def sample(prompt_len, n, new_tokens, block_size=16):
    m = BlockManager(num_blocks=1024, block_size=block_size)
    m.add(0, prompt_len)
    for i in range(1, n):
        m.fork(0, i)
    copies = 0
    for _ in range(new_tokens):
        for i in range(n):
            copies += len(m.append(i, 1).copies)
    separate = n * m.blocks_for(prompt_len + new_tokens)
    return m.num_used, separate, copies


print("prompt  samples  blocks used  without sharing  copy-on-write copies")
for prompt_len, n in [(20, 4), (161, 4), (161, 8), (1000, 8)]:
    used, separate, copies = sample(prompt_len, n, new_tokens=4)
    print(f"{prompt_len:6}  {n:7}  {used:11}  {separate:15}  {copies:20}")

# %% [markdown]
# The longer the shared prompt, the bigger the saving. (161 tokens is the mean ShareGPT
# prompt length in the vLLM paper; on real traces it measured 6 to 30% of KV memory
# saved by parallel sampling, and up to 66% by beam search, whose beams share most of
# their outputs too.) Each sample needs at most one copy-on-write copy: of the one
# partly filled block it shared, and only if the prompt length is not a multiple of the
# block size.
#
# ## Freeing a shared sequence
#
# When one sample finishes, its blocks are counted down once. Shared blocks survive as
# long as another sequence uses them.

# %%
m2 = BlockManager(num_blocks=8, block_size=4)
m2.add("s0", 8)  # two full blocks
m2.fork("s0", "s1")
record = m2.free("s0")
print(record.explain())
print("s1's table:", m2.block_table("s1"), " ref counts:", ref_counts(m2, "s1"))

# %% [markdown]
# Nothing was freed: every block of `s0` is still used by `s1`.
#
# ## Recap
#
# - `fork` copies a block *table* and increments reference counts; it never allocates.
# - A sequence writing into a **partly filled, shared** last block first gets a private
#   copy: the record's `copies` tell the data plane to copy before it writes.
# - A block whose count drops to 1 is written in place again; full blocks stay shared.
# - `free` counts blocks down; only blocks that reach 0 return to the pool.
#
# Next: [prefix caching and eviction](../03_prefix_caching_and_eviction/), where
# *different* requests share blocks. The
# [concept page](../../concepts/fork-and-copy-on-write/) has the reasons and the
# paper's numbers.
