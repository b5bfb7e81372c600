"""Argument checks shared by the control plane: integers in range, and short reprs for messages.

Bad input can be anything: a float where a count belongs, an integer of a
thousand digits, a list nested a thousand deep. Every check here turns it into
one of the project's errors with a message of bounded length, and never lets a
raw Python error (``TypeError``, ``OverflowError``, ``RecursionError``...) out.
"""

from __future__ import annotations

import reprlib
from typing import Any

import numpy as np

from tinyserve_sim.errors import InvalidArgumentError

#: Token ids and integer sequence ids must fit in a signed 64-bit integer.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

_repr = reprlib.Repr()
_repr.maxlevel = 2
_repr.maxstring = 40
_repr.maxother = 40


def short_repr(value: object) -> str:
    """``repr(value)``, cut short: at most about 60 characters whatever ``value`` is."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = _repr.repr(value)
    except Exception:  # a broken __repr__, or one too deep to print
        text = f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def is_int(value: object) -> bool:
    """True for a Python int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """True for a Python or NumPy int or float that is not a bool (NaN and infinities included)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_int(
    value: object, what: str, low: int, high: int, error: type[Exception] = InvalidArgumentError
) -> int:
    """``value`` as an int if it is a Python or NumPy integer (not a bool) in ``low .. high``;
    else raise ``error`` naming ``what``.

    >>> check_int(np.int64(3), "num_blocks", 1, 100)
    3
    >>> check_int(0, "num_blocks", 1, 100)
    Traceback (most recent call last):
    ...
    tinyserve_sim.errors.InvalidArgumentError: num_blocks must be a positive integer no larger than 100, got 0
    """
    if isinstance(value, np.integer):
        value = int(value)
    if not is_int(value) or not low <= value <= high:  # type: ignore[operator]
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer from {low:,}")
        too_large = is_int(value) and value > high  # type: ignore[operator]
        limit = f" no larger than {high:,}" if high < INT64_MAX or too_large else ""
        raise error(f"{what} must be {kind}{limit}, got {short_repr(value)}")
    return int(value)  # type: ignore[arg-type]


# ------------------------------------------------------- fields of the batch descriptions
def check_block_size(value: object) -> int:
    """``value`` as an int if it is a positive Python or NumPy integer (not a bool); else InvalidArgumentError."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise InvalidArgumentError(f"block_size must be a positive integer, got {short_repr(value)}")
    return int(value)


def check_row_ids(seq_ids: object, rows: int) -> tuple[Any, ...]:
    """``seq_ids`` as a tuple: empty (ids unknown) or one id per table row; else InvalidArgumentError."""
    ids = tuple(seq_ids) if isinstance(seq_ids, (tuple, list)) else None
    if ids is None or (ids and len(ids) != rows):
        raise InvalidArgumentError(f"seq_ids must be a tuple with one id per table row ({rows})")
    return ids


def no_slots() -> np.ndarray:
    """An empty int64 slot mapping."""
    return np.empty(0, dtype=np.int64)


def host_array(name: str, a: Any) -> np.ndarray:
    """``a`` as a NumPy array, or InvalidArgumentError naming it (a CuPy array, a ragged list...)."""
    try:
        return np.asarray(a)
    except Exception:  # noqa: BLE001 - ragged lists, device arrays, objects: one clear error
        raise InvalidArgumentError(f"{name} must be a host (NumPy) integer array, got {type(a).__name__}") from None


def frozen(a: np.ndarray) -> np.ndarray:
    """A C-contiguous, read-only copy of ``a`` (``a`` itself if it already is one)."""
    a = np.ascontiguousarray(a)
    if a.flags.writeable:
        a = a.copy()
        a.setflags(write=False)
    return a
