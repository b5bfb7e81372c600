"""Trace operations: one small class per operation, and the registry of them all.

Each line of a trace after the header is one operation, and each operation is
a frozen dataclass here that knows four things about itself:

* its **fields**, each checked when the operation is built (from a trace
  line, or in code), so a bad value is a :class:`~tinyserve_sim.errors.TraceFormatError`
  naming the line and the field: ``line 7: field 'prompt': needs at least one token, got 0``;
* how to **apply** itself to a :class:`~tinyserve_sim.control.manager.BlockManager`
  (one manager call, which returns an :class:`~tinyserve_sim.control.records.OpRecord`);
* how to **serialise** itself (:meth:`Operation.to_json`; parsing is the
  shared :meth:`Operation.from_json`);
* how to **explain** a record of itself in one line of plain English
  (:meth:`OpRecord.explain <tinyserve_sim.control.records.OpRecord.explain>` asks it).

:data:`OPERATIONS` maps each name (the ``"op"`` of a trace line, and the
``op`` of a record) to its class. The trace reader, the
:class:`~tinyserve_sim.control.trace.Recorder` and the records all read it, so
adding an operation is one class and one registry line (see the how-to
*Add a trace operation*). An unknown name is always an error.

>>> op = OPERATIONS["add"].from_json({"op": "add", "seq": "a", "prompt": [1, 2, 3]}, line=2)
>>> op
Add(seq='a', prompt=(1, 2, 3))
>>> op.to_json()
{'op': 'add', 'seq': 'a', 'prompt': [1, 2, 3]}
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Union

import numpy as np

from tinyserve_sim.control.checks import INT64_MAX, INT64_MIN, is_int, short_repr
from tinyserve_sim.errors import TraceFormatError

if TYPE_CHECKING:
    from tinyserve_sim.control.manager import BlockManager
    from tinyserve_sim.control.records import OpRecord, SeqId

#: A token argument: a positive count, or the token ids themselves.
TokenArg = Union[int, tuple[int, ...]]


# ------------------------------------------------------------- field checks
class _Bad(Exception):
    """A field's value is wrong; :meth:`Operation.__post_init__` adds the line and the field."""


def _int64(value: object) -> bool:
    return is_int(value) and INT64_MIN <= value <= INT64_MAX  # type: ignore[operator]


def check_seq_id(value: object) -> SeqId:
    """A sequence id: a string, or an integer that fits in 64 bits."""
    if isinstance(value, str) or _int64(value):
        return value  # type: ignore[return-value]
    raise _Bad(f"a sequence id must be a string or an integer (64-bit), got {short_repr(value)}")


def _token_ids(value: object) -> tuple[int, ...] | None:
    """``value`` as a non-empty tuple of 64-bit token ids, or None if it is not one."""
    if isinstance(value, np.ndarray):
        value = value.tolist() if value.ndim == 1 and value.dtype.kind in "iu" else None
    if not isinstance(value, (list, tuple)) or not value:
        return None
    ids = tuple(int(t) if isinstance(t, np.integer) else t for t in value)
    return ids if all(_int64(t) for t in ids) else None


def check_tokens(value: object) -> TokenArg:
    """A positive token count, or a non-empty list of 64-bit integer token ids (kept as a tuple)."""
    if isinstance(value, np.integer):
        value = int(value)
    if is_int(value):
        if value < 1:  # type: ignore[operator]
            raise _Bad(f"needs at least one token, got {value}")
        if value > INT64_MAX:  # type: ignore[operator]
            raise _Bad(f"at most {INT64_MAX:,} tokens, got {short_repr(value)}")
        return value  # type: ignore[return-value]
    ids = _token_ids(value)
    if ids is None:
        raise _Bad(
            f"expected a positive token count or a non-empty list of integer token ids (64-bit), "
            f"got {short_repr(value)}"
        )
    return ids


