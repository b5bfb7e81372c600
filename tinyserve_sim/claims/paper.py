"""Does the simulator reproduce the vLLM paper? One row per figure, each computed and with its conditions.

Kwon et al., *Efficient Memory Management for Large Language Model Serving
with PagedAttention*, SOSP 2023:

* **Fig. 2** (memory, saturated): token-state share of the Orca baselines and of vLLM;
* **Fig. 12** (time, at rates): the request rate each system sustains;
* **Fig. 13** (time, at ShareGPT 2 req/s and Alpaca 30 req/s): the mean batch;
* **§7.2** (memory, and time at the Fig. 13 loads): the block size;
* **Fig. 15** (memory): the blocks that sharing saves.

The paper's figures are written here as it prints them; each tolerance is
stated in the row it decides.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from tinyserve_sim.claims.experiments import BLOCK_SIZES, LATENCY_BLOCK_SIZES, WIDTHS, Experiments
from tinyserve_sim.claims.rows import ClaimRow
from tinyserve_sim.serving.rate_sweep import FIG13_RATES, RateSweep
from tinyserve_sim.serving.timing import PAPER_OVERHEAD

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
#: §6.2 on Fig. 12 (ShareGPT, over OPT-13B/66B/175B): vLLM sustains 1.7-2.7x Orca (Oracle)'s request rate
#: and 2.7-8x Orca (Max)'s.
PAPER_FIG12_SHAREGPT = {"oracle": (1.7, 2.7), "max": (2.7, 8.0)}
#: Fig. 13: mean batched requests at ShareGPT 2 req/s and Alpaca 30 req/s.
PAPER_FIG13 = {
    "sharegpt": {"max": 7.00, "pow2": 9.81, "oracle": 13.62, "paged-16": 30.42},
    "alpaca": {"max": 7.00, "pow2": 43.24, "oracle": 72.75, "paged-16": 132.44},
}
#: Fig. 13 tolerance: vLLM's batch over Orca (Oracle)'s within this fraction of the paper's ratio.
FIG13_TOLERANCE = 0.25
#: §7.2: a block size is among the best when its latency is within this fraction of the lowest.
BLOCK_LATENCY_TOLERANCE = 0.10
BASELINES = ("max", "pow2", "oracle")
DATASETS = ("sharegpt", "alpaca")


def _fig2(e: Experiments) -> ClaimRow:
    share = {b: 100 * e.main["sharegpt", b].token_states for b in BASELINES}
    paged = 100 * e.main["sharegpt", "paged-16"].token_states
    ok = all(abs(share[b] - PAPER_FIG2[b]) <= FIG2_TOLERANCE_POINTS for b in BASELINES) and paged > 96
    return ClaimRow(
        "vLLM Fig. 2: reservation keeps 20.4-38.2% of KV memory in token states, vLLM 96.3%",
        f"[memory, saturated] ShareGPT-like; tolerance: each baseline within {FIG2_TOLERANCE_POINTS:.0f} points "
        "of the paper's bar, paged above 96%",
        ", ".join(f"{b} {share[b]:.1f}% (paper {PAPER_FIG2[b]})" for b in BASELINES)
        + f", paged-16 {paged:.1f}% (paper {PAPER_PAGED_TOKEN_STATES})",
        "reproduced" if ok else "not reproduced",
        "first fit instead of buddy gives "
        + ", ".join(f"{b} {100 * e.main['sharegpt', b + '-first-fit'].token_states:.1f}%" for b in BASELINES)
        + ": the buddy allocator's rounding is a large part of the baselines' waste",
    )


def _rates(sweep: RateSweep, threshold: float | None = None) -> str:
    return ", ".join(
        f"vs {b} {q}{r:.2f}x" for b in BASELINES for r, q in [sweep.ratio("paged-16", b, threshold)]
    )


def _fig12(e: Experiments) -> ClaimRow:
    share, alpaca = e.rate_sweeps["sharegpt"], e.rate_sweeps["alpaca"]
    ratio = {b: share.ratio("paged-16", b) for b in BASELINES}
    in_range = all(low <= ratio[b][0] <= high and ratio[b][1] == "" for b, (low, high) in PAPER_FIG12_SHAREGPT.items())
    shape = all(
        sweep.sustainable_rate("paged-16")[0] > sweep.sustainable_rate(b)[0] for sweep in (share, alpaca)
        for b in BASELINES
    )
    rate = {d: e.rate_sweeps[d].sustainable_rate("paged-16") for d in DATASETS}
    return ClaimRow(
        "vLLM Fig. 12: at the same latency vLLM sustains 1.7-2.7x the request rate of Orca (Oracle) and "
        "2.7-8x that of Orca (Max) (ShareGPT)",
        f"[time: {e.time_model}, at rates] Poisson arrivals over {share.duration:g} s (ShareGPT-like) / "
        f"{alpaca.duration:g} s (Alpaca-like) per rate, {len(share.rates)} / {len(alpaca.rates)} rates; "
        f"sustained = mean latency under {share.threshold:g} s per output token",
        f"sharegpt: paged-16 sustains {rate['sharegpt'][1]}{rate['sharegpt'][0]:.2f} req/s, {_rates(share)}; "
        f"alpaca: {rate['alpaca'][1]}{rate['alpaca'][0]:.2f} req/s, {_rates(alpaca)}",
        "reproduced" if in_range and shape else "not reproduced",
        ("paged memory sustains a higher rate than every Orca variant on both datasets"
         if shape else "paged memory does NOT sustain a higher rate than every Orca variant")
        + f"; ShareGPT ratios {'inside' if in_range else 'outside'} the paper's ranges. Under 0.1 and 0.5 s/token "
        f"instead: sharegpt {_rates(share, 0.1)} / {_rates(share, 0.5)}. The paper's ranges cover OPT-13B to "
        "175B; we simulate OPT-13B only. No range is given for Alpaca",
    )


def _fig13(e: Experiments) -> ClaimRow:
    parts, ok = [], True
    for dataset in DATASETS:
        sweep, rate = e.rate_sweeps[dataset], FIG13_RATES[dataset]
        batch = {m: sweep.batch(m, rate) for m in ("max", "pow2", "oracle", "paged-16")}
        paper = PAPER_FIG13[dataset]
        ours, theirs = batch["paged-16"] / batch["oracle"], paper["paged-16"] / paper["oracle"]
        ordered = batch["max"] <= batch["pow2"] <= batch["oracle"] <= batch["paged-16"]
        ok = ok and ordered and abs(ours / theirs - 1) <= FIG13_TOLERANCE and not math.isnan(ours)
        parts.append(
            f"{dataset} at {rate:g} req/s: " + ", ".join(f"{m} {batch[m]:.1f} (paper {paper[m]:.2f})" for m in batch)
            + f"; vLLM / Oracle {ours:.2f}x (paper {theirs:.2f}x)"
        )
    return ClaimRow(
        "vLLM Fig. 13: batched requests at ShareGPT 2 req/s and Alpaca 30 req/s (vs Orca (Oracle): 2.23x, 1.82x)",
        f"[time: {e.time_model}, at the paper's loads] the Fig. 12 runs at these rates; batch = mean requests "
        f"running, over time; tolerance: vLLM / Oracle within {FIG13_TOLERANCE:.0%} of the paper's ratio, and "
        "Max <= Pow2 <= Oracle <= vLLM",
        "; ".join(parts),
        "reproduced" if ok else "not reproduced",
        f"vLLM's Alpaca batch is the one figure fitted (the time model's {1000 * PAPER_OVERHEAD:.0f} ms host "
        "overhead per iteration puts it there); every other number is a prediction. The Orca baselines are "
        "limited by memory at these loads, so their batches do not depend on the time model",
    )


def _block_size(e: Experiments) -> ClaimRow:
    def batch_change(dataset: str, block: int) -> float:
        """Saturated batch against block 16 (memory side)."""
        return e.block_sizes[dataset, block].mean_running_seqs / e.block_sizes[dataset, 16].mean_running_seqs - 1

    def latency_change(dataset: str, block: int) -> float:
        sweep = e.block_latency[dataset]
        rate = sweep.rates[0]
        return sweep.points[f"paged-{block}", rate].latency / sweep.points["paged-16", rate].latency - 1

    tol = BLOCK_LATENCY_TOLERANCE
    best = {d: [b for b in LATENCY_BLOCK_SIZES if latency_change(d, b) <= tol] for d in DATASETS}
    large = [b for b in LATENCY_BLOCK_SIZES if b >= 64]

    def at(change: Callable[[str, int], float], dataset: str, blocks: list[int]) -> str:
        return ", ".join(f"{100 * change(dataset, b):+.0f}% at {b}" for b in blocks)

    # Each check: what the paper expects, whether it holds here, and what we measured.
    checks = [
        ("large blocks cost Alpaca more batch than ShareGPT (memory, every block of 64 or more)",
         all(batch_change("alpaca", b) < batch_change("sharegpt", b) for b in large),
         f"Alpaca's batch changes {at(batch_change, 'alpaca', large)}; ShareGPT's {at(batch_change, 'sharegpt', large)}"),
        (f"ShareGPT's latency within {tol:.0%} of block 16's up to block 128",
         all(b in best["sharegpt"] for b in (32, 64, 128)),
         f"it changes {at(latency_change, 'sharegpt', [32, 64, 128])}"),
        (f"Alpaca's latency within {tol:.0%} of block 16's at block 32 and not at 64 and above",
         32 in best["alpaca"] and not any(b in best["alpaca"] for b in large),
         f"it changes {at(latency_change, 'alpaca', [32, *large])}"),
    ]
    passed = [f"As in the paper: {expects}." for expects, ok, _ in checks if ok]
    failed = [f"The paper expects {expects}; here {here}." for expects, ok, here in checks if not ok]
    verdict = "reproduced" if not failed else ("partly reproduced" if passed else "not reproduced")
    knee = e.rate_sweeps["sharegpt"].sustainable_rate("paged-16")[0]
    span = lambda blocks: f"{min(blocks)}-{max(blocks)}" if blocks else "none"  # noqa: E731
    return ClaimRow(
        "vLLM §7.2: block size: ShareGPT best at 16-128, Alpaca at 16-32 (larger blocks degrade it)",
        f"[memory, saturated] paged, blocks {min(BLOCK_SIZES)}-{max(BLOCK_SIZES)}: batch against block 16; "
        f"[time: {e.time_model}, at ShareGPT {FIG13_RATES['sharegpt']:g} / Alpaca {FIG13_RATES['alpaca']:g} req/s] "
        f"latency against block 16 for blocks {min(LATENCY_BLOCK_SIZES)}-{max(LATENCY_BLOCK_SIZES)}; "
        f"'best' = within {tol:.0%} of block 16's latency",
        "; ".join(
            f"{d}: batch " + ", ".join(f"{b}: {100 * batch_change(d, b):+.0f}%" for b in (8, 32, 64, 128, 256))
            + "; latency " + ", ".join(f"{b}: {100 * latency_change(d, b):+.0f}%" for b in LATENCY_BLOCK_SIZES
                                       if b != 16)
            + f"; best {span(best[d])}"
            for d in DATASETS
        ),
        verdict,
        " ".join(passed + failed)
        + f" At ShareGPT {FIG13_RATES['sharegpt']:g} req/s paged-16 runs just past its knee "
        f"({knee:.2f} req/s sustained), so a few percent less batch costs much latency. Blocks below 16 are no "
        "worse here: the paper's penalty there is the attention kernel's efficiency, which the time model leaves out",
    )


def _fig15(e: Experiments) -> ClaimRow:
    parts, ok = [], True
    for (dataset, kind), (low, high) in PAPER_FIG15.items():
        got = [100 * e.sharing[dataset, kind, w].sharing_saving for w in WIDTHS]
        parts.append(f"{dataset} {kind} {min(got):.1f}-{max(got):.1f}% (paper {low}-{high}%)")
        ok = ok and low - 10 <= min(got) and max(got) <= high + 10
    return ClaimRow(
        "vLLM Fig. 15: memory saved by sharing (parallel sampling, beam search)",
        f"[memory, all steps] paged-16, widths {WIDTHS}; tolerance: within 10 points of the paper's range",
        "; ".join(parts),
        "reproduced" if ok else "not reproduced",
        "parallel samples share only the prompt's full blocks; our beam model (a beam continues another "
        "beam with probability 1 - beam_stay each step) is a guess at real beam dynamics",
    )


def paper_checks(e: Experiments) -> list[ClaimRow]:
    """Rows checking that the simulator reproduces the vLLM paper's figures."""
    return [_fig2(e), _fig12(e), _fig13(e), _block_size(e), _fig15(e)]
