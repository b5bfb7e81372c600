"""A two-tier KV cache: a small fast tier (GPU memory) in front of a large slow tier (host memory).

When the KV cache of long contexts does not fit in GPU memory, a server can
keep all of it in host memory and only a working set on the GPU (systems such
as InfiniGen, Lee et al., OSDI 2024, and ShadowKV, Sun et al., ICML 2025, do this
with query-aware selection). Selection then decides the traffic: at every
decode step the pages it selected must be in the fast tier, and a page that
is not (a *miss*) is copied in over PCIe, evicting another page if the fast
tier is full. The choice of the evicted page is the *eviction policy*, and it
decides the hit rate.

The unit here is a **page**: one KV head of one physical block (its keys and
values, ``2 * block_size * head_dim`` elements), because selection is made
per (sequence, KV head). Any hashable key works; the selection driver uses
``(block, kv_head)``.

One decode step is one call of :meth:`TwoTierCache.access`::

    requested pages  ──►  hits: already in the fast tier (nothing moves)
                          misses: copied in; if the tier is full, a page that is
                                  NOT requested in this step is evicted first,
                                  chosen by the policy

It returns a :class:`TierRecord` saying exactly that. The policies, in
:data:`POLICIES` (add your own with :func:`register_policy`):

``lru``
    evict the page used least recently (ties cannot happen: every use has its own tick).
``lfu``
    evict the page used the fewest times since it entered the fast tier; ties to the least recent.
``score-aware``
    evict the page with the lowest *priority*, the recent selection score the
    caller passes in (see :class:`ScoreAware`); ties to the least recent.

A hand-worked LRU trace, capacity 2:

>>> tier = TwoTierCache(capacity=2, policy="lru")
>>> [tier.access(pages).explain() for pages in (["a"], ["b"], ["a"], ["c"])]  # doctest: +NORMALIZE_WHITESPACE
['step 0: 1 requested, 0 hit(s), 1 miss(es): load a',
 'step 1: 1 requested, 0 hit(s), 1 miss(es): load b',
 'step 2: 1 requested, 1 hit(s), 0 miss(es)',
 'step 3: 1 requested, 0 hit(s), 1 miss(es): load c evicting b']
>>> sorted(tier.resident()), tier.hits, tier.misses
(['a', 'c'], 1, 3)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinyserve_sim.control.checks import INT64_MAX, check_int, is_real, short_repr
from tinyserve_sim.errors import ConfigError, InvalidArgumentError

Page = Hashable

#: The most pages a fast tier may hold (2**20): far more than any selection run of this
#: simulator requests, and a slot table that stays small in memory.
MAX_CAPACITY = 1 << 20


# ------------------------------------------------------------------ argument checks
def check_page(page: Any, what: str = "page") -> Page:
    """``page`` if it can be a page key (hashable); else InvalidArgumentError."""
    try:
        hash(page)
    except TypeError:
        raise InvalidArgumentError(f"{what} must be hashable (a tuple, not a list), got {short_repr(page)}") from None
    return page


def check_pages(pages: Any, what: str) -> list[Page]:
    """``pages`` (an iterable of hashable pages, not a string) as a list, repeats removed, in order."""
    if isinstance(pages, (str, bytes)):
        raise InvalidArgumentError(f"{what} must be a collection of pages, not a string: wrap one page in a list")
    try:
        items = list(pages)
    except TypeError:
        raise InvalidArgumentError(f"{what} must be an iterable of pages, got {short_repr(pages)}") from None
    for page in items:
        check_page(page, f"every page in {what}")
    return list(dict.fromkeys(items))


def check_score(value: Any, page: Page) -> float:
    """A page's score as a float: a real number (not a bool), not NaN."""
    if not is_real(value):
        raise InvalidArgumentError(
            f"the score of page {short_repr(page)} must be a real number, got {short_repr(value)}"
        )
    try:
        score = float(value)
    except OverflowError:  # a Python int too large for a float
        score = math.inf if value > 0 else -math.inf
    if math.isnan(score):
        raise InvalidArgumentError(f"the score of page {short_repr(page)} is NaN")
    return score


