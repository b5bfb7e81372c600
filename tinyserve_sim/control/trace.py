"""Traces: a small, versioned file format for sequences of block-manager operations.

A trace is a JSON Lines file (one JSON object per line). The first line is the
header; every other non-blank line is one operation::

    {"format": "tinyserve-sim-trace", "version": 1, "block_size": 4, "num_blocks": 8, "prefix_caching": true}
    {"op": "add", "seq": "a", "prompt": [1, 2, 3, 4, 5, 6], "note": "2 blocks; the full first one is cached"}
    {"op": "fork", "parent": "a", "child": "b"}
    {"op": "append", "seq": "b", "tokens": [7], "note": "the shared last block is copied first"}
    {"op": "free", "seq": "a"}
    {"op": "free", "seq": "b", "note": "the cached block keeps its content, free"}
    {"op": "evict", "blocks": 1, "note": "and now forgets it"}

Header fields: ``format`` (always ``"tinyserve-sim-trace"``), ``version``
(``1``), ``block_size``, ``num_blocks``, and optionally ``policy``
(``"fifo"`` or ``"lifo"``, default ``"fifo"``), ``prefix_caching`` (default
``false``), ``name`` and ``description``.

Operation fields:

=========  =====================================================================
``op``     ``add``, ``append``, ``fork``, ``free``, ``evict`` or ``move``
``seq``    the sequence (``add``, ``append``, ``free``): a string or an integer
``prompt`` ``add``: a token count, or a list of token ids (needed for prefix caching)
``tokens`` ``append``: a token count or a list of token ids (default 1)
``parent`` ``fork``: the sequence to fork
``child``  ``fork``: the new sequence's id
``blocks`` ``evict``: how many cached free blocks to evict (default 1)
``moves``  ``move``: a list of ``[src, dst]`` block pairs to relocate (compaction)
``note``   any operation: free text, shown when stepping through the trace
=========  =====================================================================

Any other field is an error, so a typo never passes silently. Errors name the
line number and the field.

Prefix caching needs token ids. A prompt given as a count (``"prompt": 6``)
has no content to hash, so none of its blocks is cached, and a later
``evict`` finds nothing to evict. Likewise, decoded tokens are cached only
when they are given as ids (``"tokens": [7, 8]``) and fill a block; a count
(``"tokens": 2``) is never cached.

The free queue's ``policy`` orders the blocks that a ``free`` returns (a
sequence is released last block first). ``"fifo"``: they join the tail of the
queue, so never-used blocks are handed out before them. ``"lifo"``: they go on
top of a stack, so the block freed last is handed out first. Cached free
blocks wait apart from the queue and are reused, when the queue is empty,
least recently used first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyserve_sim.control.manager import BlockManager, Tokens
from tinyserve_sim.control.pool import POLICIES
from tinyserve_sim.control.records import OPS, OpRecord, SeqId
from tinyserve_sim.errors import OutOfBlocksError, SimError, TraceFormatError

FORMAT = "tinyserve-sim-trace"
VERSION = 1

# Which fields each operation takes: (required, optional).
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "add": (("seq", "prompt"), ()),
    "append": (("seq",), ("tokens",)),
    "fork": (("parent", "child"), ()),
    "free": (("seq",), ()),
    "evict": ((), ("blocks",)),
    "move": (("moves",), ()),
}


@dataclass(frozen=True)
class TraceHeader:
    """The configuration a trace runs under."""

    block_size: int
    num_blocks: int
    policy: str = "fifo"
    prefix_caching: bool = False
    name: str = ""
    description: str = ""

    def new_manager(self, record_ops: bool = True) -> BlockManager:
        """A fresh manager configured as this header says."""
        return BlockManager(self.num_blocks, self.block_size, self.policy, self.prefix_caching, record_ops)


@dataclass(frozen=True)
class Op:
    """One operation of a trace. ``line`` is its 1-based line in the file (0 if built in code)."""

    op: str
    seq: SeqId | None = None
    prompt: int | tuple[int, ...] | None = None
    tokens: int | tuple[int, ...] | None = None
    parent: SeqId | None = None
    child: SeqId | None = None
    blocks: int | None = None
    moves: tuple[tuple[int, int], ...] | None = None
    note: str = ""
    line: int = field(default=0, compare=False)

    def apply(self, manager: BlockManager) -> OpRecord | None:
        """Run this operation on ``manager`` and return its record."""
        if self.op == "add":
            return manager.add(self.seq, _tokens_arg(self.prompt))
        if self.op == "append":
            return manager.append(self.seq, 1 if self.tokens is None else _tokens_arg(self.tokens))
        if self.op == "fork":
            return manager.fork(self.parent, self.child)
        if self.op == "free":
            return manager.free(self.seq)
        if self.op == "move":
            return manager.move(self.moves)
        return manager.evict(1 if self.blocks is None else self.blocks)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op}
        for name in ("seq", "prompt", "tokens", "parent", "child", "blocks", "moves"):
            value = getattr(self, name)
            if value is not None:
                out[name] = [list(v) if isinstance(v, tuple) else v for v in value] if isinstance(value, tuple) else value
        if self.note:
            out["note"] = self.note
        return out


def _tokens_arg(value: int | tuple[int, ...]) -> Tokens:
    return list(value) if isinstance(value, tuple) else value


@dataclass
class Trace:
    """A header and a list of operations."""

    header: TraceHeader
    ops: list[Op] = field(default_factory=list)

    def dumps(self) -> str:
        """The trace as JSON Lines text."""
        head = {"format": FORMAT, "version": VERSION, **_header_json(self.header)}
        lines = [json.dumps(head)] + [json.dumps(op.to_json()) for op in self.ops]
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dumps())

    def replay(self, record_ops: bool = True) -> Replay:
        """A step-by-step replay of this trace on a fresh manager."""
        return Replay(self, record_ops)


def _header_json(header: TraceHeader) -> dict[str, Any]:
    out: dict[str, Any] = {
        "block_size": header.block_size,
        "num_blocks": header.num_blocks,
        "policy": header.policy,
        "prefix_caching": header.prefix_caching,
    }
    if header.name:
        out["name"] = header.name
    if header.description:
        out["description"] = header.description
    return out


# --------------------------------------------------------------------- loading
def load(path: str | Path) -> Trace:
    """Read a trace file. Raises :class:`TraceFormatError` naming the line and field."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise TraceFormatError(f"cannot read trace {str(path)!r}: {exc.strerror}") from None
    return loads(text)


