"""The seed's cache heuristics, as they were evidently meant to work: twins of ``gpu/kernels/seed_heuristics.cu``.

The TinyServe README prints three "query-aware cache selection" kernels. As
printed they do not compute what their comments say (``docs/errata.md`` lists
why: a loop that reads one element ``hidden_size`` times, a race on the
complexity sum, cache-block ids that collide, a kernel that does not compile).
This module implements what they were meant to do, so the claims can be
examined on their own terms. None of them looks at the keys: that is what
:mod:`~tinyserve_sim.data.page_scores` does (Quest's bound), and why the
project's selection uses it instead.

1. :func:`query_analysis` - a **complexity** per query position from the
   query's magnitude, the mean of its squared elements, bucketed into a
   **cache requirement**: 2 (high) above ``high_threshold``, 1 (medium)
   above ``low_threshold``, else 0 (low). The seed sums ``q_d**2`` without
   dividing by ``hidden_size``; its thresholds (0.5 and 0.2) only make sense
   for a per-element scale, which the mean provides (an RMS-normalised
   activation has a mean square near 1 whatever the hidden size).
2. :func:`cache_selection` - a **selection score**
   ``0.4 * complexity + 0.3 * requirement + 0.3 * history / 100`` per
   position; above ``threshold`` the position is granted
   ``min(requirement + 1, 4)`` cache blocks, above ``threshold / 2`` one,
   else none. Position ``i`` owns slots ``4i .. 4i + 3`` of the seed's
   ``selected_cache_blocks`` array, so positions can no longer overwrite each
   other; the kernel returns the count.
3. :func:`adaptive_cache_management` - per cache block, raise the allocation
   by one (up to 4) when its hit rate is below ``hit_rate_threshold`` and its
   access frequency above ``frequency_threshold``; lower it by one (down to 0)
   when the hit rate is above 1.5 x the threshold and the frequency below
   half of its threshold. (The seed also adds 1 to every frequency on every
   call, through a ``const`` pointer; frequencies are an input here.)

Every float operation is float32 and in the order written, so both backends
give identical bits: the squares' sum follows a fixed tree (see
:func:`query_analysis`), the rest is elementwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tinyserve_sim.control.checks import is_real, short_repr
from tinyserve_sim.data.exact_math import pairwise_sum, sequential_sum
from tinyserve_sim.data.validation import CACHE_DTYPES, check_array, to_host
from tinyserve_sim.errors import KernelInputError

F32 = np.float32
#: Threads that share one query position in the query-analysis kernel.
ANALYSIS_THREADS = 128
#: The seed's bounds on a block's cache allocation and on a position's grant.
MAX_ALLOCATION = 4
#: The seed's default thresholds.
LOW_THRESHOLD, HIGH_THRESHOLD = 0.2, 0.5
#: The seed's weights (float32, as its ``0.4f``, ``0.3f``, ``100.0f`` literals).
W_COMPLEXITY, W_REQUIREMENT, W_HISTORY, HISTORY_SCALE = F32(0.4), F32(0.3), F32(0.3), F32(100.0)


def _finite32(name: str, value: Any) -> np.float32:
    """``value`` as the float32 the kernel receives: a real number (not a bool), finite as a float32."""
    if not is_real(value):
        raise KernelInputError(f"{name} must be a real number, got {short_repr(value)}")
    try:
        with np.errstate(over="ignore"):
            v = F32(value)
    except OverflowError:  # a Python int too large for any float
        v = F32(np.inf)
    if not np.isfinite(v):
        raise KernelInputError(f"{name} must be finite as a float32, got {short_repr(value)}")
    return v


def _vector(name: str, a: Any, dtype: type, n: int | None = None) -> np.ndarray:
    check_array(name, a)
    if np.dtype(a.dtype) != np.dtype(dtype) or a.ndim != 1:
        raise KernelInputError(f"{name} must be 1-D {np.dtype(dtype)}, got {a.dtype} {tuple(a.shape)}")
    if n is not None and a.shape[0] != n:
        raise KernelInputError(f"{name} has {a.shape[0]} entries, expected {n}")
    if not a.flags.c_contiguous:
        raise KernelInputError(f"{name} must be C-contiguous (the kernel ignores strides)")
    return a


def _no_nan(name: str, a: np.ndarray) -> None:
    """A small host vector holds no NaN (NaN compares false with every threshold: it would pass silently)."""
    nan = np.isnan(a)
    if nan.any():
        raise KernelInputError(f"{name} must not hold NaN, got NaN at {name}[{int(np.argmax(nan))}]")


def check_query_analysis(queries: Any, low_threshold: Any, high_threshold: Any) -> tuple[np.float32, np.float32]:
    """Check ``query_analysis`` inputs (shared with the GPU launcher)."""
    check_array("queries", queries)
    if queries.ndim != 2 or np.dtype(queries.dtype) not in CACHE_DTYPES:
        raise KernelInputError(
            f"queries must be float16/float32 [positions, hidden], got {queries.dtype} {tuple(queries.shape)}"
        )
    if queries.shape[1] < 1:
        raise KernelInputError("queries have no hidden elements")
    if not queries.flags.c_contiguous:
        raise KernelInputError("queries must be C-contiguous (the kernel ignores strides)")
    lo, hi = _finite32("low_threshold", low_threshold), _finite32("high_threshold", high_threshold)
    if lo > hi:
        raise KernelInputError(f"low_threshold {lo} is above high_threshold {hi}")
    return lo, hi


def query_analysis(
    queries: np.ndarray, low_threshold: float = LOW_THRESHOLD, high_threshold: float = HIGH_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """Complexity (float32 ``[N]``) and cache requirement (int32 ``[N]``, 0/1/2) of each query position.

    Args:
        queries: ``[N, hidden]``, float16 or float32: one row per position
            (reshape ``[S, Hq, D]`` to ``[S, Hq * D]`` for a decode step).
        low_threshold, high_threshold: the requirement is 2 when the complexity
            is above ``high_threshold``, 1 when above ``low_threshold``, else 0
            (finite real numbers, ``low_threshold <= high_threshold``).

    The queries are not scanned on the host (they may be large, on a device): a
    NaN element gives its position a NaN complexity and requirement 0.

    Order of operations: thread ``t`` of the position's 128 sums ``q_d * q_d``
    for ``d = t, t + 128, ...`` sequentially; the 128 partial sums are added by
    a pairwise tree (warp butterflies, then the 4 warps pairwise:
    :func:`~tinyserve_sim.data.exact_math.pairwise_sum`); the complexity is that
    total divided by ``hidden`` (IEEE division).

    >>> c, r = query_analysis(np.array([[1.0, 1.0], [0.5, -0.5], [0.25, 0.25]], np.float32))
    >>> c.tolist(), r.tolist()
    ([1.0, 0.25, 0.0625], [2, 1, 0])
    """
    lo, hi = check_query_analysis(queries, low_threshold, high_threshold)
    N, hidden = queries.shape
    q = to_host(queries).astype(F32)
    width = -(-hidden // ANALYSIS_THREADS) * ANALYSIS_THREADS
    padded = np.zeros((N, width), dtype=F32)  # zeros add nothing: +0 + +0 stays +0
    padded[:, :hidden] = q * q
    # Element d goes to thread d % 128, in increasing d: a [N, rounds, 128] view.
    partials = sequential_sum(padded.reshape(N, width // ANALYSIS_THREADS, ANALYSIS_THREADS), axis=1)
    complexity = pairwise_sum(partials, axis=-1) / F32(hidden)
    requirement = np.where(complexity > hi, 2, np.where(complexity > lo, 1, 0)).astype(np.int32)
    return complexity.astype(F32), requirement


def check_cache_selection(complexity: Any, requirement: Any, history: Any, threshold: Any) -> np.float32:
    """Check ``cache_selection`` inputs (shared with the GPU launcher)."""
    n = _vector("complexity", complexity, np.float32).shape[0]
    _vector("requirement", requirement, np.int32, n)
    _vector("history", history, np.int32, n)
    r = to_host(requirement)
    if r.size and (int(r.min()) < 0 or int(r.max()) > 2):
        raise KernelInputError("requirement values must be 0, 1 or 2")
    _no_nan("complexity", to_host(complexity))
    return _finite32("threshold", threshold)


def cache_selection(
    complexity: np.ndarray, requirement: np.ndarray, history: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """The seed's selection score (float32 ``[N]``) and the cache blocks granted (int32 ``[N]``, 0..4).

    ``score = (complexity * 0.4 + requirement * 0.3) + (history / 100) * 0.3``
    (a NaN complexity is rejected),
    each operation float32, left to right as the seed's C expression. Granted:
    ``min(requirement + 1, 4)`` when ``score > threshold``, 1 when ``score >
    threshold * 0.5``, else 0.

    >>> s, g = cache_selection(np.array([1.0, 0.5, 0.0], np.float32), np.array([2, 1, 0], np.int32),
    ...                        np.array([50, 0, 10], np.int32), threshold=0.8)
    >>> g.tolist()
    [3, 1, 0]
    """
    thr = check_cache_selection(complexity, requirement, history, threshold)
    c = to_host(complexity)
    r = to_host(requirement).astype(F32)
    h = to_host(history).astype(F32)
    score = (c * W_COMPLEXITY + r * W_REQUIREMENT) + (h / HISTORY_SCALE) * W_HISTORY
    high = np.minimum(to_host(requirement) + 1, MAX_ALLOCATION)
    granted = np.where(score > thr, high, np.where(score > thr * F32(0.5), 1, 0)).astype(np.int32)
    return score.astype(F32), granted


def check_adaptive_cache_management(
    hit_rates: Any, access_frequencies: Any, allocation: Any, hit_rate_threshold: Any, frequency_threshold: Any
) -> tuple[np.float32, int]:
    """Check ``adaptive_cache_management`` inputs (shared with the GPU launcher)."""
    n = _vector("hit_rates", hit_rates, np.float32).shape[0]
    _vector("access_frequencies", access_frequencies, np.int32, n)
    _vector("allocation", allocation, np.int32, n)
    a = to_host(allocation)
    if a.size and (int(a.min()) < 0 or int(a.max()) > MAX_ALLOCATION):
        raise KernelInputError(f"allocation values must be in 0..{MAX_ALLOCATION}")
    h = to_host(hit_rates)
    outside = ~((h >= 0) & (h <= 1))  # NaN is outside too
    if outside.any():
        i = int(np.argmax(outside))
        raise KernelInputError(f"hit_rates must be in [0, 1], got hit_rates[{i}] = {h[i]}")
    if isinstance(frequency_threshold, bool) or not isinstance(frequency_threshold, (int, np.integer)):
        raise KernelInputError(f"frequency_threshold must be an integer, got {frequency_threshold!r}")
    if not -(2**24) <= int(frequency_threshold) <= 2**24:
        raise KernelInputError("frequency_threshold must be within +-2**24 (exact as a float32)")
    return _finite32("hit_rate_threshold", hit_rate_threshold), int(frequency_threshold)


def adaptive_cache_management(
    hit_rates: np.ndarray,
    access_frequencies: np.ndarray,
    allocation: np.ndarray,
    hit_rate_threshold: float,
    frequency_threshold: int,
) -> np.ndarray:
    """Each cache block's new allocation (int32 ``[B]``, 0..4); the inputs are not modified.

    Hit rates must lie in ``[0, 1]`` (NaN is rejected: it compares false with
    both thresholds). Raise by one (at most 4) when ``hit_rate < hit_rate_threshold`` and
    ``frequency > frequency_threshold``; else lower by one (at least 0) when
    ``hit_rate > hit_rate_threshold * 1.5`` and ``frequency <
    frequency_threshold * 0.5`` (float32 comparisons, as in the seed).

    >>> adaptive_cache_management(np.array([0.1, 0.9, 0.5], np.float32), np.array([50, 1, 5], np.int32),
    ...                           np.array([4, 2, 2], np.int32), hit_rate_threshold=0.5,
    ...                           frequency_threshold=10).tolist()
    [4, 1, 2]
    """
    thr, fthr = check_adaptive_cache_management(
        hit_rates, access_frequencies, allocation, hit_rate_threshold, frequency_threshold
    )
    hit = to_host(hit_rates)
    freq = to_host(access_frequencies)
    alloc = to_host(allocation)
    raise_it = (hit < thr) & (freq > fthr)
    lower_it = (hit > thr * F32(1.5)) & (freq.astype(F32) < F32(fthr) * F32(0.5))
    new = np.where(raise_it, np.minimum(alloc + 1, MAX_ALLOCATION), np.where(lower_it, np.maximum(alloc - 1, 0), alloc))
    return new.astype(np.int32)
