"""Building the CUDA kernels: the options (part of the contract), the cache, the CPU check.

Bit-exactness is a property of the source *and* of how it is compiled. These
NVRTC options are the contract (``docs/concepts/gpu-validation.md``):

* ``--fmad=false``: never contract ``a * b + c`` into a fused multiply-add.
  NumPy rounds the product and the sum separately; so must the GPU. (With
  contraction, 76% of 65,536 float32 dot products differed from NumPy.)
  Where a kernel wants a fused multiply-add, it writes ``__fmaf_rn``.
* ``-std=c++17`` and ``--device-as-default-execution-space`` (no effect on
  the arithmetic: unannotated functions, such as the kernels' lambdas, are
  device functions).
* No ``--use_fast_math`` (nor ``-ftz=true``, ``-prec-div=false``,
  ``-prec-sqrt=false``): divisions stay IEEE round-to-nearest and subnormals
  are kept; the defaults of NVRTC are already the precise ones, and we pin
  them explicitly below so a changed default cannot slip in.

The kernels are compiled here, by NVRTC through CuPy's low-level binding, to a
CUBIN that CuPy then loads (``cupy.RawModule(path=...)``). Not through
``cupy.RawModule(code=...)``: CuPy appends ``-ftz=true`` to every program it
compiles itself (``cupy/cuda/compiler.py``), which flushes subnormal operands
to zero and breaks the contract; measured on an H200, 1,322 of 2,500,000
random ``__fmaf_rn`` triples with a subnormal operand then differed from IEEE.
The CPU compile-check uses the same function with a virtual architecture.

Local includes (``#include "exact_math.cuh"``) are inlined into the source text
before compiling, so the on-disk cache, keyed by a hash of the source, the
options and the architecture, sees a change in the header too.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"

#: The options every kernel is compiled with, on the GPU and in the CPU check.
NVRTC_OPTIONS: tuple[str, ...] = (
    "--fmad=false",
    "-std=c++17",
    "-ftz=false",
    "-prec-div=true",
    "-prec-sqrt=true",
    # Unannotated functions (the kernels' generic lambdas) are device functions. CuPy passes the
    # same option to NVRTC; NVRTC 13.0 rejects a generic lambda in device code without it.
    "--device-as-default-execution-space",
)
#: The virtual architecture of the CPU compile-check (Hopper, the project's GPU).
CHECK_ARCH = "compute_90"

_INCLUDE_RE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$', re.MULTILINE)


def kernel_files() -> list[Path]:
    """Every ``.cu`` source shipped with the package."""
    return sorted(KERNEL_DIR.glob("*.cu"))


def _read_kernel_file(name: str) -> str:
    return (KERNEL_DIR / name).read_text()


def inline_includes(text: str, read: Callable[[str], str] = _read_kernel_file) -> str:
    """``text`` with its local ``#include "..."`` lines replaced by the files, recursively,
    each file once in the whole result (as ``#pragma once`` would: two headers that both
    include ``exact_math.cuh`` inline it once); ``read(name)`` gives a file's text (by
    default from ``kernels/``; ``benchmarks/ab_kernels.py`` reads them at a git revision
    instead)."""
    seen: set[str] = set()

    def expand(text: str) -> str:
        def repl(m: re.Match[str]) -> str:
            inc = m.group(1)
            if inc in seen:
                return ""  # already inlined above
            seen.add(inc)
            return expand(read(inc))

        return _INCLUDE_RE.sub(repl, text)

    return expand(text)


def load_source(name: str) -> str:
    """The source of ``kernels/<name>`` with local ``#include "..."`` files inlined."""
    return inline_includes(_read_kernel_file(name))


def cuda_include_dirs() -> list[str]:
    """Folders holding ``cuda_fp16.h``: the toolkit's, or the ``nvidia-cuda-runtime`` wheel's."""
    candidates: list[Path] = []
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    for entry in sys.path:
        candidates.append(Path(entry) / "nvidia" / "cu13" / "include")
        candidates.append(Path(entry) / "nvidia" / "cuda_runtime" / "include")
    found = [str(c) for c in candidates if (c / "cuda_fp16.h").is_file()]
    return found[:1]


def compile_options() -> tuple[str, ...]:
    """NVRTC options for the GPU backend: the contract plus the header folder."""
    return NVRTC_OPTIONS + tuple(f"-I{d}" for d in cuda_include_dirs())


