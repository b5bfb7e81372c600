"""How one tensor-core instruction adds its products: measure it, then fit a model.

``mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32`` computes, for each of its 16 x 8
outputs, ``d = a[0]*b[0] + ... + a[15]*b[15] + c`` with float16 ``a``, ``b`` and float32
``c``, ``d``; the PTX ISA says neither in which order nor with which roundings. Session 15
ran this script to find out (``docs/dev/kernel-notes.md``, "Session 15"); the model it
found is ``tinyserve_sim/data/tensor_core.py``.

    python benchmarks/experiments/mma_probe.py collect OUT_DIR [--tiles N]   # on the GPU
    python benchmarks/experiments/mma_probe.py fit OUT_DIR [--limit N]       # anywhere

``collect`` draws the seven kinds of inputs of ``tests/data/tensor_core_strategies.py``,
runs the instruction on them (``tinyserve_sim.gpu.tensor_core``) and saves inputs and
outputs, one ``.npz`` per kind. ``fit`` evaluates a family of models on them and prints,
for each, how many outputs (with finite inputs) differ from the GPU's.

The family, after Fasi, Higham, Mikaitis and Pranesh (PeerJ Comput. Sci. 7:e330, 2021)
and Khattak and Mikaitis (arXiv:2512.07004, 2025): exact products; every term given a
*place* (``fields``: the exponent fields, as in the model; ``value``: floor(log2 |term|));
the terms cut to multiples of ``2**(E - width)``, E the largest place, toward zero
(``tz``) or toward minus infinity (``floor``); an exact sum; one rounding to float32 toward
zero (``rz``) or to nearest (``rn``). With ``block`` < 16 the products go in blocks, each
block's result rounded to float32 and fed to the next as its ``c``.

It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "data"))
from tensor_core_strategies import KINDS, draw_tiles  # noqa: E402


def _split_f16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float16 -> (sign bit, integer significand m, field exponent e): |x| = m * 2**(e - 10)."""
    bits = x.view(np.uint16).astype(np.int64)
    sign, field, fraction = bits >> 15, (bits >> 10) & 0x1F, bits & 0x3FF
    return sign, np.where(field == 0, fraction, fraction | 0x400), np.where(field == 0, 1, field) - 15


