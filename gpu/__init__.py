"""``tinyserve_sim.gpu``: the CUDA kernels, their build options and the CuPy backend.

Importing this package needs nothing; the submodules ``launchers``,
``allocators`` and ``backend`` import CuPy. ``build`` (the options and the CPU
compile-check) works without a GPU.
"""

from __future__ import annotations

__all__ = ["get_cupy_backend"]


def get_cupy_backend():
    """The GPU backend (raises BackendUnavailableError without CuPy or a device)."""
    from tinyserve_sim.gpu.backend import CupyBackend

    return CupyBackend()
