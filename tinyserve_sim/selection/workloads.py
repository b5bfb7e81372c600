"""Attention workloads: keys, values and queries with the structure of real attention, from a seed.

Query-aware selection only pays off because real attention is *sparse*: for a
given query, a few tokens take most of the softmax mass. Random Gaussian keys
and queries have no such structure (every token gets about the same weight),
so a selection experiment on them would measure nothing. This module builds
keys and queries whose dot products have the four patterns that studies of
trained models report, each with a size you can set in *logit units*
(``x_t = q . k_t / sqrt(D)``, the number the softmax exponentiates):

Attention sink (``sink_logit``)
    The first ``sink_tokens`` tokens get a large logit from every query,
    whatever the context (Xiao et al., *StreamingLLM*, ICLR 2024). Built as
    one direction ``e_sink`` of key space: the sink tokens' keys have
    ``sink_logit * e_sink`` added, and every query has a unit component on it.
Recency (``recency_logit``, ``window``)
    Nearby tokens get more weight. In real models this comes from rotary
    position embeddings (Su et al., *RoFormer*, 2021): a few channel pairs of
    ``q`` and ``k`` are rotated by an angle proportional to the position, so
    their contribution to ``q . k`` is ``sum_j cos((n - t) theta_j)``: largest
    at distance 0 and averaging out far away. We do exactly that, with
    ``pairs`` rotating channel pairs at random frequencies
    ``theta_j in [0.5, 3] / window``: a token ``n - t`` positions back gets
    about ``recency_logit`` when ``n - t << window``, and a bonus that
    decorrelates to noise beyond a few windows.
Heavy hitters, or needles (``needle_logit``, ``num_topics``, ``needles_per_topic``)
    A few tokens far back matter a lot, but only to the queries that look
    for them (Zhang et al., *H2O*, NeurIPS 2023; the "needle in a haystack"
    tests). Each KV head has ``num_topics`` orthogonal *topic* directions;
    ``needles_per_topic`` tokens per topic, at random positions in the older
    part of the prompt, have ``needle_logit`` times that direction added to
    their keys. At each decode step a sequence's query looks for one topic,
    which stays the same with probability ``topic_stay`` and otherwise jumps
    to another: the set of pages that matter changes over time, which is
    what makes selection *query*-aware rather than a fixed pattern.
Noise (``noise_logit``)
    Every key has isotropic Gaussian noise, scaled so that the logits of
    ordinary tokens have a standard deviation of about ``noise_logit``.

The directions (sink, topics, rotating pairs) are orthonormal vectors drawn
at random per (sequence, KV head), so the structure is spread over every
channel rather than lined up with a few of them: page metadata gets no free
help from the construction. Grouped-query attention: the query heads of a
group share their KV head's directions, and each weighs sink and topic by its
own factor in ``[0.75, 1.25]`` and has its own query noise, so heads of one
group agree on what matters but not on how much.

Values are standard normal. Everything is drawn from ``numpy.random.default_rng(seed)``
and rounded once to the cache dtype, so the same spec always gives the same
bits.

>>> w = generate_attention_workload(AttentionWorkloadSpec(context_len=64, decode_steps=2, head_dim=32, window=8,
...                                                       num_topics=2, needles_per_topic=1, seed=3))
>>> w.keys.shape, w.queries.shape        # [S, tokens, Hkv, D], [steps, S, Hq, D]
((2, 66, 2, 32), (2, 2, 4, 32))
>>> w.prompt_len, w.length_at(1)         # tokens after the prompt, after decode step 1
(64, 66)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from tinyserve_sim.control.checks import is_real, short_repr
from tinyserve_sim.errors import WorkloadError

#: Rotating channel pairs used for recency, at most (fewer when head_dim is small).
MAX_ROTARY_PAIRS = 16
#: The most elements the keys (``num_seqs * (context_len + decode_steps) * num_kv_heads * head_dim``)
#: or the queries (``decode_steps * num_seqs * num_q_heads * head_dim``) of a workload may hold:
#: 2**26, 512 MiB for each float64 array drawn while generating (keys and values, about
#: 1.5 GiB at the peak). Larger runs are beyond a NumPy simulator that computes every step's
#: dense attention in float64; the limit is checked before anything is allocated.
MAX_ELEMENTS = 1 << 26


def _check_index(what: str, value: object, count: int) -> int:
    """``value`` as an int if it is an integer in ``0 .. count - 1``; else WorkloadError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < count:
        raise WorkloadError(f"{what} {short_repr(value)} is outside 0 .. {count - 1}")
    return int(value)


