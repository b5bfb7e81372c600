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
4. When the pool runs out of never-cached free blocks, the evictor gives up
   the **least recently used** parked block; among blocks parked at the same
   moment the **deepest** block of a chain goes first (a finished sequence is
   parked tail first), because a deep block is only useful if every block in
   front of it is still cached too.

The hash is BLAKE2b (8 bytes) over the parent hash and the int64 token ids:
deterministic across runs and machines, so traces replay identically.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

#: The parent hash of a sequence's first block.
ROOT_HASH = 0


def hash_block(parent_hash: int, token_ids: Sequence[int] | np.ndarray) -> int:
    """The chained content hash of one full block (a 64-bit unsigned int)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(parent_hash.to_bytes(8, "little"))
    digest.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    return int.from_bytes(digest.digest(), "little")


def hash_blocks(token_ids: np.ndarray, block_size: int, parent_hash: int = ROOT_HASH) -> list[int]:
    """Chained hashes of every *full* block of ``token_ids`` (a trailing partial block is skipped)."""
    hashes = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent_hash = hash_block(parent_hash, token_ids[start : start + block_size])
        hashes.append(parent_hash)
    return hashes


class PrefixCache:
    """Maps block hashes to physical blocks, and keeps the LRU order of cached free blocks.

    The cache does not own reference counts (the :class:`~tinyserve_sim.control.pool.BlockPool`
    does). It records which blocks hold which content, and which of those are
    free (reference count 0) and therefore evictable, oldest first.
    """

    def __init__(self) -> None:
        self._block_of: dict[int, int] = {}  # hash -> block
        self._hash_of: dict[int, int] = {}  # block -> hash
        # Cached blocks with reference count 0, least recently used first.
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    # ----------------------------------------------------------------- queries
    @property
    def num_evictable(self) -> int:
        """Cached blocks that are free and could be evicted."""
        return len(self._evictable)

    def lookup(self, block_hash: int) -> int | None:
        """The block holding this content, or ``None``."""
        return self._block_of.get(block_hash)

    def hash_of(self, block: int) -> int | None:
        """The content hash of a cached block, or ``None`` for an uncached block."""
        return self._hash_of.get(block)

    def is_evictable(self, block: int) -> bool:
        return block in self._evictable

    def evictable(self) -> list[int]:
        """Cached free blocks in eviction order (next victim first)."""
        return list(self._evictable)

    def cached_blocks(self) -> dict[int, int]:
        """A copy of the ``block -> hash`` map of every cached block (in use or free)."""
        return dict(self._hash_of)

    # ---------------------------------------------------------------- mutation
    def register(self, block: int, block_hash: int) -> bool:
        """Remember that ``block`` (full, in use) holds the content ``block_hash``.

        Returns False, and changes nothing, if that content is already cached in
        another block: the first copy stays the canonical one.
        """
        if block_hash in self._block_of or block in self._hash_of:
            return False
        self._block_of[block_hash] = block
        self._hash_of[block] = block_hash
        return True

    def park(self, block: int) -> None:
        """A cached block's reference count reached 0: keep it, as most recently used."""
        self._evictable[block] = None

    def revive(self, block: int) -> None:
        """A parked block is used again (a prefix hit): it is no longer evictable."""
        del self._evictable[block]

    def rename(self, src: int, dst: int) -> None:
        """The data of block ``src`` moved to ``dst`` (compaction): move its hash and LRU place."""
        block_hash = self._hash_of.pop(src, None)
        if block_hash is None:
            return
        self._hash_of[dst] = block_hash
        self._block_of[block_hash] = dst
        if src in self._evictable:
            # Keep the LRU position: rebuild the order with dst in src's place.
            self._evictable = OrderedDict((dst if b == src else b, None) for b in self._evictable)

    def evict(self, n: int) -> list[int]:
        """Forget the ``n`` least recently used parked blocks and return them (now plain free blocks)."""
        victims = []
        for _ in range(min(n, len(self._evictable))):
            block, _ = self._evictable.popitem(last=False)
            del self._block_of[self._hash_of.pop(block)]
            victims.append(block)
        self.evictions += len(victims)
        return victims