def loads(text: str) -> Trace:
    """Parse trace text (JSON Lines)."""
    header: TraceHeader | None = None
    ops: list[Op] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TraceFormatError(f"line {number}: not valid JSON ({exc.msg})", line=number) from None
        if not isinstance(obj, dict):
            raise TraceFormatError(f"line {number}: expected a JSON object", line=number)
        if header is None:
            header = _parse_header(obj, number)
        else:
            ops.append(_parse_op(obj, number))
    if header is None:
        raise TraceFormatError("line 1: the trace is empty; the first line must be the header", line=1)
    return Trace(header, ops)


def _fail(line: int, name: str, message: str) -> TraceFormatError:
    return TraceFormatError(f"line {line}: field {name!r}: {message}", line=line, field=name)


def _positive_int(obj: dict[str, Any], name: str, line: int) -> int:
    value = obj.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _fail(line, name, f"expected a positive integer, got {value!r}")
    return value


def _parse_header(obj: dict[str, Any], line: int) -> TraceHeader:
    if obj.get("format") != FORMAT:
        raise _fail(line, "format", f"the header must say {FORMAT!r}, got {obj.get('format')!r}")
    if obj.get("version") != VERSION:
        raise _fail(line, "version", f"unsupported version {obj.get('version')!r}; this reader knows {VERSION}")
    known = {"format", "version", "block_size", "num_blocks", "policy", "prefix_caching", "name", "description"}
    for name in obj:
        if name not in known:
            raise _fail(line, name, "unknown header field")
    policy = obj.get("policy", "fifo")
    if policy not in POLICIES:
        raise _fail(line, "policy", f"expected one of {list(POLICIES)}, got {policy!r}")
    caching = obj.get("prefix_caching", False)
    if not isinstance(caching, bool):
        raise _fail(line, "prefix_caching", f"expected true or false, got {caching!r}")
    for name in ("name", "description"):
        if not isinstance(obj.get(name, ""), str):
            raise _fail(line, name, "expected a string")
    return TraceHeader(
        block_size=_positive_int(obj, "block_size", line),
        num_blocks=_positive_int(obj, "num_blocks", line),
        policy=policy,
        prefix_caching=caching,
        name=obj.get("name", ""),
        description=obj.get("description", ""),
    )


def _parse_op(obj: dict[str, Any], line: int) -> Op:
    op = obj.get("op")
    if op not in OPS:
        raise _fail(line, "op", f"expected one of {list(OPS)}, got {op!r}")
    required, optional = _FIELDS[op]
    for name in required:
        if name not in obj:
            raise _fail(line, name, f"missing (required by {op!r})")
    for name in obj:
        if name not in ("op", "note", *required, *optional):
            raise _fail(line, name, f"not a field of {op!r}")
    values: dict[str, Any] = {"op": op, "line": line}
    for name in ("seq", "parent", "child"):
        if name in obj:
            value = obj[name]
            if not isinstance(value, (str, int)) or isinstance(value, bool):
                raise _fail(line, name, f"a sequence id must be a string or an integer, got {value!r}")
            values[name] = value
    for name in ("prompt", "tokens"):
        if name in obj:
            values[name] = _parse_tokens(obj[name], name, line)
    if "blocks" in obj:
        values["blocks"] = _positive_int(obj, "blocks", line)
    if "moves" in obj:
        values["moves"] = _parse_moves(obj["moves"], line)
    note = obj.get("note", "")
    if not isinstance(note, str):
        raise _fail(line, "note", "expected a string")
    values["note"] = note
    return Op(**values)


