"""tinyserve-sim: learn, inspect and test how LLM servers manage KV-cache memory.

The package is cut along the two planes of a paged KV cache:

* :mod:`tinyserve_sim.control` - the **control plane**, who owns which block:
  :class:`BlockPool`, :class:`BlockManager` (block tables, fork,
  copy-on-write, prefix caching), :class:`OpRecord` / :class:`Snapshot` (what
  each operation did, and the state it left) and the trace format;
* :mod:`tinyserve_sim.data` - the **data plane**, the bytes in the blocks:
  :class:`~tinyserve_sim.data.KVCache` and the NumPy twin of every GPU kernel.

On top of them: :mod:`tinyserve_sim.serving` (workloads and an
iteration-level scheduler), :mod:`tinyserve_sim.claims` (the claims check),
:mod:`tinyserve_sim.render`, :mod:`tinyserve_sim.scenarios` and
:mod:`tinyserve_sim.cli`. The GPU backend, :mod:`tinyserve_sim.gpu`, is
imported only when asked for (``get_backend("cupy")``).
"""

from __future__ import annotations

import warnings
from typing import Any

from tinyserve_sim.control import POLICIES, BlockManager, BlockPool, OpRecord, Snapshot
from tinyserve_sim.errors import SimError

__all__ = ["BlockManager", "BlockPool", "OpRecord", "POLICIES", "SimError", "Snapshot"]
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    # ``Step`` was the old name of OpRecord (0.1). "Step" now means one scheduler
    # iteration only, as in vLLM; the alias goes away in 0.3.
    if name == "Step":
        warnings.warn("tinyserve_sim.Step is now tinyserve_sim.OpRecord", DeprecationWarning, stacklevel=2)
        return OpRecord
    raise AttributeError(f"module 'tinyserve_sim' has no attribute {name!r}")
