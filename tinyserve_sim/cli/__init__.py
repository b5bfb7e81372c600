"""The ``tinyserve-sim`` command line (Typer).

Commands:

* ``demo``: walk a built-in scenario step by step, one line per step.
* ``trace FILE``: step through a trace file (``--step``, ``--until N``, ``--render DIR``).
* ``scenarios``: list the built-in scenarios, or write one as a trace file.
* ``simulate`` and ``claims``: serving workloads and the check of the seed's
  claims (in :mod:`~tinyserve_sim.cli.simulate` and :mod:`~tinyserve_sim.cli.claims`).

Every command reads only step records and public state; errors in the input
(a malformed trace, an unknown scenario) print one clear line and exit with 2.
"""

from tinyserve_sim.cli.app import app, main

__all__ = ["app", "main"]
