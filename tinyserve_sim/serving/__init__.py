"""The serving simulator: workloads, memory managers and an iteration-level scheduler.

It runs request workloads against the memory managers a server could use and
measures where the KV memory goes. One module per concept:

* :mod:`~tinyserve_sim.serving.generator` - workloads reproducible from a seed
  (Poisson arrivals, ShareGPT / Alpaca length presets, parallel sampling, beam
  search, a shared system prompt);
* :mod:`~tinyserve_sim.serving.memory` - the scheduler's memory interface;
* :mod:`~tinyserve_sim.serving.paged` - paged memory over a ``BlockManager``;
* :mod:`~tinyserve_sim.serving.allocators` - buddy and first-fit allocators;
* :mod:`~tinyserve_sim.serving.contiguous` - the Max / Pow2 / Oracle reservation baselines;
* :mod:`~tinyserve_sim.serving.catalog` - managers by name (``paged-16``, ``oracle``...);
* :mod:`~tinyserve_sim.serving.scheduler` - the iteration-level scheduler (one *step*
  is one scheduler iteration, as in vLLM);
* :mod:`~tinyserve_sim.serving.timing` - how long a step takes: a roofline model of
  an iteration, with presets (OPT-13B on an A100 as in the vLLM paper, H100, H200);
* :mod:`~tinyserve_sim.serving.quiet_steps` - stretches of steps in which only token
  counts change, computed at once;
* :mod:`~tinyserve_sim.serving.rate_sweep` - latency against request rate (the vLLM
  paper's Fig. 12 and 13);
* :mod:`~tinyserve_sim.serving.metrics` - per-step records and summaries;
* :mod:`~tinyserve_sim.serving.compaction` - the compaction planner;
* :mod:`~tinyserve_sim.serving.plots` - the figures of a run.

The claims study built on it lives in :mod:`tinyserve_sim.claims`.
"""

from tinyserve_sim.serving.catalog import KV_CAPACITY_TOKENS, make_memory
from tinyserve_sim.serving.compaction import CompactionPlan, compact, plan_compaction
from tinyserve_sim.serving.contiguous import ReservationMemory, reservation_size
from tinyserve_sim.serving.generator import (
    PRESETS,
    Request,
    Workload,
    WorkloadSpec,
    generate,
)
from tinyserve_sim.serving.metrics import StepLog, Summary
from tinyserve_sim.serving.paged import PagedMemory
from tinyserve_sim.serving.rate_sweep import RatePoint, RateSweep, sweep_rates
from tinyserve_sim.serving.scheduler import (
    RunResult,
    Scheduler,
    SchedulerConfig,
    simulate,
)
from tinyserve_sim.serving.timing import (
    TIME_MODELS,
    ConstantTime,
    HardwareSpec,
    ModelSpec,
    RooflineTime,
    StepWork,
    get_time_model,
)

__all__ = [
    "KV_CAPACITY_TOKENS",
    "TIME_MODELS",
    "ConstantTime",
    "HardwareSpec",
    "ModelSpec",
    "RatePoint",
    "RateSweep",
    "RooflineTime",
    "StepWork",
    "get_time_model",
    "sweep_rates",
    "make_memory",
    "PRESETS",
    "CompactionPlan",
    "PagedMemory",
    "Request",
    "ReservationMemory",
    "RunResult",
    "Scheduler",
    "SchedulerConfig",
    "StepLog",
    "Summary",
    "Workload",
    "WorkloadSpec",
    "compact",
    "generate",
    "plan_compaction",
    "reservation_size",
    "simulate",
]
