"""Built-in selection scenarios: small decode runs whose every step fits on a screen.

``tinyserve-sim select demo`` walks one (``--scenario NAME``); each is a
workload (:class:`~tinyserve_sim.selection.workloads.AttentionWorkloadSpec`) and a
:class:`~tinyserve_sim.selection.session.SelectionConfig`, sized so that one row of
pages per (sequence, KV head) fits in a terminal.

>>> sorted(SELECTION_SCENARIOS)
['query-aware-selection', 'tight-fast-tier']
"""

from __future__ import annotations

from dataclasses import dataclass

from tinyserve_sim.errors import InvalidArgumentError
from tinyserve_sim.selection.session import SelectionConfig, SelectionSession
from tinyserve_sim.selection.workloads import AttentionWorkloadSpec, generate_attention_workload


@dataclass(frozen=True)
class SelectionScenario:
    """A named, documented selection run."""

    name: str
    title: str
    story: str
    spec: AttentionWorkloadSpec
    config: SelectionConfig

    def session(self) -> SelectionSession:
        """A fresh session of this scenario, before its first decode step."""
        return SelectionSession(generate_attention_workload(self.spec), self.config)


# One sequence, 2 KV heads (4 query heads), a 383-token prompt: 24 full pages of 16 after the
# first decode step. With seed 3 the query changes topic during the run.
_SMALL = AttentionWorkloadSpec(num_seqs=1, context_len=383, decode_steps=8, num_kv_heads=2, num_q_heads=4,
                               head_dim=32, window=16, topic_stay=0.6, seed=3)

SELECTION_SCENARIOS: dict[str, SelectionScenario] = {
    s.name: s
    for s in (
        SelectionScenario(
            "query-aware-selection",
            "Score every page, keep the best quarter, and keep them in a fast tier of 15 pages.",
            "One sequence of 383 prompt tokens decodes 8 tokens. At each step every page of each KV head "
            "gets an upper bound on q.k from its key min/max; the head keeps its first page (the sink), "
            "its newest page, and the 4 best others: 96 of about 390 tokens. The kept pages must be in a "
            "fast tier of 15 pages; a missing one is copied in (a miss), evicting another by LRU or by "
            "score (they part ways at step 7, where LRU misses a page it had evicted). Watch the step where the query changes topic: new needle pages are kept, and copied in.",
            _SMALL,
            SelectionConfig(block_size=16, budget=0.25, capacity=1.25, policies=("lru", "score-aware")),
        ),
        SelectionScenario(
            "tight-fast-tier",
            "The same run with a fast tier that holds exactly one step's pages: every change is a miss.",
            "The fast tier holds 12 pages, exactly what one step keeps for the two heads. Whatever the "
            "policy, every page that enters the selection evicts one that left it: LRU and score-aware "
            "make the same choices, and the misses count how much the selection changes from step to step.",
            _SMALL,
            SelectionConfig(block_size=16, budget=0.25, capacity=1.0, policies=("lru", "score-aware")),
        ),
    )
}


def get_selection_scenario(name: str) -> SelectionScenario:
    """The scenario called ``name``; a clear error listing the others when there is none."""
    if name not in SELECTION_SCENARIOS:
        raise InvalidArgumentError(
            f"no selection scenario {name!r}; choose one of {', '.join(SELECTION_SCENARIOS)}"
        )
    return SELECTION_SCENARIOS[name]
