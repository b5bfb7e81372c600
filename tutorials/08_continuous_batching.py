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
# # 8. Continuous batching: iteration-level scheduling
#
# So far we drove the block manager by hand. A server drives it with a **scheduler**. In
# this tutorial you run the simulator's scheduler on six small requests and watch it, one
# **step** (one scheduler iteration) at a time: requests join the running batch the moment
# there is room, leave it the moment they finish, and wait when the KV cache has no free
# blocks for their prompt.
#
# This is **continuous batching** (iteration-level scheduling), introduced by
# [Orca](../../bibliography/#orca) and used by [vLLM](../../bibliography/#vllm): the batch is
# re-formed at every step instead of running until its slowest request is done.
#
# ## Set up
#
# A workload is a list of requests: an id, an arrival time, a prompt length and an output
# length. We write six by hand. The memory is a paged KV cache (`PagedMemory`, a
# `BlockManager` underneath) of 32 blocks of 4 tokens, and the scheduler runs at most 3
# sequences at once.

# %%
# %matplotlib inline
# %config InlineBackend.figure_formats = ["svg"]
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from tinyserve_sim.render import Picture, show_state
from tinyserve_sim.serving import PagedMemory, Request, Scheduler, SchedulerConfig, Workload, WorkloadSpec

requests = [
    #        id  arrival (s)  prompt  output tokens
    Request(0, 0.00, 6, (3,)),
    Request(1, 0.00, 9, (10,)),
    Request(2, 0.00, 5, (4,)),
    Request(3, 0.00, 7, (6,)),
    Request(4, 0.10, 4, (2,)),
    Request(5, 0.20, 8, (5,)),
]
workload = Workload(WorkloadSpec(num_requests=len(requests)), requests)
for r in requests:
    print(f"request {r.req_id}: arrives at {r.arrival:.2f} s, {r.prompt_len} prompt tokens, "
          f"{r.output_lens[0]} to generate")

# %% [markdown]
# ## One step at a time
#
# `Scheduler.step()` runs one iteration: new arrivals join the waiting queue; every running
# request **decodes** one token; waiting requests are **admitted**, first come first served,
# while the batch has room and the memory accepts their prompt (the prompt is stored, the
# *prefill*); then requests that reached their length finish and free their blocks.
#
# An *observer* is called inside each step, after admission and before the finished
# requests leave, so it sees the batch that ran. We keep, for each step, what each request
# was doing and how many blocks were in use.

# %%
def run(memory, max_running_seqs):
    """Run the workload step by step; return the scheduler and one row per step."""
    rows = []

    def observe(sched):
        doing = {g.req.req_id: "waiting" for g in sched.waiting}
        for g in sched.running:
            doing[g.req.req_id] = "prefill" if g.admitted_at == sched.step_index else "decode"
        rows.append({"step": sched.step_index, "time": sched.now, "doing": doing,
                     "used": memory.manager.num_used, "free": memory.manager.num_free,
                     "snapshot": memory.manager.snapshot()})

    sched = Scheduler(workload, memory, SchedulerConfig(max_running_seqs=max_running_seqs, step_time=0.05),
                      observer=observe)
    while not sched.done:
        sched.step()
    return sched, rows


memory = PagedMemory(capacity=128, block_size=4, watermark=0.0)
sched, rows = run(memory, max_running_seqs=3)
for row in rows:
    batch = [r for r, what in row["doing"].items() if what != "waiting"]
    waiting = [r for r, what in row["doing"].items() if what == "waiting"]
    print(f"step {row['step']:2}  t={row['time']:.2f}s  running {batch}  waiting {waiting}  "
          f"blocks used {row['used']}")

# %% [markdown]
# Read it line by line. At step 0 requests 0, 1 and 2 are admitted (the batch holds 3);
# request 3 waits although it arrived at the same time. Request 0 finishes after its 3
# tokens, and at the very next step request 3 takes its place: nobody waited for the whole
# batch to finish.
#
# A timeline shows the same thing: one row per request, one column per step.

# %%
COLORS = {"waiting": "#dddddd", "prefill": "#9467bd", "decode": "#1f77b4"}