def _split_f32(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 -> (sign bit, integer significand m, field exponent e): |x| = m * 2**(e - 23)."""
    bits = x.view(np.uint32).astype(np.int64)
    sign, field, fraction = bits >> 31, (bits >> 23) & 0xFF, bits & 0x7FFFFF
    return sign, np.where(field == 0, fraction, fraction | 0x800000), np.where(field == 0, 1, field) - 127


def _bitlen(m: np.ndarray) -> np.ndarray:
    return np.frexp(m.astype(np.float64))[1].astype(np.int64)  # exact below 2**53


def _family_sum(sign, significand, place, lowest, width, cut, rounding):
    """One member of the family on the terms along the last axis (see the docstring)."""
    nonzero = significand != 0
    unit = np.where(nonzero, place, -(10**6)).max(axis=-1) - width
    shift = lowest - unit[:, None]
    right = np.clip(-shift, 0, 62)
    kept = np.where(shift >= 0, significand << np.clip(shift, 0, 62), significand >> right)
    if cut == "floor":  # a negative term that lost bits moves away from zero
        lost = (shift < 0) & ((kept << right) != significand)
        kept = np.where((sign == 1) & lost, kept + 1, kept)
    total = np.where(sign == 1, -kept, kept).sum(axis=-1)
    exact = np.ldexp(total.astype(np.float64), np.where(nonzero.any(axis=-1), unit, 0))
    nearest = exact.astype(np.float32)
    if rounding == "rn":
        return nearest
    too_far = np.abs(nearest.astype(np.float64)) > np.abs(exact)
    return np.where(too_far, np.nextafter(nearest, np.float32(0)), nearest).astype(np.float32)


def family(a, b, c, width: int, places: str, block: int, cut: str, rounding: str) -> np.ndarray:
    """a, b [N, 16] float16, c [N] float32 (finite) -> d [N] float32, by one member."""
    sa, ma, ea = _split_f16(a)
    sb, mb, eb = _split_f16(b)
    product = ma * mb
    acc = c
    for k0 in range(0, 16, block):
        sc, mc, ec = _split_f32(acc)
        ks = slice(k0, k0 + block)
        sign = np.concatenate([sc[:, None], (sa ^ sb)[:, ks]], axis=1)
        significand = np.concatenate([mc[:, None], product[:, ks]], axis=1)
        lowest = np.concatenate([ec[:, None] - 23, (ea + eb - 20)[:, ks]], axis=1)
        if places == "fields":
            place = np.concatenate([ec[:, None], (ea + eb)[:, ks]], axis=1)
        else:
            place = lowest + _bitlen(significand) - 1
        acc = _family_sum(sign, significand, place, lowest, width, cut, rounding)
    return acc


def collect(out: Path, tiles: int) -> None:
    import cupy as cp
    from tinyserve_sim.gpu.tensor_core import mma_m16n8k16

    out.mkdir(parents=True, exist_ok=True)
    print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}", flush=True)
    for i, kind in enumerate(KINDS):
        a, b_t, c = draw_tiles(kind, tiles, np.random.default_rng(1000 + i))
        d = mma_m16n8k16(cp.asarray(a), cp.asarray(b_t), cp.asarray(c)).get()
        np.savez_compressed(out / f"mma_{kind}.npz", A=a, Bt=b_t, C=c, D=d)
        print(f"{kind:10s} {tiles} tiles collected", flush=True)


def fit(out: Path, limit: int) -> None:
    data = {}
    for kind in KINDS:
        z = np.load(out / f"mma_{kind}.npz")
        t = z["A"].shape[0]
        a = np.broadcast_to(z["A"][:, :, None, :], (t, 16, 8, 16)).reshape(-1, 16)
        b = np.broadcast_to(z["Bt"][:, None, :, :], (t, 16, 8, 16)).reshape(-1, 16)
        c, d = z["C"].reshape(-1), z["D"].reshape(-1)
        finite = (np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1) & np.isfinite(c))[:limit]
        data[kind] = (a[:limit][finite], b[:limit][finite], c[:limit][finite], d[:limit][finite])
    print(f"outputs per kind: {[len(v[3]) for v in data.values()]}")
    print(f"{'width places block cut rounding':34s} " + " ".join(f"{k:>9s}" for k in data))
    ranked = []
    grid = itertools.product((23, 24, 25, 26, 27, 30, 40), ("fields", "value"), (16, 8, 4), ("tz", "floor"), ("rz", "rn"))
    for width, places, block, cut, rounding in grid:
        with np.errstate(over="ignore", invalid="ignore"):
            bad = [int((family(a, b, c, width, places, block, cut, rounding).view(np.uint32) != d.view(np.uint32)).sum())
                   for a, b, c, d in data.values()]
        name = f"{width} {places} {block} {cut} {rounding}"
        ranked.append((sum(bad), name))
        print(f"{name:34s} " + " ".join(f"{n:9d}" for n in bad), flush=True)
    ranked.sort()
    print("fewest mismatches:", ranked[:4])


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=("collect", "fit"))
    p.add_argument("out", type=Path)
    p.add_argument("--tiles", type=_positive, default=1500)
    p.add_argument("--limit", type=_positive, default=192_000, help="outputs per kind to fit on")
    args = p.parse_args(argv)
    if args.command == "fit":
        missing = [k for k in KINDS if not (args.out / f"mma_{k}.npz").is_file()]
        if missing:
            p.exit(2, f"mma_probe: {args.out} lacks mma_{missing[0]}.npz (run collect there first, on the GPU)\n")
        fit(args.out, args.limit)
    else:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            p.exit(2, f"mma_probe: cannot write to {args.out}: {exc.strerror}\n")
        collect(args.out, args.tiles)


if __name__ == "__main__":
    main(sys.argv[1:])
