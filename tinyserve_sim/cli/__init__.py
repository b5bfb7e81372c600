"""The ``tinyserve-sim`` command line (Typer).

Commands:

* ``demo``: walk a built-in scenario, one explained line per operation.
* ``trace FILE``: step through a trace file (``--step``, ``--until N``, ``--render DIR``,
  ``--html OUT.html`` for an interactive player).
* ``scenarios``: list the built-in scenarios, or write one as a trace file.
* ``simulate`` and ``claims``: serving workloads and the check of the seed's
  claims (in :mod:`~tinyserve_sim.cli.simulate` and :mod:`~tinyserve_sim.cli.claims`).

Every command reads only operation records and public state. Every mistake in the
input (a wrong option, a malformed trace, an unwritable output path) prints one
clear line and exits with status 2, never a traceback.
"""

from tinyserve_sim.cli.app import app, main

__all__ = ["app", "main"]
