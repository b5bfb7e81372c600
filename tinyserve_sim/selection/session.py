"""A decode run with query-aware selection, step by step: the piece that ties everything together.

A :class:`SelectionSession` takes an
:class:`~tinyserve_sim.selection.workloads.AttentionWorkload` and replays it the
way a server would:

1. **prompt**: the control plane (:class:`~tinyserve_sim.control.manager.BlockManager`)
   places every sequence's prompt in blocks; the data plane
   (:class:`~tinyserve_sim.data.cache.KVCache`, with page metadata) writes the keys and
   values and keeps each block's key min/max up to date;
2. **each decode step** (:meth:`SelectionSession.step`):

   a. append one token per sequence (control plane), write its key and value
      (data plane: the metadata of its block follows);
   b. score and select pages for the step's queries
      (:func:`~tinyserve_sim.selection.selector.select_step`);
   c. make the selected pages resident in the fast tier of one
      :class:`~tinyserve_sim.selection.tiers.TwoTierCache` per eviction policy
      (the same requests for each, so their hit rates compare like for like);
   d. measure the selection against dense attention
      (:func:`~tinyserve_sim.selection.quality.step_quality`).

Each step returns a :class:`StepReport` holding the three records (selection,
tiers, quality). Sparse attention itself is what paged attention computes from
``report.selection.sparse``; the quality numbers are that result's distance
from dense attention, computed in float64.

>>> from tinyserve_sim.selection.workloads import AttentionWorkloadSpec, generate_attention_workload
>>> spec = AttentionWorkloadSpec(num_seqs=1, context_len=256, decode_steps=3, head_dim=32, window=8, seed=1)
>>> run = SelectionSession(generate_attention_workload(spec), SelectionConfig(budget=0.25)).run()
>>> len(run.steps), run.budget_tokens, run.capacity     # 4 of 16 pages per head, 2 heads, 2x
(3, 64, 16)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.control.checks import short_repr
from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.data.backends import Backend
from tinyserve_sim.data.cache import KVCache
from tinyserve_sim.errors import ConfigError, InvalidArgumentError, WorkloadError
from tinyserve_sim.selection.quality import StepQuality, step_quality
from tinyserve_sim.selection.selector import SelectionRecord, budget_in_tokens, check_budget, select_step
from tinyserve_sim.selection.tiers import (
    MAX_CAPACITY,
    POLICIES,
    FastTier,
    TierRecord,
    TwoTierCache,
    check_decay,
    make_policy,
)
from tinyserve_sim.selection.workloads import MAX_ELEMENTS, AttentionWorkload

#: A fast-tier page: (physical block, KV head).
PageKey = tuple[int, int]


@dataclass(frozen=True)
class SelectionConfig:
    """How to run selection on a workload.

    Attributes:
        block_size: tokens per page.
        budget: tokens per (sequence, KV head): an int, or a float share of the prompt
            (rounded to whole pages, at least 2).
        policies: eviction policies to compare (names in :data:`~tinyserve_sim.selection.tiers.POLICIES`).
        capacity: fast-tier pages: an int, or a float multiple of the most pages one step selects.
        score_decay: the score-aware policy's moving-average decay.
        backend: ``"numpy"``, ``"cupy"`` or a :class:`~tinyserve_sim.data.backends.Backend`
            (the cache, its metadata and the selection kernels).
        quality: compute recall and error against dense attention each step.
        move_data: keep a :class:`~tinyserve_sim.selection.tiers.FastTier` per policy and copy
            every missed page into it (a host-to-device copy on ``"cupy"``).
    """

    block_size: int = 16
    budget: float | int = 0.125
    policies: tuple[str, ...] = ("lru", "lfu", "score-aware")
    capacity: float | int = 2.0
    score_decay: float = 0.5
    backend: str | Backend = "numpy"
    quality: bool = True
    move_data: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.block_size, int) or isinstance(self.block_size, bool) or self.block_size < 1:
            raise ConfigError(f"block_size must be a positive integer, got {short_repr(self.block_size)}")
        check_budget(self.budget, ConfigError)
        check_policy_names(self.policies)
        capacity = self.capacity
        if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or not 0 < capacity < math.inf:
            raise ConfigError(
                "capacity must be an int (pages) or a float (a multiple of the pages one step selects), "
                f"positive and finite, got {short_repr(capacity)}"
            )
        check_decay(self.score_decay)
        for name in ("quality", "move_data"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {short_repr(getattr(self, name))}")


def check_policy_names(policies: Any) -> tuple[str, ...]:
    """``policies`` as a tuple of registered policy names; ConfigError for anything else."""
    if isinstance(policies, str) or not isinstance(policies, (tuple, list)):
        raise ConfigError(f"policies must be a tuple of policy names, got {short_repr(policies)}")
    for name in policies:
        if not isinstance(name, str) or name not in POLICIES:
            raise ConfigError(f"unknown eviction policy {short_repr(name)}; choose from {', '.join(POLICIES)}")
    return tuple(policies)


@dataclass(frozen=True)
class StepReport:
    """Everything one decode step did: the selection, each policy's fast tier, the quality."""

    step: int
    selection: SelectionRecord
    tiers: dict[str, TierRecord]
    quality: StepQuality | None
    requested: tuple[PageKey, ...] = ()
    priorities: dict[PageKey, float] = field(default_factory=dict)

    def explain(self) -> str:
        lines = [self.selection.explain()]
        for name, record in self.tiers.items():
            lines.append(f"  fast tier [{name}]: " + record.explain().split(": ", 1)[1])
        if self.quality is not None:
            q = self.quality
            lines.append(f"  recall {q.mean_recall:.3f} (min {q.min_recall:.3f}), "
                         f"output error {q.mean_rel_error:.2e} (max {q.max_rel_error:.2e})")
        return "\n".join(lines)


