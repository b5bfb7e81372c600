"""Traces: a small, versioned file format for sequences of block-manager operations.

A trace is a JSON Lines file (one JSON object per line, UTF-8). The first line
is the header; every other non-blank line is one operation::

    {"format": "tinyserve-sim-trace", "version": 1, "block_size": 4, "num_blocks": 8, "prefix_caching": true}
    {"op": "add", "seq": "a", "prompt": [1, 2, 3, 4, 5, 6], "note": "2 blocks; the full first one is cached"}
    {"op": "fork", "parent": "a", "child": "b"}
    {"op": "append", "seq": "b", "tokens": [7], "note": "the shared last block is copied first"}
    {"op": "decode", "seqs": ["a", "b"], "note": "one token for each: one record"}
    {"op": "free", "seq": "a"}
    {"op": "free", "seq": "b", "note": "the cached block keeps its content, free"}
    {"op": "evict", "blocks": 1, "note": "and now forgets it"}

Header fields: ``format`` (always ``"tinyserve-sim-trace"``), ``version``
(the integer ``1``), ``block_size``, ``num_blocks``, and optionally ``policy``
(the free-queue order: ``"fifo"`` or ``"lifo"``, default ``"fifo"``),
``evictor`` (the eviction order of cached free blocks: ``"lru"``, the
default), ``prefix_caching`` (default ``false``), ``name`` and ``description``.

Operation fields (each operation is a class in
:mod:`tinyserve_sim.control.operations`):

=========  =====================================================================
``op``     ``add``, ``append``, ``fork``, ``free``, ``evict``, ``move`` or ``decode``
``seq``    the sequence (``add``, ``append``, ``free``): a string or an integer
``prompt`` ``add``: a token count, or a list of token ids (needed for prefix caching)
``tokens`` ``append``: a token count or a list of token ids (default 1);
           ``decode``: one token id per sequence (optional)
``parent`` ``fork``: the sequence to fork
``child``  ``fork``: the new sequence's id
``blocks`` ``evict``: how many cached free blocks to evict (default 1)
``moves``  ``move``: a list of ``[src, dst]`` block pairs to relocate (compaction)
``seqs``   ``decode``: the batch, a list of sequences that each get one new token
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

Limits. A reader must never run out of memory or time on a hostile file, so
the reader refuses, with an error naming the line:

* ``num_blocks`` above 4,194,304 (``2**22``) and ``block_size`` above 1,048,576
  (``2**20``);
* integers that do not fit in 64 bits (token ids, sequence ids, counts), and
  number literals of more than 4,300 digits;
* a line longer than 4,194,304 characters (a prompt of about half a million
  token ids) and values nested more than 32 levels deep (a trace needs 3);
* bytes that are not UTF-8. A UTF-8 byte-order mark at the start is skipped,
  and only a line feed (``\\n``) ends a line (a carriage return before it is
  ignored), so a note may hold any other character, U+2028 included.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tinyserve_sim.control.checks import INT64_MAX, check_int, short_repr
from tinyserve_sim.control.manager import MAX_BLOCK_SIZE, BlockManager
from tinyserve_sim.control.operations import OPERATIONS, Operation
from tinyserve_sim.control.policies import (
    EVICTORS,
    POLICIES,
    evictor_class,
    free_queue_class,
)
from tinyserve_sim.control.pool import MAX_NUM_BLOCKS
from tinyserve_sim.control.records import OpRecord
from tinyserve_sim.errors import (
    ConfigError,
    OutOfBlocksError,
    SimError,
    TraceFormatError,
)

FORMAT = "tinyserve-sim-trace"
VERSION = 1

#: The longest line a reader accepts, in characters.
MAX_LINE_CHARS = 1 << 22
#: The deepest nesting of JSON arrays and objects a reader accepts.
MAX_NESTING = 32

_BOM = "\ufeff"
_JSON_WHITESPACE = " \t\r"  # with \n, the only whitespace JSON knows


@dataclass(frozen=True)
class TraceHeader:
    """The configuration a trace runs under."""

    block_size: int
    num_blocks: int
    policy: str = "fifo"
    prefix_caching: bool = False
    name: str = ""
    description: str = ""
    evictor: str = "lru"

    def __post_init__(self) -> None:
        # The reader checks a file's header with line and field; this checks one built in code.
        check_int(self.block_size, "block_size", 1, MAX_BLOCK_SIZE, ConfigError)
        check_int(self.num_blocks, "num_blocks", 1, MAX_NUM_BLOCKS, ConfigError)
        free_queue_class(self.policy)
        evictor_class(self.evictor)
        if not isinstance(self.prefix_caching, bool):
            raise ConfigError(f"prefix_caching must be True or False, got {short_repr(self.prefix_caching)}")
        for name in ("name", "description"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {short_repr(getattr(self, name))}")

    def new_manager(self, record_ops: bool = True) -> BlockManager:
        """A fresh manager configured as this header says."""
        return BlockManager(
            self.num_blocks, self.block_size, self.policy, self.prefix_caching, record_ops, evictor=self.evictor
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "policy": self.policy,
            "prefix_caching": self.prefix_caching,
        }
        if self.evictor != "lru":  # written only when not the default, so older readers read the rest
            out["evictor"] = self.evictor
        if self.name:
            out["name"] = self.name
        if self.description:
            out["description"] = self.description
        return out


@dataclass
class Trace:
    """A header and a list of operations."""

    header: TraceHeader
    ops: list[Operation] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.header, TraceHeader):
            raise TraceFormatError(f"a trace needs a TraceHeader, got {short_repr(self.header)}")
        if not isinstance(self.ops, list) or not all(isinstance(op, Operation) for op in self.ops):
            raise TraceFormatError(f"a trace's ops must be a list of operations, got {short_repr(self.ops)}")

    def dumps(self) -> str:
        """The trace as JSON Lines text."""
        lines = [json.dumps(self.header.to_json())] + [json.dumps(op.to_json()) for op in self.ops]
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> None:
        """Write the trace to a file (UTF-8)."""
        try:
            Path(path).write_text(self.dumps(), encoding="utf-8")
        except OSError as exc:
            raise TraceFormatError(f"cannot write trace {str(path)!r}: {exc.strerror}") from None

    def replay(self, record_ops: bool = True) -> Replay:
        """A step-by-step replay of this trace on a fresh manager."""
        return Replay(self, record_ops)


# --------------------------------------------------------------------- loading
def load(path: str | Path) -> Trace:
    """Read a trace file. Raises :class:`TraceFormatError` naming the line and field."""
    try:
        data = Path(path).read_bytes()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise TraceFormatError(f"cannot read trace {short_repr(str(path))}: {reason}") from None
    return loads(data)


def loads(text: str | bytes) -> Trace:
    """Parse trace text (JSON Lines), given as a string or as UTF-8 bytes."""
    if isinstance(text, (bytes, bytearray)):
        text = _decode_utf8(bytes(text))
    elif not isinstance(text, str):
        raise TraceFormatError(f"a trace is text or bytes, got {short_repr(text)}")
    if text.startswith(_BOM):
        text = text[1:]
    header: TraceHeader | None = None
    ops: list[Operation] = []
    for number, raw in enumerate(text.split("\n"), start=1):  # "\n" only: see the module doc
        if not raw.strip(_JSON_WHITESPACE):
            continue
        obj = _parse_line(raw, number)
        if header is None:
            header = _parse_header(obj, number)
        else:
            ops.append(_parse_op(obj, number))
    if header is None:
        raise TraceFormatError("line 1: the trace is empty; the first line must be the header", line=1)
    return Trace(header, ops)


def _decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise TraceFormatError(
            f"line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at column {column})", line=line
        ) from None


_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # a JSON string (skipped whole), or a bracket


def _nesting(raw: str) -> int:
    """How deep the arrays and objects of a JSON line nest (strings are skipped)."""
    depth = deepest = 0
    for match in _BRACKETS.finditer(raw):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def _parse_line(raw: str, number: int) -> dict[str, Any]:
    """One line as a JSON object, within the documented limits."""
    if len(raw) > MAX_LINE_CHARS:
        raise TraceFormatError(
            f"line {number}: {len(raw):,} characters, more than the limit of {MAX_LINE_CHARS:,}", line=number
        )
    # Counting brackets is cheap; only a line with many of them is measured properly.
    if raw.count("[") + raw.count("{") > MAX_NESTING and _nesting(raw) > MAX_NESTING:
        raise TraceFormatError(f"line {number}: values nested more than {MAX_NESTING} levels deep", line=number)
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"line {number}: not valid JSON ({exc.msg})", line=number) from None
    except ValueError:  # Python refuses to read integers of more than 4,300 digits
        raise TraceFormatError(f"line {number}: a number has more than 4,300 digits", line=number) from None
    except RecursionError:  # cannot happen below MAX_NESTING; kept so that nothing raw escapes
        raise TraceFormatError(f"line {number}: values nested too deeply", line=number) from None
    if not isinstance(obj, dict):
        raise TraceFormatError(f"line {number}: expected a JSON object", line=number)
    return obj


def _fail(line: int, name: str, message: str) -> TraceFormatError:
    return TraceFormatError(f"line {line}: field {short_repr(name)}: {message}", line=line, field=name)


def _int_field(obj: dict[str, Any], name: str, line: int, largest: int) -> int:
    value = obj.get(name)
    if type(value) is not int or not 1 <= value <= largest:  # not a bool, not 1.0
        raise _fail(line, name, f"expected a positive integer no larger than {largest:,}, got {short_repr(value)}")
    return value


def _choice(obj: dict[str, Any], name: str, line: int, registry: dict[str, Any], default: str) -> str:
    value = obj.get(name, default)
    if not isinstance(value, str) or value not in registry:
        raise _fail(line, name, f"expected one of {list(registry)}, got {short_repr(value)}")
    return value


def _parse_header(obj: dict[str, Any], line: int) -> TraceHeader:
    if obj.get("format") != FORMAT:
        raise _fail(line, "format", f"the header must say {FORMAT!r}, got {short_repr(obj.get('format'))}")
    version = obj.get("version")
    if type(version) is not int or version != VERSION:  # refuses true and 1.0, which Python calls equal to 1
        raise _fail(line, "version", f"unsupported version {short_repr(version)}; this reader knows {VERSION}")
    known = {"format", "version", "block_size", "num_blocks", "policy", "evictor", "prefix_caching", "name",
             "description"}  # fmt: skip
    for name in obj:
        if name not in known:
            raise _fail(line, name, "unknown header field")
    caching = obj.get("prefix_caching", False)
    if not isinstance(caching, bool):
        raise _fail(line, "prefix_caching", f"expected true or false, got {short_repr(caching)}")
    for name in ("name", "description"):
        if not isinstance(obj.get(name, ""), str):
            raise _fail(line, name, "expected a string")
    return TraceHeader(
        block_size=_int_field(obj, "block_size", line, MAX_BLOCK_SIZE),
        num_blocks=_int_field(obj, "num_blocks", line, MAX_NUM_BLOCKS),
        policy=_choice(obj, "policy", line, POLICIES, "fifo"),
        prefix_caching=caching,
        name=obj.get("name", ""),
        description=obj.get("description", ""),
        evictor=_choice(obj, "evictor", line, EVICTORS, "lru"),
    )


def _parse_op(obj: dict[str, Any], line: int) -> Operation:
    name = obj.get("op")
    if not isinstance(name, str) or name not in OPERATIONS:
        raise _fail(line, "op", f"expected one of {list(OPERATIONS)}, got {short_repr(name)}")
    return OPERATIONS[name].from_json(obj, line)


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
        if not isinstance(self.trace, Trace):
            raise TraceFormatError(f"a replay needs a Trace, got {short_repr(self.trace)}")
        self.manager = self.trace.header.new_manager(self.record_ops)

    @property
    def done(self) -> bool:
        return self.error is not None or self.position >= len(self.trace.ops)

    @property
    def next_op(self) -> Operation | None:
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
        if until is not None:
            check_int(until, "until", 0, INT64_MAX)
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
        return f"{kind} at {where} ({op.name}): {self.error}. The state is as it was before this operation."


# ------------------------------------------------------------------- recording
class Recorder:
    """Drive a manager and record every successful operation as a trace.

    ``record(op)`` applies any :class:`~tinyserve_sim.control.operations.Operation`
    and, if it succeeds, appends it to :attr:`trace`. For convenience the
    recorder also has one method per operation of the registry
    (:data:`~tinyserve_sim.control.operations.OPERATIONS`), named like it and
    taking the manager method's arguments in the same order, plus ``note=``:
    ``rec.add(seq, prompt)``, ``rec.append(seq, tokens=1)``, ``rec.fork(parent, child)``,
    ``rec.free(seq)``, ``rec.evict(blocks=1)``, ``rec.move(moves)``,
    ``rec.decode(seqs, tokens=None)``. Each builds the operation's class with
    those arguments, so a new operation gets its method without a line here.

    >>> rec = Recorder(BlockManager(num_blocks=8, block_size=4))
    >>> _ = rec.add("a", 5); _ = rec.fork("a", "b"); _ = rec.append("b")
    >>> [op.name for op in rec.trace.ops]
    ['add', 'fork', 'append']
    """

    def __init__(self, manager: BlockManager, name: str = "", description: str = "") -> None:
        self.manager = manager
        header = TraceHeader(
            manager.block_size,
            manager.num_blocks,
            manager.policy,
            manager.prefix_caching,
            name,
            description,
            manager.evictor,
        )
        self.trace = Trace(header)

    def record(self, op: Operation) -> OpRecord | None:
        """Apply ``op`` to the manager; if it succeeds, append it to the trace and return its record."""
        if not isinstance(op, Operation):
            raise TraceFormatError(f"expected a trace operation, got {short_repr(op)}")
        record = op.apply(self.manager)  # raises before recording if the operation fails
        self.trace.ops.append(op)
        return record

    def __getattr__(self, name: str) -> Callable[..., OpRecord | None]:
        op_class = OPERATIONS.get(name)
        if op_class is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

        def record_op(*args: Any, **kwargs: Any) -> OpRecord | None:
            try:
                op = op_class(*args, **kwargs)
            except TypeError as exc:  # wrong number or names of arguments
                raise TraceFormatError(f"{name}: {exc}") from None
            return self.record(op)

        record_op.__name__ = name
        record_op.__doc__ = f"Apply and record a {op_class.__name__} operation: {op_class.__doc__}"
        return record_op

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(OPERATIONS))
