"""Compile-check every CUDA source on the CPU, with the GPU backend's exact options.

Not gpu-marked: it needs NVRTC (the ``nvidia-cuda-nvrtc`` wheel, via CuPy's
low-level binding) or ``nvcc``, but no GPU and no driver, so CPU-only CI runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tinyserve_sim.gpu import build

MODULES = build.all_paged_attention_modules()


def _args(name: str) -> list[str]:
    return [a.strip() for a in name[name.index("<") + 1 : name.rindex(">")].split(",")]


def _representative_names() -> tuple[str, ...]:
    """All kernels of every module would take many minutes to compile on 2 cores; by
    default take one kernel per family (dtype, vec, lanes, vecs per lane, chunk,
    evenness), rotating through the head tiles, slices and both variants, so that
    every family, every head tile, every slice count and both variants compile,
    plus every reduce kernel. ``TS_COMPILE_ALL=1`` compiles everything."""
    kernels = [n for module in MODULES for n in module if n.startswith("paged_attention_kernel")]
    reduces = [n for module in MODULES for n in module if "reduce" in n]
    if os.environ.get("TS_COMPILE_ALL"):
        return tuple(dict.fromkeys(kernels + reduces))
    families: dict[tuple[str, ...], list[str]] = {}
    for name in kernels:
        a = _args(name)
        families.setdefault((a[0], a[1], a[2], a[3], a[6], a[8]), []).append(name)
    picked = [names[i % len(names)] for i, names in enumerate(families.values())]
    covered = {(_args(n)[4], _args(n)[5], _args(n)[7]) for n in picked}
    for name in kernels:  # make sure every (head tile, slices, variant) appears at least once
        key = (_args(name)[4], _args(name)[5], _args(name)[7])
        if key not in covered:
            picked.append(name)
            covered.add(key)
    return tuple(dict.fromkeys(picked + reduces))


def test_build_options_are_the_contract():
    opts = build.NVRTC_OPTIONS
    assert "--fmad=false" in opts and "-std=c++17" in opts
    assert not any("fast" in o or o in ("-ftz=true", "-prec-div=false", "-prec-sqrt=false") for o in opts)


#: Sources made only of templates: compiled below with their instantiations.
TEMPLATED = ("paged_attention.cu", "paged_prefill_attention.cu")


@pytest.mark.parametrize("name", [p.name for p in build.kernel_files() if p.name not in TEMPLATED])
def test_kernel_compiles(name):
    ptx = build.compile_check(name)
    assert ".entry" in ptx  # at least one kernel was emitted


def test_paged_attention_compiles_every_instantiation():
    names = _representative_names()
    ptx = build.compile_check("paged_attention.cu", names)
    assert ptx.count(".entry") == len(names)


def test_paged_prefill_attention_compiles_every_instantiation():
    # One instantiation per dtype and padded head dim (64, 128, 192, 256): every head dim 8..256.
    names = tuple(build.all_paged_prefill_attention_names())
    assert len(names) == 8
    ptx = build.compile_check("paged_prefill_attention.cu", names)
    assert ptx.count(".entry") == len(names)
    assert "fma.rn.f32" in ptx and "fma.rn.ftz" not in ptx and "cp.async" in ptx
    assert "mma.sync.aligned.m16n8k16" in ptx  # the float16 plans' scores (prefill_plan.TENSOR_CORE_SCORES)


def test_includes_are_inlined():
    src = build.load_source("paged_attention.cu")
    assert '#include "exact_math.cuh"' not in src and "ts_exp" in src


def test_a_header_included_twice_is_inlined_once():
    # Two headers that both include a third: its text must appear once, as #pragma once
    # would have it (inlined, the pragma no longer sees files).
    files = {
        "main.cu": '#include "a.cuh"\n#include "b.cuh"\nint k;\n',
        "a.cuh": '#include "common.cuh"\nint a;\n',
        "b.cuh": '#include "common.cuh"\nint b;\n',
        "common.cuh": "int common_definition;\n",
    }
    src = build.inline_includes(files["main.cu"], files.__getitem__)
    assert src.count("int common_definition;") == 1
    assert src.index("int common_definition;") < src.index("int a;") < src.index("int b;") < src.index("int k;")


def test_a_broken_source_is_reported(tmp_path, monkeypatch):
    (tmp_path / "broken.cu").write_text('extern "C" __global__ void k() { this is not C++; }')
    monkeypatch.setattr(build, "KERNEL_DIR", tmp_path)
    with pytest.raises(build.CompileError):
        build.compile_check("broken.cu")


def test_the_gpu_build_compiles_machine_code_with_the_contract_options():
    # load_module compiles exactly this way for the GPU (sm_90 here: a CUBIN), with the
    # contract's options only: not through CuPy's compiler, which appends -ftz=true.
    source = 'extern "C" __global__ void k(float* x) { x[0] = __fmaf_rn(x[1], x[2], x[3]); }'
    cubin, lowered = build.nvrtc_compile(source, "k.cu", (), "sm_90")
    assert cubin[:4] == b"\x7fELF" and lowered == {}
    assert "-ftz=false" in build.compile_options() and "-ftz=true" not in build.compile_options()
    ptx, _ = build.nvrtc_compile(source, "k.cu", (), "compute_90")
    assert "fma.rn.f32" in ptx.decode() and "fma.rn.ftz" not in ptx.decode()


def test_the_instantiation_shapes_reach_every_prefill_instantiation():
    """The GPU tests and bench_prefill's checks run prefill_plan.INSTANTIATION_SHAPES to
    cover every compiled prefill kernel: those shapes must name every instantiation."""
    from tinyserve_sim.data.prefill_plan import INSTANTIATION_SHAPES, prefill_plan_for

    reached = {build.paged_prefill_attention_kernel_name(prefill_plan_for(d, dtype), dtype) for dtype, d, *_ in INSTANTIATION_SHAPES}
    assert reached == set(build.all_paged_prefill_attention_names())


def test_the_cuda_core_prefill_instantiations_compile():
    """The float16 prefill kernels with the tensor-core scores switched off
    (prefill_plan.TENSOR_CORE_SCORES = False), which no default plan reaches, compile here
    all the same; the default ones have tensor-core scores."""
    from dataclasses import replace

    import numpy as np
    from tinyserve_sim.data.prefill_plan import make_prefill_plan

    names = tuple(build.paged_prefill_attention_kernel_name(replace(make_prefill_plan(d), tensor_core_scores=False), np.float16)
                  for d in (64, 128, 192, 256))
    assert not set(names) & set(build.all_paged_prefill_attention_names())
    ptx = build.compile_check("paged_prefill_attention.cu", names)
    assert ptx.count(".entry") == 4 and "mma.sync" not in ptx


def test_the_prefill_instantiations_with_cuda_core_values_compile():
    """The float16 prefill kernels with tensor-core scores but ``P V`` on CUDA cores
    (prefill_plan.TENSOR_CORE_VALUES = False), which no default plan reaches: they compile,
    and issue fewer mma.sync than the default ones (the scores' only)."""
    from dataclasses import replace

    import numpy as np
    from tinyserve_sim.data.prefill_plan import make_prefill_plan

    scores_only = tuple(build.paged_prefill_attention_kernel_name(
        replace(make_prefill_plan(d), tensor_core_scores=True), np.float16) for d in (64, 128, 192, 256))
    both = tuple(build.paged_prefill_attention_kernel_name(
        replace(make_prefill_plan(d), tensor_core_scores=True, tensor_core_values=True), np.float16) for d in (64, 128, 192, 256))
    assert not set(scores_only) & set(build.all_paged_prefill_attention_names())
    assert set(both) <= set(build.all_paged_prefill_attention_names())
    for a, b in zip(scores_only, both):
        ptx_a = build.compile_check("paged_prefill_attention.cu", (a,))
        ptx_b = build.compile_check("paged_prefill_attention.cu", (b,))
        assert 0 < ptx_a.count("mma.sync") < ptx_b.count("mma.sync")
        assert "ldmatrix.sync.aligned.m8n8.x4.trans" in ptx_b and "ldmatrix.sync.aligned.m8n8.x4.trans" not in ptx_a


def test_the_benchmarks_read_floor_kernels_compile():
    """bench_selection's read-floor kernels (compiled by CuPy on the GPU machine) compile here too."""
    import importlib.util

    pytest.importorskip("cupy", reason="the benchmark module imports CuPy (no GPU needed)")
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_selection.py"
    spec = importlib.util.spec_from_file_location("bench_selection_for_compile_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    binary, lowered = build.nvrtc_compile(module.READ_FLOOR_SOURCE, "read_floor.cu", ("read_kv", "read_metadata", "read_contiguous"), build.CHECK_ARCH)
    assert binary and set(lowered) == {"read_kv", "read_metadata", "read_contiguous"}


def _benchmark_module(name: str):
    """Import ``benchmarks/<name>.py`` (CuPy imports without a GPU)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    sys.path.insert(0, str(path.parent))  # its own imports: gpu_timing, bench_prefill
    spec = importlib.util.spec_from_file_location(f"{name}_for_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _ab_kernels_module():
    return _benchmark_module("ab_kernels")


def test_the_kernel_benchmark_forces_a_chunk_on_the_launcher_only_and_restores_it():
    # bench_kernels.py --chunks: the launcher plans the forced chunk inside the block, with
    # the variant and partition of the default plan; the twin's geometry is untouched, and
    # the launcher's own plan comes back afterwards.
    pytest.importorskip("cupy", reason="the script imports CuPy (no GPU needed)")
    import argparse

    import numpy as np

    from tinyserve_sim.data.geometry import plan_launch
    from tinyserve_sim.gpu import launchers

    bench = _benchmark_module("bench_kernels")
    args = ((8, 32, 128), np.float16, 8, np.full((8, 8), 32768), "auto", None)
    plan, variant, partition = plan_launch(*args)
    assert plan.chunk == 64 and (variant, partition) == ("split_k", 4096)
    with bench.forced_chunk(128):
        forced, v, p = launchers.plan_launch(*args)
        assert forced.chunk == 128 and (v, p) == (variant, partition)
        assert plan_launch(*args)[0].chunk == 64
    assert launchers.plan_launch(*args)[0].chunk == 64
    assert bench.chunk_list("32,128") == [32, 128]
    for bad in ("48", "64,x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.chunk_list(bad)
    for bad in ("0", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.positive(bad)


def test_the_ab_script_rebuilds_an_old_source_with_its_includes_and_it_compiles(tmp_path):
    # benchmarks/ab_kernels.py compiles a kernel as it was at a git revision: the file and its
    # local includes from that revision, inlined (here HEAD's decode kernel, which includes
    # the shared exponential and the cp.async helpers).
    pytest.importorskip("cupy", reason="the script imports CuPy (no GPU needed)")
    ab = _ab_kernels_module()
    if subprocess.run(["git", "cat-file", "-e", "HEAD"], cwd=ab.REPO, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    source = ab.git_source("HEAD", "paged_attention.cu")
    assert '#include "' not in source and "ts_exp" in source and "cp_async16" in source
    binary, _ = build.nvrtc_compile(source, "old.cu", (), build.CHECK_ARCH)
    assert binary
    # A file's own local includes come from the working tree.
    (tmp_path / "k.cu").write_text('#include "exact_math.cuh"\n__global__ void k(float* x) { x[0] = ts_exp(x[0]); }\n')
    inlined = ab.file_source(str(tmp_path / "k.cu"))
    assert '#include "' not in inlined and "ts_exp" in inlined


@pytest.mark.parametrize(
    "args, says",
    [(["decode", "--old", "no-such-revision"], "git show no-such-revision"),
     (["prefill", "--old-source", "/no/such/file.cu"], "cannot read the old source"),
     (["scores", "--old-source", "/no/such/file.cu"], "cannot read the old source"),
     (["selection", "--old", "HEAD"], "invalid choice"),
     (["decode", "--old", "HEAD", "--rounds", "0"], "must be a positive integer"),
     (["decode"], "one of the arguments"),
     (["decode", "--old", "HEAD", "--new-source", "/no/such/variant.cu"], "cannot read the new source")],
)
def test_the_ab_script_refuses_bad_input_in_one_line(args, says, tmp_path):
    pytest.importorskip("cupy", reason="the script imports CuPy")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "ab_kernels.py"
    res = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    last = res.stderr.strip().splitlines()[-1]
    assert "ab_kernels" in last and says in last, last


@pytest.mark.parametrize(
    "script, args",
    [("bench_kernels.py", ["--no-torch", "--cases", "dims"]), ("ab_kernels.py", ["decode", "--old", "HEAD"])],
)
def test_the_gpu_scripts_say_in_one_line_that_there_is_no_gpu(script, args, tmp_path):
    pytest.importorskip("cupy", reason="the scripts import CuPy")
    from tinyserve_sim.data.backends import get_backend
    from tinyserve_sim.errors import BackendUnavailableError

    try:
        get_backend("cupy")
    except BackendUnavailableError:
        pass
    else:
        pytest.skip("a GPU is here: the script would run its benchmark")
    path = Path(__file__).resolve().parents[2] / "benchmarks" / script
    res = subprocess.run([sys.executable, str(path), *args], cwd=tmp_path, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(script.removesuffix(".py") + ": no usable CUDA device"), last
