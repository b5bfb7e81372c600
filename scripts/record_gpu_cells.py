#!/usr/bin/env python3
"""Run the GPU cells of tutorials 4, 5 and 6 on a CUDA machine and record what they print.

The documentation site is built on machines without a GPU, where those cells
only say that they are skipped. Run this script on the GPU machine: it runs
each tutorial in full (the GPU cells compare the CUDA kernel with its NumPy
twin, bit for bit), collects the lines its GPU cell printed (the tutorial's
``gpu_lines`` list), and writes a small record, committed with the project:

    python scripts/record_gpu_cells.py             # writes docs/records/gpu-cells.json
    python scripts/record_gpu_cells.py --out x.json
    python scripts/record_gpu_cells.py --commit "$(git rev-parse HEAD)"   # run where git is

The record holds the device, the driver and CuPy versions, the date, the commit
and, for each tutorial, the lines and whether every comparison held. The docs
build (``docs/hooks.py``) shows it below the skip message, labelled as recorded
on that device. Exit status: 0 when every cell ran on the GPU and every
comparison held, 1 otherwise (the record is written either way), 2 without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ("04_paged_attention_numpy_to_cuda", "05_query_aware_selection", "06_hunting_a_kernel_bug")
DEFAULT_OUT = ROOT / "docs" / "records" / "gpu-cells.json"


def commit() -> str:
    """The checked-out commit, with ``-dirty`` when the work tree has changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device() -> dict[str, str]:
    """Name and versions of the CUDA device the backend uses (device 0)."""
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    driver = cp.cuda.runtime.driverGetVersion()
    runtime = cp.cuda.runtime.runtimeGetVersion()
    return {
        "name": name,
        "compute_capability": f"{props['major']}.{props['minor']}",
        "driver_cuda_version": f"{driver // 1000}.{driver % 1000 // 10}",
        "runtime_cuda_version": f"{runtime // 1000}.{runtime % 1000 // 10}",
        "cupy": cp.__version__,
    }


def run_tutorial(name: str) -> dict[str, object]:
    """Run ``tutorials/NAME.py`` as a script; return its GPU cell's lines and whether they all hold."""
    path = ROOT / "tutorials" / f"{name}.py"
    stdout = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="tinyserve-gpu-cells-") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # a tutorial must not depend on (or write into) the working directory
        try:
            with contextlib.redirect_stdout(stdout):
                module = runpy.run_path(str(path), run_name="__main__")
        finally:
            os.chdir(cwd)
    lines = list(module.get("gpu_lines", []))
    ran = module.get("gpu") is not None and bool(lines)
    # Every line reports one comparison; a bit-identity line must say True.
    held = ran and all(not line.endswith("False") for line in lines)
    return {"ran_on_gpu": ran, "all_held": held, "lines": lines}


def unwritable(path: Path) -> str | None:
    """Why the record could not be written at ``path`` (None if it can): checked before
    the tutorials run, so a typo costs a second, not the whole run."""
    if path.is_dir():
        return "is a directory"
    parent = path.parent
    while not parent.exists():  # the first folder that exists must let us create the rest
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "not writable"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON record goes")
    parser.add_argument("--commit", help="the commit the files are at, where this machine's git checkout is not "
                        "(a work tree copied onto a GPU machine); default: asked of git")
    args = parser.parse_args(argv)
    problem = unwritable(args.out)
    if problem:  # say so now, not after minutes of tutorials
        print(f"--out {args.out}: {problem}", file=sys.stderr)
        return 2

    from tinyserve_sim.data.backends import get_backend
    from tinyserve_sim.errors import BackendUnavailableError

    try:
        get_backend("cupy")
    except BackendUnavailableError as reason:
        print(f"no GPU here ({reason}): run this on the GPU machine", file=sys.stderr)
        return 2

    record = {
        "recorded_with": "scripts/record_gpu_cells.py",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": args.commit or commit(),
        "device": device(),
        "tutorials": {},
    }
    for name in TUTORIALS:
        print(f"running tutorials/{name}.py ...", file=sys.stderr)
        record["tutorials"][name] = result = run_tutorial(name)
        for line in result["lines"]:
            print(f"  {line}", file=sys.stderr)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    except OSError as error:
        print(f"--out {args.out}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}", file=sys.stderr)
    ok = all(r["ran_on_gpu"] and r["all_held"] for r in record["tutorials"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
