"""Attention workloads: reproducible from a seed, and their structure shows up in q . k."""

from __future__ import annotations

import numpy as np
import pytest

from tinyserve_sim.errors import WorkloadError
from tinyserve_sim.selection.workloads import AttentionWorkloadSpec, generate_attention_workload

SPEC = AttentionWorkloadSpec(num_seqs=2, context_len=768, decode_steps=6, head_dim=64, seed=5)


def test_same_seed_same_bits_other_seed_other_bits() -> None:
    a, b = generate_attention_workload(SPEC), generate_attention_workload(SPEC)
    for name in ("keys", "values", "queries", "topics", "needles"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    c = generate_attention_workload(AttentionWorkloadSpec(**{**SPEC.to_dict(), "seed": 6}))
    assert not np.array_equal(a.keys, c.keys)
    assert a.keys.dtype == np.float16 and a.queries.shape == (6, 2, 4, 64)


def _logits(w, step: int, seq: int, q_head: int) -> np.ndarray:
    spec = w.spec
    n = w.length_at(step)
    h = q_head // spec.group_size
    k = w.keys[seq, :n, h].astype(np.float64)
    return k @ w.queries[step, seq, q_head].astype(np.float64) / np.sqrt(spec.head_dim)


def test_each_pattern_shows_up_in_the_logits() -> None:
    """Sinks, the step's needles and the newest tokens stand out; other topics' needles do not."""
    w = generate_attention_workload(SPEC)
    for step in range(SPEC.decode_steps):
        for seq in range(SPEC.num_seqs):
            for g in range(SPEC.num_q_heads):
                x = _logits(w, step, seq, g)
                h = g // SPEC.group_size
                important = w.important_tokens(seq, h, step)
                ordinary = np.ones(x.size, bool)
                for tokens in important.values():
                    ordinary[tokens] = False
                others = np.setdiff1d(w.needles[seq, h].ravel(), important["needle"])
                ordinary[others] = False
                base, spread = x[ordinary].mean(), x[ordinary].std()
                assert abs(base) < 1.0 and 0.5 < spread < 2.0  # noise of about noise_logit
                assert x[important["sink"]].mean() > base + 3
                assert x[important["needle"]].mean() > base + 3
                assert x[-4:].mean() > base + 2  # recency
                assert x[others].mean() < x[important["needle"]].mean() - 3


def test_the_structure_holds_most_of_the_softmax_mass() -> None:
    """Under 3% of the tokens (sinks, the topic's needles, the recent window) hold most of the mass."""
    w = generate_attention_workload(SPEC)
    step, share, mass = SPEC.decode_steps - 1, [], []
    for seq in range(SPEC.num_seqs):
        for g in range(SPEC.num_q_heads):
            x = _logits(w, step, seq, g)
            p = np.exp(x - x.max())
            p /= p.sum()
            tokens = np.unique(np.concatenate(list(w.important_tokens(seq, g // SPEC.group_size, step).values())))
            share.append(tokens.size / x.size)
            mass.append(p[tokens].sum())
    assert max(share) < 0.07 and np.mean(mass) > 0.6


def test_topics_are_sticky() -> None:
    spec = AttentionWorkloadSpec(num_seqs=1, context_len=512, decode_steps=400, head_dim=32, window=8,
                                 topic_stay=0.9, seed=1)
    topics = generate_attention_workload(spec).topics[:, 0]
    switches = np.count_nonzero(np.diff(topics))
    assert 20 < switches < 60  # about 10% of 399 transitions
    assert set(topics) == set(range(spec.num_topics))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_q_heads": 3}, "not a multiple"),
        ({"head_dim": 8}, "leaves no room"),
        ({"context_len": 100}, "no room for 4 x 3 needles"),
        ({"dtype": "bfloat16"}, "dtype"),
        ({"topic_stay": 1.5}, "probability"),
        ({"window": 0}, "window must be a positive integer"),
        ({"noise_logit": -1.0}, "noise_logit"),
    ],
)
def test_bad_specs_are_refused(change: dict, message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        AttentionWorkloadSpec(**{**SPEC.to_dict(), **change})


def test_decode_tokens_follow_the_prompt() -> None:
    w = generate_attention_workload(SPEC)
    keys, values, query = w.decode_token(2)
    assert np.array_equal(keys, w.keys[:, SPEC.context_len + 2]) and query.shape == (2, 4, 64)
    with pytest.raises(WorkloadError, match="outside"):
        w.decode_token(SPEC.decode_steps)
