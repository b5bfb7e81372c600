"""The per-step selector: score every page, keep the best within a budget, and say why.

At each decode step, for each (sequence, KV head), three kernels of the data
plane run in turn (their NumPy twins here, their CUDA kernels on the
``"cupy"`` backend, bit for bit the same):

1. :func:`~tinyserve_sim.data.page_scores.page_scores` reads the page metadata
   (channel-wise key min and max, kept up to date by the cache) and gives every
   page an upper bound on ``q . k`` over its tokens; with grouped-query
   attention, the maximum over the group's query heads;
2. :func:`~tinyserve_sim.data.select_pages.select_pages` keeps, within a token
   budget, the first page (the attention sink), the page holding the newest
   token, and the best-scoring others (ties to the lower logical index), and
   returns them as compacted per-head block tables, in logical order;
3. paged attention then reads only those tables.

:func:`select_step` runs 1 and 2 and returns a :class:`SelectionRecord`, which
hides nothing: every page's score, which pages were kept and *why* (sink,
newest, top-K), and the bytes the step reads compared with dense attention::

    record = select_step(cache, query, batch, budget_tokens=256)
    print(record.explain())
    record.sparse          # the DecodeBatch with per-head tables for paged attention

Bytes: dense attention reads every token's key and value; sparse attention
reads the selected tokens' keys and values *plus* every page's metadata (a
minimum and a maximum per channel, ``2 / block_size`` of the keys). With
16-token pages and a 1/8 budget that is ``1/8 + 1/16`` of the dense bytes: a
ceiling of 5.3x, not 8x, on the speed-up of any implementation (a little more
when the newest page is only partly filled, so fewer tokens than the budget are
read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.control.checks import INT64_MAX, check_block_size, check_int, is_real, short_repr
from tinyserve_sim.errors import InvalidArgumentError

#: Why a page was kept: bit flags of :attr:`SelectionRecord.reasons`.
SINK, NEWEST, TOP_K = 1, 2, 4
REASON_NAMES = {SINK: "sink", NEWEST: "newest", TOP_K: "top-k"}


def reason_label(flags: int) -> str:
    """``"sink"``, ``"newest"``, ``"top-k"``, ``"sink+newest"``... or ``""`` for a page not kept."""
    return "+".join(name for bit, name in REASON_NAMES.items() if flags & bit)


@dataclass(frozen=True, eq=False)
class SelectionRecord:
    """What one step's selection did (see the module doc).

    Attributes:
        step: the decode step.
        batch: the dense batch the selection started from (one table per sequence).
        sparse: the selected pages: per-head tables ``[S, Hkv, W']`` and lengths ``[S, Hkv]``.
        scores: float32 ``[S, Hkv, W]``, every page's score by logical index (``-inf`` past the end).
        reasons: int8 ``[S, Hkv, W]``: 0 for a page not kept, else :data:`SINK` | :data:`NEWEST` | :data:`TOP_K`.
        budget_tokens: the budget per (sequence, KV head).
        head_dim, itemsize: for the byte counts.
    """

    step: int
    batch: DecodeBatch
    sparse: DecodeBatch
    scores: np.ndarray
    reasons: np.ndarray
    budget_tokens: int
    head_dim: int
    itemsize: int

    # ------------------------------------------------------------- shapes
    @property
    def num_seqs(self) -> int:
        return self.batch.num_seqs

    @property
    def num_kv_heads(self) -> int:
        return int(self.scores.shape[1])

    @property
    def num_pages(self) -> np.ndarray:
        """int ``[S]``: pages of each sequence."""
        bs = self.batch.block_size
        return (self.batch.seq_lens.astype(np.int64) + bs - 1) // bs

    def selected(self, seq: int, kv_head: int) -> list[int]:
        """Logical indices of the pages kept for ``(seq, kv_head)``, in logical order."""
        return [int(i) for i in np.flatnonzero(self.reasons[seq, kv_head])]

    def physical_selected(self, seq: int, kv_head: int) -> list[int]:
        """The same pages as physical block ids (the compacted table's row)."""
        return [int(self.batch.block_tables[seq, i]) for i in self.selected(seq, kv_head)]

    def ranks(self, seq: int, kv_head: int) -> np.ndarray:
        """Each page's place in its head's ranking: 0 for the best score; ties to the lower index."""
        return self.all_ranks()[seq, kv_head, : int(self.num_pages[seq])]

    def all_ranks(self) -> np.ndarray:
        """:meth:`ranks` of every row at once: int64 ``[S, Hkv, W]`` (pages past a row's end rank last)."""
        # A stable sort of the negated scores puts the best first and keeps equal scores in index order.
        order = np.argsort(-self.scores.astype(np.float64), axis=-1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(order.shape[-1])[None, None, :], axis=-1)
        return rank

    # -------------------------------------------------------------- bytes
    def _row_bytes(self, tokens: int) -> int:
        return 2 * tokens * self.head_dim * self.itemsize  # keys and values

    @property
    def dense_bytes(self) -> int:
        """Bytes dense attention reads: every token's key and value, for every KV head."""
        return self._row_bytes(int(self.batch.seq_lens.sum())) * self.num_kv_heads

    @property
    def selected_bytes(self) -> int:
        """Bytes of the selected tokens' keys and values."""
        return self._row_bytes(int(self.sparse.seq_lens.sum()))

    @property
    def metadata_bytes(self) -> int:
        """Bytes of the metadata scoring reads: a min and a max per channel, per page and KV head."""
        return self._row_bytes(int(self.num_pages.sum())) * self.num_kv_heads

    @property
    def sparse_bytes(self) -> int:
        """What the sparse step reads: selected keys and values plus the metadata."""
        return self.selected_bytes + self.metadata_bytes

    @property
    def byte_ceiling(self) -> float:
        """``dense_bytes / sparse_bytes``: no implementation's speed-up can exceed it."""
        return self.dense_bytes / self.sparse_bytes

    @property
    def pages_selected(self) -> int:
        return int(np.count_nonzero(self.reasons))

    # ------------------------------------------------------------ explain
    def explain_row(self, seq: int, kv_head: int) -> str:
        """One line for ``(seq, kv_head)``: pages kept, by reason."""
        name = self.batch.seq_ids[seq] if self.batch.seq_ids else seq
        n = int(self.num_pages[seq])
        kept = self.selected(seq, kv_head)
        by_reason = []
        for bit, label in REASON_NAMES.items():
            pages = [str(i) for i in kept if self.reasons[seq, kv_head, i] & bit]
            if pages:
                by_reason.append(f"{label} {' '.join(pages)}")
        tokens = int(self.sparse.seq_lens[seq, kv_head])
        return (f"seq {name!r} head {kv_head}: {len(kept)} of {n} pages ({tokens} of "
                f"{int(self.batch.seq_lens[seq])} tokens): " + "; ".join(by_reason))

    def explain(self) -> str:
        """Every (sequence, KV head) on its own line, then the bytes."""
        lines = [f"step {self.step}: budget {self.budget_tokens} tokens per head"]
        for s in range(self.num_seqs):
            for h in range(self.num_kv_heads):
                lines.append("  " + self.explain_row(s, h))
        lines.append(
            f"  reads {self.sparse_bytes:,} bytes ({self.selected_bytes:,} K/V + {self.metadata_bytes:,} metadata) "
            f"instead of {self.dense_bytes:,}: byte ceiling {self.byte_ceiling:.2f}x"
        )
        return "\n".join(lines)


def selection_reasons(batch: DecodeBatch, sparse: DecodeBatch, num_kv_heads: int) -> np.ndarray:
    """Why each page was kept, from the dense tables and the compacted selection (int8 ``[S, Hkv, W]``).

    A selected physical block is found in its sequence's dense row; its logical
    index ``i`` is the sink when ``i == 0``, the newest page when it is the
    sequence's last, and a top-K choice otherwise (flags combine when one page
    is both sink and newest).
    """
    S, W = batch.num_seqs, batch.max_blocks
    sel_tables, sel_lens = sparse.head_tables(num_kv_heads)
    bs = batch.block_size
    reasons = np.zeros((S, num_kv_heads, W), dtype=np.int8)
    for s in range(S):
        n = -(-int(batch.seq_lens[s]) // bs)
        logical = {int(b): i for i, b in enumerate(batch.block_tables[s, :n])}
        for h in range(num_kv_heads):
            n_sel = -(-int(sel_lens[s, h]) // bs)
            for b in sel_tables[s, h, :n_sel]:
                if int(b) not in logical:
                    raise InvalidArgumentError(f"selected block {int(b)} is not in sequence row {s}")
                i = logical[int(b)]
                flags = (SINK if i == 0 else 0) | (NEWEST if i == n - 1 else 0)
                reasons[s, h, i] = flags or TOP_K
    return reasons


def check_budget(budget: Any, error: type[Exception] = InvalidArgumentError) -> float | int:
    """``budget`` if it is a positive integer (tokens) or a real number in ``(0, 1]`` (a share);
    else ``error`` naming it."""
    if not is_real(budget):
        raise error(f"budget must be a number of tokens or a fraction in (0, 1], got {short_repr(budget)}")
    if isinstance(budget, (int, np.integer)):
        check_int(budget, "a token budget", 1, INT64_MAX, error)
    elif not 0.0 < float(budget) <= 1.0:
        raise error(f"a fractional budget must be in (0, 1], got {budget}")
    return budget


def budget_in_tokens(budget: float | int, context_tokens: int, block_size: int) -> int:
    """A budget as tokens: an int is taken as it is; a float in ``(0, 1]`` is a share of
    ``context_tokens``, rounded to whole pages (at least two: the sink and the newest page).
    ``context_tokens`` and ``block_size`` are positive integers."""
    check_budget(budget)
    check_int(context_tokens, "context_tokens", 1, INT64_MAX)
    check_block_size(block_size)
    if isinstance(budget, (int, np.integer)):
        return int(budget)
    pages = max(2, round(float(budget) * context_tokens / block_size))
    return pages * block_size


def select_step(
    cache: Any,
    query: Any,
    batch: DecodeBatch,
    budget_tokens: int,
    step: int = 0,
) -> SelectionRecord:
    """Score and select the pages of one decode step (see the module doc).

    Args:
        cache: a :class:`~tinyserve_sim.data.cache.KVCache` that keeps page metadata.
        query: ``[S, Hq, D]``, the step's queries, in the cache dtype.
        batch: the step's dense batch (one table per sequence), e.g.
            :meth:`DecodeBatch.from_manager <tinyserve_sim.control.batch.DecodeBatch.from_manager>`.
        budget_tokens: tokens each (sequence, KV head) may read (see :func:`budget_in_tokens`).
        step: the step's index, for the record.
    """
    if not isinstance(batch, DecodeBatch) or batch.per_head:
        raise InvalidArgumentError("select_step starts from a dense DecodeBatch (one table per sequence)")
    if isinstance(budget_tokens, bool) or not isinstance(budget_tokens, (int, np.integer)):
        raise InvalidArgumentError(
            f"budget_tokens must be an integer (see budget_in_tokens), got {short_repr(budget_tokens)}"
        )
    if not getattr(cache, "has_page_metadata", False):
        raise InvalidArgumentError("this KVCache keeps no page metadata: create it with page_metadata=True")
    backend = cache.backend
    scores_dev = cache.page_scores(query, batch)
    sparse = backend.select_pages(scores_dev, batch, int(budget_tokens))
    scores = backend.to_numpy(scores_dev)
    num_kv_heads = int(cache.shape[2])
    return SelectionRecord(
        step=step,
        batch=batch,
        sparse=sparse,
        scores=scores,
        reasons=selection_reasons(batch, sparse, num_kv_heads),
        budget_tokens=int(budget_tokens),
        head_dim=int(cache.shape[3]),
        itemsize=int(np.dtype(cache.dtype).itemsize),
    )

