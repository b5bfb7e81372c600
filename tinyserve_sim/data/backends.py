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
from tinyserve_sim.control.prefill_batch import PrefillBatch
from tinyserve_sim.data import page_metadata, seed_heuristics
from tinyserve_sim.data.copy_blocks import copy_blocks
from tinyserve_sim.data.page_scores import page_scores
from tinyserve_sim.data.paged_attention import paged_attention
from tinyserve_sim.data.paged_prefill_attention import paged_prefill_attention
from tinyserve_sim.data.reshape_and_cache import reshape_and_cache
from tinyserve_sim.data.select_pages import select_page_indices, select_pages
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
        partition_size: int | None = None,
    ) -> Any: ...

    def paged_prefill_attention(
        self, query: Any, key_cache: Any, value_cache: Any, batch: PrefillBatch, scale: float
    ) -> Any: ...

    def synchronize(self) -> None:
        """Wait until queued work is done (no-op on the CPU)."""

    # Query-aware selection (tinyserve_sim.data.page_metadata, page_scores, select_pages,
    # seed_heuristics): the same arguments on both backends.
    def reset_page_metadata(self, blocks: np.ndarray, key_min: Any, key_max: Any) -> None: ...

    def update_page_metadata(
        self, key: Any, slot_mapping: np.ndarray, key_min: Any, key_max: Any, block_size: int
    ) -> None: ...

    def copy_page_metadata(self, key_min: Any, key_max: Any, block_mapping: np.ndarray) -> None: ...

    def reshape_and_cache_with_metadata(
        self, key: Any, value: Any, key_cache: Any, value_cache: Any, slot_mapping: np.ndarray,
        key_min: Any, key_max: Any,
    ) -> None: ...

    def page_scores(self, query: Any, key_min: Any, key_max: Any, batch: Any) -> Any: ...

    def select_pages(self, scores: Any, batch: Any, budget_tokens: int) -> Any: ...

    def select_page_indices(self, scores: Any, batch: Any, budget_tokens: int) -> np.ndarray: ...

    def query_analysis(self, queries: Any, low_threshold: float, high_threshold: float) -> tuple[Any, Any]: ...

    def cache_selection(
        self, complexity: Any, requirement: Any, history: Any, threshold: float
    ) -> tuple[Any, Any]: ...

    def adaptive_cache_management(
        self, hit_rates: Any, access_frequencies: Any, allocation: Any,
        hit_rate_threshold: float, frequency_threshold: int,
    ) -> Any: ...


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
        self, query, key_cache, value_cache, batch, scale, variant="auto", partition_size=None
    ) -> np.ndarray:
        return paged_attention(query, key_cache, value_cache, batch, scale, variant, partition_size)

    def paged_prefill_attention(self, query, key_cache, value_cache, batch, scale) -> np.ndarray:
        return paged_prefill_attention(query, key_cache, value_cache, batch, scale)

    def synchronize(self) -> None:
        return None

    # ------------------------------------------------ query-aware selection
    def reset_page_metadata(self, blocks, key_min, key_max) -> None:
        page_metadata.reset_page_metadata(blocks, key_min, key_max)

    def update_page_metadata(self, key, slot_mapping, key_min, key_max, block_size) -> None:
        page_metadata.update_page_metadata(key, slot_mapping, key_min, key_max, block_size)

    def copy_page_metadata(self, key_min, key_max, block_mapping) -> None:
        page_metadata.copy_page_metadata(key_min, key_max, block_mapping)

    def reshape_and_cache_with_metadata(
        self, key, value, key_cache, value_cache, slot_mapping, key_min, key_max
    ) -> None:
        page_metadata.reshape_and_cache_with_metadata(
            key, value, key_cache, value_cache, slot_mapping, key_min, key_max
        )

    def page_scores(self, query, key_min, key_max, batch) -> np.ndarray:
        return page_scores(query, key_min, key_max, batch)

    def select_pages(self, scores, batch, budget_tokens):
        """The compacted :class:`~tinyserve_sim.control.batch.DecodeBatch` (host arrays)."""
        return select_pages(scores, batch, budget_tokens)

    def select_page_indices(self, scores, batch, budget_tokens) -> np.ndarray:
        return select_page_indices(scores, batch, budget_tokens)

    def query_analysis(self, queries, low_threshold=0.2, high_threshold=0.5):
        return seed_heuristics.query_analysis(queries, low_threshold, high_threshold)

    def cache_selection(self, complexity, requirement, history, threshold):
        return seed_heuristics.cache_selection(complexity, requirement, history, threshold)

    def adaptive_cache_management(
        self, hit_rates, access_frequencies, allocation, hit_rate_threshold, frequency_threshold
    ):
        return seed_heuristics.adaptive_cache_management(
            hit_rates, access_frequencies, allocation, hit_rate_threshold, frequency_threshold
        )


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
