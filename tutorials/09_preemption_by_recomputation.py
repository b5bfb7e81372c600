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
# # 9. Preemption by recomputation
#
# In [tutorial 8](../08_continuous_batching/) the scheduler admitted a request only when its
# prompt fitted. But a request keeps growing after admission, one token per step, and no
# one knows in advance how long its output will be. When the running requests need more
# blocks than are free, the scheduler must take memory back from one of them: it
# **preempts** a request.
#
# vLLM offers two ways to bring a preempted request back: *swapping* its blocks out to CPU
# memory and back in, or *recomputation*: drop its blocks, and when it is readmitted compute
# its prompt **and the tokens it had generated** again, in one prefill. Recomputation is
# vLLM's default for single sequences, and the one this simulator models (the vLLM paper,
# section 4.5; see the [bibliography](../../bibliography/#vllm)).
#
# ## Set up
#
# Three requests arrive together, each with an 8-token prompt. The KV cache has 12 blocks
# of 4 tokens: enough for the three prompts (2 blocks each), not for the three finished
# requests (5 blocks each).

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["svg"]
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from tinyserve_sim.errors import WorkloadError
from tinyserve_sim.render import Picture, SequenceColors, show_state
from tinyserve_sim.serving import PagedMemory, Request, Scheduler, SchedulerConfig, Workload, WorkloadSpec

