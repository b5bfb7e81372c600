"""The simulations behind the claims table and its plots.

Every number of ``tinyserve-sim claims`` comes from one of the runs below;
nothing is typed in. The setting follows the vLLM paper's main experiment:

* **Memory.** OPT-13B on one A100-40GB (paper §6.1): about 12 GiB of the GPU
  is left for the KV cache, and one token's keys and values take
  2 (K and V) x 40 layers x 5,120 x 2 bytes = 800 KiB (paper §3), so the cache
  holds ``12 GiB / 800 KiB = 15,728`` tokens.
* **Load.** Two kinds of runs. *Saturated*: every request arrives at time
  0, so a request is always waiting (the paper's Fig. 2 shows a busy
  server); shares are averaged over the steps in which memory held a request
  back. *At a rate*: Poisson arrivals, as in the paper's Fig. 12 and 13, with
  vLLM's cap of 256 sequences per batch; latency needs these.
* **Time.** The iteration-time model of :mod:`~tinyserve_sim.serving.timing`,
  by default the paper's setting (``opt-13b-a100``); memory figures do not
  depend on it, latency and throughput do.
* **Managers.** Paged (block size 16, vLLM's default) and the three
  contiguous baselines over a buddy allocator; first fit for comparison.

``size`` trades time for precision; ``docs/claims.md`` gives the measured run
times (``quick``: 22 s of CPU time, ``default``: 33 s, on a 2-core machine).
``"quick"`` uses fewer requests in the saturated runs and a coarser grid of
rates than ``"default"``, the same span of arrivals at each rate (the knees
depend on it); ``"full"`` uses more requests and a finer grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tinyserve_sim.claims.hit_rate import hit_rate_experiment
from tinyserve_sim.errors import WorkloadError
from tinyserve_sim.selection.hit_rates import HitRateRow
from tinyserve_sim.serving.catalog import make_memory
from tinyserve_sim.serving.generator import Request, Workload, WorkloadSpec, generate
from tinyserve_sim.serving.memory import KVMemory
from tinyserve_sim.serving.metrics import StepLog, Summary
from tinyserve_sim.serving.paged import PagedMemory
from tinyserve_sim.serving.rate_sweep import DEFAULT_DURATION, FIG13_RATES, RateSweep, paper_rates, sweep_rates
from tinyserve_sim.serving.scheduler import Scheduler, SchedulerConfig
from tinyserve_sim.serving.timing import TimeModel

#: Block sizes of the paper's §7.2 sweep (memory side).
BLOCK_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Block sizes whose latency is measured at the paper's loads (below 8 the real penalty is the GPU
#: kernel's, which the time model does not have).
LATENCY_BLOCK_SIZES: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
#: Widths of the paper's Fig. 15 (parallel samples, beam widths).
WIDTHS: tuple[int, ...] = (2, 4, 6)
#: The context length the seed claims.
LONG_CONTEXT = 131_072


@dataclass(frozen=True)
class Size:
    """How many requests each experiment simulates."""

    name: str
    sharegpt: int  # ShareGPT runs of every manager
    alpaca: int  # Alpaca runs (short requests: more of them keep the server busy as long)
    sweep: int  # each block size (ShareGPT; Alpaca runs 10x as many: they are short)
    sharing: int  # each sharing width
    per_octave: int = 4  # rates per doubling of the rate in the latency sweeps (every size: the same arrivals)
    load_scale: float = 1.0  # scales the seconds of arrivals of each run at a rate (tests only: it moves the knees)

    def requests(self, dataset: str) -> int:
        return self.sharegpt if dataset == "sharegpt" else self.alpaca

    def rates(self, dataset: str) -> tuple[float, ...]:
        """The latency sweep's rates: from below Orca (Max)'s knee to above paged memory's."""
        if dataset == "sharegpt":
            return paper_rates(2.0, -3 * self.per_octave, self.per_octave // 2, self.per_octave)
        return paper_rates(30.0, -4 * self.per_octave, self.per_octave, self.per_octave)


SIZES: dict[str, Size] = {
    "quick": Size("quick", 400, 1200, 100, 30, per_octave=2),
    "default": Size("default", 800, 2400, 200, 60, per_octave=4),
    "full": Size("full", 2400, 7200, 600, 180, per_octave=8),
}

#: The scheduler of the claims: the batch is limited by memory only (vLLM also
#: caps it, at 256 sequences by default; such a cap would hide the memory manager).
CLAIMS_SCHEDULER = SchedulerConfig(max_running_seqs=10**9)


def run_one(
    workload: Workload, memory: KVMemory, window: str = "saturated", keep_log: bool = False,
    config: SchedulerConfig = CLAIMS_SCHEDULER,
) -> tuple[Summary, StepLog | None]:
    """Simulate one workload on one memory; return its summary (and its log if asked)."""
    sched = Scheduler(workload, memory, config)
    sched.run()
    result = sched.result(window)
    return result.summary, (result.log if keep_log else None)


@dataclass
class Experiments:
    """Results of every run, keyed for the claims and the plots.

    Attributes:
        size: the :class:`Size` used.
        main: ``(dataset, manager) -> Summary``, saturated, block size 16.
        logs: ``manager -> StepLog`` of the ShareGPT runs (for the timeline plot).
        block_sizes: ``(dataset, block size) -> Summary`` (paged).
        sharing: ``(dataset, "parallel" | "beam", width) -> Summary`` (paged-16).
        long_context: figures of the one-request 131,072-token run.
        rate_sweeps: ``dataset -> RateSweep``: latency against rate of the four
            main managers (Fig. 12), with Fig. 13's rate among the rates.
        block_latency: ``dataset -> RateSweep`` of paged memory at each of
            :data:`LATENCY_BLOCK_SIZES` (managers ``paged-8`` ...), at the
            dataset's Fig. 13 rate only (§7.2's latency side).
        time_model: the name of the time model every run used.
        hit_rates: the fast tier's hit rate per eviction policy (query-aware selection,
            :mod:`~tinyserve_sim.claims.hit_rate`).
    """

    size: Size
    main: dict[tuple[str, str], Summary] = field(default_factory=dict)
    logs: dict[str, StepLog] = field(default_factory=dict)
    block_sizes: dict[tuple[str, int], Summary] = field(default_factory=dict)
    sharing: dict[tuple[str, str, int], Summary] = field(default_factory=dict)
    long_context: dict[str, float] = field(default_factory=dict)
    rate_sweeps: dict[str, RateSweep] = field(default_factory=dict)
    block_latency: dict[str, RateSweep] = field(default_factory=dict)
    time_model: str = ""
    hit_rates: list[HitRateRow] = field(default_factory=list)


MAIN_MANAGERS: tuple[str, ...] = ("paged-16", "max", "pow2", "oracle")
FIRST_FIT: tuple[str, ...] = ("max-first-fit", "pow2-first-fit", "oracle-first-fit")


def run_experiments(
    size: str = "default", progress: Callable[[str], None] | None = None, time_model: TimeModel | None = None,
) -> Experiments:
    """Run every experiment of the claims table. ``progress(label)`` is called before each run.

    ``time_model`` (default: the paper's setting) times every run; the memory
    figures do not depend on it, the latency and throughput figures do.
    """
    if size not in SIZES:
        raise WorkloadError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    sz = SIZES[size]
    config = SchedulerConfig(max_running_seqs=CLAIMS_SCHEDULER.max_running_seqs, time_model=time_model)
    out = Experiments(sz, time_model=config.timer().name)
    tick = progress or (lambda label: None)

    for dataset in ("sharegpt", "alpaca"):
        workload = generate(WorkloadSpec(dataset, num_requests=sz.requests(dataset), seed=0))
        managers = MAIN_MANAGERS + (FIRST_FIT if dataset == "sharegpt" else ())
        for name in managers:
            tick(f"{dataset} / {name}")
            keep = dataset == "sharegpt"
            summary, log = run_one(workload, make_memory(name), keep_log=keep, config=config)
            out.main[dataset, name] = summary
            if log is not None:
                out.logs[name] = log

    for dataset in ("sharegpt", "alpaca"):
        count = sz.sweep if dataset == "sharegpt" else 10 * sz.sweep
        workload = generate(WorkloadSpec(dataset, num_requests=count, seed=1))
        for block_size in BLOCK_SIZES:
            tick(f"{dataset} / block size {block_size}")
            out.block_sizes[dataset, block_size] = run_one(workload, make_memory(f"paged-{block_size}"), config=config)[0]

    for dataset in ("sharegpt", "alpaca"):
        for kind in ("parallel", "beam"):
            for width in WIDTHS:
                tick(f"{dataset} / {kind} {width}")
                # Sharing does not need a saturated server: average over every step.
                count = sz.sharing if dataset == "sharegpt" else 4 * sz.sharing
                spec = WorkloadSpec(
                    dataset, num_requests=count, seed=2,
                    n=width if kind == "parallel" else 1, beam_width=width if kind == "beam" else 1,
                )
                out.sharing[dataset, kind, width] = run_one(generate(spec), make_memory("paged-16"), "all",
                                                            config=config)[0]

    # Latency against load (Fig. 12, 13), and latency against block size at the paper's loads (§7.2).
    for dataset in ("sharegpt", "alpaca"):
        out.rate_sweeps[dataset] = sweep_rates(
            dataset, MAIN_MANAGERS, sz.rates(dataset), sz.load_scale * DEFAULT_DURATION[dataset], time_model,
            progress=lambda label: tick(f"latency: {label}"),
        )
        rate = FIG13_RATES[dataset]
        others = tuple(f"paged-{b}" for b in LATENCY_BLOCK_SIZES if b != 16)
        blocks = sweep_rates(dataset, others, (rate,), sz.load_scale * DEFAULT_DURATION[dataset], time_model,
                             progress=lambda label: tick(f"block size: {label}"))
        # Block 16 at this rate is the same run as the latency sweep's: reuse it.
        blocks.points["paged-16", rate] = out.rate_sweeps[dataset].points["paged-16", rate]
        blocks.managers = tuple(f"paged-{b}" for b in LATENCY_BLOCK_SIZES)
        out.block_latency[dataset] = blocks

    tick("long context")
    out.long_context = long_context_run()

    tick("cache hit rate (query-aware selection)")
    out.hit_rates = hit_rate_experiment(sz.name)
    return out


def long_context_run(length: int = LONG_CONTEXT, block_size: int = 16, output: int = 256) -> dict[str, float]:
    """One request of ``length`` tokens (prompt + ``output``) in a pool of exactly ``length`` slots."""
    request = Request(0, 0.0, length - output, (output,))
    workload = Workload(WorkloadSpec(num_requests=1, max_len=length), [request])
    memory = PagedMemory(length, block_size, watermark=0.0)
    summary, log = run_one(workload, memory, window="all", keep_log=True)
    assert log is not None
    last = len(log) - 1
    return {
        "length": float(length),
        "block_size": float(block_size),
        "blocks": float(memory.manager.num_blocks),
        "finished": float(summary.finished),
        "preemptions": float(summary.preemptions),
        "final_token_states": float(log.columns["token_states"][last]),
        "final_waste_slots": float(log.columns["reservation"][last] + log.columns["internal"][last]),
        # KV bytes per token: 2 (K, V) x layers x KV heads x head dim x 2 bytes (fp16).
        "gib_llama3_8b": length * 2 * 32 * 8 * 128 * 2 / 2**30,
        "gib_opt_13b": length * 2 * 40 * 5120 * 2 / 2**30,
    }
