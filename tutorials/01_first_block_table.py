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
# # 1. Your first block table
#
# In this tutorial you give a small KV cache a few requests, watch where their tokens go,
# and learn to read the two pictures this project draws everywhere: the **block tables**
# and the **memory map**. You will allocate, append and free, and see the simulator
# refuse, cleanly, a request that does not fit.
#
# Run it as a script (`python tutorials/01_first_block_table.py`) or as a notebook; this
# page is the script's own output, produced when the site was built.
#
# ## Set up
#
# We need the block manager and two renderers. `show_state(manager, title)` draws the
# state; a notebook shows the drawing below the cell, with a description in words for
# readers who cannot see it. To keep a picture, `show_state(...).save("state.svg")` (or
# `save_state(manager, "state.svg")`) writes it to a file. As a plain script, this
# tutorial prints its text and writes nothing.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["svg"]
from tinyserve_sim import BlockManager
from tinyserve_sim.errors import OutOfBlocksError
from tinyserve_sim.render import print_state, show_state



# %% [markdown]
# ## A pool of blocks
#
# A paged KV cache cuts its memory into equal **blocks**, each with room for the keys and
# values of `block_size` tokens. Real servers use blocks of 16 tokens and thousands of
# blocks; we use 12 blocks of 4 tokens, small enough to see every slot.

# %%
m = BlockManager(num_blocks=12, block_size=4)
print(f"{m.num_blocks} blocks of {m.block_size} slots; {m.num_free} free")
print("the free queue, next block first:", m.snapshot().free_queue)

# %% [markdown]
# The free queue is the order in which blocks will be handed out. This pool uses the
# default policy, `"fifo"`: a queue that starts in block-id order.
#
# ## A request arrives
#
# Request `a` brings a 6-token prompt. Six tokens need `ceil(6 / 4) = 2` blocks: the first
# one full, the second half full. `add` allocates them and returns an **operation
# record** (`OpRecord`) that says exactly what it did.

# %%
record = m.add("a", 6)
print(record.explain())
print("allocated:", record.allocated)
print("a's block table:", m.block_table("a"))

# %% [markdown]
# The **block table** maps each *logical* block of `a` (its tokens 0-3, then 4-7) to a
# *physical* block. The record also says where the data plane must write the 6 new tokens'
# keys and values: one **slot** per token, `block * block_size + offset`.

# %%
print("slot mapping:", record.slot_mapping)

# %% [markdown]
# Here is the state as a picture. On the left, each sequence's block table; on the right,
# the physical memory, block 0 at the top left. A block used by one sequence takes that
# sequence's colour; grey blocks are free.

# %%
show_state(m, "after add('a', 6)")

# %% [markdown]
# ## A second request
#
# Request `b` has 3 tokens: one block, three quarters full. It gets the next block in the
# free queue.

# %%
print(m.add("b", 3).explain())
print("b's block table:", m.block_table("b"))

# %% [markdown]
# ## Decoding: appending tokens
#
# Each decoding step adds one token per request. `a` has 6 tokens in 8 slots, so its
# next token fits in its last block: nothing is allocated.

# %%
record = m.append("a", 1)
print(record.explain())
print("slot of the new token:", record.slot_mapping)

# %% [markdown]
# Two more tokens: the first fills block 1, the second needs a new block. That block is
# whichever comes next in the free queue, so `a`'s blocks are no longer next to each
# other in memory. It does not matter: the block table says where each piece is.

# %%
record = m.append("a", 2)
print(record.explain())
print("a's block table:", m.block_table("a"), " slots:", record.slot_mapping)
show_state(m, "after appending 3 tokens to 'a'")

# %% [markdown]
# The same state in the terminal view, which `tinyserve-sim` prints (`print_state`): the
# tables, the memory map and the free queue.

# %%
print_state(m)

# %% [markdown]
# ## Asking before acting
#
# A server must not start a request it cannot hold. `can_add` and `blocks_needed_to_add`
# answer without changing anything. A 40-token prompt needs 10 blocks, and only 8 are
# free:

# %%
print("blocks needed for 40 tokens:", m.blocks_needed_to_add(40))
print("free blocks:", m.num_free)
print("can add?", m.can_add(40))

# %% [markdown]
# If you try anyway, `add` raises `OutOfBlocksError`, and the state is exactly as it was:
# every operation checks everything first and changes things only afterwards. Snapshots
# compare equal exactly when two states are equal, so we can check that.

# %%
before = m.snapshot()
try:
    m.add("big", 40)
except OutOfBlocksError as error:
    print("refused:", error)
print("state unchanged:", m.snapshot() == before)

# %% [markdown]
# ## A request finishes
#
# When `a` finishes, `free` returns its blocks to the pool, **last logical block first**.
# With the FIFO policy they join the *tail* of the free queue, so the blocks that were
# never used are handed out before them.

# %%
record = m.free("a")
print(record.explain())
print("free queue, next first:", m.snapshot().free_queue)

# %% [markdown]
# A new 5-token request gets the two blocks at the head of the queue:

# %%
print(m.add("c", 5).explain())
show_state(m, "after free('a') and add('c', 5)")

# %% [markdown]
# ## Everything adds up
#
# The manager can check its own bookkeeping: every block's reference count equals the
# number of table entries pointing at it, the free blocks are exactly those with a count
# of 0, and every sequence has `ceil(tokens / block_size)` blocks.

# %%
m.check_invariants()
print(f"invariants hold: {m.num_used} blocks used, {m.num_free} free")

# %% [markdown]
# ## Recap
#
# - Memory is a pool of equal **blocks**; a sequence's **block table** maps its logical
#   blocks to physical ones, anywhere in memory.
# - `add` and `append` allocate a block only when the last one is full, so the only
#   unused slots are in each sequence's last block.
# - Each operation returns a **record** that says what it did, including the **slot
#   mapping** the data plane needs.
# - A request that does not fit is refused before anything changes.
#
# Next: [fork and copy-on-write](../02_fork_and_copy_on_write/), where two sequences share
# blocks. For the reasons behind paging, read the
# [paging concept page](../../concepts/paging/).
