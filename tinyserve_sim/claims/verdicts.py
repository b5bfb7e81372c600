"""The claims table: every numeric claim of the seed, checked by simulation.

The seed (``TinyServe-README.md``) promises memory waste under 4%,
utilisation above 96% "vs 60-80% traditional", up to 30x throughput,
contexts up to 131K tokens and a 15-25% better cache hit rate. Each row
below names the claim as written, what was simulated, the measured figure
and a verdict. Every figure comes from :func:`~tinyserve_sim.claims.experiments.run_experiments`;
the verdicts are computed from those figures with the thresholds written
here, never typed in.

Verdicts:

* **holds** - true in every scenario simulated;
* **holds under stated conditions** - true in some scenarios (named);
* **does not hold** - false in every scenario simulated;
* **cannot be checked by a memory simulator** - with the reason.

The hit-rate claim is checked with the query-aware selection feature
(:mod:`tinyserve_sim.selection`): the fast tier of a two-tier cache, evicting
by selection score against LRU (:mod:`~tinyserve_sim.claims.hit_rate`).

A second table checks that the simulator reproduces the vLLM paper
(Kwon et al., SOSP 2023): Fig. 2, §7.2 and Fig. 15.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tinyserve_sim.claims.experiments import BLOCK_SIZES, WIDTHS, Experiments
from tinyserve_sim.serving.catalog import KV_CAPACITY_TOKENS

#: Relative tolerance for "up to N x" claims: our length distributions are assumptions.
UP_TO_TOLERANCE = 0.10
#: Fig. 2 tolerance: each baseline's token-state share within this many points of the paper's bar.
FIG2_TOLERANCE_POINTS = 6.0
#: The vLLM paper's Fig. 2 token-state shares (%), and its paged figure.
PAPER_FIG2 = {"max": 20.4, "pow2": 26.8, "oracle": 38.2}
PAPER_PAGED_TOKEN_STATES = 96.3
#: The vLLM paper's Fig. 15 sharing savings (%), as (low, high) over widths 2-6.
PAPER_FIG15 = {
    ("alpaca", "parallel"): (6.1, 9.8),
    ("sharegpt", "parallel"): (16.2, 30.5),
    ("alpaca", "beam"): (37.6, 55.2),
    ("sharegpt", "beam"): (44.3, 66.3),
}
BASELINES = ("max", "pow2", "oracle")
DATASETS = ("sharegpt", "alpaca")


@dataclass(frozen=True)
class ClaimRow:
    """One row: the claim as written, what was simulated, the figure, the verdict and why."""

    claim: str
    simulated: str
    measured: str
    verdict: str
    reason: str


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _verdict(checks: list[tuple[str, bool]]) -> tuple[str, str]:
    """All true: holds; some: holds under the conditions that passed; none: does not hold."""
    passed = [label for label, ok in checks if ok]
    if len(passed) == len(checks):
        return "holds", "true in every scenario simulated"
    if passed:
        return "holds under stated conditions", "true only for: " + ", ".join(passed)
    return "does not hold", "false in every scenario simulated"


def seed_claims(e: Experiments) -> list[ClaimRow]:
    """The rows of the seed's claims, computed from the experiments."""
    rows = []
    setting = (
        f"saturated server, {KV_CAPACITY_TOKENS:,}-token KV cache (OPT-13B on A100-40GB), "
        f"{e.size.sharegpt} ShareGPT-like / {e.size.alpaca} Alpaca-like requests"
    )
    paged = {d: e.main[d, "paged-16"] for d in DATASETS}

    # 1. Memory waste below 4%.
    checks = [(f"{d} ({_pct(paged[d].waste)})", paged[d].waste < 0.04) for d in DATASETS]
    verdict, why = _verdict(checks)
    rows.append(ClaimRow(
        "Memory Efficiency: Reduces memory waste to less than 4%",
        f"paged, block size 16; {setting}; waste = reservation + internal + external fragmentation",
        ", ".join(f"{d} {_pct(paged[d].waste)}" for d in DATASETS),
        verdict,
        why + "; short requests leave a larger share of their last block empty",
    ))

    # 2. "compared to 60-80% in traditional methods" (as waste).
    checks = [
        (f"{d} {b} ({_pct(e.main[d, b].waste)})", 0.60 <= e.main[d, b].waste <= 0.80)
        for d in DATASETS for b in BASELINES
    ]
    verdict, why = _verdict(checks)
    rows.append(ClaimRow(
        "(compared to 60-80% [waste] in traditional methods)",
        f"contiguous reservation Max / Pow2 / Oracle over a buddy allocator (vLLM paper §6.1); {setting}",
        "; ".join(f"{d}: " + ", ".join(f"{b} {_pct(e.main[d, b].waste)}" for b in BASELINES) for d in DATASETS),
        verdict,
        why,
    ))

    # 3. Utilisation above 96%.
    checks = [(f"{d} ({_pct(paged[d].token_states)})", paged[d].token_states > 0.96) for d in DATASETS]
    verdict, why = _verdict(checks)
    rows.append(ClaimRow(
        "Memory Utilization: >96%",
        f"paged, block size 16; utilisation = share of KV memory holding token states; {setting}",
        ", ".join(f"{d} {_pct(paged[d].token_states)}" for d in DATASETS),
        verdict,
        why,
    ))

    # 4. "(vs 60-80% traditional)" read as utilisation.
    shares = [e.main[d, b].token_states for d in DATASETS for b in BASELINES]
    checks = [(f"{d} {b}", 0.60 <= e.main[d, b].token_states <= 0.80) for d in DATASETS for b in BASELINES]
    verdict, why = _verdict(checks)
    rows.append(ClaimRow(
        "(vs 60-80% [utilization] traditional)",
        f"the same baselines; utilisation = token-state share; {setting}",
        f"{_pct(min(shares))} to {_pct(max(shares))}",
        verdict,
        why + "; 60-80% is what traditional methods *waste* (row 2), not what they use",
    ))

    # 5. Up to 30x throughput: the ratio of sustained batch sizes, an upper bound.
    ratios = {
        (d, b): paged[d].mean_running_seqs / e.main[d, b].mean_running_seqs for d in DATASETS for b in BASELINES
    }
    best = max(ratios, key=ratios.get)
    floor = 30 * (1 - UP_TO_TOLERANCE)
    checks = [(f"{d} vs {b} ({r:.1f}x)", r >= floor) for (d, b), r in ratios.items()]
    verdict, why = _verdict(checks)
    rows.append(ClaimRow(
        "Performance Boost: Up to 30x improvement in inference throughput",
        f"sequences decoded per step (sustained batch), paged-16 / baseline; {setting}; "
        f"reaching {floor:.0f}x counts as 30x (tolerance {UP_TO_TOLERANCE:.0%})",
        "; ".join(f"{d}: " + ", ".join(f"vs {b} {ratios[d, b]:.1f}x" for b in BASELINES) for d in DATASETS),
        verdict,
        why + f". Largest: {ratios[best]:.1f}x ({best[0]} vs {best[1]}). A batch-size ratio is an UPPER BOUND on "
        "the throughput gain: a bigger batch makes each step slower, and compute is not simulated",
    ))

    # 6. Contexts up to 131K tokens.
    lc = e.long_context
    fits = lc["finished"] == 1 and lc["preemptions"] == 0 and lc["final_waste_slots"] < lc["block_size"]
    rows.append(ClaimRow(
        "Context Length: Supports up to 131K tokens",
        f"one request of {int(lc['length']):,} tokens in a paged pool of exactly {int(lc['blocks']):,} "
        f"blocks of {int(lc['block_size'])}",
        f"{'fits' if fits else 'does not fit'}: {int(lc['final_token_states']):,} token states, "
        f"{int(lc['final_waste_slots'])} slots wasted; KV needed: {lc['gib_llama3_8b']:.0f} GiB "
        f"(Llama-3-8B, fp16), {lc['gib_opt_13b']:.0f} GiB (OPT-13B)",
        "holds under stated conditions" if fits else "does not hold",
        "paging stores it with less than one block of waste, given enough GPU memory for its KV cache; "
        "whether a model can *attend* over 131K tokens (its training, its position encoding) "
        "cannot be checked by a memory simulator",
    ))

    # 7. Memory sharing.
    savings = {k: s.sharing_saving for k, s in e.sharing.items()}
    checks = [(f"{d} {k} {w}", v > 0) for (d, k, w), v in savings.items()]
    verdict, why = _verdict(checks)
    par = [v for (d, k, w), v in savings.items() if k == "parallel"]
    beam = [v for (d, k, w), v in savings.items() if k == "beam"]
    rows.append(ClaimRow(
        "Memory Sharing: Enables sharing of physical blocks between different sequences",
        f"parallel sampling and beam search, widths {WIDTHS}, paged-16, both datasets",
        f"blocks saved: parallel {_pct(min(par))}-{_pct(max(par))}, beam {_pct(min(beam))}-{_pct(max(beam))}",
        verdict,
        why,
    ))

    # 8. Cache hit rate: score-aware eviction against LRU in a two-tier cache fed by query-aware selection.
    rows.append(hit_rate_claim(e))
    return rows


