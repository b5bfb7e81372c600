"""Plots of a serving run (``tinyserve-sim simulate``): matplotlib, Agg backend, PNG files.

:func:`plot_shares` splits each manager's KV memory into the five categories of
:mod:`~tinyserve_sim.serving.metrics`; :func:`plot_timeline` follows the
token-state share over a run. The claims study reuses both.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tinyserve_sim.serving.metrics import CATEGORIES, StepLog, Summary  # noqa: E402

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
    """Stacked bars: each manager's memory split into the five categories."""
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
    ax.set_xlabel("% of KV memory (mean over saturated steps)")
    ax.invert_yaxis()
    ax.set_title(title)
    ax.legend(ncol=3, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(summaries) < 5 else -0.18))
    return save_figure(fig, path)


def plot_timeline(logs: dict[str, StepLog], path: Path, smooth: int = 200) -> Path:
    """Token-state share over the first steps of each run (moving average of ``smooth`` steps)."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name, log in logs.items():
        share = 100 * log.array("token_states") / log.capacity
        if len(share) > smooth:
            share = np.convolve(share, np.ones(smooth) / smooth, mode="valid")
        ax.plot(share, label=name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("% of KV memory in token states")
    ax.set_ylim(0, 100)
    ax.set_title("Token-state share over a run")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)
