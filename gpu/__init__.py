"""``tinyserve_sim.gpu``: the CUDA kernels, their build options and the CuPy backend.

The folder sits at the top of the repository (``gpu/``) and ships as
``tinyserve_sim.gpu`` (see ``pyproject.toml``). Only the backend factory,
:func:`tinyserve_sim.data.backends.get_backend`, imports it. Importing this
package needs nothing; the submodules ``launchers``, ``allocators`` and
``backend`` import CuPy; ``build`` (the options and the CPU compile-check)
works without a GPU.
"""
