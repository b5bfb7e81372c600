"""One interface, two implementations: where the KV data plane runs.

:class:`NumpyBackend` runs the NumPy twins of the kernels (``tinyserve_sim.data``)
on host arrays. ``CupyBackend`` (in ``tinyserve_sim.gpu``, imported only when
asked for) launches the CUDA kernels on device arrays. Both take the same
arguments and produce bit-identical results, so a trace can be replayed on
either and the caches compared after every step.

Index arrays (slot mappings, copy lists, and the block tables and lengths of a
:class:`~tinyserve_sim.control.batch.DecodeBatch`) are NumPy arrays on both
backends: they are small, and the GPU backend validates them on the host
before it uploads them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data.copy_blocks import copy_blocks
from tinyserve_sim.data.paged_attention import paged_attention
from tinyserve_sim.data.reshape_and_cache import reshape_and_cache
from tinyserve_sim.errors import BackendUnavailableError


@runtime_checkable
class Backend(Protocol):
    """What the data plane needs from an array library and its kernels."""

    name: str

    def asarray(self, a: Any) -> Any:
        """Move/convert an array to this backend (no copy if already there)."""

    def to_numpy(self, a: Any) -> np.ndarray:
        """A host (NumPy) copy of a backend array."""

    def full(self, shape: tuple[int, ...], value: float, dtype: np.dtype) -> Any:
        """A new C-contiguous array filled with ``value``."""

    def reshape_and_cache(
        self, key: Any, value: Any, key_cache: Any, value_cache: Any, slot_mapping: np.ndarray
    ) -> None: ...

    def copy_blocks(self, key_cache: Any, value_cache: Any, block_mapping: np.ndarray) -> None: ...

    def paged_attention(
        self,
        query: Any,
        key_cache: Any,
        value_cache: Any,
        batch: DecodeBatch,
        scale: float,
        variant: str = "auto",
        partition_size: int = 1024,
    ) -> Any: ...

    def synchronize(self) -> None:
        """Wait until queued work is done (no-op on the CPU)."""


class NumpyBackend:
    """The reference backend: NumPy arrays and the kernel twins."""

    name = "numpy"

    def asarray(self, a: Any) -> np.ndarray:
        if isinstance(a, np.ndarray):
            return a
        if hasattr(a, "get"):  # a CuPy array
            return a.get()
        return np.asarray(a)

    def to_numpy(self, a: Any) -> np.ndarray:
        return np.array(self.asarray(a), copy=True)

    def full(self, shape: tuple[int, ...], value: float, dtype: np.dtype) -> np.ndarray:
        return np.full(shape, value, dtype=dtype)

    def reshape_and_cache(self, key, value, key_cache, value_cache, slot_mapping) -> None:
        reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)

    def copy_blocks(self, key_cache, value_cache, block_mapping) -> None:
        copy_blocks(key_cache, value_cache, block_mapping)

    def paged_attention(
        self, query, key_cache, value_cache, batch, scale, variant="auto", partition_size=1024
    ) -> np.ndarray:
        return paged_attention(query, key_cache, value_cache, batch, scale, variant, partition_size)

    def synchronize(self) -> None:
        return None


def get_backend(name: str = "numpy") -> Backend:
    """``"numpy"`` or ``"cupy"``.

    This factory is the only place that imports :mod:`tinyserve_sim.gpu` (a
    contract checked in CI), and it does so lazily, so the simulator imports
    and runs without CuPy. Raises
    :class:`~tinyserve_sim.errors.BackendUnavailableError` when CuPy or a CUDA
    device is missing, saying which.
    """
    if name == "numpy":
        return NumpyBackend()
    if name == "cupy":
        return _gpu_backend_module().CupyBackend()
    raise BackendUnavailableError(f"unknown backend {name!r} (expected 'numpy' or 'cupy')")


def _gpu_backend_module() -> ModuleType:
    """Import ``tinyserve_sim.gpu.backend``, also from a source checkout that was never installed.

    Installed, ``gpu/`` ships as ``tinyserve_sim.gpu``. In a bare checkout it is
    the folder beside the package, so it is registered under that name first.
    """
    if "tinyserve_sim.gpu" not in sys.modules and importlib.util.find_spec("tinyserve_sim.gpu") is None:
        folder = Path(__file__).resolve().parents[2] / "gpu"
        spec = importlib.util.spec_from_file_location(
            "tinyserve_sim.gpu", folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        if spec is None or spec.loader is None:
            raise BackendUnavailableError(f"the GPU backend (tinyserve_sim.gpu) is not installed and {folder} is missing")
        package = importlib.util.module_from_spec(spec)
        sys.modules["tinyserve_sim.gpu"] = package
        spec.loader.exec_module(package)
    try:
        return importlib.import_module("tinyserve_sim.gpu.backend")
    except ImportError as exc:
        missing = "CuPy" if (exc.name or "").startswith("cupy") else (exc.name or "a module")
        raise BackendUnavailableError(f"the cupy backend needs {missing}: {exc}") from exc