def check_token_ids_or_none(value: object) -> tuple[int, ...] | None:
    """``None``, or a non-empty list of 64-bit integer token ids."""
    if value is None:
        return None
    ids = _token_ids(value)
    if ids is None:
        raise _Bad(f"expected a non-empty list of integer token ids (64-bit), got {short_repr(value)}")
    return ids


def check_positive_int(value: object) -> int:
    """An integer from 1 to 2**63 - 1."""
    if _int64(value) and value >= 1:  # type: ignore[operator]
        return value  # type: ignore[return-value]
    raise _Bad(f"expected a positive integer, got {short_repr(value)}")


def check_moves(value: object) -> tuple[tuple[int, int], ...]:
    """A non-empty list of ``[src, dst]`` pairs of block ids (kept as tuples)."""
    ok = isinstance(value, (list, tuple)) and value
    pairs = []
    for pair in value if ok else ():  # type: ignore[union-attr]
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(_int64(b) and b >= 0 for b in pair)):
            ok = False
            break
        pairs.append((pair[0], pair[1]))
    if not ok:
        raise _Bad(f"expected a non-empty list of [src, dst] block-id pairs, got {short_repr(value)}")
    return tuple(pairs)


def check_seq_ids(value: object) -> tuple[SeqId, ...]:
    """A non-empty list of sequence ids (kept as a tuple)."""
    if not isinstance(value, (list, tuple)) or not value:
        raise _Bad(f"expected a non-empty list of sequence ids, got {short_repr(value)}")
    for seq in value:
        check_seq_id(seq)
    return tuple(value)


