"""Prefix caching: content hashes of full blocks, and the evictor of cached free blocks.

Two requests that start with the same tokens (a shared system prompt, a
multi-turn chat) would compute the same keys and values for that prefix. A
prefix cache lets the second request *reuse* the first one's blocks.

How it works here (the scheme of vLLM's automatic prefix caching):

1. Only **full** blocks are cached: their contents can no longer change.
2. A block's identity is a *chained hash*: ``hash(parent_hash, its token ids)``.
   Chaining makes the hash name the whole prefix, not just the block: the
   same 16 tokens after two different prefixes hash differently.
3. When a sequence finishes, its cached blocks keep their hash. Their reference
   count drops to 0, but instead of joining the free queue they are *parked*
   in the evictor, still reusable by a later request with the same prefix.
4. When the pool runs out of never-cached free blocks, the *evictor* gives
   up a parked block. The evictor is a policy (a class from the registry
   :data:`~tinyserve_sim.control.policies.EVICTORS`); the default, ``"lru"``,
   gives up the **least recently used** parked block, and among blocks parked
   at the same moment the **deepest** block of a chain first (a finished
   sequence is parked tail first), because a deep block is only useful if
   every block in front of it is still cached too.

The hash is BLAKE2b (8 bytes) over the parent hash and the int64 token ids
(little-endian): deterministic across runs and machines, so traces replay
identically. A block is hashed once, when it fills.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from functools import lru_cache
from hashlib import blake2b

import numpy as np

from tinyserve_sim.control.checks import short_repr
from tinyserve_sim.control.policies import Evictor, evictor_class
from tinyserve_sim.errors import InvalidArgumentError

#: The parent hash of a sequence's first block.
ROOT_HASH = 0


def pack_tokens(token_ids: Sequence[int] | np.ndarray | array) -> bytes | array:
    """Token ids as little-endian int64 bytes, the input of the block hash.

    An ``array("q")`` (how the manager keeps token ids) is returned as it is on a
    little-endian machine: it already holds those bytes, and the hash reads it as a buffer.
    """
    if type(token_ids) is array and token_ids.typecode == "q":
        if not _BIG_ENDIAN:
            return token_ids
        packed = array("q", token_ids)
    elif isinstance(token_ids, np.ndarray):
        return token_ids.astype("<i8", copy=False).tobytes()
    else:
        packed = array("q", token_ids)
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


_BIG_ENDIAN = sys.byteorder == "big"


# An empty BLAKE2b-64 state: copying it is cheaper than setting up a new one per block.
_EMPTY_BLAKE2B_64 = blake2b(digest_size=8)


def _chain(parent_hash: int, packed_block: bytes | array) -> int:
    digest = _EMPTY_BLAKE2B_64.copy()
    digest.update(parent_hash.to_bytes(8, "little"))
    digest.update(packed_block)
    return int.from_bytes(digest.digest(), "little")


#: :func:`_chain` with a memory of the last 4,096 blocks it hashed. Prompts repeat (a
#: shared system prompt is hashed again for every request that starts with it), and a
#: remembered block costs a dictionary look-up instead of a BLAKE2b digest: about
#: 2.5 times cheaper at 16 tokens a block. The values are the same either way. Only
#: blocks of at most :data:`_REMEMBERED_BLOCK_BYTES` are remembered (the memory keeps
#: the bytes: 4,096 blocks of 128 tokens are 4 MB).
_chain_remembered = lru_cache(maxsize=4096)(_chain)
_REMEMBERED_BLOCK_BYTES = 8 * 128


def hash_block(parent_hash: int, token_ids: Sequence[int] | np.ndarray | array) -> int:
    """The chained content hash of one full block (a 64-bit unsigned int): BLAKE2b-64 of the
    parent's hash (8 bytes) followed by the block's token ids (8 bytes each), little-endian."""
    return _chain(parent_hash, pack_tokens(token_ids))


if _BIG_ENDIAN:

    def hash_token_array(parent_hash: int, token_ids: array) -> int:
        """:func:`hash_block` of token ids kept as an ``array("q")`` (the manager's tails)."""
        return _chain(parent_hash, pack_tokens(token_ids))

else:
    #: :func:`hash_block` of token ids kept as an ``array("q")`` (the manager's tails): on a
    #: little-endian machine the array already holds the bytes to hash.
    hash_token_array = _chain


def hash_blocks(
    token_ids: Sequence[int] | np.ndarray | array, block_size: int, parent_hash: int = ROOT_HASH
) -> list[int]:
    """Chained hashes of every *full* block of ``token_ids`` (a trailing partial block is skipped)."""
    packed = bytes(pack_tokens(token_ids))
    step = 8 * block_size  # bytes per block
    chain = _chain_remembered if step <= _REMEMBERED_BLOCK_BYTES else _chain
    hashes = []
    for start in range(0, len(packed) - step + 1, step):
        parent_hash = chain(parent_hash, packed[start : start + step])
        hashes.append(parent_hash)
    return hashes


def _checked_int(value: object, what: str) -> int:
    if type(value) is not int:
        raise InvalidArgumentError(f"{what} must be an integer, got {short_repr(value)}")
    return value


class PrefixCache:
    """Maps block hashes to physical blocks, and keeps the evictor of cached free blocks.

    Args:
        evictor: the eviction order, a name from
            :data:`~tinyserve_sim.control.policies.EVICTORS` (default ``"lru"``).

    The cache does not own reference counts (the :class:`~tinyserve_sim.control.pool.BlockPool`
    does). It records which blocks hold which content, and which of those are
    free (reference count 0) and therefore evictable, in the evictor's order.

    The queries are public. The changes (the underscore methods) must go in step
    with the pool's reference counts, so only the
    :class:`~tinyserve_sim.control.manager.BlockManager` makes them.
    """

    def __init__(self, evictor: str = "lru") -> None:
        self.evictor: Evictor = evictor_class(evictor)()
        self._block_of: dict[int, int] = {}  # hash -> block
        self._hash_of: dict[int, int] = {}  # block -> hash
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    # ----------------------------------------------------------------- queries
    @property
    def num_evictable(self) -> int:
        """Cached blocks that are free and could be evicted."""
        return len(self.evictor)

    def lookup(self, block_hash: int) -> int | None:
        """The block holding this content, or ``None``."""
        return self._block_of.get(_checked_int(block_hash, "a block hash"))

    def hash_of(self, block: int) -> int | None:
        """The content hash of a cached block, or ``None`` for an uncached block."""
        return self._hash_of.get(_checked_int(block, "a block id"))

    def is_evictable(self, block: int) -> bool:
        """Is ``block`` cached and free (parked in the evictor)?"""
        return _checked_int(block, "a block id") in self.evictor

    def evictable(self) -> list[int]:
        """Cached free blocks in eviction order (next victim first)."""
        return self.evictor.order()

    def longest_prefix(self, hashes: list[int]) -> list[int]:
        """The blocks holding the first ``k`` of these chained hashes, for the largest ``k``
        such that all of them are cached (a prefix hit stops at the first miss)."""
        lookup = self._block_of.get
        hits = []
        try:
            for block_hash in hashes:
                block = lookup(block_hash)
                if block is None:
                    break
                hits.append(block)
        except TypeError:  # not a list, or an unhashable item
            raise InvalidArgumentError(f"expected a list of block hashes, got {short_repr(hashes)}") from None
        return hits

    def cached_blocks(self) -> dict[int, int]:
        """A copy of the ``block -> hash`` map of every cached block (in use or free)."""
        return dict(self._hash_of)

    # ---------------------------------------------------------------- mutation
    def _register(self, block: int, block_hash: int) -> bool:
        """Remember that ``block`` (full, in use) holds the content ``block_hash``.

        Returns False, and changes nothing, if that content is already cached in
        another block: the first copy stays the canonical one.
        """
        if block_hash in self._block_of or block in self._hash_of:
            return False
        self._block_of[block_hash] = block
        self._hash_of[block] = block_hash
        return True

    def _park(self, block: int) -> None:
        """A cached block's reference count reached 0: keep it, evictable."""
        self.evictor.park(block)

    def _park_cached(self, blocks: list[int]) -> tuple[list[int], list[int]]:
        """These blocks' counts reached 0: park the cached ones, in order.

        Returns ``(cached, plain)``: the blocks parked, and the others (no
        content worth keeping), both in the given order.
        """
        hash_of = self._hash_of
        cached, plain = [], []
        for block in blocks:
            if block in hash_of:
                self.evictor.park(block)
                cached.append(block)
            else:
                plain.append(block)
        return cached, plain

    def _revive(self, block: int) -> None:
        """A parked block is used again (a prefix hit): it is no longer evictable."""
        self.evictor.revive(block)

    def _rename(self, src: int, dst: int) -> None:
        """The data of block ``src`` moved to ``dst`` (compaction): move its hash and evictor place."""
        block_hash = self._hash_of.pop(src, None)
        if block_hash is None:
            return
        self._hash_of[dst] = block_hash
        self._block_of[block_hash] = dst
        if src in self.evictor:
            self.evictor.rename(src, dst)

    def _evict(self, n: int) -> list[int]:
        """Forget the next ``n`` parked blocks (fewer if fewer are parked); return them, now plain free blocks."""
        victims = []
        for _ in range(min(n, len(self.evictor))):
            block = self.evictor.pop()
            del self._block_of[self._hash_of.pop(block)]
            victims.append(block)
        self.evictions += len(victims)
        return victims
