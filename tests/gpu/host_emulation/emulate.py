"""Compile a kernel of ``gpu/kernels/`` as C++ for the CPU (with ``cuda_shim.h``) and load it.

The driver source names the instantiation and exposes an ``extern "C"`` entry
point; the library is cached by a hash of everything that goes into it."""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL_DIR = HERE.parents[2] / "gpu" / "kernels"
FLAGS = ("-std=c++20", "-O2", "-ffp-contract=off", "-fno-fast-math", "-fno-strict-aliasing", "-pthread", "-shared", "-fPIC",
         "-Wno-unknown-pragmas")


def compiler() -> str | None:
    """The C++ compiler the emulation uses (g++), or None."""
    return shutil.which(os.environ.get("CXX", "g++"))


def load(driver: str, name: str) -> ctypes.CDLL:
    """Compile ``driver`` (C++ that ``#include``\\ s a kernel source) and load it."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) for the host emulation")
    inputs = [driver, *(p.read_text() for p in sorted(HERE.glob("*.h"))),
              *(p.read_text() for p in sorted(KERNEL_DIR.glob("*.cu*"))), " ".join(FLAGS)]
    key = hashlib.sha256("\0".join(inputs).encode()).hexdigest()[:24]
    folder = Path(tempfile.gettempdir()) / "tinyserve-host-emulation"
    folder.mkdir(exist_ok=True)
    lib = folder / f"{name}-{key}.so"
    if not lib.exists():
        src = folder / f"{name}-{key}.cpp"
        src.write_text(driver)
        kernels = _shared_as_static(folder / f"kernels-{key}")
        tmp = lib.with_suffix(f".tmp{os.getpid()}.so")
        cmd = [cxx, *FLAGS, "-include", str(HERE / "cuda_shim.h"), f"-I{HERE}", f"-I{kernels}", str(src), "-o", str(tmp)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"host emulation build failed:\n{res.stderr[-4000:]}")
        tmp.replace(lib)
    return ctypes.CDLL(str(lib))


def _shared_as_static(folder: Path) -> Path:
    """Copies of the kernel sources in which a thread block's shared memory is shared by the
    emulated threads: a static ``__shared__`` variable becomes a ``static`` local (one per
    process: the blocks run one at a time), and ``extern __shared__`` (the dynamic shared
    memory) a plain ``extern`` array that the driver defines. The kernels' own text is
    untouched on disk."""
    folder.mkdir(exist_ok=True)
    for path in KERNEL_DIR.glob("*.cu*"):
        text = re.sub(r"\bextern\s+__shared__\b", "extern", path.read_text())
        tmp = folder / f"{path.name}.tmp{os.getpid()}"
        tmp.write_text(re.sub(r"\b__shared__\b", "static", text))
        tmp.replace(folder / path.name)  # atomic: a concurrent build never reads half a file
    return folder
