"""The control plane: who owns which block. It never touches a byte of KV data.

Read it in this order:

* :mod:`~tinyserve_sim.control.policies` - the free-queue orders and the
  evictors, small classes in two registries;
* :mod:`~tinyserve_sim.control.pool` - physical blocks, reference counts and
  the free queue;
* :mod:`~tinyserve_sim.control.prefix_cache` - content hashes of full blocks,
  and the evictor of cached free blocks;
* :mod:`~tinyserve_sim.control.manager` - sequences and their block tables:
  add, append, fork (copy-on-write), free, evict, move;
* :mod:`~tinyserve_sim.control.records` - what each operation did
  (:class:`OpRecord`) and the state it left (:class:`Snapshot`);
* :mod:`~tinyserve_sim.control.operations` - the operations a trace can hold,
  one small class each, in one registry;
* :mod:`~tinyserve_sim.control.trace` - the trace file format: load, save,
  replay, record;
* :mod:`~tinyserve_sim.control.batch` - :class:`DecodeBatch`, what a decode
  step hands the data plane (block tables, lengths, slot mapping);
* :mod:`~tinyserve_sim.control.formats` - that batch as vLLM's block tables or
  FlashInfer's CSR page table, and such a table imported back into a manager.

What leaves this package for the data plane is plain data: slot mappings,
``(src, dst)`` copy lists and block tables (gathered in a :class:`DecodeBatch`). It imports nothing but the
standard library, NumPy and :mod:`tinyserve_sim.errors` (a contract checked in
CI by import-linter; see ``pyproject.toml``).
"""

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.control.operations import OPERATIONS
from tinyserve_sim.control.policies import EVICTORS, POLICIES
from tinyserve_sim.control.pool import BlockPool
from tinyserve_sim.control.prefix_cache import PrefixCache
from tinyserve_sim.control.records import OpRecord, Snapshot

__all__ = [
    "EVICTORS",
    "OPERATIONS",
    "POLICIES",
    "BlockManager",
    "DecodeBatch",
    "BlockPool",
    "OpRecord",
    "PrefixCache",
    "Snapshot",
]
