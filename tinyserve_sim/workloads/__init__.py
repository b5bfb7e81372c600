"""Serving workloads, memory-waste baselines, compaction, and the claims check.

One module per concept:

* :mod:`~tinyserve_sim.workloads.generator` - workloads reproducible from a seed
  (Poisson arrivals, ShareGPT / Alpaca length presets, parallel sampling, beam
  search, a shared system prompt);
* :mod:`~tinyserve_sim.workloads.memory` - the scheduler's memory interface;
* :mod:`~tinyserve_sim.workloads.paged` - paged memory over a ``BlockManager``;
* :mod:`~tinyserve_sim.workloads.allocators` - buddy and first-fit allocators;
* :mod:`~tinyserve_sim.workloads.contiguous` - the Max / Pow2 / Oracle reservation baselines;
* :mod:`~tinyserve_sim.workloads.scheduler` - the iteration-level scheduler;
* :mod:`~tinyserve_sim.workloads.metrics` - per-step records and summaries;
* :mod:`~tinyserve_sim.workloads.compaction` - the compaction planner;
* :mod:`~tinyserve_sim.workloads.experiments` and :mod:`~tinyserve_sim.workloads.claims`
  - the simulations behind ``tinyserve-sim claims`` and its verdicts;
* :mod:`~tinyserve_sim.workloads.plots` - the figures (matplotlib, Agg);
* :mod:`~tinyserve_sim.workloads.cli` - the ``simulate`` and ``claims`` commands.
"""

from tinyserve_sim.workloads.compaction import CompactionPlan, compact, plan_compaction
from tinyserve_sim.workloads.contiguous import ReservationMemory, reservation_size
from tinyserve_sim.workloads.generator import PRESETS, Request, Workload, WorkloadSpec, generate
from tinyserve_sim.workloads.metrics import StepLog, Summary
from tinyserve_sim.workloads.paged import PagedMemory
from tinyserve_sim.workloads.scheduler import RunResult, Scheduler, SchedulerConfig, simulate

__all__ = [
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
