"""A live sequence's blocks, and the plans of the operations on it.

The manager keeps one :class:`LiveSequence` per request: its token count, its
block table, and (with prefix caching) what it needs to hash its next full
block. Before changing anything, an operation *plans*: the functions below say
what it would allocate, copy and reuse, from the state alone. The manager
raises if the plan does not fit, and only then changes the state, which is how
a refused call leaves everything as it was; the admission queries
(``can_add``, ``blocks_needed_to_append``...) are the same plans.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, NamedTuple

from tinyserve_sim.control.prefix_cache import hash_blocks
from tinyserve_sim.control.tokens import TokenIds

if TYPE_CHECKING:
    from tinyserve_sim.control.prefix_cache import PrefixCache


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class LiveSequence:
    """A live sequence (mutable; the public view is :class:`~tinyserve_sim.control.records.SequenceState`)."""

    __slots__ = ("num_tokens", "table", "block_hashes", "tail")

    def __init__(self, num_tokens: int, table: list[int], block_hashes: list[int], tail: TokenIds | None) -> None:
        self.num_tokens = num_tokens
        self.table = table
        # Chained hashes of the full blocks, in order. Only kept with prefix caching.
        self.block_hashes = block_hashes
        # Token ids of the partly filled last block, or None once the content is unknown
        # (no prefix caching, a prompt given as a length, or an append given as a count).
        self.tail = tail


class AddPlan(NamedTuple):
    """What ``add`` of a prompt would do: reuse ``hits``, allocate ``needed`` new blocks."""

    count: int  # prompt tokens
    hashes: list[int]  # chained hashes of the prompt's full blocks (prefix caching, token ids)
    hits: list[int]  # cached blocks holding the prompt's longest cached prefix
    misses: int  # full blocks looked up and not found
    needed: int  # new blocks to allocate
    tail: TokenIds | None  # token ids of the partly filled last block


class AppendPlan(NamedTuple):
    """What ``append`` would do: allocate ``needed`` blocks, one of them a copy-on-write copy."""

    count: int
    ids: TokenIds | None
    copy_on_write: bool
    needed: int


def plan_add(count: int, ids: TokenIds | None, block_size: int, cache: PrefixCache | None) -> AddPlan:
    """The plan of adding a prompt of ``count`` tokens (``ids``, if known) under ``cache``."""
    hashes: list[int] = []
    hits: list[int] = []
    misses = 0
    tail = None
    if cache is not None and ids is not None:
        hashes = hash_blocks(ids, block_size)
        tail = ids[len(hashes) * block_size :]
        # The last prompt token is always computed (its logits start decoding),
        # so at most (count - 1) tokens can come from the cache, as in vLLM.
        lookups = hashes[: (count - 1) // block_size]
        hits = cache.longest_prefix(lookups)
        misses = len(lookups) - len(hits)
    return AddPlan(count, hashes, hits, misses, ceil_div(count, block_size) - len(hits), tail)


def plan_append(seq: LiveSequence, count: int, ids: TokenIds | None, block_size: int, ref: list[int]) -> AppendPlan:
    """The plan of appending ``count`` tokens to ``seq`` (``ref``: every block's reference count)."""
    partly_filled = seq.num_tokens % block_size != 0
    copy_on_write = partly_filled and ref[seq.table[-1]] > 1
    grow = ceil_div(seq.num_tokens + count, block_size) - len(seq.table)
    return AppendPlan(count, ids, copy_on_write, grow + int(copy_on_write))


def decode_need(seqs: list[LiveSequence], block_size: int, ref: list[int]) -> int:
    """Blocks a decode of these sequences allocates: one per full last block, plus the copies.

    A partly filled last block held by ``r`` sequences, ``k`` of them in the
    batch, is copied by each writer while it is still shared: ``min(k, r - 1)`` copies.
    """
    new = sum(1 for seq in seqs if seq.num_tokens % block_size == 0)
    writers = Counter(seq.table[-1] for seq in seqs if seq.num_tokens % block_size)
    return new + sum(min(k, ref[block] - 1) for block, k in writers.items())