def check_decay(decay: Any) -> float:
    """The score-aware policy's decay: a real number in ``[0, 1)``; else ConfigError."""
    if not is_real(decay) or not 0 <= decay < 1:
        raise ConfigError(f"decay must be a real number in [0, 1), got {short_repr(decay)}")
    return float(decay)


@dataclass
class PageStats:
    """What the fast tier knows about one resident page (the policies choose from these).

    Attributes:
        page: the page's key.
        slot: its slot in the fast tier (``0 .. capacity - 1``).
        loaded_tick: when it entered the fast tier.
        last_tick: when it was last requested (ticks count every page request, so no two are equal).
        uses: requests since it entered.
        priority: the caller's recent score for it (score-aware policy; 0 when never given).
    """

    page: Page
    slot: int
    loaded_tick: int
    last_tick: int
    uses: int = 0
    priority: float = 0.0


class EvictionPolicy:
    """Chooses which resident page leaves the fast tier. Subclass and register to add one."""

    name: str = ""
    #: Whether the policy reads the scores given to :meth:`TwoTierCache.access` (others skip them).
    uses_scores: bool = False

    def victim(self, candidates: Sequence[PageStats]) -> PageStats:
        """The page to evict among ``candidates`` (resident and not requested in this step; never empty)."""
        raise NotImplementedError

    def update_priority(self, old: float | None, score: float) -> float:
        """A page's new priority from its old one (``None``: first score) and this step's score."""
        return score


#: Registered policies, by name.
POLICIES: dict[str, type[EvictionPolicy]] = {}


def register_policy(name: str) -> Callable[[type[EvictionPolicy]], type[EvictionPolicy]]:
    """Class decorator: make a policy available to :class:`TwoTierCache` under ``name``."""

    def add(cls: type[EvictionPolicy]) -> type[EvictionPolicy]:
        if name in POLICIES:
            raise ConfigError(f"an eviction policy named {name!r} is already registered")
        cls.name = name
        POLICIES[name] = cls
        return cls

    return add


def make_policy(policy: str | EvictionPolicy, **options: Any) -> EvictionPolicy:
    """A policy instance from its name (``options`` go to its constructor) or the instance itself."""
    if isinstance(policy, EvictionPolicy):
        return policy
    if not isinstance(policy, str) or policy not in POLICIES:
        raise ConfigError(f"unknown eviction policy {policy!r}; choose one of {', '.join(POLICIES)}")
    return POLICIES[policy](**options)


@register_policy("lru")
class LRU(EvictionPolicy):
    """Least recently used: the page whose last request is oldest."""

    def victim(self, candidates: Sequence[PageStats]) -> PageStats:
        return min(candidates, key=lambda p: p.last_tick)


@register_policy("lfu")
class LFU(EvictionPolicy):
    """Least frequently used since it entered the fast tier; ties to the least recently used."""

    def victim(self, candidates: Sequence[PageStats]) -> PageStats:
        return min(candidates, key=lambda p: (p.uses, p.last_tick))


@register_policy("score-aware")
class ScoreAware(EvictionPolicy):
    """Keep the pages with the highest recent scores: evict the lowest priority; ties to the least recent.

    The priority is an exponential moving average of the scores the caller
    passes each step while the page is resident: ``priority = decay * priority
    + (1 - decay) * score`` (the score it has when it enters is taken as it is). ``decay=0`` uses the latest score
    only; a larger decay remembers pages that mattered a few steps ago, which
    helps when queries come back to them.

    The selection driver passes, as a page's score, its place in its head's
    ranking (0 for the best page, -1 for the next...), not the raw upper
    bound: bounds of different heads and sequences have different scales, and
    all share one fast tier.
    """

    uses_scores = True

    def __init__(self, decay: float = 0.5) -> None:
        check_decay(decay)
        self.decay = decay

    def update_priority(self, old: float | None, score: float) -> float:
        return score if old is None else self.decay * old + (1.0 - self.decay) * score

    def victim(self, candidates: Sequence[PageStats]) -> PageStats:
        return min(candidates, key=lambda p: (p.priority, p.last_tick))


