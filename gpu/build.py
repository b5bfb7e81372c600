"""Building the CUDA kernels: the options (part of the contract), the cache, the CPU check.

Bit-exactness is a property of the source *and* of how it is compiled. These
NVRTC options are the contract (``docs/concepts/gpu-validation.md``):

* ``--fmad=false``: never contract ``a * b + c`` into a fused multiply-add.
  NumPy rounds the product and the sum separately; so must the GPU. (With
  contraction, 76% of 65,536 float32 dot products differed from NumPy.)
* ``-std=c++17``.
* No ``--use_fast_math`` (nor ``-ftz=true``, ``-prec-div=false``,
  ``-prec-sqrt=false``): divisions stay IEEE round-to-nearest and subnormals
  are kept; the defaults of NVRTC are already the precise ones, and we pin
  them explicitly below so a changed default cannot slip in.

Local includes (``#include "exact_math.cuh"``) are inlined into the source text
before compiling, so CuPy's on-disk kernel cache, which hashes the source
string and the options, sees a change in the header too.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
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
)
#: The virtual architecture of the CPU compile-check (Hopper, the project's GPU).
CHECK_ARCH = "compute_90"

_INCLUDE_RE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$', re.MULTILINE)


def kernel_files() -> list[Path]:
    """Every ``.cu`` source shipped with the package."""
    return sorted(KERNEL_DIR.glob("*.cu"))


def load_source(name: str) -> str:
    """The source of ``kernels/<name>`` with local ``#include "..."`` files inlined."""

    def expand(text: str, seen: frozenset[str]) -> str:
        def repl(m: re.Match[str]) -> str:
            inc = m.group(1)
            if inc in seen:
                return ""  # already inlined (headers use #pragma once anyway)
            return expand((KERNEL_DIR / inc).read_text(), seen | {inc})

        return _INCLUDE_RE.sub(repl, text)

    return expand((KERNEL_DIR / name).read_text(), frozenset())


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


#: Stage V through shared memory (cp.async) when its buffer is at most this big: 32 KiB keeps a
#: block under the default 48 KiB of dynamic shared memory at head_dim 128 (float16) and leaves
#: four blocks per SM, as many as the registers allow.
STAGE_V_MAX_BYTES = 32 * 1024


def stage_v_bytes(plan: Any) -> int:
    """Shared memory of the V stage: one 16-byte vector per (token of a chunk, lane, owned vector)."""
    from tinyserve_sim.data.geometry import CHUNK_TOKENS

    return CHUNK_TOKENS * plan.lanes * plan.vecs_per_lane * 16


def default_stage_v(plan: Any) -> bool:
    """The launcher's default: stage V when the stage fits :data:`STAGE_V_MAX_BYTES`."""
    return stage_v_bytes(plan) <= STAGE_V_MAX_BYTES


def paged_attention_kernel_name(plan: Any, dtype: Any, head_tile: int, split: bool, stage_v: bool) -> str:
    """The template instantiation of ``paged_attention_kernel`` for one launch.

    ``EVEN`` (the last argument) says that every lane owns all its vectors
    (``head_dim == lanes * vecs_per_lane * vec``), which drops a check per element."""
    even = plan.num_vecs == plan.lanes * plan.vecs_per_lane
    flags = ", ".join("true" if f else "false" for f in (split, stage_v, even))
    return (f"paged_attention_kernel<{CTYPE[np.dtype(dtype)]}, {plan.vec}, {plan.lanes}, "
            f"{plan.vecs_per_lane}, {head_tile}, {flags}>")


def paged_attention_names(plan: Any, dtype: Any, stage_v: bool = False) -> tuple[str, ...]:
    """The kernels of one compiled module of paged_attention.cu: both variants
    for every head tile, and the split-K reduce, for one plan's (dtype, lanes,
    vecs, evenness) and one way of loading V (``stage_v``: through shared
    memory with cp.async)."""
    t = CTYPE[np.dtype(dtype)]
    names = [
        paged_attention_kernel_name(plan, dtype, gt, split, stage_v)
        for gt in (1, 2, 4, 8)
        for split in (False, True)
    ]
    return (*names, f"paged_attention_reduce_kernel<{t}>")


def all_paged_attention_modules() -> list[tuple[str, ...]]:
    """Every module (dtype, lanes, vecs, evenness, V staging by default) a valid head_dim (8..256,
    step 8) can need."""
    from tinyserve_sim.data.geometry import make_plan

    seen: dict[tuple[str, ...], tuple[str, ...]] = {}
    for dtype in CTYPE:
        for head_dim in range(8, 257, 8):
            plan = make_plan(head_dim, dtype, 1)
            names = paged_attention_names(plan, dtype, default_stage_v(plan))
            seen.setdefault(names, names)
    return list(seen.values())


# ---------------------------------------------------------------- GPU modules
@functools.lru_cache(maxsize=None)
def get_module(name: str, name_expressions: tuple[str, ...] = ()) -> Any:
    """A compiled ``cupy.RawModule`` for ``kernels/<name>``, cached per process
    (and on disk by CuPy, under ``CUPY_CACHE_DIR``)."""
    import cupy

    kwargs: dict[str, Any] = {"code": load_source(name), "options": compile_options()}
    if name_expressions:
        kwargs["name_expressions"] = list(name_expressions)
    return cupy.RawModule(**kwargs)


# ------------------------------------------------------- CPU compile-check
class CompileError(RuntimeError):
    """A kernel source failed to compile; the message holds the compiler log."""


def compile_check(name: str, name_expressions: tuple[str, ...] = ()) -> str:
    """Compile ``kernels/<name>`` to PTX on the CPU, with the backend's exact
    options; return the PTX. Needs no GPU and no driver.

    Uses NVRTC through CuPy's low-level binding (the very compiler the GPU
    backend uses), with ``-arch=compute_90``. Falls back to ``nvcc -ptx
    -arch=sm_90`` when that binding cannot load NVRTC.
    """
    source = load_source(name)
    try:
        from cupy_backends.cuda.libs import nvrtc
    except Exception:  # pragma: no cover - depends on the machine
        return _compile_check_nvcc(name, source, name_expressions)
    options = [*compile_options(), f"-arch={CHECK_ARCH}"]
    try:
        prog = nvrtc.createProgram(source, name, [], [])
    except Exception:  # pragma: no cover - libnvrtc missing
        return _compile_check_nvcc(name, source, name_expressions)
    try:
        for expr in name_expressions:
            nvrtc.addNameExpression(prog, expr)
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as exc:
            raise CompileError(f"{name}: {exc}\n{nvrtc.getProgramLog(prog)}") from exc
        ptx = nvrtc.getPTX(prog)
        return ptx.decode() if isinstance(ptx, bytes) else str(ptx)
    finally:
        nvrtc.destroyProgram(prog)


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
