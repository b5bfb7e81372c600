"""The renderers show the state the simulator holds."""

from rich.console import Console

from tinyserve_sim import BlockManager
from tinyserve_sim.render import BlockKind, classify_blocks, print_state, save_state


def state():
    m = BlockManager(12, 4, prefix_caching=True)
    m.add("a", list(range(10)))
    m.fork("a", "b")
    m.append("b", [1])
    m.add("c", list(range(50, 58)))
    m.free("c")
    return m


def test_classify_blocks():
    kinds = [info.kind for info in classify_blocks(state().snapshot())]
    assert kinds[:6] == [BlockKind.SHARED, BlockKind.SHARED, BlockKind.OWNED, BlockKind.OWNED,
                         BlockKind.CACHED, BlockKind.CACHED]
    assert kinds[6:] == [BlockKind.FREE] * 6


def test_terminal_view_lists_tables_and_queues():
    console = Console(record=True, width=120)
    print_state(state(), console)
    text = console.export_text()
    assert "0x2" in text and "1x2" in text  # shared blocks show their ref count
    assert "free queue (fifo, next first): 6 7 8 9 10 11" in text
    assert "cached free blocks (next eviction first): 5 4" in text


def test_picture_files(tmp_path):
    for suffix in ("svg", "png"):
        path = save_state(state(), tmp_path / f"s.{suffix}", title="t")
        assert path.stat().st_size > 1000
    assert (tmp_path / "s.svg").read_text().lstrip().startswith("<?xml")