@dataclass(frozen=True)
class TierRecord:
    """What one :meth:`TwoTierCache.access` did.

    Attributes:
        step: 0-based index of the access.
        requested: the pages requested, in order (duplicates removed).
        hits: those already in the fast tier.
        loads: ``(page, slot)`` for each miss, in order: the page was copied into that slot.
        evicted: ``(page, slot)`` evicted to make room, in order (``evicted[i]`` made room for a
            load when the tier was full).
        bytes_moved: bytes copied into the fast tier (``len(loads) * page_bytes``).
        resident: pages in the fast tier afterwards.
    """

    step: int
    requested: tuple[Page, ...]
    hits: tuple[Page, ...]
    loads: tuple[tuple[Page, int], ...]
    evicted: tuple[tuple[Page, int], ...]
    bytes_moved: int
    resident: int

    @property
    def misses(self) -> tuple[Page, ...]:
        return tuple(page for page, _ in self.loads)

    @property
    def hit_rate(self) -> float:
        """Hits / requested pages in this step (1.0 when nothing was requested)."""
        return len(self.hits) / len(self.requested) if self.requested else 1.0

    def explain(self, limit: int = 8) -> str:
        """One line: requested, hits, misses, and which page each load evicted (the first ``limit``)."""
        text = f"step {self.step}: {len(self.requested)} requested, {len(self.hits)} hit(s), {len(self.loads)} miss(es)"
        if self.loads:
            n_free = len(self.loads) - len(self.evicted)  # the first loads went into free slots
            parts = []
            for i, (page, _) in enumerate(self.loads[:limit]):
                parts.append(f"{page}" if i < n_free else f"{page} evicting {self.evicted[i - n_free][0]}")
            more = f" ... (+{len(self.loads) - limit})" if len(self.loads) > limit else ""
            text += ": load " + ", ".join(parts) + more
        return text


