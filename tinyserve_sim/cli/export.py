"""``tinyserve-sim trace FILE --until N --export {vllm,flashinfer} OUT``: a real server's tensors.

After replaying ``N`` operations, the live sequences' batch (their block
tables, lengths, and the slots the last operation wrote) is converted by
:mod:`tinyserve_sim.control.formats` and written as ``OUT.npz`` (the arrays,
for ``numpy.load``) plus ``OUT.json``, a sidecar that says what each array
is: its dtype, shape, meaning and padding, the sequences in row order, and
which operation was last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyserve_sim.cli.common import console, fail
from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.control.formats import VLLM_PAD_BLOCK, VLLM_PAD_SLOT
from tinyserve_sim.control.trace import Trace
from tinyserve_sim.errors import SimError

#: The formats ``--export`` writes.
EXPORT_FORMATS = ("vllm", "flashinfer")

_MEANING = {
    "block_tables": "row s: the physical blocks of sequence s in logical order, then padding",
    "seq_lens": "tokens of each sequence",
    "slot_mapping": "cache slot of each token the last operation wrote: block * block_size + offset",
    "kv_indptr": "sequence s's pages are kv_indices[kv_indptr[s]:kv_indptr[s+1]]; starts at 0",
    "kv_indices": "every sequence's pages (block ids), concatenated in row order",
    "kv_last_page_len": "tokens in each sequence's last page, 1..page_size",
}


@dataclass(frozen=True)
class ExportTarget:
    """Where ``--export`` writes: the format, the ``.npz`` and its ``.json`` sidecar."""

    fmt: str
    npz: Path
    sidecar: Path


def export_target(fmt: str, out: Path) -> ExportTarget:
    """Check ``--export FORMAT OUT`` before anything runs; a bad value ends the command
    with one line on standard error and exit status 2."""
    if fmt not in EXPORT_FORMATS:
        raise fail(f"--export: unknown format {fmt!r}; choose {' or '.join(EXPORT_FORMATS)}")
    npz = out if out.suffix == ".npz" else out.with_name(out.name + ".npz")
    sidecar = npz.with_suffix(".json")
    if not npz.parent.is_dir():
        raise fail(f"--export: folder {npz.parent} does not exist")
    for path in (npz, sidecar):
        if path.is_dir():
            raise fail(f"--export: {path} is a folder")
    return ExportTarget(fmt, npz, sidecar)


def _describe(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        name: {"dtype": str(a.dtype), "shape": list(a.shape), "meaning": _MEANING[name]} for name, a in arrays.items()
    }


def write_export(trace: Trace, until: int, target: ExportTarget, source: Path | None = None) -> None:
    """Replay ``until`` operations of ``trace`` and write the live sequences' batch to ``target``."""
    replay = trace.replay()
    records = replay.run(until)
    manager = replay.manager
    last = records[-1] if records else None
    slots = last.slot_mapping if last is not None else np.empty(0, np.int64)
    batch = DecodeBatch.from_manager(manager, slot_mapping=slots)
    try:
        exported = batch.to_vllm() if target.fmt == "vllm" else batch.to_flashinfer()
    except SimError as exc:
        raise fail(f"--export: {exc}") from None
    arrays = exported.arrays()
    sidecar: dict[str, Any] = {
        "format": target.fmt,
        "arrays_file": target.npz.name,
        "trace": str(source) if source is not None else (trace.header.name or None),
        "operations_replayed": replay.position,
        "last_operation": None if last is None else {"index": last.index, "op": last.op, "seq_id": last.seq_id},
        "num_blocks": manager.num_blocks,
        ("block_size" if target.fmt == "vllm" else "page_size"): manager.block_size,
        "seq_ids": list(batch.seq_ids),
        "arrays": _describe(arrays),
    }
    if target.fmt == "vllm":
        sidecar["padding"] = {"block_tables": VLLM_PAD_BLOCK, "slot_mapping": VLLM_PAD_SLOT}
    else:
        sidecar["slot_mapping"] = {"values": slots.tolist(), "meaning": _MEANING["slot_mapping"]}
        sidecar["cache_layout"] = {
            "NHD": "kv_cache[num_pages, 2, page_size, num_kv_heads, head_dim]",
            "HND": "kv_cache[num_pages, 2, num_kv_heads, page_size, head_dim]",
            "converter": "tinyserve_sim.data.layouts.to_flashinfer_cache(key_cache, value_cache, layout)",
        }
    try:
        with target.npz.open("wb") as f:
            np.savez(f, **arrays)
        target.sidecar.write_text(json.dumps(sidecar, indent=2) + "\n")
    except OSError as exc:
        raise fail(f"--export: cannot write {exc.filename or target.npz}: {exc.strerror or exc}") from None
    console.print(f"wrote {target.npz} and {target.sidecar} ({target.fmt}, {batch.num_seqs} sequences)")