requests = [Request(0, 0.0, 8, (10,)), Request(1, 0.0, 8, (12,)), Request(2, 0.0, 8, (12,))]
workload = Workload(WorkloadSpec(num_requests=len(requests)), requests)
memory = PagedMemory(capacity=48, block_size=4, watermark=0.0)
need = sum(-(-(r.prompt_len + r.output_lens[0]) // 4) for r in requests)
print(f"{memory.manager.num_blocks} blocks; the finished requests would need {need}")

# %% [markdown]
# ## Watching the steps
#
# As in tutorial 8, an observer records every step: what each request was doing, the blocks
# in use, and a snapshot of the block manager. The scheduler also counts its preemptions
# and the tokens it had to compute again.

# %%
rows = []


def observe(sched):
    doing = {g.req.req_id: ("preempted" if g.preemptions else "waiting") for g in sched.waiting}
    for g in sched.running:
        doing[g.req.req_id] = "prefill" if g.admitted_at == sched.step_index else "decode"
    tokens = {g.req.req_id: g.seqs[0].tokens for g in [*sched.running, *sched.waiting]}
    rows.append({"step": sched.step_index, "doing": doing, "tokens": tokens, "free": memory.manager.num_free,
                 "preemptions": sched.preemptions, "recomputed": sched.recomputed_tokens,
                 "snapshot": memory.manager.snapshot()})


sched = Scheduler(workload, memory, SchedulerConfig(max_running_seqs=8, step_time=0.05), observer=observe)
while not sched.done:
    sched.step()

print("step  free  request: what it did (tokens held)")
for row in rows:
    state = "  ".join(f"{r}: {row['doing'][r]} ({row['tokens'][r]})" for r in sorted(row["doing"]))
    print(f"{row['step']:4}  {row['free']:4}  {state}")

# %% [markdown]
# ## The preemption
#
# Every request's 4th block fills at the same step, and each needs a 5th block for its next
# token. Only 12 blocks exist: the scheduler walks the running requests oldest first, and
# when one cannot get its block it preempts the **newest** running request, request 2.

# %%
at = next(i for i, row in enumerate(rows) if row["preemptions"])
before, after = rows[at - 1], rows[at]
print(f"step {before['step']}: {before['free']} free blocks, requests 0, 1, 2 hold "
      f"{[before['tokens'][r] for r in range(3)]} tokens")
print(f"step {after['step']}: request 2 was preempted and its blocks went back to the pool;")
print(f"requests 0 and 1 took the blocks they needed, and {after['free']} are still free")

# %% [markdown]
# The memory just before and just after. The two pictures share their colours, so each
# sequence keeps its colour from one to the other.

# %%
colors = SequenceColors()
show_state(before["snapshot"], f"end of step {before['step']}: 12 blocks in use", colors=colors)

# %%
show_state(after["snapshot"], f"end of step {after['step']}: request 2 preempted, its blocks freed", colors=colors)

# %% [markdown]
# Request 2 goes back to the **front** of the waiting queue: it keeps its place in line. Its
# generated tokens are not lost as text (the server has already produced them), but their
# keys and values are gone from the cache.
#
# ## Coming back: recomputation
#
# When request 0 finishes and frees its blocks, request 2 is readmitted. Its prefill now
# covers its prompt *and* the tokens it had generated, all computed again in one step:

# %%
back = next(row for row in rows[at:] if row["doing"].get(2) == "prefill")
print(f"step {back['step']}: request 2 readmitted with {back['tokens'][2]} tokens "
      f"(8 prompt + {back['tokens'][2] - 8} generated before the preemption)")
print(f"tokens computed again: {sched.recomputed_tokens}")
print(f"all requests finished after {len(rows)} steps; preemptions: {sched.preemptions}")

# %% [markdown]
# The timeline: grey while waiting, orange while preempted, purple for a prefill step, blue
# while decoding.

# %%
COLORS = {"waiting": "#dddddd", "preempted": "#ff7f0e", "prefill": "#9467bd", "decode": "#1f77b4"}
fig = Figure(figsize=(8, 2.6))
ax = fig.subplots()
for row in rows:
    for req_id, what in row["doing"].items():
        ax.barh(req_id, 1, left=row["step"], color=COLORS[what], edgecolor="white")
ax.set_yticks(range(len(requests)), [f"request {r.req_id}" for r in requests])
ax.invert_yaxis()
ax.set_xlabel("step (one scheduler iteration)")
ax.set_xlim(0, len(rows))
ax.legend(handles=[Patch(color=c, label=k) for k, c in COLORS.items()], loc="lower left", fontsize=8, ncol=4)
ax.set_title("Three requests in 12 blocks: request 2 is preempted, then recomputed", fontsize=10)
fig.tight_layout()
preempted_steps = [row["step"] for row in rows if row["doing"].get(2) == "preempted"]
Picture(fig, f"Timeline of three requests over {len(rows)} steps. Request 2 decodes until step {at - 1}, "
             f"is preempted during steps {preempted_steps[0]} to {preempted_steps[-1]}, "
             f"is recomputed in one prefill at step {back['step']}, and then decodes to the end.")

# %% [markdown]
# ## The price, and the limit
#
# Recomputation costs compute, not memory: the 16 tokens of request 2 were computed twice.
# Swapping would cost transfers between GPU and CPU memory instead. The vLLM paper (section
# 7.3) measures both: swapping suffers with small blocks, which make many small transfers,
# while the cost of recomputation does not depend on the block size.
#
# Preemption cannot help a request that does not fit even alone. The scheduler does not
# loop forever on it: it stops with a clear error.

# %%
huge = Workload(WorkloadSpec(num_requests=1), [Request(0, 0.0, 8, (60,))])
try:
    Scheduler(huge, PagedMemory(capacity=48, block_size=4, watermark=0.0)).run()
except WorkloadError as error:
    print("refused:", error)

# %% [markdown]
# ## Recap
#
# - A running request grows by one token per step; when the free blocks run out, the
#   scheduler **preempts the newest** running request and frees all its blocks.
# - The preempted request returns to the **front** of the queue. When readmitted, its prompt
#   and its generated tokens are **recomputed** in one prefill (`recomputed_tokens`).
# - No admissions happen in a step that preempted, and a request too large for the whole
#   cache is an error, not an endless loop.
#
# Next: the [memory-waste concept page](../../concepts/memory-waste/) measures, on realistic
# workloads, how much memory paging saves over reserving each request's maximum length; or
# go back to [the tutorials](../).
