"""Token arguments: a count of tokens, or the token ids themselves, checked and normalised.

``add`` and ``append`` take either a number of tokens (the content does not
matter, as in most of the simulator) or the token ids (prefix caching needs the
content to hash it). Token ids are kept as ``array("q")``: 64-bit signed
integers in one flat buffer, checked in C when they are packed, and ready for
the block hash (no conversion per token). Like Python, the check counts
``True`` and ``False`` as the integers 1 and 0: refusing them would need a pass
over every list in Python, which cost 5-7% of the serving trace's throughput per
operation and 12-14% with batched decodes when it was tried (session 14).

>>> token_arg(3, "an append")
(3, None)
>>> token_arg([7, 8], "a prompt")
(2, array('q', [7, 8]))
>>> token_arg([1.5], "a prompt")
Traceback (most recent call last):
...
tinyserve_sim.errors.InvalidTokenCountError: a prompt must be a token count or a 1-D list of integer token ids (64-bit), got [1.5]
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from typing import Union

import numpy as np

from tinyserve_sim.control.checks import INT64_MAX, is_int, short_repr
from tinyserve_sim.errors import InvalidTokenCountError

#: What ``add`` and ``append`` accept: a number of tokens, or the token ids themselves.
Tokens = Union[int, Sequence[int], np.ndarray]

#: Token ids as the manager keeps them: a flat array of int64.
TokenIds = array


def token_ids(tokens: object) -> TokenIds | None:
    """``tokens`` as an ``array("q")`` if it is a list, tuple or 1-D integer array of 64-bit
    integer ids; ``None`` if it is not one. May be empty."""
    ids = array("q")
    if isinstance(tokens, np.ndarray):
        if tokens.ndim != 1 or (tokens.size and tokens.dtype.kind not in "iub"):
            return None
        if tokens.dtype.kind == "u" and tokens.size and int(tokens.max()) > INT64_MAX:
            return None
        ids.frombytes(tokens.astype(np.int64).tobytes())
        return ids
    if not isinstance(tokens, (list, tuple)):
        return None
    try:
        # struct checks every item in C (an integer, NumPy's included, within 64 bits)
        # and is the fastest way from a list of ints to packed int64.
        ids.frombytes(struct.pack(f"{len(tokens)}q", *tokens))
    except (struct.error, TypeError, OverflowError, ValueError):
        return None
    return ids


def checked_ids(tokens: object) -> Sequence[int] | TokenIds | None:
    """Like :func:`token_ids`, but a list or tuple is only checked, and returned as it is.

    For a caller that reads the ids once, at once (``decode`` appends each to a
    sequence's ``array("q")``, which stores the same 64-bit value): no copy, and no
    new int object per id when it is read back.
    """
    if type(tokens) is list or type(tokens) is tuple:
        try:
            struct.pack(f"{len(tokens)}q", *tokens)  # checks every item, in C
        except (struct.error, TypeError, OverflowError, ValueError):
            return None
        return tokens
    return token_ids(tokens)


def token_arg(tokens: Tokens, what: str) -> tuple[int, TokenIds | None]:
    """Normalise a token count or token ids to ``(count, ids or None)``.

    Raises :class:`~tinyserve_sim.errors.InvalidTokenCountError` unless
    ``tokens`` is a positive int (a count) or a non-empty list, tuple or 1-D
    integer array of token ids that fit in 64 bits. ``what`` names the
    argument in the message (``"a prompt"``, ``"an append"``).
    """
    if type(tokens) is int and 0 < tokens <= INT64_MAX:  # a count: the common case first
        return tokens, None
    if isinstance(tokens, np.integer):
        tokens = int(tokens)
    if is_int(tokens):
        if tokens < 1:  # type: ignore[operator]
            raise InvalidTokenCountError(f"{what} needs at least one token, got {tokens}")
        raise InvalidTokenCountError(f"{what} has too many tokens: {short_repr(tokens)}")
    ids = token_ids(tokens)
    if ids is None:
        raise InvalidTokenCountError(
            f"{what} must be a token count or a 1-D list of integer token ids (64-bit), got {short_repr(tokens)}"
        )
    if not ids:
        raise InvalidTokenCountError(f"{what} needs at least one token, got 0")
    return len(ids), ids