def timeline(rows, title):
    """One row per request: grey while it waits, purple for its prefill step, blue while it decodes."""
    fig = Figure(figsize=(8, 0.45 * len(requests) + 1.3))
    ax = fig.subplots()
    for row in rows:
        for req_id, what in row["doing"].items():
            ax.barh(req_id, 1, left=row["step"], color=COLORS[what], edgecolor="white")
    ax.set_yticks(range(len(requests)), [f"request {r.req_id}" for r in requests])
    ax.invert_yaxis()
    ax.set_xlabel("step (one scheduler iteration)")
    ax.set_xlim(0, len(rows))
    ax.set_title(title, fontsize=10)
    ax.legend(handles=[Patch(color=c, label=k) for k, c in COLORS.items()], loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


spans = {req_id: [row["step"] for row in rows if row["doing"].get(req_id) in ("prefill", "decode")]
         for req_id in range(len(requests))}
Picture(timeline(rows, "Continuous batching, at most 3 sequences per batch"),
        "Timeline of six requests over " + str(len(rows)) + " steps, at most 3 running at once. " +
        " ".join(f"Request {r} runs from step {s[0]} to step {s[-1]}." for r, s in spans.items()))

# %% [markdown]
# ## What static batching would cost
#
# A server that batches *statically* takes 3 requests, runs them until the longest is done,
# then takes the next 3. Its cost is easy to count: each batch lasts one prefill step plus
# the longest output in it.

# %%
static_steps = 0
for start in range(0, len(requests), 3):
    batch = requests[start:start + 3]
    static_steps += 1 + max(r.output_lens[0] for r in batch)
print(f"static batches of 3: {static_steps} steps (if every request were already there)")
print(f"continuous batching: {len(rows)} steps")

# %% [markdown]
# Short requests no longer wait for long ones, and a finished request's place in the batch
# is filled at the next step.
#
# ## Admission by free blocks
#
# The batch size is not the only limit. A request is admitted only if the KV cache has the
# free blocks its prompt needs. Let us give the same workload a much smaller cache, 9
# blocks of 4 tokens, and no limit on the batch size. Like vLLM, the paged memory keeps a
# small **watermark** of blocks free when it admits (here 20%, so 1 block): the running
# requests need room to grow, one token per step.

# %%
small = PagedMemory(capacity=36, block_size=4, watermark=0.2)
print(f"{small.manager.num_blocks} blocks, {small.watermark_blocks} kept free when admitting")
sched_small, rows_small = run(small, max_running_seqs=64)
for row in rows_small:
    batch = [r for r, what in row["doing"].items() if what != "waiting"]
    waiting = [r for r, what in row["doing"].items() if what == "waiting"]
    print(f"step {row['step']:2}  running {batch}  waiting {waiting}  blocks used {row['used']}, free {row['free']}")
print("preemptions:", sched_small.preemptions)

# %% [markdown]
# Now the batch is as large as memory allows, and no more. Requests wait although there is
# no limit on the batch: their prompt does not fit in the free blocks (less the watermark).
# The first request in the queue blocks those behind it (first come, first served), even
# when a shorter one would fit. No request had to be preempted: the watermark left room to
# grow.
#
# Here is the memory at the first step where a request had to wait for blocks. Each running
# request is a sequence of the block manager, numbered by the scheduler in the order it
# started them.

# %%
first_blocked = next(row for row in rows_small if "waiting" in row["doing"].values())
head = next(r for r, what in first_blocked["doing"].items() if what == "waiting")
need = -(-requests[head].prompt_len // 4)
print(f"step {first_blocked['step']}: request {head} needs {need} blocks for its "
      f"{requests[head].prompt_len}-token prompt; {first_blocked['free']} are free, "
      f"{small.watermark_blocks} of them kept back")
show_state(first_blocked["snapshot"], f"step {first_blocked['step']}: request {head} waits for free blocks")

# %% [markdown]
# The timeline of this run shows the waiting more than the batch size did:

# %%
Picture(timeline(rows_small, "The same requests in 9 blocks: admission waits for free blocks"),
        f"Timeline of six requests in a 9-block cache over {len(rows_small)} steps; requests wait in grey "
        "until enough blocks are free for their prompt.")

# %% [markdown]
# ## Recap
#
# - A **step** is one scheduler iteration: arrivals, one decode token for every running
#   request, admissions, then the finished requests leave.
# - **Continuous batching** re-forms the batch at every step, so a finished request's place
#   is taken at once and short requests never wait for long ones.
# - A request is **admitted** only when the batch has room *and* the KV cache has the free
#   blocks for its prompt; the queue is first come, first served.
# - `Scheduler(workload, memory, config, observer=...)` and `step()` let you watch it all.
#
# What happens when the running requests themselves run out of blocks while decoding?
# Next: [preemption by recomputation](../09_preemption_by_recomputation/).
