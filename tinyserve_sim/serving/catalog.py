"""Memory managers by name, and the KV capacity of the vLLM paper's main setting.

``tinyserve-sim simulate --managers paged-16,max,pow2,oracle`` and the claims
study build their managers here, from one short name each.
"""

from __future__ import annotations

from tinyserve_sim.errors import WorkloadError
from tinyserve_sim.serving.contiguous import RULES, ReservationMemory
from tinyserve_sim.serving.memory import KVMemory
from tinyserve_sim.serving.metrics import MAX_COUNT
from tinyserve_sim.serving.paged import PagedMemory

#: KV slots of OPT-13B on an A100-40GB: 12 GiB / 800 KiB per token (vLLM paper, §6.1 and §3).
KV_CAPACITY_TOKENS = 15_728


def make_memory(name: str, capacity: int = KV_CAPACITY_TOKENS, prefix_caching: bool = False) -> KVMemory:
    """A memory from its name: ``paged-16`` (any block size), ``max``, ``pow2``,
    ``oracle``, or a rule with ``-first-fit`` (``oracle-first-fit``).

    Raises :class:`~tinyserve_sim.errors.WorkloadError` for an unknown name or
    an impossible capacity (at least one block, at most 2**31 - 1 slots).
    """
    if not isinstance(name, str):
        raise WorkloadError(f"a manager name must be a string, got {name!r}")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 1 <= capacity <= MAX_COUNT:
        raise WorkloadError(f"capacity must be a whole number of KV slots in [1, {MAX_COUNT:,}], got {capacity!r}")
    if name.startswith("paged"):
        size = name.partition("-")[2] or "16"
        if not (size.isascii() and size.isdigit()) or int(size) < 1:
            raise WorkloadError(f"bad paged manager {name!r}: write paged-<block size>, e.g. paged-16")
        if int(size) > capacity:
            raise WorkloadError(f"{name}: a block of {int(size):,} slots does not fit in a capacity of {capacity:,}")
        return PagedMemory(capacity, int(size), prefix_caching=prefix_caching)
    rule, _, allocator = name.partition("-")
    if rule not in RULES or allocator not in ("", "first-fit"):
        raise WorkloadError(f"unknown manager {name!r}; try paged-16, max, pow2, oracle or oracle-first-fit")
    return ReservationMemory(capacity, rule, allocator or "buddy")
