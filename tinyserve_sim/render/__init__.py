"""Pictures of the simulator's state: in the terminal (rich) and as image files (matplotlib).

Both renderers read only public state (:meth:`BlockManager.snapshot` and step
records), so what they show is exactly what the simulator holds.
"""

from tinyserve_sim.render.layout import BlockKind, classify_blocks
from tinyserve_sim.render.picture import draw_state, save_state
from tinyserve_sim.render.terminal import print_state, render_record, render_state

__all__ = ["BlockKind", "classify_blocks", "draw_state", "print_state", "render_state", "render_record", "save_state"]