@dataclass
class SelectionRun:
    """The reports of a run, and its totals."""

    config: SelectionConfig
    budget_tokens: int
    capacity: int
    steps: list[StepReport] = field(default_factory=list)
    hit_rates: dict[str, float] = field(default_factory=dict)

    def _measured(self) -> list[StepQuality]:
        """The steps' quality records; WorkloadError when no step measured any."""
        measured = [r.quality for r in self.steps if r.quality is not None]
        if not measured:
            raise WorkloadError(
                f"no quality to average: the run has {len(self.steps)} step(s) and none measured its quality "
                "(run at least one decode step, with quality=True)"
            )
        return measured

    @property
    def mean_recall(self) -> float:
        return float(np.mean([q.mean_recall for q in self._measured()]))

    @property
    def min_recall(self) -> float:
        return float(min(q.min_recall for q in self._measured()))

    @property
    def mean_rel_error(self) -> float:
        return float(np.mean([q.mean_rel_error for q in self._measured()]))

    @property
    def max_rel_error(self) -> float:
        return float(max(q.max_rel_error for q in self._measured()))

    @property
    def dense_bytes(self) -> int:
        return sum(r.selection.dense_bytes for r in self.steps)

    @property
    def sparse_bytes(self) -> int:
        return sum(r.selection.sparse_bytes for r in self.steps)

    @property
    def byte_ceiling(self) -> float:
        """Dense bytes / (selected + metadata bytes), over the whole run."""
        if not self.steps:
            raise WorkloadError("the run has no decode steps: it read no bytes, so it has no byte ceiling")
        return self.dense_bytes / self.sparse_bytes

    def bytes_moved(self, policy: str) -> int:
        """Bytes copied into the fast tier under ``policy`` (one of the run's policies)."""
        if not isinstance(policy, str) or policy not in self.config.policies:
            raise InvalidArgumentError(
                f"policy must be one of the run's policies ({', '.join(self.config.policies) or 'none'}), "
                f"got {short_repr(policy)}"
            )
        return sum(r.tiers[policy].bytes_moved for r in self.steps)


