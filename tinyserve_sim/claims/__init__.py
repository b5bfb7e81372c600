"""The claims check: the simulations behind ``tinyserve-sim claims`` and their verdicts.

* :mod:`~tinyserve_sim.claims.experiments` - the runs (one workload per
  claim, on the serving simulator), sized ``quick``, ``default`` or ``full``;
* :mod:`~tinyserve_sim.claims.verdicts` - each claim of the seed, with the
  figure simulated for it, its conditions and a verdict;
* :mod:`~tinyserve_sim.claims.paper` - the vLLM paper's figures (2, 12, 13,
  15 and §7.2), each checked the same way;
* :mod:`~tinyserve_sim.claims.rows` - a row of the tables and the verdict rule;
* :mod:`~tinyserve_sim.claims.plots` - the figures of ``docs/claims.md``.

Everything here reads the serving simulator's public results; nothing in the
planes or the simulator imports this package.
"""

from tinyserve_sim.claims.experiments import Experiments, run_experiments
from tinyserve_sim.claims.paper import paper_checks
from tinyserve_sim.claims.rows import ClaimRow
from tinyserve_sim.claims.verdicts import seed_claims

__all__ = ["ClaimRow", "Experiments", "paper_checks", "run_experiments", "seed_claims"]
