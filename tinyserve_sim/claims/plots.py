"""The figures of the claims page (matplotlib, Agg backend, PNG files).

Each function draws one figure from the :class:`~tinyserve_sim.claims.experiments.Experiments`
and saves it; :func:`write_claim_plots` writes every figure ``docs/claims.md`` shows.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from tinyserve_sim.claims.experiments import BLOCK_SIZES, LATENCY_BLOCK_SIZES, WIDTHS, Experiments
from tinyserve_sim.claims.paper import (
    PAPER_FIG2,
    PAPER_FIG13,
    PAPER_FIG15,
    PAPER_PAGED_TOKEN_STATES,
)
from tinyserve_sim.serving.plots import COLORS, plot_latency_vs_rate, plot_shares, plot_timeline, save_figure
from tinyserve_sim.serving.rate_sweep import FIG13_RATES


def plot_fig2(e: Experiments, path: Path) -> Path:
    """Token-state share of each manager, ours next to the vLLM paper's Fig. 2."""
    names = ["max", "pow2", "oracle", "paged-16"]
    ours = [100 * e.main["sharegpt", n].token_states for n in names]
    paper = [PAPER_FIG2["max"], PAPER_FIG2["pow2"], PAPER_FIG2["oracle"], PAPER_PAGED_TOKEN_STATES]
    first_fit = [100 * e.main["sharegpt", f"{n}-first-fit"].token_states for n in names[:3]] + [np.nan]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar(x - 0.27, paper, 0.27, label="vLLM paper, Fig. 2", color="#90a4ae")
    ax.bar(x, ours, 0.27, label="simulated (buddy allocator)", color=COLORS["token_states"])
    ax.bar(x + 0.27, first_fit, 0.27, label="simulated (first fit)", color="#81c784")
    for xi, v in zip(x, ours):
        ax.text(xi, v + 1, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylabel("% of KV memory holding token states")
    ax.set_ylim(0, 105)
    ax.set_title("Token states: reservation vs paging (ShareGPT-like, saturated)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_block_sizes(e: Experiments, path: Path) -> Path:
    """§7.2: saturated batch and token-state share against block size (memory), and latency at the paper's loads."""
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(12, 3.4))
    for dataset, marker in (("sharegpt", "o"), ("alpaca", "s")):
        batch = np.array([e.block_sizes[dataset, b].mean_running_seqs for b in BLOCK_SIZES])
        share = np.array([100 * e.block_sizes[dataset, b].token_states for b in BLOCK_SIZES])
        base = e.block_sizes[dataset, 16].mean_running_seqs
        left.plot(BLOCK_SIZES, batch / base, marker=marker, label=dataset)
        middle.plot(BLOCK_SIZES, share, marker=marker, label=dataset)
        sweep = e.block_latency[dataset]
        rate = sweep.rates[0]
        latency = np.array([sweep.points[f"paged-{b}", rate].latency for b in LATENCY_BLOCK_SIZES])
        right.plot(LATENCY_BLOCK_SIZES, latency / sweep.points["paged-16", rate].latency, marker=marker,
                   label=f"{dataset} at {rate:g} req/s")
    for ax, sizes in ((left, BLOCK_SIZES), (middle, BLOCK_SIZES), (right, LATENCY_BLOCK_SIZES)):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_xlabel("block size (tokens)")
        ax.axvspan(16, 128, color="#e8f5e9", zorder=0)
        ax.legend(fontsize=8)
    right.set_yscale("log")
    left.set_ylabel("saturated batch / batch at block 16")
    middle.set_ylabel("% of KV memory in token states")
    right.set_ylabel("latency / latency at block 16")
    left.set_title("Batch (memory, saturated); green: paper's best, ShareGPT", fontsize=9)
    middle.set_title("Utilisation (memory, saturated)", fontsize=9)
    right.set_title(f"Latency at the paper's loads ({e.time_model})", fontsize=9)
    return save_figure(fig, path)


def plot_fig13(e: Experiments, path: Path) -> Path:
    """Fig. 13: mean batched requests at ShareGPT 2 req/s and Alpaca 30 req/s, ours beside the paper's."""
    names = ["max", "pow2", "oracle", "paged-16"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, dataset in zip(axes, ("sharegpt", "alpaca")):
        rate = FIG13_RATES[dataset]
        ours = [e.rate_sweeps[dataset].batch(n, rate) for n in names]
        paper = [PAPER_FIG13[dataset][n] for n in names]
        x = np.arange(len(names))
        ax.bar(x - 0.2, paper, 0.4, label="vLLM paper, Fig. 13", color="#90a4ae")
        ax.bar(x + 0.2, ours, 0.4, label=f"simulated ({e.time_model})", color=COLORS["token_states"])
        for xi, v in zip(x, ours):
            ax.text(xi + 0.2, v * 1.02, f"{v:.1f}", ha="center", fontsize=8)
        ax.set_xticks(x, names)
        ax.set_ylabel("mean batched requests")
        ax.set_title(f"{dataset}-like at {rate:g} req/s", fontsize=9)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_sharing(e: Experiments, path: Path) -> Path:
    """Fig. 15: memory saved by sharing, with the paper's ranges as shaded bands."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, kind in zip(axes, ("parallel", "beam")):
        for dataset, color in (("sharegpt", "#1565c0"), ("alpaca", "#6a1b9a")):
            got = [100 * e.sharing[dataset, kind, w].sharing_saving for w in WIDTHS]
            ax.plot(WIDTHS, got, marker="o", color=color, label=f"{dataset} (simulated)")
            low, high = PAPER_FIG15[dataset, kind]
            ax.axhspan(low, high, color=color, alpha=0.12, label=f"{dataset} (paper range)")
        ax.set_xticks(WIDTHS)
        ax.set_xlabel("samples" if kind == "parallel" else "beam width")
        ax.set_title("parallel sampling" if kind == "parallel" else "beam search", fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("% of blocks saved by sharing")
    return save_figure(fig, path)


def plot_throughput(e: Experiments, path: Path) -> Path:
    """Sustained batch of each manager on both datasets, saturated (log scale): memory's upper bound."""
    names = ["max", "pow2", "oracle", "paged-16"]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for i, dataset in enumerate(("sharegpt", "alpaca")):
        values = [e.main[dataset, n].mean_running_seqs for n in names]
        ax.bar(x + (i - 0.5) * 0.4, values, 0.4, label=dataset)
        for xi, v in zip(x, values):
            ax.text(xi + (i - 0.5) * 0.4, v * 1.05, f"{v:.0f}", ha="center", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(x, names)
    ax.set_ylabel("sequences per step (saturated)")
    ax.set_title("Sustained batch size: an upper bound on throughput")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_claim_plots(e: Experiments, out_dir: str | Path) -> list[Path]:
    """Write every figure of ``docs/claims.md`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    main = [e.main["sharegpt", n] for n in ("max", "pow2", "oracle", "max-first-fit", "pow2-first-fit",
                                            "oracle-first-fit", "paged-16")]
    return [
        plot_fig2(e, out / "claims_fig2_token_states.png"),
        plot_shares(main, out / "claims_memory_breakdown.png", "Where the KV memory goes (ShareGPT-like)"),
        plot_timeline({n: e.logs[n] for n in ("max", "pow2", "oracle", "paged-16")}, out / "claims_timeline.png"),
        plot_throughput(e, out / "claims_batch_sizes.png"),
        plot_block_sizes(e, out / "claims_block_size.png"),
        plot_sharing(e, out / "claims_sharing.png"),
        plot_latency_vs_rate([e.rate_sweeps["sharegpt"], e.rate_sweeps["alpaca"]], out / "claims_fig12_latency.png"),
        plot_fig13(e, out / "claims_fig13_batch.png"),
    ]
