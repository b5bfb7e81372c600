"""Query-aware cache selection: read only the KV pages the current query needs.

At long context, decoding reads the whole KV cache of a sequence at every
step, yet the softmax puts almost all of its weight on a few tokens. Quest
(Tang et al., ICML 2024) keeps a tiny summary of every page (the channel-wise
min and max of its keys), bounds each page's largest ``q . k`` from it, and
attends only to the best pages within a token budget. This package runs that
idea step by step on top of the data plane's kernels
(:mod:`tinyserve_sim.data.page_metadata`, :mod:`~tinyserve_sim.data.page_scores`,
:mod:`~tinyserve_sim.data.select_pages`), and measures it:

* :mod:`~tinyserve_sim.selection.workloads` - keys and queries with the structure of
  real attention (sinks, recency, needles, noise), from a seed;
* :mod:`~tinyserve_sim.selection.selector` - one step's scores and selection, as an
  inspectable :class:`SelectionRecord` (which pages, why, bytes read);
* :mod:`~tinyserve_sim.selection.quality` - recall of the softmax mass and output error
  against dense attention (float64);
* :mod:`~tinyserve_sim.selection.tiers` - a two-tier cache (fast GPU tier of ``C``
  pages, slow host tier) with named eviction policies: LRU, LFU, score-aware;
* :mod:`~tinyserve_sim.selection.session` - a whole decode run, step by step;
* :mod:`~tinyserve_sim.selection.sweep` and :mod:`~tinyserve_sim.selection.hit_rates` -
  the budget sweep, and the policy study behind the claims row.

It imports only the data and control planes; the CLI (``tinyserve-sim select``),
the renderers (:mod:`tinyserve_sim.render.selection`) and the claims check read it.
"""

from tinyserve_sim.selection.hit_rates import HitRateRow, hit_rate_study
from tinyserve_sim.selection.quality import StepQuality, step_quality
from tinyserve_sim.selection.selector import NEWEST, SINK, TOP_K, SelectionRecord, budget_in_tokens, select_step
from tinyserve_sim.selection.session import (
    SelectionConfig,
    SelectionRun,
    SelectionSession,
    StepReport,
    replay_tiers,
    run_selection,
)
from tinyserve_sim.selection.sweep import DEFAULT_BUDGETS, SweepRow, budget_sweep
from tinyserve_sim.selection.tiers import (
    POLICIES,
    EvictionPolicy,
    FastTier,
    TierRecord,
    TwoTierCache,
    belady_hit_rate,
    register_policy,
)
from tinyserve_sim.selection.workloads import (
    AttentionWorkload,
    AttentionWorkloadSpec,
    generate_attention_workload,
)

__all__ = [
    "DEFAULT_BUDGETS",
    "NEWEST",
    "POLICIES",
    "SINK",
    "TOP_K",
    "AttentionWorkload",
    "AttentionWorkloadSpec",
    "EvictionPolicy",
    "FastTier",
    "HitRateRow",
    "SelectionConfig",
    "SelectionRecord",
    "SelectionRun",
    "SelectionSession",
    "StepQuality",
    "StepReport",
    "SweepRow",
    "TierRecord",
    "TwoTierCache",
    "belady_hit_rate",
    "budget_in_tokens",
    "budget_sweep",
    "generate_attention_workload",
    "hit_rate_study",
    "register_policy",
    "replay_tiers",
    "run_selection",
    "select_step",
    "step_quality",
]