#: The claimed hit-rate improvement, read as relative: hit(score-aware) / hit(lru) - 1 >= 15%.
HIT_RATE_CLAIM = 0.15


def hit_rate_claim(e: Experiments) -> ClaimRow:
    """The "15-25% better cache hit rate" row, from the policy study (claims/hit_rate.py)."""
    from tinyserve_sim.claims.hit_rate import CLAIM_SETTING

    rows = e.hit_rates
    claim = "Cache Hit Rate: 15-25% improvement with Query-Aware Cache Selection"
    if not rows:
        return ClaimRow(claim, "not run", "-", "cannot be checked by a memory simulator", "the study was not run")
    checks = [(f"{r.condition} ({100 * r.improvement:+.1f}%)", r.improvement >= HIT_RATE_CLAIM) for r in rows]
    verdict, why = _verdict(checks)
    gains = [r.improvement for r in rows]
    lru = [r.hit_rates["lru"] for r in rows]
    headroom = max(r.headroom for r in rows)
    setting = CLAIM_SETTING
    return ClaimRow(
        claim,
        f"two-tier KV cache (fast tier of {min(r.capacity_factor for r in rows):g}-"
        f"{max(r.capacity_factor for r in rows):g}x the pages one step selects, slow host tier) fed by "
        f"Quest-style selection at budgets " + ", ".join(f"1/{round(1 / b)}" for b in setting["budgets"])
        + f" of {setting['num_seqs']} x {setting['context_len']:,}-token contexts ({setting['block_size']}-token "
        f"pages, {rows[0].steps} decode steps); synthetic attention with sinks, recency and needles whose "
        "topic stays with probability " + " or ".join(f"{p:g}" for p in setting["topic_stays"])
        + "; improvement = hit(score-aware) / hit(LRU) - 1",
        f"score-aware vs LRU: {100 * min(gains):+.1f}% to {100 * max(gains):+.1f}% "
        f"(LRU hits {_pct(min(lru))}-{_pct(max(lru))}); best possible (Belady, knows the future): "
        f"at most {100 * headroom:+.1f}% over LRU",
        verdict,
        why + ". " + _hit_rate_explanation(min(lru), headroom),
    )


