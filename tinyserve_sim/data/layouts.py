"""Cache layouts: this project's caches in the shapes other kernels read.

The simulator keeps keys and values in two arrays, in the "NHD" order of vLLM's
flash backend (N: the tokens of a block, H: the KV heads, D: head_dim)::

    key_cache, value_cache   [num_blocks, block_size, Hkv, D]

FlashInfer's paged wrappers take one tensor holding both, in one of two orders
(``kv_layout``)::

    "NHD"   kv_cache [num_pages, 2, page_size, Hkv, D]    kv_cache[:, 0]: keys, [:, 1]: values
    "HND"   kv_cache [num_pages, 2, Hkv, page_size, D]    a page's tokens contiguous per head

and PyTorch's FlexAttention paged helper (``torch.nn.attention.experimental.
_paged_attention``) one tensor per cache, heads first, pages end to end::

    k_cache [1, Hkv, num_pages * page_size, D]            slot = page * page_size + offset

A page is a block and a page id is a block id in every one of them, so the
tables exported by :mod:`tinyserve_sim.control.formats` index these copies
unchanged. Each converter returns a new C-contiguous array of the same kind
as its input (NumPy in, NumPy out; CuPy in, CuPy out).

>>> import numpy as np
>>> k = np.arange(2 * 4 * 3 * 8, dtype=np.float16).reshape(2, 4, 3, 8)
>>> kv = to_flashinfer_cache(k, -k, "HND")
>>> kv.shape, bool((kv[1, 0, 2, 3] == k[1, 3, 2]).all())
((2, 2, 3, 4, 8), True)
>>> k2, v2 = from_flashinfer_cache(kv, "HND")
>>> bool((k2 == k).all() and (v2 == -k).all())
True
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np

from tinyserve_sim.data.validation import check_array, check_caches
from tinyserve_sim.errors import KernelInputError

#: The two orders of FlashInfer's paged cache.
LAYOUTS = ("NHD", "HND")


def _array_module(a: Any) -> ModuleType:
    """NumPy for NumPy arrays, CuPy for CuPy arrays (found without importing CuPy here)."""
    if isinstance(a, np.ndarray):
        return np
    module = sys.modules.get(type(a).__module__.split(".")[0])
    if module is None or not all(hasattr(module, f) for f in ("stack", "ascontiguousarray")):
        raise KernelInputError(f"expected a NumPy or CuPy array, got {type(a).__name__}")
    return module


def _check_layout(layout: Any) -> str:
    if layout not in LAYOUTS:
        raise KernelInputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def to_flashinfer_cache(key_cache: Any, value_cache: Any, layout: str = "NHD") -> Any:
    """Both caches as FlashInfer's one paged tensor: ``[P, 2, bs, Hkv, D]`` (NHD) or ``[P, 2, Hkv, bs, D]`` (HND)."""
    check_caches(key_cache, value_cache)
    _check_layout(layout)
    xp = _array_module(key_cache)
    if layout == "HND":
        key_cache, value_cache = key_cache.transpose(0, 2, 1, 3), value_cache.transpose(0, 2, 1, 3)
    return xp.ascontiguousarray(xp.stack([key_cache, value_cache], axis=1))


def from_flashinfer_cache(kv_cache: Any, layout: str = "NHD") -> tuple[Any, Any]:
    """FlashInfer's paged tensor back to this project's ``(key_cache, value_cache)``, each ``[P, bs, Hkv, D]``."""
    check_array("kv_cache", kv_cache)
    _check_layout(layout)
    if kv_cache.ndim != 5 or kv_cache.shape[1] != 2:
        raise KernelInputError(f"kv_cache must be [num_pages, 2, ...] with 5 dims, got shape {tuple(kv_cache.shape)}")
    xp = _array_module(kv_cache)
    k, v = kv_cache[:, 0], kv_cache[:, 1]
    if layout == "HND":
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    k, v = xp.ascontiguousarray(k), xp.ascontiguousarray(v)
    check_caches(k, v)
    return k, v


def to_flex_attention_cache(cache: Any) -> Any:
    """One cache in the layout of PyTorch's FlexAttention paged helper: ``[1, Hkv, P * bs, D]``."""
    check_caches(cache, cache)
    xp = _array_module(cache)
    P, bs, H, D = cache.shape
    return xp.ascontiguousarray(cache.reshape(P * bs, H, D).transpose(1, 0, 2))[None]