@dataclass(frozen=True)
class AttentionWorkloadSpec:
    """What to generate. Every logit size is in softmax units (``q . k / sqrt(head_dim)``).

    Attributes:
        num_seqs: sequences decoded together.
        context_len: prompt tokens of each sequence (cached before the first decode step).
        decode_steps: decode steps; each appends one token to every sequence.
        num_kv_heads, num_q_heads: grouped-query attention (``num_q_heads`` a multiple).
        head_dim: ``D``.
        sink_tokens: how many first tokens are attention sinks.
        sink_logit: their logit.
        window: recency scale in tokens.
        recency_logit: the recency bonus at distance 0.
        num_topics: topics per KV head (each with its own needles).
        needles_per_topic: heavy-hitter tokens per topic.
        needle_logit: a needle's logit for a query on its topic.
        topic_stay: probability that a sequence's query keeps its topic from one step to the next.
        noise_logit: standard deviation of an ordinary token's logit (about).
        query_noise: relative noise of each query head around its group's direction.
        dtype: the cache dtype, ``"float16"`` or ``"float32"``.
        seed: the random seed.
    """

    num_seqs: int = 2
    context_len: int = 1024
    decode_steps: int = 32
    num_kv_heads: int = 2
    num_q_heads: int = 4
    head_dim: int = 64
    sink_tokens: int = 4
    sink_logit: float = 7.0
    window: int = 32
    recency_logit: float = 5.0
    num_topics: int = 4
    needles_per_topic: int = 3
    needle_logit: float = 8.0
    topic_stay: float = 0.9
    noise_logit: float = 1.0
    query_noise: float = 0.3
    dtype: str = "float16"
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("num_seqs", "context_len", "num_kv_heads", "num_q_heads", "head_dim", "window", "num_topics")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise WorkloadError(f"{name} must be a positive integer, got {value!r}")
        for name in ("decode_steps", "sink_tokens", "needles_per_topic", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise WorkloadError(f"{name} must be a non-negative integer, got {value!r}")
        if self.num_q_heads % self.num_kv_heads:
            raise WorkloadError(f"num_q_heads={self.num_q_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.dtype not in ("float16", "float32"):
            raise WorkloadError(f"dtype must be 'float16' or 'float32', got {self.dtype!r}")
        if not is_real(self.topic_stay) or not 0.0 <= self.topic_stay <= 1.0:
            raise WorkloadError(f"topic_stay must be a probability in [0, 1], got {short_repr(self.topic_stay)}")
        for name in ("sink_logit", "recency_logit", "needle_logit", "noise_logit", "query_noise"):
            value = getattr(self, name)
            if not is_real(value) or not math.isfinite(value) or value < 0:
                raise WorkloadError(f"{name} must be a finite number >= 0, got {short_repr(value)}")
        keys = self.num_seqs * (self.context_len + self.decode_steps) * self.num_kv_heads * self.head_dim
        queries = self.decode_steps * self.num_seqs * self.num_q_heads * self.head_dim
        if max(keys, queries) > MAX_ELEMENTS:
            raise WorkloadError(
                f"the workload is too large: its keys hold {keys:,} elements and its queries {queries:,}; "
                f"at most {MAX_ELEMENTS:,} each (fewer sequences, a shorter context or fewer decode steps)"
            )
        if self.head_dim < 1 + self.num_topics + 2 * 2:
            raise WorkloadError(
                f"head_dim={self.head_dim} leaves no room for a sink, {self.num_topics} topic(s) and "
                "two rotating pairs: make it at least num_topics + 5"
            )
        if self.sink_tokens > self.context_len:
            raise WorkloadError(f"sink_tokens={self.sink_tokens} is more than the prompt ({self.context_len})")
        if self.needles_per_topic and self.needle_range()[1] - self.needle_range()[0] < (
            self.num_topics * self.needles_per_topic
        ):
            raise WorkloadError(
                f"a {self.context_len}-token prompt has no room for {self.num_topics} x {self.needles_per_topic} "
                f"needles before its last {4 * self.window} tokens: use a longer context or a smaller window"
            )

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_q_heads // self.num_kv_heads

    @property
    def rotary_pairs(self) -> int:
        """Channel pairs that rotate with position (the recency pattern)."""
        return min(MAX_ROTARY_PAIRS, (self.head_dim - 1 - self.num_topics) // 2)

    def needle_range(self) -> tuple[int, int]:
        """Where needles may sit: after the sinks, and before the last ``4 * window`` prompt tokens."""
        return self.sink_tokens, self.context_len - 4 * self.window

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class AttentionWorkload:
    """Keys, values and queries of a decode run; see the module doc for their structure.

    Token ``t`` of sequence ``s`` has key ``keys[s, t]`` (``[Hkv, D]``); tokens
    ``0 .. context_len - 1`` are the prompt, token ``context_len + i`` is written
    by decode step ``i``, whose query (``queries[i, s]``, ``[Hq, D]``) attends to
    tokens ``0 .. context_len + i``.

    Attributes:
        spec: what was generated.
        keys, values: ``[S, context_len + decode_steps, Hkv, D]`` in the cache dtype.
        queries: ``[decode_steps, S, Hq, D]`` in the cache dtype.
        topics: int ``[decode_steps, S]``, the topic each step's query looks for.
        needles: int ``[S, Hkv, num_topics, needles_per_topic]``, the needles' token positions.
    """

    spec: AttentionWorkloadSpec
    keys: np.ndarray
    values: np.ndarray
    queries: np.ndarray
    topics: np.ndarray
    needles: np.ndarray

    @property
    def prompt_len(self) -> int:
        return self.spec.context_len

    @property
    def num_steps(self) -> int:
        return self.spec.decode_steps

    def length_at(self, step: int) -> int:
        """Tokens of each sequence during decode step ``step`` (the new one included)."""
        return self.spec.context_len + step + 1

    def prompt(self, seq: int) -> tuple[np.ndarray, np.ndarray]:
        """The prompt's keys and values of sequence ``seq``: ``[context_len, Hkv, D]`` each."""
        seq = _check_index("sequence", seq, self.spec.num_seqs)
        n = self.spec.context_len
        return self.keys[seq, :n], self.values[seq, :n]

    def decode_token(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The new token of every sequence at decode step ``step``: keys, values ``[S, Hkv, D]``, query ``[S, Hq, D]``."""
        step = _check_index("decode step", step, self.spec.decode_steps)
        t = self.spec.context_len + step
        return self.keys[:, t], self.values[:, t], self.queries[step]

    def important_tokens(self, seq: int, kv_head: int, step: int) -> dict[str, np.ndarray]:
        """The tokens the construction makes important at ``step``, by kind (for checks and pictures).

        ``"sink"``: the first tokens; ``"needle"``: the needles of the step's topic;
        ``"recent"``: the last ``window`` tokens."""
        seq = _check_index("sequence", seq, self.spec.num_seqs)
        kv_head = _check_index("KV head", kv_head, self.spec.num_kv_heads)
        step = _check_index("decode step", step, self.spec.decode_steps)
        n = self.length_at(step)
        topic = int(self.topics[step, seq])
        return {
            "sink": np.arange(min(self.spec.sink_tokens, n)),
            "needle": np.sort(self.needles[seq, kv_head, topic]),
            "recent": np.arange(max(0, n - self.spec.window), n),
        }


def check_measurable(spec: object) -> AttentionWorkloadSpec:
    """``spec`` if it is an :class:`AttentionWorkloadSpec` with at least one decode step (a study
    averages over steps); else WorkloadError."""
    if not isinstance(spec, AttentionWorkloadSpec):
        raise WorkloadError(f"spec must be an AttentionWorkloadSpec, got {short_repr(spec)}")
    if spec.decode_steps < 1:
        raise WorkloadError("the workload has no decode steps: a study needs at least one to measure")
    return spec


def _topic_path(rng: np.random.Generator, steps: int, topics: int, stay: float) -> np.ndarray:
    """A sticky random walk over topics: keep the topic with probability ``stay``, else jump to another."""
    path = np.zeros(steps, dtype=np.int64)
    current = int(rng.integers(topics))
    for i in range(steps):
        if i > 0 and topics > 1 and rng.random() >= stay:
            current = (current + 1 + int(rng.integers(topics - 1))) % topics  # any other topic, uniformly
        path[i] = current
    return path


def generate_attention_workload(spec: AttentionWorkloadSpec) -> AttentionWorkload:
    """Draw a workload from ``spec`` (deterministic for a given spec, seed included)."""
    if not isinstance(spec, AttentionWorkloadSpec):
        raise WorkloadError(f"spec must be an AttentionWorkloadSpec, got {short_repr(spec)}")
    rng = np.random.default_rng(spec.seed)
    S, Hkv, G, D = spec.num_seqs, spec.num_kv_heads, spec.group_size, spec.head_dim
    n_total = spec.context_len + spec.decode_steps
    pairs, topics = spec.rotary_pairs, spec.num_topics
    # Rotary amplitude: pairs * amp**2 = recency_logit, so q . k over the pairs is recency_logit at distance 0.
    amp = math.sqrt(spec.recency_logit / pairs)
    # |q|^2 / D is about 1 (sink) + 1 (topic) + recency_logit, so this key noise gives logits of std ~noise_logit.
    sigma = spec.noise_logit / math.sqrt(2.0 + spec.recency_logit)
    t = np.arange(n_total)

    keys = np.empty((S, n_total, Hkv, D), dtype=np.float64)
    queries = np.empty((spec.decode_steps, S, Hkv, G, D), dtype=np.float64)
    needles = np.zeros((S, Hkv, topics, spec.needles_per_topic), dtype=np.int64)
    topic_of_step = np.zeros((spec.decode_steps, S), dtype=np.int64)
    lo, hi = spec.needle_range()
    for s in range(S):
        topic_of_step[:, s] = _topic_path(rng, spec.decode_steps, topics, spec.topic_stay)
        for h in range(Hkv):
            # Orthonormal directions: sink, topics, then (cos, sin) vectors of each rotating pair.
            basis, _ = np.linalg.qr(rng.standard_normal((D, 1 + topics + 2 * pairs)))
            e_sink, e_topic = basis[:, 0], basis[:, 1 : 1 + topics].T
            e_rot = basis[:, 1 + topics :].T.reshape(pairs, 2, D)
            theta = rng.uniform(0.5, 3.0, pairs) / spec.window
            angle = t[:, None] * theta[None, :]  # [tokens, pairs]
            rotary = np.stack([np.cos(angle), np.sin(angle)], axis=-1)  # [tokens, pairs, 2]

            k = sigma * rng.standard_normal((n_total, D))
            k += amp * np.einsum("tpc,pcd->td", rotary, e_rot)
            k[: spec.sink_tokens] += spec.sink_logit * e_sink
            chosen = rng.choice(np.arange(lo, hi), size=topics * spec.needles_per_topic, replace=False)
            needles[s, h] = chosen.reshape(topics, spec.needles_per_topic)
            for topic in range(topics):
                k[needles[s, h, topic]] += spec.needle_logit * e_topic[topic]
            keys[s, :, h] = k

            weights = rng.uniform(0.75, 1.25, size=(G, 2))  # each query head's (sink, topic) emphasis
            for i in range(spec.decode_steps):
                position = spec.context_len + i
                rot_q = np.einsum("pc,pcd->d", rotary[position], e_rot) * amp
                for g in range(G):
                    direction = weights[g, 0] * e_sink + weights[g, 1] * e_topic[topic_of_step[i, s]] + rot_q
                    noise = spec.query_noise * rng.standard_normal(D) / math.sqrt(D) * np.linalg.norm(direction)
                    queries[i, s, h, g] = math.sqrt(D) * (direction + noise)
    values = rng.standard_normal((S, n_total, Hkv, D))
    dtype = np.dtype(spec.dtype)
    return AttentionWorkload(
        spec=spec,
        keys=keys.astype(dtype),
        values=values.astype(dtype),
        queries=queries.reshape(spec.decode_steps, S, Hkv * G, D).astype(dtype),
        topics=topic_of_step,
        needles=needles,
    )
