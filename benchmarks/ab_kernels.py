"""A/B of a kernel against another version of its own source, in one process: how every
"prediction, change, outcome" entry of ``docs/dev/kernel-notes.md`` is measured.

Run on a GPU machine (it prints figures; it asserts nothing about time)::

    python benchmarks/ab_kernels.py decode --old 8e76749           # paged_attention then vs now
    python benchmarks/ab_kernels.py prefill --old HEAD~1 --rounds 5
    python benchmarks/ab_kernels.py scores --old HEAD~1              # page_scores (bench_selection's shapes)
    python benchmarks/ab_kernels.py decode --old-source old.cu      # a file (e.g. `git show` output)
    python benchmarks/ab_kernels.py decode --old HEAD --new-source variant.cu   # try a variant untracked

Both versions are compiled from source with the backend's own NVRTC options: the old one
from ``git show REV:gpu/kernels/<file>`` (its local ``#include`` files from the same
revision) or from a file, the new one from the working tree (or a file: ``--new-source``,
for trying several variants in one session without editing the tree). The working tree's launchers
launch both, so the launch geometry (grid, threads, shared memory) is the working tree's:
an A/B of a change to the geometry itself needs its own script.

The launchers name each kernel by its template arguments, so the old source must take the
working tree's: ``paged_attention_kernel`` gained its eleventh, ``TC`` (the plan's
``tensor_core_logits``), in 5402b77, and its twelfth, ``PV`` (``tensor_core_values``), in
bcd85ec; an older revision of ``paged_attention.cu`` does not compile under today's names
(add the parameters to a copy and pass it with ``--old-source``). A switch of the plan
(``geometry.TENSOR_CORE_VALUES``, ``prefill_plan.TENSOR_CORE_SCORES``) changes the geometry
too: the scripts in ``benchmarks/experiments/`` time both settings instead.

For every case the two outputs are first compared bit for bit (a change meant to keep the
bits must keep them; ``bits DIFFER`` says it did not), then the two versions are timed in
alternation, ``--rounds`` times, and the best median of each is printed with the ratio
old / new (> 1: the new one is faster). Timings from two processes, or two machines, are
not comparable: on the project's H200 the same case moved by up to 12% between machines.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn
from unittest import mock

import cupy as cp
import numpy as np
from gpu_timing import device_properties, random_decode_case, time_cupy

from tinyserve_sim.gpu import build, launchers, prefill_launchers, selection_launchers

REPO = Path(__file__).resolve().parents[1]

#: Each family: its kernel file, the launcher module that compiles it, and its cases.
#: Decode cases are (B, L, Hq, Hkv, D, block size); prefill cases (prefix, Hkv, D, dtype)
#: for 8 sequences of 2,048 new tokens and 32 query heads (bench_prefill's shapes); page-score
#: cases (B, L, Hq, Hkv, D, block size), bench_selection's shapes.
DECODE_CASES = [(64, 4096, 32, 32, 128, 16), (1, 65536, 32, 32, 128, 16), (64, 4096, 32, 8, 128, 16),
                (1, 65536, 32, 8, 128, 16), (8, 32768, 32, 8, 128, 16), (64, 4096, 64, 8, 128, 16),
                (64, 4096, 32, 8, 64, 16), (64, 4096, 32, 8, 256, 16)]
PREFILL_CASES = [(0, 8, 128, np.float16), (0, 32, 128, np.float16), (6144, 8, 128, np.float16),
                 (6144, 32, 128, np.float16), (0, 8, 64, np.float16), (0, 8, 192, np.float16), (0, 8, 256, np.float16)]
SCORE_CASES = [(8, 32768, 32, 8, 128, 16), (8, 32768, 32, 8, 128, 64), (64, 4096, 32, 8, 128, 16),
               (1, 65536, 32, 8, 128, 16), (8, 32768, 32, 32, 128, 16)]


def git_source(rev: str, name: str) -> str:
    """``gpu/kernels/<name>`` at git revision ``rev``, its local includes inlined (from ``rev`` too)."""

    def show(file: str) -> str:
        res = subprocess.run(["git", "show", f"{rev}:gpu/kernels/{file}"], cwd=REPO, capture_output=True, text=True)
        if res.returncode:
            fail(f"git show {rev}:gpu/kernels/{file} failed: {res.stderr.strip().splitlines()[0] if res.stderr.strip() else 'no output'}")
        return res.stdout

    return build.inline_includes(show(name), read=show)


def file_source(path: str, which: str = "old") -> str:
    """A kernel source from a file; local includes it still has come from the working tree."""
    try:
        return build.inline_includes(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the {which} source {path}: {exc}")


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2, as the project's command line does."""
    print(f"ab_kernels: {message}", file=sys.stderr)
    raise SystemExit(2)


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def compiled_from(module: object, source: str, tag: str) -> contextlib.AbstractContextManager:
    """Within the block, ``module``'s launchers compile ``source`` instead of the working tree's."""
    return mock.patch.object(module, "get_module", lambda name, exprs=(): build.load_module(source, f"{tag}_{name}", exprs))