@dataclass
class TwoTierCache:
    """A fast tier of ``capacity`` page slots in front of an unbounded slow tier (see the module doc).

    Args:
        capacity: pages the fast tier holds.
        policy: a name in :data:`POLICIES` or an :class:`EvictionPolicy`.
        page_bytes: bytes of one page (for :attr:`bytes_moved`; 0 if you only count pages).
        on_load: called as ``on_load(page, slot)`` for every miss, after the eviction and
            before the access returns: the place to copy the page's data in
            (:class:`FastTier` does it on a backend).
    """

    capacity: int
    policy: str | EvictionPolicy = "lru"
    page_bytes: int = 0
    on_load: Callable[[Page, int], None] | None = None
    hits: int = field(default=0, init=False)
    misses: int = field(default=0, init=False)
    evictions: int = field(default=0, init=False)
    bytes_moved: int = field(default=0, init=False)
    steps: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        check_int(self.capacity, "capacity", 1, MAX_CAPACITY, ConfigError)
        if isinstance(self.page_bytes, np.integer):
            self.page_bytes = int(self.page_bytes)
        check_int(self.page_bytes, "page_bytes", 0, INT64_MAX, ConfigError)
        if self.on_load is not None and not callable(self.on_load):
            raise ConfigError(f"on_load must be a function (page, slot) or None, got {short_repr(self.on_load)}")
        self.policy = make_policy(self.policy)
        self._pages: dict[Page, PageStats] = {}
        self._free_slots: list[int] = list(range(self.capacity - 1, -1, -1))  # pop() hands out slot 0 first
        self._tick = 0

    # ----------------------------------------------------------------- queries
    @property
    def requests(self) -> int:
        """Pages requested so far (hits + misses)."""
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        """Hits / requests over every access so far (0.0 before the first request)."""
        return self.hits / self.requests if self.requests else 0.0

    def resident(self) -> list[Page]:
        """The pages in the fast tier, in slot order."""
        return [p.page for p in sorted(self._pages.values(), key=lambda p: p.slot)]

    def __contains__(self, page: Page) -> bool:
        return check_page(page) in self._pages

    def __len__(self) -> int:
        return len(self._pages)

    def slot_of(self, page: Page) -> int:
        """The fast-tier slot holding ``page``."""
        if check_page(page) not in self._pages:
            raise InvalidArgumentError(f"page {page!r} is not in the fast tier")
        return self._pages[page].slot

    def stats(self, page: Page) -> PageStats:
        """A copy of what the tier knows about a resident page."""
        if check_page(page) not in self._pages:
            raise InvalidArgumentError(f"page {page!r} is not in the fast tier")
        p = self._pages[page]
        return PageStats(p.page, p.slot, p.loaded_tick, p.last_tick, p.uses, p.priority)

    def invalidate(self, pages: Iterable[Page]) -> list[Page]:
        """Forget ``pages`` (those resident): their content changed elsewhere, e.g. a freed block
        was handed to another sequence. Their slots become free; this is not an eviction and
        moves no bytes. Returns the pages that were resident."""
        dropped = []
        for page in check_pages(pages, "pages"):  # checked first: a bad page changes nothing
            stats = self._pages.pop(page, None)
            if stats is not None:
                self._free_slots.append(stats.slot)
                dropped.append(page)
        return dropped

    # ------------------------------------------------------------------ access
    def access(self, requested: Iterable[Page], scores: Mapping[Page, float] | None = None) -> TierRecord:
        """One decode step: make every requested page resident; return what happened.

        ``scores`` (optional; checked always, read only by policies that use them) are this
        step's scores of some pages: each resident page's priority is updated
        first, so the policy sees this step's scores when it chooses what to
        evict, and a page that enters takes its score as its first priority.
        Raises :class:`~tinyserve_sim.errors.InvalidArgumentError`, changing
        nothing, when more distinct pages are requested than the fast tier holds, or
        when an input is malformed: ``requested`` not an iterable of hashable pages,
        ``scores`` not a mapping, a score that is not a real number or is NaN.
        Everything is checked before anything changes.
        """
        wanted = check_pages(requested, "requested")  # distinct, in request order
        if len(wanted) > self.capacity:
            raise InvalidArgumentError(
                f"{len(wanted)} pages requested in one step but the fast tier holds {self.capacity}: "
                "raise the capacity or lower the selection budget"
            )
        if scores is not None and not isinstance(scores, Mapping):
            raise InvalidArgumentError(f"scores must be a mapping page -> score, got {short_repr(scores)}")
        scores = {page: check_score(value, page) for page, value in (scores or {}).items()}
        if not self.policy.uses_scores:
            scores = {}
        for stats in self._pages.values():
            if stats.page in scores:
                stats.priority = self.policy.update_priority(stats.priority, scores[stats.page])
        wanted_set = set(wanted)
        hits, loads, evicted = [], [], []
        for page in wanted:
            self._tick += 1
            stats = self._pages.get(page)
            if stats is not None:
                hits.append(page)
            else:
                if not self._free_slots:
                    candidates = [p for p in self._pages.values() if p.page not in wanted_set]
                    victim = self.policy.victim(candidates)
                    del self._pages[victim.page]
                    self._free_slots.append(victim.slot)
                    evicted.append((victim.page, victim.slot))
                slot = self._free_slots.pop()
                first = self.policy.update_priority(None, scores[page]) if page in scores else 0.0
                stats = PageStats(page, slot, self._tick, self._tick, 0, first)
                self._pages[page] = stats
                loads.append((page, slot))
                if self.on_load is not None:
                    self.on_load(page, slot)
            stats.last_tick = self._tick
            stats.uses += 1
        record = TierRecord(
            step=self.steps,
            requested=tuple(wanted),
            hits=tuple(hits),
            loads=tuple(loads),
            evicted=tuple(evicted),
            bytes_moved=len(loads) * self.page_bytes,
            resident=len(self._pages),
        )
        self.hits += len(hits)
        self.misses += len(loads)
        self.evictions += len(evicted)
        self.bytes_moved += record.bytes_moved
        self.steps += 1
        return record


