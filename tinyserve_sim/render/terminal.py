"""The terminal view (rich): block tables, the physical memory map, ref counts and the free queue.

>>> from tinyserve_sim import BlockManager
>>> from tinyserve_sim.render import print_state
>>> m = BlockManager(num_blocks=8, block_size=4)
>>> _ = m.add("a", 6)
>>> print_state(m)  # doctest: +SKIP
"""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from tinyserve_sim.control.manager import BlockManager
from tinyserve_sim.control.records import OpRecord, Snapshot
from tinyserve_sim.render.layout import BlockKind, SequenceColors, classify_blocks, colors_for, sequence_colors

#: Colours for sequences' own blocks, cycled.
SEQ_STYLES = ("bold white on blue", "bold white on green", "bold white on dark_orange3", "bold white on purple4",
              "bold white on dark_cyan", "bold white on red3", "bold white on grey39", "bold black on gold3")
SHARED_STYLE = "bold white on magenta"
CACHED_STYLE = "black on yellow"
FREE_STYLE = "grey50"

#: Largest memory map drawn cell by cell; bigger pools are summarised.
MAX_CELLS = 512


def _snapshot(state: BlockManager | Snapshot) -> Snapshot:
    return state.snapshot() if isinstance(state, BlockManager) else state


def render_memory_map(
    state: BlockManager | Snapshot, per_row: int = 10, colors: SequenceColors | None = None
) -> RenderableType:
    """A grid of physical blocks coloured by owner / shared / cached-free / free."""
    snap = _snapshot(state)
    colors = sequence_colors(snap, colors_for(state, colors))
    infos = classify_blocks(snap)
    width = len(str(snap.num_blocks - 1))
    text = Text()
    for info in infos[:MAX_CELLS]:
        if info.kind is BlockKind.OWNED:
            style = SEQ_STYLES[colors[info.owner] % len(SEQ_STYLES)]
        elif info.kind is BlockKind.SHARED:
            style = SHARED_STYLE
        elif info.kind is BlockKind.CACHED:
            style = CACHED_STYLE
        else:
            style = FREE_STYLE
        label = str(info.block) + (f"x{info.ref}" if info.ref > 1 else "")
        text.append(f" {label.ljust(width + 2)} ", style=style)
        text.append(" ")
        if (info.block + 1) % per_row == 0:
            text.append("\n")
    if snap.num_blocks > MAX_CELLS:
        counts = {kind: sum(1 for i in infos if i.kind is kind) for kind in BlockKind}
        text.append(f"\n... {snap.num_blocks - MAX_CELLS} more blocks; in all: " +
                    ", ".join(f"{k.value} {v}" for k, v in counts.items()))
    legend = Text("legend: ")
    for seq in snap.sequences[: len(SEQ_STYLES)]:
        legend.append(f" {seq.seq_id} ", style=SEQ_STYLES[colors[seq.seq_id] % len(SEQ_STYLES)])
        legend.append(" ")
    legend.append(" shared (xN = ref count) ", style=SHARED_STYLE)
    legend.append(" ")
    legend.append(" cached, free ", style=CACHED_STYLE)
    legend.append(" ")
    legend.append(" free ", style="reverse " + FREE_STYLE)
    text.rstrip()
    return Group(Text(f"physical memory ({snap.num_blocks} blocks x {snap.block_size} slots)", style="bold"), text, legend)


def render_tables(
    state: BlockManager | Snapshot, max_blocks: int = 24, colors: SequenceColors | None = None
) -> RenderableType:
    """One row per sequence: its token count and its block table (logical -> physical)."""
    snap = _snapshot(state)
    colors = sequence_colors(snap, colors_for(state, colors))
    table = Table(title="block tables", title_justify="left", expand=False)
    table.add_column("sequence")
    table.add_column("tokens", justify="right")
    table.add_column("block table (logical -> physical)")
    for seq in snap.sequences:
        cells = Text()
        for block in seq.block_table[:max_blocks]:
            shared = snap.ref_counts[block] > 1
            style = SHARED_STYLE if shared else SEQ_STYLES[colors[seq.seq_id] % len(SEQ_STYLES)]
            cells.append(f" {block} ", style=style)
            cells.append(" ")
        if len(seq.block_table) > max_blocks:
            cells.append(f"... +{len(seq.block_table) - max_blocks}")
        table.add_row(str(seq.seq_id), str(seq.num_tokens), cells)
    if not snap.sequences:
        table.add_row("(none)", "", "")
    return table


def render_free_queue(state: BlockManager | Snapshot, show: int = 16) -> RenderableType:
    """The free queue in allocation order, and the cached free blocks in eviction order."""
    snap = _snapshot(state)
    text = Text()
    text.append(f"free queue ({snap.policy}, next first): ", style="bold")
    text.append(_head(snap.free_queue, show))
    if snap.prefix_caching:
        text.append("\ncached free blocks (next eviction first): ", style="bold")
        text.append(_head(snap.evictable, show))
        text.append(f"\nprefix cache: {snap.cache_hits} hit(s), {snap.cache_misses} miss(es), "
                    f"{snap.evictions} eviction(s)")
    return text


def _head(blocks: tuple[int, ...], show: int) -> str:
    if not blocks:
        return "(empty)"
    shown = " ".join(map(str, blocks[:show]))
    return shown + (f" ... (+{len(blocks) - show})" if len(blocks) > show else "")


def render_state(state: BlockManager | Snapshot, colors: SequenceColors | None = None) -> RenderableType:
    """Tables, memory map and free queue together (colours as in :func:`~tinyserve_sim.render.draw_state`)."""
    snap = _snapshot(state)
    colors = colors_for(state, colors)
    return Group(render_tables(snap, colors=colors), render_memory_map(snap, colors=colors), render_free_queue(snap))


def render_record(record: OpRecord) -> Text:
    """An operation's record as one coloured line: its index, its operation and what it did."""
    text = Text(f"[{record.index:>3}] ", style="dim")
    explanation = record.explain()
    text.append(record.op, style="bold cyan")  # every explanation starts with its operation
    text.append(explanation[len(record.op):])
    return text


def print_state(
    state: BlockManager | Snapshot, console: Console | None = None, colors: SequenceColors | None = None
) -> None:
    """Print :func:`render_state` to the terminal (or to ``console``)."""
    (console or Console()).print(render_state(state, colors))