def _parse_tokens(value: Any, name: str, line: int) -> int | tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise _fail(line, name, f"needs at least one token, got {value}")
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return tuple(value)
    raise _fail(line, name, f"expected a positive token count or a non-empty list of integer token ids, got {value!r}")


def _parse_moves(value: Any, line: int) -> tuple[tuple[int, int], ...]:
    def is_id(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    if (
        isinstance(value, list)
        and value
        and all(isinstance(p, list) and len(p) == 2 and is_id(p[0]) and is_id(p[1]) for p in value)
    ):
        return tuple((p[0], p[1]) for p in value)
    raise _fail(line, "moves", f"expected a non-empty list of [src, dst] block-id pairs, got {value!r}")


# ---------------------------------------------------------------------- replay
@dataclass
class Replay:
    """Steps through a trace one operation at a time.

    ``next_record()`` applies the next operation and returns its :class:`OpRecord`.
    If an operation fails (out of blocks, unknown sequence...), the replay
    *stops there*: ``error`` holds the exception, ``position`` still points at
    the failed operation, and the manager's state is exactly what it was
    before it. Iterating a replay yields records until the end or the error.
    """

    trace: Trace
    record_ops: bool = True
    manager: BlockManager = field(init=False)
    position: int = field(default=0, init=False)
    error: SimError | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.manager = self.trace.header.new_manager(self.record_ops)

    @property
    def done(self) -> bool:
        return self.error is not None or self.position >= len(self.trace.ops)

    @property
    def next_op(self) -> Op | None:
        return None if self.position >= len(self.trace.ops) else self.trace.ops[self.position]

    def next_record(self) -> OpRecord | None:
        if self.done:
            raise StopIteration
        op = self.trace.ops[self.position]
        try:
            record = op.apply(self.manager)
        except SimError as exc:
            self.error = exc
            raise StopIteration from None
        self.position += 1
        return record

    def __iter__(self) -> Iterator[OpRecord | None]:
        while not self.done:
            try:
                yield self.next_record()
            except StopIteration:
                return

    def run(self, until: int | None = None) -> list[OpRecord | None]:
        """Apply operations until the end, an error, or ``until`` operations have run."""
        records = []
        while not self.done and (until is None or self.position < until):
            try:
                records.append(self.next_record())
            except StopIteration:
                break
        return records

    def stop_message(self) -> str:
        """Why the replay stopped early (empty if it did not)."""
        if self.error is None:
            return ""
        op = self.trace.ops[self.position]
        where = f"line {op.line}" if op.line else f"operation {self.position + 1}"
        kind = "ran out of blocks" if isinstance(self.error, OutOfBlocksError) else "stopped"
        return f"{kind} at {where} ({op.op}): {self.error}. The state is as it was before this operation."


# ------------------------------------------------------------------- recording
class Recorder:
    """Drive a manager and record every successful operation as a trace.

    >>> rec = Recorder(BlockManager(num_blocks=8, block_size=4))
    >>> _ = rec.add("a", 5); _ = rec.fork("a", "b"); _ = rec.append("b")
    >>> [op.op for op in rec.trace.ops]
    ['add', 'fork', 'append']
    """

    def __init__(self, manager: BlockManager, name: str = "", description: str = "") -> None:
        self.manager = manager
        header = TraceHeader(
            manager.block_size, manager.num_blocks, manager.policy, manager.prefix_caching, name, description
        )
        self.trace = Trace(header)

    def _run(self, op: Op) -> OpRecord | None:
        record = op.apply(self.manager)  # raises before recording if the operation fails
        self.trace.ops.append(op)
        return record

    def add(self, seq_id: SeqId, prompt: Tokens, note: str = "") -> OpRecord | None:
        return self._run(Op("add", seq=seq_id, prompt=_frozen_tokens(prompt), note=note))

    def append(self, seq_id: SeqId, tokens: Tokens = 1, note: str = "") -> OpRecord | None:
        return self._run(Op("append", seq=seq_id, tokens=_frozen_tokens(tokens), note=note))

    def fork(self, parent_id: SeqId, child_id: SeqId, note: str = "") -> OpRecord | None:
        return self._run(Op("fork", parent=parent_id, child=child_id, note=note))

    def free(self, seq_id: SeqId, note: str = "") -> OpRecord | None:
        return self._run(Op("free", seq=seq_id, note=note))

    def evict(self, n: int = 1, note: str = "") -> OpRecord | None:
        return self._run(Op("evict", blocks=n, note=note))

    def move(self, moves: list[tuple[int, int]], note: str = "") -> OpRecord | None:
        return self._run(Op("move", moves=tuple((int(s), int(d)) for s, d in moves), note=note))


def _frozen_tokens(tokens: Tokens) -> int | tuple[int, ...]:
    if isinstance(tokens, (int, np.integer)):
        return int(tokens)
    return tuple(int(t) for t in tokens)
