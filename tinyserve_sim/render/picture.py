"""Image files of the simulator's state (matplotlib): the memory map and the block tables.

``save_state(manager, "state.svg")`` writes one picture: on the left each
sequence's block table (logical block i -> physical block id), on the right the
physical memory as a grid, coloured exactly like the terminal view.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

# Figures are built with the object-oriented API (no pyplot): nothing global is
# touched, no display is needed, and a notebook shows a returned figure once.
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.control.records import Snapshot
from tinyserve_sim.render.layout import BlockKind, SequenceColors, classify_blocks, colors_for, sequence_colors

SEQ_COLORS = ("#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#d62728", "#7f7f7f", "#bcbd22")
SHARED_COLOR = "#e377c2"
CACHED_COLOR = "#ffe066"
FREE_COLOR = "#eeeeee"
#: Largest pool drawn block by block.
MAX_CELLS = 1024


def draw_state(
    state: BlockManager | Snapshot, title: str = "", per_row: int = 16, colors: SequenceColors | None = None
) -> Figure:
    """Draw block tables and the memory map; return the matplotlib figure.

    A sequence keeps its colour in every picture of the same manager (or of the
    snapshots drawn with the same ``colors``): see :class:`SequenceColors`.
    """
    snap = state.snapshot() if isinstance(state, BlockManager) else state
    colors = sequence_colors(snap, colors_for(state, colors))
    infos = classify_blocks(snap)[:MAX_CELLS]
    rows = -(-len(infos) // per_row)
    max_table = max((len(s.block_table) for s in snap.sequences), default=1)
    table_width = min(max_table, 24)
    fig = Figure(figsize=(2 + 0.45 * (table_width + per_row), 1.2 + 0.45 * max(rows, len(snap.sequences), 2)))
    ax_tab, ax_mem = fig.subplots(1, 2, gridspec_kw={"width_ratios": [table_width + 2, per_row]})
    # Left: block tables, one row per sequence.
    for row, seq in enumerate(snap.sequences):
        y = len(snap.sequences) - 1 - row
        ax_tab.text(-0.3, y + 0.5, f"{seq.seq_id} ({seq.num_tokens} tok)", ha="right", va="center", fontsize=9)
        for i, block in enumerate(seq.block_table[:table_width]):
            shared = snap.ref_counts[block] > 1
            face = SHARED_COLOR if shared else SEQ_COLORS[colors[seq.seq_id] % len(SEQ_COLORS)]
            ax_tab.add_patch(Rectangle((i, y + 0.1), 0.9, 0.8, facecolor=face, edgecolor="black", lw=0.5))
            ax_tab.text(i + 0.45, y + 0.5, str(block), ha="center", va="center", fontsize=8, color="white")
    ax_tab.set_xlim(-0.1, table_width + 0.1)
    ax_tab.set_ylim(0, max(len(snap.sequences), 1))
    ax_tab.set_title("block tables (logical -> physical)", fontsize=10)
    ax_tab.axis("off")
    # Right: physical memory, block 0 at the top left.
    for info in infos:
        col, row = info.block % per_row, info.block // per_row
        if info.kind is BlockKind.OWNED:
            face = SEQ_COLORS[colors[info.owner] % len(SEQ_COLORS)]
        else:
            face = {BlockKind.SHARED: SHARED_COLOR, BlockKind.CACHED: CACHED_COLOR, BlockKind.FREE: FREE_COLOR}[
                info.kind
            ]
        y = rows - 1 - row
        ax_mem.add_patch(Rectangle((col, y + 0.05), 0.9, 0.9, facecolor=face, edgecolor="black", lw=0.4))
        label = str(info.block) + (f"\nx{info.ref}" if info.ref > 1 else "")
        dark = info.kind in (BlockKind.OWNED, BlockKind.SHARED)
        ax_mem.text(col + 0.45, y + 0.5, label, ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    ax_mem.set_xlim(0, per_row)
    ax_mem.set_ylim(0, max(rows, 1))
    ax_mem.set_title(f"physical memory ({snap.num_blocks} blocks x {snap.block_size} slots)", fontsize=10)
    ax_mem.axis("off")
    handles = [Rectangle((0, 0), 1, 1, facecolor=SEQ_COLORS[colors[s.seq_id] % len(SEQ_COLORS)])
               for s in snap.sequences[: len(SEQ_COLORS)]]
    labels = [str(s.seq_id) for s in snap.sequences[: len(SEQ_COLORS)]]
    handles += [Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="black", lw=0.4)
                for c in (SHARED_COLOR, CACHED_COLOR, FREE_COLOR)]
    labels += ["shared (xN refs)", "cached, free", "free"]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11, y=0.995)
    fig.subplots_adjust(bottom=0.18, top=0.8 if title else 0.9)
    return fig


def save_state(
    state: BlockManager | Snapshot, path: str | Path, title: str = "", colors: SequenceColors | None = None
) -> Path:
    """Draw the state and write it to ``path`` (``.svg`` or ``.png``)."""
    fig = draw_state(state, title, colors=colors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def describe_state(state: BlockManager | Snapshot) -> str:
    """The picture of ``state`` in words: its alternative text, for readers who cannot see it.

    >>> m = BlockManager(num_blocks=8, block_size=4)
    >>> _ = m.add("a", 6)
    >>> describe_state(m)
    "Block tables and memory map of 8 blocks of 4 slots. 'a': 6 tokens in blocks [0, 1]. Blocks used 2, free 6."
    """
    snap = state.snapshot() if isinstance(state, BlockManager) else state
    infos = classify_blocks(snap)
    parts = [f"Block tables and memory map of {snap.num_blocks} blocks of {snap.block_size} slots."]
    for seq in snap.sequences[:8]:
        table = ", ".join(map(str, seq.block_table[:12])) + (", ..." if len(seq.block_table) > 12 else "")
        parts.append(f"{seq.seq_id!r}: {seq.num_tokens} tokens in blocks [{table}].")
    if len(snap.sequences) > 8:
        parts.append(f"And {len(snap.sequences) - 8} more sequences.")
    shared = [i.block for i in infos if i.kind is BlockKind.SHARED]
    if shared:
        parts.append(f"Shared blocks: {', '.join(map(str, shared[:12]))}.")
    cached = sum(1 for i in infos if i.kind is BlockKind.CACHED)
    used = sum(1 for i in infos if i.kind in (BlockKind.OWNED, BlockKind.SHARED))
    cached_text = f"cached free {cached}, " if cached else ""
    parts.append(f"Blocks used {used}, {cached_text}free {len(snap.free_queue)}.")
    return " ".join(parts)


class Picture:
    """A figure with a description, shown by a notebook as an image with that alternative text.

    Returning a bare matplotlib figure from a notebook cell gives an image with
    no description; a :class:`Picture` gives ``<img alt="...">`` (through
    ``_repr_html_``, so no IPython import is needed), and ``save(path)`` writes
    the figure to a file as :func:`save_state` does.
    """

    def __init__(self, figure: Figure, description: str) -> None:
        self.figure = figure
        self.description = description

    def svg(self) -> bytes:
        """The figure as SVG bytes (no date in it: the same state gives the same bytes)."""
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="svg", metadata={"Date": None})
        return buffer.getvalue()

    def _repr_html_(self) -> str:
        data = base64.b64encode(self.svg()).decode("ascii")
        return f'<img alt="{html.escape(self.description)}" src="data:image/svg+xml;base64,{data}">'

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure.savefig(path, dpi=120)
        return path


def show_state(
    state: BlockManager | Snapshot, title: str = "", colors: SequenceColors | None = None
) -> Picture:
    """:func:`draw_state` with its description (:func:`describe_state`): what tutorials show."""
    description = (f"{title}. " if title else "") + describe_state(state)
    return Picture(draw_state(state, title, colors=colors), description)