# ------------------------------------------------- template instantiations
import numpy as np  # noqa: E402

CTYPE = {np.dtype(np.float16): "__half", np.dtype(np.float32): "float"}


#: The GQA group sizes the compile-check covers (the plan depends on the group only through
#: its head tile and slices, which these reach).
GROUP_SIZES = (1, 2, 4, 8, 16, 32)


def paged_attention_kernel_name(plan: Any, dtype: Any, split: bool) -> str:
    """The template instantiation of ``paged_attention_kernel`` for one plan and variant.

    Its arguments: element type, vector width, lanes, vectors per lane, heads
    per slice, slices, chunk, copies through L1 (``l1_copies``), split-K, ``EVEN``
    (every lane owns all its vectors, ``head_dim == lanes * vecs_per_lane * vec``: no
    check per element), the logits on tensor cores (``tensor_core_logits``) and ``P V`` on
    tensor cores (``tensor_core_values``)."""
    flags = ", ".join("true" if f else "false"
                      for f in (plan.l1_copies, split, plan.even, plan.tensor_core_logits, plan.tensor_core_values))
    return (f"paged_attention_kernel<{CTYPE[np.dtype(dtype)]}, {plan.vec}, {plan.lanes}, "
            f"{plan.vecs_per_lane}, {plan.head_tile}, {plan.head_slices}, {plan.chunk}, {flags}>")


def paged_attention_names(plan: Any, dtype: Any) -> tuple[str, ...]:
    """The kernels of one compiled module of paged_attention.cu: both variants of
    one plan, and the split-K reduce. Modules are compiled on first use (and
    cached by CuPy on disk), so only the plans a program uses are compiled."""
    t = CTYPE[np.dtype(dtype)]
    names = [paged_attention_kernel_name(plan, dtype, split) for split in (False, True)]
    return (*names, f"paged_attention_reduce_kernel<{t}>")


def all_paged_attention_modules() -> list[tuple[str, ...]]:
    """Every module a valid head_dim (8..256, step 8) and a group in :data:`GROUP_SIZES` can need."""
    from tinyserve_sim.data.geometry import make_plan

    seen: dict[tuple[str, ...], None] = {}
    for dtype in CTYPE:
        for head_dim in range(8, 257, 8):
            for group in GROUP_SIZES:
                seen.setdefault(paged_attention_names(make_plan(head_dim, dtype, group), dtype), None)
    return list(seen)


# ---------------------------------------------------------------- compiling
class CompileError(RuntimeError):
    """A kernel source failed to compile; the message holds the compiler log."""


def nvrtc_compile(
    source: str, name: str, name_expressions: tuple[str, ...], arch: str
) -> tuple[bytes, dict[str, str]]:
    """Compile ``source`` with :func:`compile_options` for ``arch`` (``sm_90``: machine
    code, a CUBIN; ``compute_90``: PTX). Returns the binary and the lowered
    (mangled) name of every name expression. Needs no GPU and no driver."""
    from cupy_backends.cuda.libs import nvrtc

    prog = nvrtc.createProgram(source, name, [], [])
    try:
        for expr in name_expressions:
            nvrtc.addNameExpression(prog, expr)
        try:
            nvrtc.compileProgram(prog, [*compile_options(), f"-arch={arch}"])
        except nvrtc.NVRTCError as exc:
            raise CompileError(f"{name}: {exc}\n{nvrtc.getProgramLog(prog)}") from exc
        binary = nvrtc.getCUBIN(prog) if arch.startswith("sm_") else nvrtc.getPTX(prog)
        lowered = {expr: nvrtc.getLoweredName(prog, expr) for expr in name_expressions}
    finally:
        nvrtc.destroyProgram(prog)
    return (binary if isinstance(binary, bytes) else str(binary).encode()), lowered


class KernelModule:
    """A loaded module whose kernels are found by the names the source spells
    (``paged_attention_kernel<__half, 8, ...>``), like ``cupy.RawModule``'s."""

    def __init__(self, module: Any, lowered: dict[str, str]) -> None:
        self._module = module
        self._lowered = lowered

    def get_function(self, name: str) -> Any:
        return self._module.get_function(self._lowered.get(name, name))