class SelectionSession:
    """Replay a workload with query-aware selection and a two-tier cache (see the module doc).

    Args:
        workload: the keys, values and queries.
        config: budget, policies, capacity, backend.

    Raises:
        InvalidArgumentError: a workload or config of the wrong type.
        ConfigError: a fast tier too small for one step, or a cache or fast tier larger than the
            limits (:data:`~tinyserve_sim.selection.workloads.MAX_ELEMENTS` elements,
            :data:`~tinyserve_sim.selection.tiers.MAX_CAPACITY` pages), checked before any allocation.
    """

    def __init__(self, workload: AttentionWorkload, config: SelectionConfig | None = None) -> None:
        if not isinstance(workload, AttentionWorkload):
            raise InvalidArgumentError(
                f"workload must be an AttentionWorkload (see generate_attention_workload), got {short_repr(workload)}"
            )
        if config is not None and not isinstance(config, SelectionConfig):
            raise InvalidArgumentError(f"config must be a SelectionConfig or None, got {short_repr(config)}")
        self.workload = workload
        self.config = config = config or SelectionConfig()
        spec = workload.spec
        bs = config.block_size
        self.seq_ids = [f"s{i}" for i in range(spec.num_seqs)]
        pages_per_seq = -(-(spec.context_len + spec.decode_steps) // bs)
        num_blocks = spec.num_seqs * pages_per_seq
        cache_elements = num_blocks * bs * spec.num_kv_heads * spec.head_dim
        if cache_elements > MAX_ELEMENTS:
            raise ConfigError(
                f"a cache of {num_blocks:,} pages of {bs:,} tokens ({cache_elements:,} elements for the keys) "
                f"is more than {MAX_ELEMENTS:,}: use a smaller block_size"
            )
        self.budget_tokens = budget_in_tokens(config.budget, spec.context_len, bs)
        most_pages = spec.num_seqs * spec.num_kv_heads * min(self.budget_tokens // bs, pages_per_seq)
        self.capacity = (
            int(config.capacity) if isinstance(config.capacity, int)
            else math.ceil(float(config.capacity) * most_pages)
        )
        if self.capacity < most_pages:
            raise ConfigError(
                f"a fast tier of {self.capacity} pages cannot hold the {most_pages} pages one step selects"
            )
        if self.capacity > MAX_CAPACITY:
            raise ConfigError(
                f"capacity {short_repr(config.capacity)} asks for more than the {MAX_CAPACITY:,} pages a fast tier "
                f"may hold (one step selects {most_pages:,})"
            )
        if config.move_data and self.capacity * bs * spec.head_dim > MAX_ELEMENTS:
            raise ConfigError(
                f"a fast tier of {self.capacity:,} pages of {bs:,} x {spec.head_dim} elements is more than "
                f"{MAX_ELEMENTS:,} elements to copy pages into: lower the capacity"
            )
        self.manager = BlockManager(num_blocks=num_blocks, block_size=bs)
        dtype = np.dtype(spec.dtype)
        shape = (num_blocks, bs, spec.num_kv_heads, spec.head_dim)
        self.cache = KVCache(*shape, dtype=dtype, backend=config.backend, page_metadata=True)
        # The slow tier: host memory. On the NumPy backend it is the cache itself; otherwise a
        # host copy that receives the same writes.
        self.host = self.cache if self.cache.backend.name == "numpy" else KVCache(*shape, dtype=dtype)
        for s, seq in enumerate(self.seq_ids):
            keys, values = workload.prompt(s)
            self._apply(self.manager.add(seq, spec.context_len), keys, values)
        page_bytes = 2 * bs * spec.head_dim * dtype.itemsize
        self.fast: dict[str, FastTier] = {}
        self.tiers: dict[str, TwoTierCache] = {}
        for name in config.policies:
            options = {"decay": config.score_decay} if name == "score-aware" else {}
            on_load = None
            if config.move_data:
                self.fast[name] = FastTier(self.cache.backend, self.capacity, bs, spec.head_dim, dtype)
                on_load = self._loader(self.fast[name])
            self.tiers[name] = TwoTierCache(self.capacity, make_policy(name, **options), page_bytes, on_load)
        self.position = 0

    # ---------------------------------------------------------------- helpers
    def _apply(self, record, keys: np.ndarray, values: np.ndarray) -> None:
        self.cache.apply(record, keys, values)
        if self.host is not self.cache:
            self.host.apply(record, keys, values)

    def _loader(self, fast: FastTier):
        def load(page: PageKey, slot: int) -> None:
            block, head = page
            fast.load(slot, self.host.key_cache[block, :, head], self.host.value_cache[block, :, head])

        return load

    @property
    def done(self) -> bool:
        return self.position >= self.workload.num_steps

    # ------------------------------------------------------------------- step
    def step(self) -> StepReport:
        """Run the next decode step (see the module doc) and return its report."""
        if self.done:
            raise WorkloadError(f"the workload has {self.workload.num_steps} decode steps; all were run")
        i = self.position
        keys, values, query = self.workload.decode_token(i)
        written: list[tuple[int, int, int]] = []  # (sequence, block, offset) of each new token
        for s, seq in enumerate(self.seq_ids):
            record = self.manager.append(seq, 1)
            self._apply(record, keys[s : s + 1], values[s : s + 1])
            slot = int(record.slot_mapping[0])
            written.append((s, slot // self.manager.block_size, slot % self.manager.block_size))
            for tier in self.tiers.values():  # a block fresh from the pool holds nothing the tier has
                tier.invalidate((block, h) for block in record.allocated for h in range(self.cache.shape[2]))
        batch = DecodeBatch.from_manager(self.manager, self.seq_ids)
        selection = select_step(self.cache, query, batch, self.budget_tokens, step=i)

        requested, scores = tier_request(selection)
        tier_records = {}
        for name, tier in self.tiers.items():
            if name in self.fast:  # write-through: a resident page receives its new token
                for s, block, offset in written:
                    for h in range(selection.num_kv_heads):
                        if (block, h) in tier:
                            self.fast[name].write_token(tier.slot_of((block, h)), offset, keys[s, h], values[s, h])
            tier_records[name] = tier.access(requested, scores)

        quality = None
        if self.config.quality:
            quality = step_quality(query, self.host.key_cache, self.host.value_cache, batch, selection.sparse)
        self.position += 1
        return StepReport(i, selection, tier_records, quality, tuple(requested), scores)

    def __iter__(self) -> Iterator[StepReport]:
        while not self.done:
            yield self.step()

    def run(self) -> SelectionRun:
        """Run every remaining step; return the reports and the hit rates."""
        result = SelectionRun(self.config, self.budget_tokens, self.capacity)
        result.steps.extend(self)
        result.hit_rates = {name: tier.hit_rate for name, tier in self.tiers.items()}
        return result


def run_selection(workload: AttentionWorkload, config: SelectionConfig | None = None) -> SelectionRun:
    """Shorthand: ``SelectionSession(workload, config).run()``."""
    return SelectionSession(workload, config).run()


def tier_request(selection: SelectionRecord) -> tuple[list[PageKey], dict[PageKey, float]]:
    """What one step asks of the fast tier: the selected pages ``(block, kv_head)``, and every
    page's priority for the score-aware policy, minus its place in its head's ranking (0 is best)."""
    batch = selection.batch
    requested: list[PageKey] = []
    for s in range(batch.num_seqs):
        for h in range(selection.num_kv_heads):
            requested += [(b, h) for b in selection.physical_selected(s, h)]
    ranks = selection.all_ranks()  # [S, Hkv, W]
    priorities: dict[PageKey, float] = {}
    for s in range(batch.num_seqs):
        n = int(selection.num_pages[s])
        blocks = batch.block_tables[s, :n].tolist()
        for h in range(selection.num_kv_heads):
            priorities.update(zip(((b, h) for b in blocks), (-ranks[s, h, :n]).tolist()))
    return requested, priorities


def replay_tiers(
    steps: Sequence[StepReport], capacity: int, policies: Sequence[str], score_decay: float = 0.5
) -> dict[str, TwoTierCache]:
    """Replay the fast-tier requests of a run into new tiers (one per policy) of ``capacity`` pages.

    Selection does not depend on the tier, so one run's requests can be
    replayed at any capacity: the hit rates compare policies on exactly the
    same stream of requests.
    """
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not all(
        isinstance(report, StepReport) for report in steps
    ):
        raise InvalidArgumentError(f"steps must be a list of StepReport (a run's steps), got {short_repr(steps)}")
    policies = check_policy_names(policies)
    check_decay(score_decay)
    tiers = {}
    for name in policies:
        options = {"decay": score_decay} if name == "score-aware" else {}
        tier = TwoTierCache(capacity, make_policy(name, **options))
        for report in steps:
            tier.access(report.requested, report.priorities)
        tiers[name] = tier
    return tiers
