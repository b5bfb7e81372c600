"""Compile-check every CUDA source on the CPU, with the GPU backend's exact options.

Not gpu-marked: it needs NVRTC (the ``nvidia-cuda-nvrtc`` wheel, via CuPy's
low-level binding) or ``nvcc``, but no GPU and no driver, so CPU-only CI runs it."""

from __future__ import annotations

import os

import pytest
from tinyserve_sim.gpu import build

MODULES = build.all_paged_attention_modules()


def _representative_names() -> tuple[str, ...]:
    """All kernels of every module would take minutes to compile on 2 cores; by
    default take one instantiation per module (head tiles rotating through
    1, 2, 4, 8, variants alternating) plus every reduce kernel, so that every
    (dtype, lanes, vecs_per_lane, evenness, V staging), every head tile and both
    variants compile.
    ``TS_COMPILE_ALL=1`` compiles everything."""
    names: list[str] = []
    for i, module in enumerate(MODULES):
        if os.environ.get("TS_COMPILE_ALL"):
            names += module
            continue
        gt = (1, 2, 4, 8)[i % 4]
        split = ("false", "true")[(i // 4) % 2]
        picked = [n for n in module if f", {gt}, {split}, " in n]
        assert len(picked) == 1, (module, gt, split)  # the name format changed: update this filter
        names += picked
        names += [n for n in module if "reduce" in n]
    return tuple(dict.fromkeys(names))  # the reduce kernels repeat across modules


def test_build_options_are_the_contract():
    opts = build.NVRTC_OPTIONS
    assert "--fmad=false" in opts and "-std=c++17" in opts
    assert not any("fast" in o or o in ("-ftz=true", "-prec-div=false", "-prec-sqrt=false") for o in opts)


@pytest.mark.parametrize("name", [p.name for p in build.kernel_files() if p.name != "paged_attention.cu"])
def test_kernel_compiles(name):
    ptx = build.compile_check(name)
    assert ".entry" in ptx  # at least one kernel was emitted


def test_paged_attention_compiles_every_instantiation():
    names = _representative_names()
    ptx = build.compile_check("paged_attention.cu", names)
    assert ptx.count(".entry") == len(names)


def test_includes_are_inlined():
    src = build.load_source("paged_attention.cu")
    assert '#include "exact_math.cuh"' not in src and "ts_exp" in src


def test_a_broken_source_is_reported(tmp_path, monkeypatch):
    (tmp_path / "broken.cu").write_text('extern "C" __global__ void k() { this is not C++; }')
    monkeypatch.setattr(build, "KERNEL_DIR", tmp_path)
    with pytest.raises(build.CompileError):
        build.compile_check("broken.cu")
