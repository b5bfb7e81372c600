# %% [markdown]
# # 7. Reproducing the memory-waste claim: where does the KV memory go?
#
# The seed README claims that paged allocation wastes **less than 4%** of the
# KV memory, against 60-80% for traditional methods. The numbers come from the
# vLLM paper (Kwon et al., SOSP 2023, Fig. 2). In this tutorial we reproduce
# them: we generate one workload, serve it with four memory managers, and split
# the memory of every step into token states, reservation, internal and
# external fragmentation (defined in `docs/concepts/memory-waste.md`).

# %%
from tinyserve_sim.serving.catalog import KV_CAPACITY_TOKENS, make_memory
from tinyserve_sim.serving.generator import WorkloadSpec, generate
from tinyserve_sim.serving.scheduler import Scheduler, SchedulerConfig

# %% [markdown]
# ## 1. A workload
#
# 300 ShareGPT-like requests (mean prompt 161 tokens, mean output 338, as in the
# paper's Fig. 11), all arriving at time 0: the server is saturated, a request
# is always waiting for memory. The same seed always gives the same requests.

# %%
workload = generate(WorkloadSpec("sharegpt", num_requests=300, seed=0))
print(f"{len(workload.requests)} requests, mean prompt {workload.mean_prompt():.0f}, "
      f"mean output {workload.mean_output():.0f} tokens")
print("first request:", workload.requests[0])

# %% [markdown]
# ## 2. Four memory managers, the same memory
#
# The KV cache holds 15,728 tokens: OPT-13B on an A100-40GB. `paged-16` is
# vLLM's paging with 16-token blocks; `max`, `pow2` and `oracle` reserve one
# contiguous range per request (2,048 tokens; prompt + next power of two of
# the output; the exact length) from a buddy allocator.

# %%
config = SchedulerConfig(max_running_seqs=10**9)  # the batch is limited by memory only
results = {}
for name in ("max", "pow2", "oracle", "paged-16"):
    sched = Scheduler(workload, make_memory(name, KV_CAPACITY_TOKENS), config)
    sched.run()
    results[name] = sched.result(window="saturated").summary

print(f"{'manager':>9} {'tokens':>7} {'reserv.':>8} {'internal':>9} {'external':>9} {'batch':>6}")
for name, s in results.items():
    print(f"{name:>9} {s.token_states:7.1%} {s.reservation:8.1%} {s.internal:9.1%} "
          f"{s.external:9.1%} {s.mean_running_seqs:6.1f}")

# %% [markdown]
# The paper's Fig. 2 reports 20.4% (Max), 26.8% (Pow2), 38.2% (Oracle) of the
# memory in token states, and 96.3% for vLLM. Max wastes most of its memory as
# internal fragmentation: 2,048 slots for requests of about 500 tokens. Oracle
# never over-reserves, yet wastes a third of the memory: it holds each
# request's whole final length from the first step (reservation), and the buddy
# allocator rounds every range up to a power of two (external fragmentation).

# %%
paged = results["paged-16"]
print(f"paged waste: {paged.waste:.1%}  (the claim: < 4%)")
print(f"reservation waste: {min(s.waste for n, s in results.items() if n != 'paged-16'):.1%} "
      f"to {max(s.waste for n, s in results.items() if n != 'paged-16'):.1%}  (the claim: 60-80%)")

# %% [markdown]
# ## 3. Why paging wastes so little
#
# A paged sequence holds at most one partly filled block: on average half a
# block, 8 slots, per sequence. With requests of hundreds of tokens that is a
# few percent. Try short requests: with `WorkloadSpec("alpaca", ...)` (about 80
# tokens per request) the same half block is a much larger share, and the "< 4%"
# claim no longer holds. `tinyserve-sim claims` checks both.

# %%
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from tinyserve_sim.serving.plots import plot_shares  # noqa: E402

folder = Path(tempfile.mkdtemp(prefix="tinyserve-tutorial-07-"))
path = plot_shares(list(results.values()), folder / "memory_breakdown.png")
print(f"wrote {path}")
try:
    get_ipython  # noqa: B018  (defined only inside IPython/Jupyter, as when the docs are built)
except NameError:
    pass  # plain `python`: the picture is in the file printed above
else:
    from IPython.display import Image, display

    display(Image(filename=str(path)))
