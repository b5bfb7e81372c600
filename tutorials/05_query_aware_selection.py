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
# # 5. Query-aware selection, from page metadata to sparse attention
#
# At every decode step, paged attention reads the keys and values of *every* token of the
# sequence. At long context that read is the whole cost of the step, and most of it is
# wasted: the softmax puts almost all of its weight on a few tokens. This tutorial builds
# **query-aware selection** (Quest, Tang et al., ICML 2024) piece by piece on the simulator:
#
# 1. a workload whose attention has the structure of real attention;
# 2. **page metadata**: the channel-wise min and max of the keys of every block;
# 3. **page scores**: an upper bound on `q . k` per page, from the metadata alone;
# 4. **selection**: the sink, the newest page and the best-scoring others, within a budget;
# 5. **sparse attention** over the selected pages: what it keeps, what it costs, and the
#    bytes it saves;
# 6. a **two-tier cache** in which the selected pages must sit in a small fast tier;
# 7. the **budget sweep**, and (on a GPU) the kernels compared with their twins bit for bit.
#
# ## Set up

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["svg"]
import numpy as np
from matplotlib.figure import Figure

from tinyserve_sim import BlockManager
from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data import KVCache
from tinyserve_sim.data.backends import get_backend
from tinyserve_sim.data.page_metadata import page_metadata_from_cache
from tinyserve_sim.data.page_scores import page_scores_reference
from tinyserve_sim.errors import BackendUnavailableError
from tinyserve_sim.render import Picture
from tinyserve_sim.render.selection import draw_budget_sweep, draw_selection_step
from tinyserve_sim.selection import (
    AttentionWorkloadSpec,
    SelectionConfig,
    SelectionSession,
    belady_hit_rate,
    budget_sweep,
    generate_attention_workload,
    select_step,
    step_quality,
)
from tinyserve_sim.selection.sweep import format_sweep

BLOCK_SIZE = 16

# %% [markdown]
# ## A workload with the structure of real attention
#
# Random keys and queries would make every token about equally important, and selection
# would have nothing to find. `generate_attention_workload` builds keys and queries whose
# dot products show the four patterns that studies of trained models report: an
# **attention sink** on the first tokens, a **recency** bonus from rotating channel pairs
# (as rotary position embeddings do), a few **needles** far back that matter only to
# queries on their *topic*, and **noise**. Each query looks for one topic, and the topic
# changes now and then. Everything comes from a seed.
#
# One sequence with a 1,023-token prompt, 2 KV heads shared by 4 query heads
# (grouped-query attention), head dimension 64:

# %%
spec = AttentionWorkloadSpec(num_seqs=1, context_len=1023, decode_steps=24, num_kv_heads=2, num_q_heads=4,
                             head_dim=64, topic_stay=0.8, seed=5)
workload = generate_attention_workload(spec)
print("keys:", workload.keys.shape, workload.keys.dtype, "  queries:", workload.queries.shape)
print("topic of each decode step's query:", workload.topics[:, 0].tolist())
important = workload.important_tokens(seq=0, kv_head=0, step=0)
print("step 0, KV head 0: sinks", important["sink"].tolist(), " needles", important["needle"].tolist())

# %% [markdown]
# Where does the first decode step's attention really go? Dense attention in float64 for
# query head 0, summed per 16-token page:

# %%
def attention_per_page(step, q_head):
    """Dense softmax mass per page for one query head (float64, straight from the workload)."""
    n = workload.length_at(step)
    k = workload.keys[0, :n, q_head // spec.group_size].astype(np.float64)
    x = k @ workload.queries[step, 0, q_head].astype(np.float64) / np.sqrt(spec.head_dim)
    w = np.exp(x - x.max())
    w /= w.sum()
    return np.add.reduceat(w, np.arange(0, n, BLOCK_SIZE))


mass = attention_per_page(step=0, q_head=0)
fig = Figure(figsize=(9, 2.6))
ax = fig.subplots()
ax.bar(np.arange(mass.size), mass, color="#999999")
for t in important["needle"]:
    ax.bar(t // BLOCK_SIZE, mass[t // BLOCK_SIZE], color="#1f77b4")
ax.bar(0, mass[0], color="#e377c2")
ax.bar(mass.size - 1, mass[-1], color="#2ca02c")
ax.set_xlabel("page (16 tokens)")
ax.set_ylabel("softmax mass")
ax.set_title("pink: sink page; blue: pages with this query's needles; green: newest page", fontsize=9)
fig.tight_layout()
print(f"the top 8 of {mass.size} pages hold {np.sort(mass)[::-1][:8].sum():.1%} of the mass")
Picture(fig, f"Bar chart of the softmax mass of each of the {mass.size} pages for query head 0: the sink "
        "page, the newest page and the pages holding this query's needle tokens stand out; the "
        f"top 8 pages hold {np.sort(mass)[::-1][:8].sum():.0%} of the mass.")

# %% [markdown]
# ## The two planes, now with page metadata
#
# As in tutorial 4, the control plane places tokens and the data plane writes them. A
# `KVCache(..., page_metadata=True)` also keeps, for every block and KV head, the
# channel-wise **minimum and maximum** of its keys, and `apply` keeps them exact: a fresh
# block is reset to `(+inf, -inf)`, a copy-on-write copy copies them, and every write folds
# the new keys in. Here: the prompt, then decode step 0's new token.

# %%
manager = BlockManager(num_blocks=70, block_size=BLOCK_SIZE)
cache = KVCache(70, BLOCK_SIZE, spec.num_kv_heads, spec.head_dim, dtype=np.float16, page_metadata=True)
prompt_keys, prompt_values = workload.prompt(0)
cache.apply(manager.add("s0", spec.context_len), prompt_keys, prompt_values)
new_keys, new_values, query = workload.decode_token(0)
cache.apply(manager.append("s0", 1), new_keys, new_values)
print(f"{manager.num_tokens('s0')} tokens in {len(manager.block_table('s0'))} blocks")

block = manager.block_table("s0")[3]
print(f"block {block}, KV head 0, first 5 channels:")
print("  key_min", cache.key_min[block, 0, :5])
print("  key_max", cache.key_max[block, 0, :5])
fill = np.zeros(70, dtype=np.int64)
fill[list(manager.block_table("s0"))] = BLOCK_SIZE
recomputed = page_metadata_from_cache(cache.key_cache, fill)
print("kept up to date = recomputed from the keys:", np.array_equal(recomputed[0], cache.key_min)
      and np.array_equal(recomputed[1], cache.key_max))

# %% [markdown]
# The metadata is two rows per 16 keys: an eighth of the keys, a sixteenth of keys and
# values together. Scoring reads only it.
#
# ## Page scores: an upper bound per page
#
# For a query `q`, no key `k` whose channels lie between `min` and `max` can give more than
#
# ```text
# score(page) = sum_d max(q_d * min_d, q_d * max_d)   >=   q . k
# ```
#
# because each product `q_d * k_d` is largest at one end of its interval. With grouped-query
# attention a KV page serves several query heads, and the page's score is the **maximum
# of the group's bounds**: it stays an upper bound for every head of the group, so a page
# that any one of them needs ranks high. `cache.page_scores` runs the scoring kernel (its
# NumPy twin here):

# %%
batch = DecodeBatch.from_manager(manager)
scores = cache.page_scores(query, batch)  # float32 [S, Hkv, pages]
bound64 = page_scores_reference(query, cache.key_min, cache.key_max, batch)  # the same bound in float64

n = manager.num_tokens("s0")
keys64 = workload.keys[0, :n].astype(np.float64)
true_max = np.full((spec.num_kv_heads, scores.shape[-1]), -np.inf)
for g in range(spec.num_q_heads):  # the true max of q . k per page, over the group's query heads
    h = g // spec.group_size
    dots = keys64[:, h] @ query[0, g].astype(np.float64)
    true_max[h] = np.maximum(true_max[h], np.maximum.reduceat(dots, np.arange(0, n, BLOCK_SIZE)))
print("every page's bound >= its true max:", bool((bound64[0] >= true_max).all()))
print("float32 scores vs float64 bound, largest relative gap:",
      f"{np.abs(scores[0] - bound64[0]).max() / np.abs(bound64[0]).max():.1e}")

fig = Figure(figsize=(9, 2.6))
ax = fig.subplots()
pages = np.arange(scores.shape[-1])
ax.bar(pages, scores[0, 0], color="#cccccc", label="score (upper bound)")
ax.plot(pages, true_max[0], "o", color="#d62728", markersize=3, label="true max of q . k")
ax.set_xlabel("page")
ax.set_title("KV head 0: the bound is loose, but its ranking finds the pages that matter", fontsize=9)
ax.legend(fontsize=8)
fig.tight_layout()
Picture(fig, "Bar chart of each page's score (the Quest upper bound) for KV head 0, with the true maximum "
        "of q . k over the page's tokens as dots: every bar is at or above its dot, and the highest "
        "bars fall on the pages whose tokens score highest.")

# %% [markdown]
# ## Selection within a budget
#
# With a budget of 128 tokens (8 pages of 16, an eighth of the context), each (sequence, KV
# head) keeps page 0 (the **sink**: the first tokens draw attention whatever the query), the
# **newest** page (it holds the token being decoded), and the 6 best-scoring others, ties
# to the lower index. `select_step` runs scoring and selection and returns a record that
# says which pages were kept and why:

# %%
record = select_step(cache, query, batch, budget_tokens=128)
print(record.explain())
Picture(draw_selection_step(record), "Grid of pages per (sequence, KV head), coloured by score, with the kept "
        "pages marked by reason: the sink, the newest page and the top-K by score. " + record.explain().splitlines()[0])

# %% [markdown]
# The selection is handed to paged attention as **compacted per-head block tables**: each
# row lists its selected blocks in logical order, the newest (partly filled) page last, and
# the row's length counts only their tokens. Paged attention reads them like any other
# table, so "every page selected" is dense attention by construction:

# %%
print("block tables [S, Hkv, pages]:\n", record.sparse.block_tables)
print("lengths [S, Hkv]:", record.sparse.seq_lens)
everything = select_step(cache, query, batch, budget_tokens=4096)
print("a budget above the context keeps the dense table:",
      np.array_equal(everything.sparse.block_tables[0, 0], batch.block_tables[0]))

# %% [markdown]
# ## What sparse attention keeps, and what it saves
#
# Sparse attention over the selected tokens is dense attention with the others' weights
# set to zero and the rest renormalised. Measured against dense attention in float64:
# **recall**, the share of the dense softmax mass on the selected tokens, and the
# output's **relative error**:

# %%
key_cache, value_cache = cache.to_numpy()
quality = step_quality(query, key_cache, value_cache, batch, record.sparse)
for g in range(spec.num_q_heads):
    print(f"query head {g}: recall {quality.recall[0, g]:.3f}, output error {quality.rel_error[0, g]:.3f}")

# %% [markdown]
# And the bytes: dense attention reads every key and value; sparse attention reads the
# selected ones **plus all the metadata**. With 16-token pages the metadata is 1/16 of the
# keys and values. The ratio of the two is the *byte ceiling* on the speed-up: no
# implementation can beat it. When every selected page is full, as at this step (1,024
# tokens in 64 full pages), a 1/8 budget gives `1 / (1/8 + 1/16) = 5.33x`, not 8x. When the
# newest page is only partly filled, the selection reads fewer tokens than the budget, so
# the ceiling is a little higher: see step 1 and the budget sweep below.

# %%
print(f"dense: {record.dense_bytes:,} bytes")
print(f"sparse: {record.selected_bytes:,} (selected K/V) + {record.metadata_bytes:,} (metadata) "
      f"= {record.sparse_bytes:,} bytes")
print(f"byte ceiling: {record.byte_ceiling:.2f}x")

# %% [markdown]
# ## A decode run with a two-tier cache
#
# When the KV cache does not fit in GPU memory, it can live in host memory with a small
# **fast tier** on the GPU. At each step the selected pages must be in the fast tier; a
# missing page is copied in (a **miss**), evicting another by a policy: LRU, LFU, or
# **score-aware** (keep the pages with the highest recent scores). A `SelectionSession`
# runs the whole decode: each step appends a token, selects, serves the selection from
# one fast tier per policy (the same requests for each), and measures the quality. The
# fast tier here holds 1.25x the pages one step selects.

# %%
session = SelectionSession(workload, SelectionConfig(block_size=BLOCK_SIZE, budget=1 / 8, capacity=1.25))
run = session.run()
requests = [report.requested for report in run.steps]
print(f"{len(run.steps)} steps, fast tier of {run.capacity} pages, recall {run.mean_recall:.3f} on average")
for name, rate in run.hit_rates.items():
    print(f"  {name:12} hit rate {rate:.1%}")
print(f"  {'optimum':12} hit rate {belady_hit_rate(requests, run.capacity):.1%}  (Belady: evicts what is needed last)")

# %% [markdown]
# Most steps select the same pages as the step before (the sink, the newest pages, the
# current topic's needles), so every policy hits most of the time, and the offline optimum,
# which knows the future, is only a little higher: this is why the claims page finds no
# room for a "15-25% better hit rate". The misses come where the selection changes, for
# example when the query changes topic (red dots: pages copied into the fast tier):

# %%
topics = workload.topics[:, 0]
switch = next((i for i in range(1, len(topics)) if topics[i] != topics[i - 1]), 1)
report = run.steps[switch]
print(f"step {switch}: the topic changes {topics[switch - 1]} -> {topics[switch]}")
print(report.explain())
Picture(draw_selection_step(report, policy="score-aware"), f"The selection at step {switch}, where the query "
        "changes topic: the kept pages by reason, and red dots on the pages that missed the fast tier and "
        "were copied in under the score-aware policy.")

# %% [markdown]
# ## The budget sweep
#
# How much can the budget shrink? The same workload at budgets from 1/2 to 1/32 of the
# context: recall falls and the error grows as the budget shrinks, while the byte ceiling
# rises, but always below `1 / budget`.

# %%
rows = budget_sweep(AttentionWorkloadSpec(num_seqs=2, context_len=2048, decode_steps=4, seed=0))
print(format_sweep(rows))
Picture(draw_budget_sweep(rows), "Two line charts against the budget, from 1/2 to 1/32 of the context: the "
        "recall of the dense softmax mass falls and the output error grows as the budget shrinks, while the "
        "byte ceiling of the speed-up rises, always below 1 / budget.")

# %% [markdown]
# ## On a GPU: the kernels and their twins
#
# Metadata, scores and selection each have a CUDA kernel and a NumPy twin that do the same
# float32 operations in the same order: the scores are **bit-identical**, so a selection can
# never differ between the backends. Where CuPy finds a CUDA device, this cell replays the
# first steps on the GPU and compares. Then it runs one whole step the way a server would,
# on the device from end to end: `prepare_sparse_decode_step` launches the scoring, the
# selection (which writes its tables where the attention kernel reads them) and the sparse
# attention, with no trip through Python in between; its output must equal the twins' bit
# for bit. Without a GPU the cell says so (the site, built without one, shows below it
# what the cell printed on a GPU machine, recorded by `scripts/record_gpu_cells.py`).

# %%
gpu_lines = []  # what this cell prints on a GPU (scripts/record_gpu_cells.py keeps it for the site)
try:
    gpu = get_backend("cupy")
except BackendUnavailableError as reason:
    gpu = None
    print(f"No CUDA GPU here: {reason}.")
    print("The GPU cell is skipped; run this tutorial on a machine with a CUDA device to see it.")

if gpu is not None:
    from tinyserve_sim.gpu.sparse_step import prepare_sparse_decode_step

    sessions = [SelectionSession(workload, SelectionConfig(budget=1 / 8, backend=b)) for b in ("numpy", "cupy")]
    for _ in range(4):
        cpu, on_gpu = (s.step().selection for s in sessions)
        same = np.array_equal(cpu.scores.view(np.uint32), on_gpu.scores.view(np.uint32))
        kept = np.array_equal(cpu.sparse.block_tables, on_gpu.sparse.block_tables)
        gpu_lines.append(f"step {cpu.step}: scores identical bit for bit: {same}; same pages kept: {kept}")

    # The last step again, as one device-side step: scores -> selection -> sparse attention.
    _, _, query = workload.decode_token(cpu.step)
    host, device = (s.cache for s in sessions)
    scale = 1.0 / np.sqrt(spec.head_dim)
    twins = host.attention(query, cpu.sparse, scale)  # the NumPy twins' sparse attention
    step = prepare_sparse_decode_step(gpu.asarray(query), device.key_cache, device.value_cache,
                                      device.key_min, device.key_max, cpu.batch, sessions[1].budget_tokens, scale)
    same = np.array_equal(gpu.to_numpy(step()).view(np.uint16), twins.view(np.uint16))
    gpu_lines.append(f"the whole step on the device: output identical to the twins' bit for bit: {same}")
    print("\n".join(gpu_lines))

# %% [markdown]
# ## Recap
#
# - A page's **metadata** (key min and max per channel) bounds every `q . k` in it; with
#   GQA the group's maximum bound keeps it a bound for every head.
# - **Selection** keeps the sink, the newest page and the top-scoring pages within a budget,
#   and hands paged attention **compacted per-head tables**.
# - **Recall** and output error measure what was left out; the **byte ceiling**
#   `dense / (selected + metadata)` bounds any speed-up.
# - In a **two-tier cache**, the selection's persistence from step to step keeps hit rates
#   high whatever the eviction policy.
#
# The [concept page](../../concepts/query-aware-selection/) explains the design choices;
# `tinyserve-sim select demo` walks a small scenario in the terminal, and the
# [claims page](../../claims/) checks the seed's hit-rate claim. Next:
# [hunting a kernel bug with Hypothesis](../06_hunting_a_kernel_bug/).
