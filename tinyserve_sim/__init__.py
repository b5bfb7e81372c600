"""tinyserve-sim: learn, inspect and test how LLM servers manage KV-cache memory.

The simulator is pure Python and NumPy:

* :class:`BlockPool` - physical blocks, reference counts, free-queue policies;
* :class:`BlockManager` - sequences, block tables, fork, copy-on-write, prefix caching;
* :class:`Step` / :class:`Snapshot` - what each operation did, and the state it left;
* :mod:`tinyserve_sim.trace` - the trace file format: load, save, replay, record.

The GPU backend lives in :mod:`tinyserve_sim.gpu` and is imported only when asked for.
"""

from tinyserve_sim.errors import SimError
from tinyserve_sim.manager import BlockManager
from tinyserve_sim.pool import POLICIES, BlockPool
from tinyserve_sim.steps import Snapshot, Step

__all__ = ["BlockManager", "BlockPool", "POLICIES", "SimError", "Snapshot", "Step"]
__version__ = "0.1.0"