def _hit_rate_explanation(lru_low: float, headroom: float) -> str:
    """Why the hit-rate row came out as it did: how much room LRU leaves to any policy."""
    if headroom < HIT_RATE_CLAIM:
        return (f"Consecutive decode steps select mostly the same pages, so LRU already hits {_pct(lru_low)} or "
                f"more, and even the offline optimum gains at most {100 * headroom:.1f}% over it: no eviction "
                "policy can gain 15% here. A 15% gain needs a regime where LRU misses far more often "
                "(selections that change completely from step to step), which the attention simulated does not have")
    return (f"LRU hits as little as {_pct(lru_low)}, and the offline optimum gains up to {100 * headroom:.1f}% "
            "over it: there is room for a 15% gain, and the row says whether score-aware eviction takes it")


def paper_checks(e: Experiments) -> list[ClaimRow]:
    """Rows checking that the simulator reproduces the vLLM paper's figures."""
    rows = []
    share = {b: 100 * e.main["sharegpt", b].token_states for b in BASELINES}
    paged = 100 * e.main["sharegpt", "paged-16"].token_states
    ok = all(abs(share[b] - PAPER_FIG2[b]) <= FIG2_TOLERANCE_POINTS for b in BASELINES) and paged > 96
    rows.append(ClaimRow(
        "vLLM Fig. 2: reservation keeps 20.4-38.2% of KV memory in token states, vLLM 96.3%",
        f"ShareGPT-like, saturated; tolerance: each baseline within {FIG2_TOLERANCE_POINTS:.0f} points "
        "of the paper's bar, paged above 96%",
        ", ".join(f"{b} {share[b]:.1f}% (paper {PAPER_FIG2[b]})" for b in BASELINES)
        + f", paged-16 {paged:.1f}% (paper {PAPER_PAGED_TOKEN_STATES})",
        "reproduced" if ok else "not reproduced",
        "first fit instead of buddy gives "
        + ", ".join(f"{b} {100 * e.main['sharegpt', b + '-first-fit'].token_states:.1f}%" for b in BASELINES)
        + ": the buddy allocator's rounding is a large part of the baselines' waste",
    ))

    def loss(dataset: str, block_size: int) -> float:
        """Sustained batch lost against block size 16."""
        return 1 - e.block_sizes[dataset, block_size].mean_running_seqs / e.block_sizes[dataset, 16].mean_running_seqs

    ok = loss("alpaca", 64) > 2 * max(loss("sharegpt", 64), 0.01) and loss("sharegpt", 32) < 0.10
    rows.append(ClaimRow(
        "vLLM §7.2: block size: ShareGPT best at 16-128, Alpaca degrades above 32",
        f"paged, block sizes {BLOCK_SIZES}, saturated; batch lost against block 16",
        "; ".join(
            f"{d}: " + ", ".join(f"{b}: {-100 * loss(d, b):+.0f}%" for b in (32, 64, 128, 256)) for d in DATASETS
        ),
        "reproduced (memory side)" if ok else "not reproduced",
        "large blocks waste their last block's empty slots, which costs short (Alpaca) requests far more; "
        "the paper's penalty for blocks below 16 is GPU kernel efficiency, which a memory simulator cannot show",
    ))

    parts, ok = [], True
    for (dataset, kind), (low, high) in PAPER_FIG15.items():
        got = [100 * e.sharing[dataset, kind, w].sharing_saving for w in WIDTHS]
        parts.append(f"{dataset} {kind} {min(got):.1f}-{max(got):.1f}% (paper {low}-{high}%)")
        ok = ok and low - 10 <= min(got) and max(got) <= high + 10
    rows.append(ClaimRow(
        "vLLM Fig. 15: memory saved by sharing (parallel sampling, beam search)",
        f"paged-16, widths {WIDTHS}; tolerance: within 10 points of the paper's range",
        "; ".join(parts),
        "reproduced" if ok else "not reproduced",
        "parallel samples share only the prompt's full blocks; our beam model (a beam continues another "
        "beam with probability 1 - beam_stay each step) is a guess at real beam dynamics",
    ))
    return rows


def rows_to_json(rows: list[ClaimRow]) -> list[dict]:
    return [asdict(row) for row in rows]


#: Where ``docs/claims.md`` wants the tables; the docs build replaces it with :func:`claims_markdown`.
CLAIMS_TABLE_MARKER = "<!-- claims-table -->"


def _markdown_rows(rows: list[ClaimRow]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| claim | simulated | measured | verdict | why |", "|---|---|---|---|---|"]
    for r in rows:
        cells = (r.claim, r.simulated, r.measured, f"**{r.verdict}**", r.reason)
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def claims_markdown(e: Experiments) -> str:
    """Both tables as Markdown, for the docs page (computed, like the printed table)."""
    return (
        f"*Run size `{e.size.name}`: {e.size.sharegpt} ShareGPT-like and {e.size.alpaca} Alpaca-like "
        "requests per manager.*\n\n**Claims of the seed**\n\n" + _markdown_rows(seed_claims(e))
        + "\n**Does the simulator reproduce the vLLM paper?**\n\n" + _markdown_rows(paper_checks(e))
    )