def decode_cases() -> Iterator[tuple[str, Callable[[], Callable[[], cp.ndarray]], float, str]]:
    """(tag, a function that prepares a launch, bytes read, unit) for each decode case."""
    for B, L, Hq, Hkv, D, bs in DECODE_CASES:
        q, kc, vc, batch, nbytes = random_decode_case(B, L, Hq, Hkv, D, bs)
        yield (f"B={B} L={L} Hq={Hq} Hkv={Hkv} D={D}",
               lambda q=q, kc=kc, vc=vc, batch=batch, D=D: launchers.prepare_paged_attention(q, kc, vc, batch, D**-0.5), nbytes, "TB/s")


def prefill_cases() -> Iterator[tuple[str, Callable[[], Callable[[], cp.ndarray]], float, str]]:
    """(tag, a function that prepares a launch, FLOPs, unit) for each prefill case."""
    from bench_prefill import make_case

    rng = np.random.default_rng(1)
    for P, Hkv, D, dtype in PREFILL_CASES:
        q, kc, vc, batch = make_case(rng, 8, 2048, P, 32, Hkv, D, 16, dtype)
        flops = 4.0 * D * 32 * 8 * (2048 * P + 2048 * 2049 // 2)
        yield (f"prefix={P} Hkv={Hkv} D={D} {np.dtype(dtype).name}",
               lambda q=q, kc=kc, vc=vc, batch=batch, D=D: prefill_launchers.prepare_paged_prefill_attention(q, kc, vc, batch, D**-0.5), flops, "TFLOP/s")


def score_cases() -> Iterator[tuple[str, Callable[[], Callable[[], cp.ndarray]], float, str]]:
    """(tag, a function that prepares a launch, metadata bytes read, unit) for each page-score case."""
    from bench_selection import Case

    for B, L, Hq, Hkv, D, bs in SCORE_CASES:
        case = Case(B, L, Hq, Hkv, D, bs)
        yield (f"B={B} L={L} Hq={Hq} Hkv={Hkv} D={D} bs={bs}",
               lambda case=case: selection_launchers.prepare_page_scores(case.query, case.key_min, case.key_max, case.batch),
               case.metadata_bytes, "TB/s")


FAMILIES = {
    "decode": ("paged_attention.cu", launchers, decode_cases),
    "prefill": ("paged_prefill_attention.cu", prefill_launchers, prefill_cases),
    "scores": ("page_scores.cu", selection_launchers, score_cases),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=sorted(FAMILIES))
    old = ap.add_mutually_exclusive_group(required=True)
    old.add_argument("--old", metavar="REV", help="git revision of the old kernel source")
    old.add_argument("--old-source", metavar="FILE", help="the old kernel source as a file")
    ap.add_argument("--new-source", metavar="FILE",
                    help="the new kernel source as a file (default: the working tree's), to try a variant untracked")
    ap.add_argument("--rounds", type=positive, default=3, help="alternations of the two versions (best of each)")
    ap.add_argument("--reps", type=positive, default=20, help="timed launches per round (their median)")
    ap.add_argument("--only", default="", help="only the cases whose tag contains this text")
    opts = ap.parse_args()
    name, module, cases = FAMILIES[opts.family]
    sources = {
        "old": git_source(opts.old, name) if opts.old else file_source(opts.old_source),
        "new": file_source(opts.new_source, "new") if opts.new_source else build.load_source(name),
    }
    props = device_properties("ab_kernels")
    print(f"device: {props['name'].decode()}; {name}: old = {opts.old or opts.old_source}, "
          f"new = {opts.new_source or 'the working tree'}", flush=True)
    for tag, prepare, amount, unit in cases():
        if opts.only not in tag:
            continue
        launches, outputs = {}, {}
        for label, source in sources.items():
            with compiled_from(module, source, label):
                launches[label] = prepare()
            outputs[label] = launches[label]().copy()
        same = bool((outputs["old"].view(np.uint8) == outputs["new"].view(np.uint8)).all())
        best = {label: float("inf") for label in launches}
        for _ in range(opts.rounds):
            for label, launch in launches.items():
                best[label] = min(best[label], time_cupy(launch, opts.reps))
        rates = {label: amount / t / 1e12 for label, t in best.items()}
        print(f"{tag:<36s} old {best['old'] * 1e6:9.1f} us ({rates['old']:6.2f} {unit})   new {best['new'] * 1e6:9.1f} us "
              f"({rates['new']:6.2f} {unit})   old/new {best['old'] / best['new']:.3f}x   bits {'equal' if same else 'DIFFER'}",
              flush=True)
        del launches, outputs
        cp.get_default_memory_pool().free_all_blocks()
    return 0


if __name__ == "__main__":
    sys.exit(main())
