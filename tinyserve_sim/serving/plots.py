"""Plots of serving runs (``tinyserve-sim simulate`` and ``sweep``): matplotlib, Agg backend, PNG files.

:func:`plot_shares` splits each manager's KV memory into the five categories of
:mod:`~tinyserve_sim.serving.metrics`; :func:`plot_timeline` follows the
token-state share over a run; :func:`plot_latency_vs_rate` draws the vLLM
paper's Fig. 12 from a :class:`~tinyserve_sim.serving.rate_sweep.RateSweep`.
The claims study reuses them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tinyserve_sim.serving.metrics import CATEGORIES, StepLog, Summary  # noqa: E402
from tinyserve_sim.serving.rate_sweep import RateSweep  # noqa: E402

COLORS = {
    "token_states": "#2e7d32",
    "reservation": "#fbc02d",
    "internal": "#ef6c00",
    "external": "#c62828",
    "idle": "#bdbdbd",
}
LABELS = {
    "token_states": "token states",
    "reservation": "reservation",
    "internal": "internal fragmentation",
    "external": "external fragmentation",
    "idle": "idle (nothing waiting)",
}


def save_figure(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_shares(summaries: list[Summary], path: Path, title: str = "Where the KV memory goes") -> Path:
    """Stacked bars: each manager's memory split into the five categories, saved to ``path``."""
    return save_figure(draw_shares(summaries, title), path)


def draw_shares(summaries: list[Summary], title: str = "Where the KV memory goes") -> plt.Figure:
    """The figure of :func:`plot_shares`, not saved (a notebook shows it inline)."""
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.55 * len(summaries)))
    names = [s.manager for s in summaries]
    left = np.zeros(len(summaries))
    for cat in CATEGORIES:
        values = np.array([100 * getattr(s, cat) for s in summaries])
        ax.barh(names, values, left=left, color=COLORS[cat], label=LABELS[cat])
        for y, (x0, v) in enumerate(zip(left, values)):
            if v >= 6:
                ax.text(x0 + v / 2, y, f"{v:.0f}", ha="center", va="center", fontsize=8)
        left += values
    ax.set_xlim(0, 100)
    windows = {s.window for s in summaries}
    over = "every step" if windows == {"all"} else "steps where memory held a request back"
    ax.set_xlabel(f"% of KV memory (mean over {over})" if len(windows) == 1 else "% of KV memory")
    ax.invert_yaxis()
    ax.set_title(title)
    ax.legend(ncol=3, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(summaries) < 5 else -0.18))
    fig.tight_layout()
    return fig


def token_state_share(log: StepLog) -> np.ndarray:
    """The token-state share of each step, 0..1, as float32 (small enough to keep after the log is gone)."""
    return (log.column("token_states") / log.capacity).astype(np.float32)


def plot_timeline(shares: dict[str, StepLog | np.ndarray], path: Path, smooth: int = 200) -> Path:
    """Token-state share over each run (moving average of ``smooth`` steps).

    ``shares`` maps a manager's name to its step log, or to the shares of
    :func:`token_state_share` (what ``simulate`` keeps once a log is written).
    """
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name, data in shares.items():
        share = 100 * (token_state_share(data) if isinstance(data, StepLog) else np.asarray(data, dtype=np.float64))
        if len(share) > smooth:
            share = np.convolve(share, np.ones(smooth) / smooth, mode="valid")
        stride = max(1, len(share) // 4000)  # a few thousand points draw the same line
        ax.plot(np.arange(0, len(share), stride), share[::stride], label=name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("% of KV memory in token states")
    ax.set_ylim(0, 100)
    ax.set_title("Token-state share over a run")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def plot_latency_vs_rate(sweeps: list[RateSweep], path: Path, ceiling: float = 1.0) -> Path:
    """The vLLM paper's Fig. 12: normalised latency against request rate, one panel per dataset.

    Latencies above ``ceiling`` (s/token) are cut, as the paper's axes cut
    them; the dashed line is the threshold that defines a sustained rate.
    """
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.6 * len(sweeps), 3.6), squeeze=False)
    for ax, sweep in zip(axes[0], sweeps):
        for name in sweep.managers:
            curve = sweep.curve(name)
            rates = [p.rate for p in curve]
            latency = [min(p.latency, 1.5 * ceiling) for p in curve]
            style = {"lw": 2.0} if name.startswith("paged") else {"lw": 1.2}
            ax.plot(rates, latency, marker="o", ms=3, label=name, **style)
        ax.axhline(sweep.threshold, color="#555555", ls="--", lw=0.8)
        ax.text(sweep.rates[0], sweep.threshold, f" threshold {sweep.threshold:g} s/token", fontsize=7,
                va="bottom", color="#555555")
        ax.set_ylim(0, ceiling)
        ax.set_xlim(0, sweep.rates[-1] * 1.02)
        ax.set_xlabel("request rate (requests/s)")
        ax.set_ylabel("normalised latency (s/token)")
        ax.set_title(f"{sweep.dataset}-like, {sweep.duration:g} s of arrivals ({sweep.time_model})", fontsize=9)
        ax.legend(fontsize=7)
    return save_figure(fig, path)
