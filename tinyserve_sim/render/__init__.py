"""Pictures of the simulator's state: in the terminal (rich), as image files (matplotlib), and as a player page.

All renderers read only public state (:meth:`BlockManager.snapshot` and
operation records), so what they show is exactly what the simulator holds. A
sequence keeps its colour in every picture of a trace (:class:`SequenceColors`).
"""

from tinyserve_sim.render.html import player_data, player_html, write_player
from tinyserve_sim.render.layout import BlockKind, SequenceColors, classify_blocks
from tinyserve_sim.render.picture import Picture, describe_state, draw_state, save_state, show_state
from tinyserve_sim.render.terminal import print_state, render_record, render_state

__all__ = [
    "BlockKind", "Picture", "SequenceColors", "classify_blocks", "describe_state", "draw_state", "player_data",
    "player_html", "print_state", "render_record", "render_state", "save_state", "show_state", "write_player",
]
