"""The claims check: the simulations behind ``tinyserve-sim claims`` and their verdicts.

* :mod:`~tinyserve_sim.claims.experiments` - the runs (one workload per
  claim, on the serving simulator), sized ``quick``, ``default`` or ``full``;
* :mod:`~tinyserve_sim.claims.verdicts` - each claim of the seed and of the
  vLLM paper, with the figure simulated for it and a verdict;
* :mod:`~tinyserve_sim.claims.plots` - the figures of ``docs/claims.md``.

Everything here reads the serving simulator's public results; nothing in the
planes or the simulator imports this package.
"""

from tinyserve_sim.claims.experiments import Experiments, run_experiments
from tinyserve_sim.claims.verdicts import ClaimRow, paper_checks, seed_claims

__all__ = ["ClaimRow", "Experiments", "paper_checks", "run_experiments", "seed_claims"]