def load_module(source: str, name: str, name_expressions: tuple[str, ...] = ()) -> KernelModule:
    """Compile ``source`` for the current GPU (or take it from the cache) and load it.

    The cache lives under ``$CUPY_CACHE_DIR/tinyserve`` (default
    ``~/.cupy/kernel_cache/tinyserve``), one CUBIN per hash of the source, the
    options, the name expressions, the architecture and NVRTC's version."""
    import hashlib
    import json

    import cupy
    from cupy_backends.cuda.libs import nvrtc

    arch = f"sm_{cupy.cuda.Device().compute_capability}"
    key = hashlib.sha256(
        json.dumps([source, compile_options(), list(name_expressions), arch, list(nvrtc.getVersion())]).encode()
    ).hexdigest()[:32]
    folder = Path(os.environ.get("CUPY_CACHE_DIR", Path.home() / ".cupy" / "kernel_cache")) / "tinyserve"
    cubin_path, names_path = folder / f"{key}.cubin", folder / f"{key}.json"
    if not (cubin_path.is_file() and names_path.is_file()):
        cubin, lowered = nvrtc_compile(source, name, name_expressions, arch)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = cubin_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(cubin)
        tmp.replace(cubin_path)  # atomic: a concurrent reader never sees half a file
        names_path.write_text(json.dumps(lowered))
    lowered = json.loads(names_path.read_text())
    return KernelModule(cupy.RawModule(path=str(cubin_path)), lowered)


@functools.lru_cache(maxsize=None)
def get_module(name: str, name_expressions: tuple[str, ...] = ()) -> KernelModule:
    """The compiled module of ``kernels/<name>``, cached per process and on disk."""
    return load_module(load_source(name), name, name_expressions)


# ------------------------------------------------------- CPU compile-check
def compile_check(name: str, name_expressions: tuple[str, ...] = ()) -> str:
    """Compile ``kernels/<name>`` to PTX on the CPU, with the backend's exact
    options; return the PTX. Needs no GPU and no driver.

    Uses :func:`nvrtc_compile`, the very function that builds the GPU
    backend's modules, with ``-arch=compute_90``. Falls back to ``nvcc -ptx
    -arch=sm_90`` when CuPy's binding cannot load NVRTC.
    """
    source = load_source(name)
    try:
        ptx, _ = nvrtc_compile(source, name, name_expressions, CHECK_ARCH)
    except CompileError:
        raise
    except Exception:  # pragma: no cover - libnvrtc or its binding missing on this machine
        return _compile_check_nvcc(name, source, name_expressions)
    return ptx.decode()


def _compile_check_nvcc(name: str, source: str, name_expressions: tuple[str, ...]) -> str:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not Path(nvcc).exists():
        raise CompileError("neither NVRTC (cupy_backends) nor nvcc is available")
    # Without NVRTC's name expressions nvcc only parses the templates; the
    # non-template kernels are compiled in full.
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / name
        src.write_text(source)
        out = Path(tmp) / "out.ptx"
        cmd = [nvcc, "-ptx", "-arch=sm_90", *NVRTC_OPTIONS, str(src), "-o", str(out)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise CompileError(f"{name}: nvcc failed\n{res.stderr}")
        return out.read_text()


# ------------------------------------------------------------ paged prefill
def paged_prefill_attention_kernel_name(plan: Any, dtype: Any) -> str:
    """The template instantiation of ``paged_prefill_attention_kernel`` for one
    :class:`~tinyserve_sim.data.prefill_plan.PrefillPlan`: element type, padded
    head dim, rows per row group, key tile, threads per block, scores on tensor cores,
    ``P V`` on tensor cores."""
    return (f"paged_prefill_attention_kernel<{CTYPE[np.dtype(dtype)]}, {plan.padded_dim}, "
            f"{plan.rows_per_thread}, {plan.key_tile}, {plan.threads}, "
            f"{'true' if plan.tensor_core_scores else 'false'}, "
            f"{'true' if plan.tensor_core_values else 'false'}>")


def all_paged_prefill_attention_names() -> list[str]:
    """Every instantiation a valid head_dim (8..256, step 8) can need with the plans of
    :func:`~tinyserve_sim.data.prefill_plan.prefill_plan_for`: one per dtype and padded dim."""
    from tinyserve_sim.data.prefill_plan import prefill_plan_for

    seen: dict[str, None] = {}
    for dtype in CTYPE:
        for head_dim in range(8, 257, 8):
            seen.setdefault(paged_prefill_attention_kernel_name(prefill_plan_for(head_dim, dtype), dtype), None)
    return list(seen)