def check_note(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad("expected a string")
    return value


def checked(check: Callable[[Any], Any], default: Any = MISSING) -> Any:
    """A dataclass field whose value ``check`` validates and normalises when the operation is built."""
    return field(default=default, metadata={"check": check})


def _json(value: Any) -> Any:
    """Tuples (token ids, move pairs) become JSON lists."""
    return [_json(v) for v in value] if isinstance(value, tuple) else value


def format_ids(blocks: tuple[int, ...] | list[int]) -> str:
    """``[3, 4, 5]``, shortened in the middle past 8 ids."""
    if len(blocks) > 8:
        head = ", ".join(map(str, blocks[:4]))
        return f"[{head}, ... {len(blocks) - 6} more ..., {', '.join(map(str, blocks[-2:]))}]"
    return "[" + ", ".join(map(str, blocks)) + "]"


# ---------------------------------------------------------------- the base
@dataclass(frozen=True)
class Operation:
    """One operation of a trace. Subclasses declare their fields with :func:`checked`.

    ``note`` is free text shown when stepping through a trace; ``line`` is the
    1-based line of the trace file the operation came from (0 if built in
    code), used in error messages and never compared.
    """

    #: The operation's name in a trace line (``"op"``) and in its records.
    name: ClassVar[str]

    note: str = field(default="", kw_only=True, repr=False, metadata={"check": check_note})
    line: int = field(default=0, kw_only=True, compare=False, repr=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            check = f.metadata.get("check")
            if check is None:
                continue
            try:
                object.__setattr__(self, f.name, check(getattr(self, f.name)))
            except _Bad as bad:
                raise self.field_error(f.name, str(bad)) from None
        self.check_together()

    def check_together(self) -> None:
        """Checks across fields (override; raise with :meth:`field_error`)."""

    def field_error(self, name: str, message: str) -> TraceFormatError:
        """The error for a bad field: ``line N: field 'x': ...`` (``add: field 'x': ...`` without a line)."""
        where = f"line {self.line}" if self.line else self.name
        return TraceFormatError(f"{where}: field {name!r}: {message}", line=self.line, field=name)

    # ----------------------------------------------------------- parsing
    @classmethod
    def json_fields(cls) -> tuple[list[str], list[str]]:
        """``(required, optional)`` field names of a trace line of this operation."""
        required, optional = [], []
        for f in fields(cls):
            if f.name == "line":
                continue
            has_default = f.default is not MISSING or f.default_factory is not MISSING
            (optional if has_default else required).append(f.name)
        return required, optional

    @classmethod
    def from_json(cls, obj: dict[str, Any], line: int) -> Operation:
        """Build the operation from one parsed trace line (``obj["op"]`` already names this class)."""
        required, optional = cls.json_fields()
        for name in required:
            if name not in obj:
                raise TraceFormatError(
                    f"line {line}: field {name!r}: missing (required by {cls.name!r})", line=line, field=name
                )
        for name in obj:
            if name != "op" and name not in required and name not in optional:
                raise TraceFormatError(
                    f"line {line}: field {short_repr(name)}: not a field of {cls.name!r}", line=line, field=name
                )
        return cls(**{name: value for name, value in obj.items() if name != "op"}, line=line)

    def to_json(self) -> dict[str, Any]:
        """The trace line of this operation, as a JSON-ready dict (``None`` fields left out)."""
        out: dict[str, Any] = {"op": self.name}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("line", "note") and value is not None:
                out[f.name] = _json(value)
        if self.note:
            out["note"] = self.note
        return out

    # ---------------------------------------------------- what it does
    def apply(self, manager: BlockManager) -> OpRecord | None:
        """Run this operation on ``manager`` and return its record (``None`` with records off)."""
        raise NotImplementedError

    @staticmethod
    def explain(record: OpRecord) -> str:
        """One line of plain English for a record of this operation (without the pool counts)."""
        raise NotImplementedError


# ------------------------------------------------------------ the operations
@dataclass(frozen=True)
class Add(Operation):
    """``add``: a new request arrives with its prompt (a token count, or token ids for prefix caching)."""

    name: ClassVar[str] = "add"
    seq: SeqId = checked(check_seq_id)
    prompt: TokenArg = checked(check_tokens)

    def apply(self, manager: BlockManager) -> OpRecord | None:
        return manager.add(self.seq, self.prompt)

    @staticmethod
    def explain(record: OpRecord) -> str:
        text = f"add {record.seq_id!r}: {record.num_new_tokens} prompt tokens"
        if record.cache_hits:
            reused = format_ids(record.cache_hits)
            text += f", {len(record.cache_hits)} block(s) reused from the prefix cache {reused}"
        return text + (f"; allocated {format_ids(record.allocated)}" if record.allocated else "; nothing allocated")


@dataclass(frozen=True)
class Append(Operation):
    """``append``: the model produced ``tokens`` more tokens (a count, default 1, or token ids)."""

    name: ClassVar[str] = "append"
    seq: SeqId = checked(check_seq_id)
    tokens: TokenArg = checked(check_tokens, default=1)

    def apply(self, manager: BlockManager) -> OpRecord | None:
        return manager.append(self.seq, self.tokens)

    @staticmethod
    def explain(record: OpRecord) -> str:
        text = f"append {record.num_new_tokens} token(s) to {record.seq_id!r}"
        for src, dst in record.copies:
            text += f"; block {src} is shared, so copy-on-write into block {dst}"
        copied_into = {dst for _, dst in record.copies}
        fresh = [block for block in record.allocated if block not in copied_into]
        if fresh:
            text += f"; new block(s) {format_ids(fresh)}"
        if not record.allocated:
            text += "; fits in the last block"
        return text


@dataclass(frozen=True)
class Fork(Operation):
    """``fork``: the child shares every block of the parent (parallel sampling, beam search)."""

    name: ClassVar[str] = "fork"
    parent: SeqId = checked(check_seq_id)
    child: SeqId = checked(check_seq_id)

    def apply(self, manager: BlockManager) -> OpRecord | None:
        return manager.fork(self.parent, self.child)

    @staticmethod
    def explain(record: OpRecord) -> str:
        shared = f"{len(record.shared)} block(s) {format_ids(record.shared)}"
        return f"fork {record.parent_id!r} -> {record.seq_id!r}: share {shared}, nothing copied"


@dataclass(frozen=True)
class Free(Operation):
    """``free``: the request finished; its blocks go back, last block first."""

    name: ClassVar[str] = "free"
    seq: SeqId = checked(check_seq_id)

    def apply(self, manager: BlockManager) -> OpRecord | None:
        return manager.free(self.seq)

    @staticmethod
    def explain(record: OpRecord) -> str:
        text = f"free {record.seq_id!r}: {len(record.freed)} block(s) returned {format_ids(record.freed)}"
        return text + (f", of which {format_ids(record.cached)} stay cached" if record.cached else "")


@dataclass(frozen=True)
class Evict(Operation):
    """``evict``: forget up to ``blocks`` cached free blocks (default 1), in the evictor's order."""

    name: ClassVar[str] = "evict"
    blocks: int = checked(check_positive_int, default=1)

    def apply(self, manager: BlockManager) -> OpRecord | None:
        return manager.evict(self.blocks)

    @staticmethod
    def explain(record: OpRecord) -> str:
        return f"evict {len(record.evicted)} cached block(s) {format_ids(record.evicted)}"


@dataclass(frozen=True)
class Move(Operation):
    """``move``: relocate blocks (compaction); each ``[src, dst]`` moves a block's data to a free block."""

    name: ClassVar[str] = "move"
    moves: tuple[tuple[int, int], ...] = checked(check_moves)

    def apply(self, manager: BlockManager) -> OpRecord | None:
        return manager.move(self.moves)

    @staticmethod
    def explain(record: OpRecord) -> str:
        pairs = ", ".join(f"{src}->{dst}" for src, dst in record.copies[:6])
        return f"move {len(record.copies)} block(s): {pairs}" + (", ..." if len(record.copies) > 6 else "")


@dataclass(frozen=True)
class Decode(Operation):
    """``decode``: one scheduler step appends one token to each sequence of a batch, in one record.

    ``seqs`` lists the batch; ``tokens``, if given, holds one token id per
    sequence (needed to keep hashing blocks for prefix caching).
    """

    name: ClassVar[str] = "decode"
    seqs: tuple[SeqId, ...] = checked(check_seq_ids)
    tokens: tuple[int, ...] | None = checked(check_token_ids_or_none, default=None)

    def check_together(self) -> None:
        if self.tokens is not None and len(self.tokens) != len(self.seqs):
            message = f"expected one token id per sequence ({len(self.seqs)}), got {len(self.tokens)}"
            raise self.field_error("tokens", message)

    def apply(self, manager: BlockManager) -> OpRecord | None:
        return manager.decode(self.seqs, self.tokens)

    @staticmethod
    def explain(record: OpRecord) -> str:
        bs = record.block_size
        copied = dict((dst, src) for src, dst in record.copies)
        allocated = set(record.allocated)
        events = []  # the sequences that needed a block: the others wrote into their last block
        for seq_id, slot in zip(record.seq_ids, record.slot_mapping.tolist()):
            block = slot // bs
            if block in copied:
                events.append(f"{seq_id!r}: block {copied[block]} is shared, copy-on-write into {block}")
            elif block in allocated:
                events.append(f"{seq_id!r}: new block {block}")
        text = f"decode {len(record.seq_ids)} sequence(s), one token each"
        if len(events) > 6:
            events = events[:6] + [f"... {len(events) - 6} more"]
        in_place = len(record.seq_ids) - len(record.allocated)
        return text + "".join("; " + event for event in events) + f"; {in_place} wrote into their last block"


#: Every trace operation, by name. Adding one: a class above, a line here.
OPERATIONS: dict[str, type[Operation]] = {
    op.name: op
    for op in (
        Add,
        Append,
        Fork,
        Free,
        Evict,
        Move,
        Decode,
    )
}
