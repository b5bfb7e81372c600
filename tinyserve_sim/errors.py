"""Every error the simulator raises.

All of them derive from :class:`SimError`, so ``except SimError`` catches any
mistake made while driving the simulator, and each subclass names one kind of
problem. A failed call never changes state: the simulator checks first and
mutates afterwards, so after catching one of these you can carry on.
"""

from __future__ import annotations


class SimError(Exception):
    """Base class of every error raised by tinyserve-sim."""


class ConfigError(SimError, ValueError):
    """A configuration value is impossible (block size < 1, no blocks, unknown policy...)."""


class OutOfBlocksError(SimError):
    """The pool has fewer free blocks than the operation needs.

    Attributes:
        needed: blocks the operation would have allocated.
        available: blocks that could be allocated (free plus evictable).
    """

    def __init__(self, message: str, needed: int = 0, available: int = 0) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


class UnknownSequenceError(SimError, KeyError):
    """An operation named a sequence id that is not live."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


class DuplicateSequenceError(SimError):
    """A sequence id is already live (add or fork into an existing id)."""


class InvalidArgumentError(SimError, ValueError):
    """An argument has the wrong type or value (a seq id that is not str/int, n < 1...)."""


class InvalidTokenCountError(InvalidArgumentError):
    """A prompt or an append has zero or a negative number of tokens, or bad token ids."""


class PageTableError(InvalidArgumentError):
    """An imported page table (FlashInfer's CSR arrays, vLLM's block tables) is malformed.
    The message names the array and the position.

    Attributes:
        field: the offending array's name (``"kv_indptr"``, ``"kv_indices"``...).
        index: the position in it (an int, or a ``(row, column)`` pair), or ``None``
            when the array as a whole is wrong (its type, its length).
    """

    def __init__(self, message: str, field: str, index: int | tuple[int, ...] | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.index = index


class BlockIdError(SimError, IndexError):
    """A block id is outside ``0 .. num_blocks - 1``."""


class DoubleFreeError(SimError):
    """A block was released while its reference count was already 0."""


class InvariantError(SimError, AssertionError):
    """A consistency check of the simulator's state failed (a bug, never user input)."""


class TraceFormatError(SimError, ValueError):
    """A trace file is malformed. The message names the line number and the field.

    Attributes:
        line: 1-based line number in the trace file (0 when not tied to a line).
        field: the offending field's name, or ``None``.
    """

    def __init__(self, message: str, line: int = 0, field: str | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.field = field


class KernelInputError(SimError, ValueError):
    """A kernel (NumPy twin or GPU launcher) got an input of the wrong dtype, shape,
    layout or range. Raised on the host, before anything is launched."""


class CopyConflictError(KernelInputError):
    """A ``copy_blocks`` mapping writes one destination twice, or reads a block that
    the same launch overwrites."""


class BackendUnavailableError(SimError, RuntimeError):
    """The requested backend cannot run here (for example no CUDA device or no CuPy)."""


class WorkloadError(SimError, ValueError):
    """A serving workload cannot run as asked: a bad spec, an unknown manager, or a
    request that needs more KV memory than the whole memory holds."""