def belady_hit_rate(requests: Sequence[Iterable[Page]], capacity: int) -> float:
    """The best hit rate any policy can reach on ``requests`` (one list of pages per step).

    Belady's rule (Belady, 1966): on a miss with a full tier, evict the
    resident page (not requested in this step) whose next request is farthest
    in the future, or never comes. It needs the future, so no real cache can
    run it; it is the ceiling against which the real policies are measured.

    >>> belady_hit_rate([["a"], ["b"], ["c"], ["a"]], capacity=2)   # c evicts b, not a: a hits
    0.25
    """
    check_int(capacity, "capacity", 1, MAX_CAPACITY)
    if isinstance(requests, (str, bytes)):
        raise InvalidArgumentError("requests must be a list of steps (each a list of pages), not a string")
    try:
        steps = [check_pages(step, f"requests[{i}]") for i, step in enumerate(requests)]
    except TypeError:
        raise InvalidArgumentError(f"requests must be a list of steps, got {short_repr(requests)}") from None
    uses: dict[Page, list[int]] = {}
    for i, step in enumerate(steps):
        for page in step:
            uses.setdefault(page, []).append(i)
    cursor = {page: 0 for page in uses}  # index into uses[page] of its next request
    resident: set[Page] = set()
    hits = total = 0
    for i, step in enumerate(steps):
        if len(step) > capacity:
            raise InvalidArgumentError(f"{len(step)} pages requested in step {i} but the fast tier holds {capacity}")
        for page in step:
            cursor[page] += 1  # this request is now in the past
        wanted = set(step)
        for page in step:
            total += 1
            if page in resident:
                hits += 1
                continue
            if len(resident) >= capacity:
                def next_use(p: Page) -> float:
                    k = cursor[p]
                    return uses[p][k] if k < len(uses[p]) else math.inf

                victim = max((p for p in resident if p not in wanted), key=lambda p: (next_use(p), repr(p)))
                resident.remove(victim)
            resident.add(page)
    return hits / total if total else 0.0


class FastTier:
    """The fast tier's data: ``capacity`` page slots of keys and values on a backend.

    A page is one KV head of one block: ``[block_size, head_dim]`` of keys and
    as much of values. :meth:`load` copies a page in from host arrays: on the
    ``"cupy"`` backend that is a real host-to-device copy (``cupy.asarray``);
    on ``"numpy"`` a host copy. Give :meth:`load` to a :class:`TwoTierCache` as
    its ``on_load`` (through a small function that finds the page's data).

    Args:
        backend: a :class:`~tinyserve_sim.data.backends.Backend` (``KVCache.backend``).
        capacity, block_size, head_dim, dtype: the slots' shape and type.
    """

    def __init__(self, backend: Any, capacity: int, block_size: int, head_dim: int, dtype: Any) -> None:
        self.backend = backend
        self.shape = (capacity, block_size, head_dim)
        self.dtype = np.dtype(dtype)
        self.keys = backend.full(self.shape, 0.0, self.dtype)
        self.values = backend.full(self.shape, 0.0, self.dtype)
        self.bytes_copied = 0

    @property
    def page_bytes(self) -> int:
        """Bytes of one page: keys and values."""
        return 2 * self.shape[1] * self.shape[2] * self.dtype.itemsize

    def load(self, slot: int, keys: np.ndarray, values: np.ndarray) -> None:
        """Copy one page (host arrays ``[block_size, head_dim]``) into ``slot``."""
        if keys.shape != self.shape[1:] or values.shape != self.shape[1:]:
            raise InvalidArgumentError(f"a page is {self.shape[1:]}, got keys {keys.shape}, values {values.shape}")
        self.keys[slot] = self.backend.asarray(np.ascontiguousarray(keys, dtype=self.dtype))
        self.values[slot] = self.backend.asarray(np.ascontiguousarray(values, dtype=self.dtype))
        self.bytes_copied += self.page_bytes

    def write_token(self, slot: int, offset: int, key: np.ndarray, value: np.ndarray) -> None:
        """Write one new token (``[head_dim]`` each) into a resident page: the write-through of a decode step."""
        self.keys[slot, offset] = self.backend.asarray(np.ascontiguousarray(key, dtype=self.dtype))
        self.values[slot, offset] = self.backend.asarray(np.ascontiguousarray(value, dtype=self.dtype))

    def page(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """Host copies of the page in ``slot``."""
        return self.backend.to_numpy(self.keys[slot]), self.backend.to_numpy(self.values[slot])
