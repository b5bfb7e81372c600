"""An interactive trace player: one self-contained HTML page, no network, no server.

``tinyserve-sim trace FILE --html OUT.html`` writes it. The simulator replays
the whole trace first and stores every state in the page as JSON: the page
itself computes nothing, it only shows frame after frame. Frame 0 is the
state before any operation; frame ``k`` is the state after operation
``k - 1`` (the operation numbered ``[k-1]`` in the terminal and in the
pictures' file names, ``op-NNN.svg``).

Each frame holds the operation's record (what it allocated, freed, shared,
copied, evicted), its explanation and note, and the snapshot it left: the
block tables, the memory map and the free queue, coloured exactly as in the
pictures (:data:`~tinyserve_sim.render.picture.SEQ_COLORS`, with the same
:class:`~tinyserve_sim.render.layout.SequenceColors`).

>>> from tinyserve_sim.scenarios import get_scenario
>>> data = player_data(get_scenario("copy-on-write").trace())
>>> len(data["frames"]), data["frames"][3]["explain"].split(";")[0]   # frame 3: after operation [2]
(9, "append 1 token(s) to 'A1'")
>>> page = player_html(get_scenario("copy-on-write").trace())
>>> "<script" in page, "http://" in page or "https://" in page   # self-contained: no address at all
(True, False)
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from tinyserve_sim.control.records import OpRecord, Snapshot
from tinyserve_sim.control.trace import Trace
from tinyserve_sim.render.layout import SequenceColors, classify_blocks, sequence_colors
from tinyserve_sim.render.picture import CACHED_COLOR, FREE_COLOR, SEQ_COLORS, SHARED_COLOR

#: Where the page's JSON goes in the template (package data: ``player.html``).
DATA_MARKER = "/*__PLAYER_DATA__*/null"
TITLE_MARKER = "__PLAYER_TITLE__"


def _ids(values: Any) -> list:
    return [v if isinstance(v, (str, int)) else str(v) for v in values]


def state_json(snap: Snapshot, colors: SequenceColors) -> dict[str, Any]:
    """One snapshot as the page draws it: sequences with their colour, every block, the queues."""
    color_of = sequence_colors(snap, colors)
    blocks = []
    for info in classify_blocks(snap):
        blocks.append({
            "block": info.block,
            "kind": info.kind.value,
            "ref": info.ref,
            "owner": info.owner,
            "color": None if info.owner is None else color_of[info.owner] % len(SEQ_COLORS),
        })
    return {
        "sequences": [
            {"id": seq.seq_id, "tokens": seq.num_tokens, "table": list(seq.block_table),
             "color": color_of[seq.seq_id] % len(SEQ_COLORS)}
            for seq in snap.sequences
        ],
        "blocks": blocks,
        "ref_counts": list(snap.ref_counts),
        "free_queue": list(snap.free_queue),
        "evictable": list(snap.evictable),
        "cache": {"hits": snap.cache_hits, "misses": snap.cache_misses, "evictions": snap.evictions},
    }


def record_json(record: OpRecord) -> dict[str, Any]:
    """What one operation did, field by field (the page lists the non-empty ones)."""
    return {
        "index": record.index,
        "op": record.op,
        "seq": record.seq_id,
        "parent": record.parent_id,
        "new_tokens": record.num_new_tokens,
        "allocated": list(record.allocated),
        "freed": list(record.freed),
        "cached": list(record.cached),
        "shared": list(record.shared),
        "copies": [list(pair) for pair in record.copies],
        "evicted": list(record.evicted),
        "cache_hits": list(record.cache_hits),
        "cache_misses": record.cache_misses,
        "slot_mapping": [int(s) for s in record.slot_mapping],
        "counts": {"free": record.num_free, "cached": record.num_cached_free, "used": record.num_used},
    }


def player_data(trace: Trace) -> dict[str, Any]:
    """Replay ``trace`` and return everything the page shows, frame by frame (JSON-ready)."""
    replay = trace.replay()
    colors = SequenceColors()
    header = trace.header
    frames: list[dict[str, Any]] = [{
        "position": 0, "op": None, "explain": "The initial state: every block is free.", "note": "",
        "record": None, "state": state_json(replay.manager.snapshot(), colors),
    }]
    while not replay.done:
        op = replay.next_op
        try:
            record = replay.next_record()
        except StopIteration:
            break
        frames.append({
            "position": replay.position,
            "op": record.op,
            "explain": record.explain(),
            "note": op.note,
            "record": record_json(record),
            "state": state_json(replay.manager.snapshot(), colors),
        })
    return {
        "header": {"name": header.name, "description": header.description, "num_blocks": header.num_blocks,
                   "block_size": header.block_size, "policy": header.policy,
                   "prefix_caching": header.prefix_caching, "operations": len(trace.ops)},
        "colors": {"sequences": list(SEQ_COLORS), "shared": SHARED_COLOR, "cached": CACHED_COLOR,
                   "free": FREE_COLOR},
        "frames": frames,
        "stopped": replay.stop_message(),
    }


def _template() -> str:
    return resources.files("tinyserve_sim.render").joinpath("player.html").read_text(encoding="utf-8")


def player_html(trace: Trace, title: str | None = None) -> str:
    """The player page for ``trace``, as one string of HTML (styles, script and data inline)."""
    data = json.dumps(player_data(trace), separators=(",", ":"))
    # A "</" inside a <script> would end it early: JSON allows writing "<\/" instead.
    data = data.replace("</", "<\\/")
    name = title or trace.header.name or "trace"
    page = _template()
    escaped = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return page.replace(TITLE_MARKER, escaped).replace(DATA_MARKER, data)


def write_player(trace: Trace, path: str | Path, title: str | None = None) -> Path:
    """Write :func:`player_html` for ``trace`` to ``path``; return the path."""
    path = Path(path)
    path.write_text(player_html(trace, title), encoding="utf-8")
    return path
