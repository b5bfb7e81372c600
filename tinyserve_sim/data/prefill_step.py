"""What a prefill step did on the data plane, and the attention work a prefix-cache hit saved.

:meth:`KVCache.prefill <tinyserve_sim.data.cache.KVCache.prefill>` returns a
:class:`PrefillStep`: the attention output, and one :class:`PrefillWork` per
sequence that says where its keys came from and what the attention cost.

The work is counted in (query token, key token) *pairs* per query head: the
new token at position ``pos`` attends to ``pos + 1`` keys. Each pair costs
``2 D`` floating-point operations for ``q . k`` and ``2 D`` for ``p v``, so a
step's attention FLOPs are ``4 D Hq * pairs`` (the usual count, as in the
FlashAttention papers; the softmax itself is not counted).

A prefix-cache hit of ``H`` tokens means those tokens' keys and values are
already in cached blocks: the step computes only the remaining new tokens,
which *read* the ``H`` cached keys. Recomputing the prefix would have cost the
``H (H + 1) / 2`` pairs of its own causal attention (plus its projections and
MLP, which this simulator does not model); that is the ``saved`` count.

The number of hit tokens comes from the control plane's record of the
``add``: ``len(record.cache_hits) * block_size`` (only full blocks are cached).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tinyserve_sim.control.prefill_batch import PrefillBatch
from tinyserve_sim.control.records import SeqId


def causal_pairs(num_prefix: int, num_new: int) -> int:
    """(query, key) pairs of ``num_new`` new tokens after ``num_prefix`` cached ones, per head.

    >>> causal_pairs(0, 4), causal_pairs(8, 4)     # 1+2+3+4, then 9+10+11+12
    (10, 42)
    """
    return num_new * num_prefix + num_new * (num_new + 1) // 2


@dataclass(frozen=True)
class PrefillWork:
    """One sequence of a prefill step.

    Attributes:
        seq_id: the sequence (its row number when the batch has no ids).
        num_new_tokens: tokens whose attention this step computed.
        num_prefix_tokens: tokens before them, read from the cache, not computed
            (a prefix-cache hit, or earlier chunks of a chunked prefill).
        num_prefix_cache_tokens: of those, the tokens this step's ``add`` found
            in the prefix cache (``len(record.cache_hits) * block_size``).
        attention_pairs: (query, key) pairs computed, per query head.
        saved_pairs: pairs that recomputing the prefix-cache hit would have cost.
    """

    seq_id: SeqId
    num_new_tokens: int
    num_prefix_tokens: int
    num_prefix_cache_tokens: int
    attention_pairs: int
    saved_pairs: int

    def flops(self, num_heads: int, head_dim: int) -> int:
        """Attention FLOPs this sequence's step cost: ``4 * head_dim * num_heads * attention_pairs``."""
        return 4 * head_dim * num_heads * self.attention_pairs

    def saved_flops(self, num_heads: int, head_dim: int) -> int:
        """Attention FLOPs the prefix-cache hit saved: ``4 * head_dim * num_heads * saved_pairs``."""
        return 4 * head_dim * num_heads * self.saved_pairs

    def explain(self) -> str:
        """One line: what was read, what was computed, what was saved."""
        text = f"{self.seq_id!r}: computed {self.num_new_tokens} new token(s)"
        if self.num_prefix_tokens:
            text += f" over {self.num_prefix_tokens} cached token(s)"
        if self.num_prefix_cache_tokens:
            text += f" ({self.num_prefix_cache_tokens} from the prefix cache)"
        text += f"; {self.attention_pairs:,} query-key pairs per head"
        if self.saved_pairs:
            text += f", {self.saved_pairs:,} saved"
        return text


@dataclass(frozen=True, eq=False)
class PrefillStep:
    """The data-plane record of one prefill step.

    Attributes:
        output: the attention output ``[T, Hq, D]`` (on the cache's backend).
        work: one :class:`PrefillWork` per sequence, in the batch's order.
        num_heads, head_dim: the query's ``Hq`` and ``D`` (for the FLOP counts).
    """

    output: Any
    work: tuple[PrefillWork, ...]
    num_heads: int
    head_dim: int

    @property
    def attention_pairs(self) -> int:
        return sum(w.attention_pairs for w in self.work)

    @property
    def saved_pairs(self) -> int:
        return sum(w.saved_pairs for w in self.work)

    @property
    def flops(self) -> int:
        """Attention FLOPs of the step (all sequences, all query heads)."""
        return sum(w.flops(self.num_heads, self.head_dim) for w in self.work)

    @property
    def saved_flops(self) -> int:
        """Attention FLOPs the step's prefix-cache hits saved."""
        return sum(w.saved_flops(self.num_heads, self.head_dim) for w in self.work)

    def explain(self) -> str:
        """One line per sequence, then the totals."""
        lines = [w.explain() for w in self.work]
        lines.append(
            f"attention: {self.flops:,} FLOPs ({self.num_heads} heads x dim {self.head_dim})"
            + (f"; the prefix cache saved {self.saved_flops:,}" if self.saved_flops else "")
        )
        return "\n".join(lines)


def prefill_work(records: Sequence[Any], batch: PrefillBatch) -> tuple[PrefillWork, ...]:
    """Each batch row's :class:`PrefillWork`; ``records`` (the step's ``add``/``append``
    records, or none) supply the prefix-cache hits, matched to rows by sequence id.

    >>> b = PrefillBatch.from_tables([[0, 1, 2]], seq_lens=[10], query_lens=[2], block_size=4)
    >>> prefill_work([], b)[0]
    PrefillWork(seq_id=0, num_new_tokens=2, num_prefix_tokens=8, num_prefix_cache_tokens=0, attention_pairs=19, saved_pairs=0)
    """
    hits = {rec.seq_id: len(getattr(rec, "cache_hits", ())) * batch.block_size for rec in records}
    ids = batch.seq_ids or tuple(range(batch.num_seqs))
    work = []
    for seq, q, p in zip(ids, batch.query_lens.tolist(), batch.prefix_lens.tolist()):
        h = hits.get(seq, 0)
        work.append(PrefillWork(seq, q, p, h, causal_pairs(p, q), causal_pairs(0, h)))
    return tuple(work)

