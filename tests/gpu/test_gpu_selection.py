"""Query-aware selection on the GPU against the NumPy twins, bit for bit (raw bits).

* CPU (no GPU needed): every selection kernel compiles with the backend's options; the
  launchers reject bad inputs on the host, before anything touches a device.
* GPU (marker ``gpu``): page metadata after random add/append/fork/free traces (fused and
  separate updates), reset/update/copy, page scores, page selection, the seed's heuristics.

Every output buffer is poisoned before the launch, so an element a kernel fails to write
cannot pass by accident. Run under compute-sanitizer with few examples::

    TS_GPU_MAX_EXAMPLES=5 compute-sanitizer --tool memcheck python -m pytest -m gpu tests/gpu/test_gpu_selection.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))  # the shared strategies

pytest.importorskip("cupy", reason="the launchers and the CPU compile-check need CuPy importable")

from gpu_helpers import GPU_SETTINGS, assert_bits_equal  # noqa: E402
from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from selection_strategies import ScoreCase, score_cases, selection_cases  # noqa: E402
from trace_driver import run_trace  # noqa: E402

from tinyserve_sim.control.batch import DecodeBatch  # noqa: E402
from tinyserve_sim.control.manager import BlockManager  # noqa: E402
from tinyserve_sim.data import (  # noqa: E402
    KVCache,
    adaptive_cache_management,
    cache_selection,
    copy_page_metadata,
    page_scores,
    query_analysis,
    reset_page_metadata,
    reshape_and_cache_with_metadata,
    select_page_indices,
    select_pages,
    update_page_metadata,
)
from tinyserve_sim.errors import CopyConflictError, KernelInputError  # noqa: E402
from tinyserve_sim.gpu import build  # noqa: E402
from tinyserve_sim.gpu import selection_launchers as sl  # noqa: E402


# ====================================================================== CPU only
def _representative_score_names() -> tuple[str, ...]:
    """One register tile per (dtype, lanes, vecs_per_lane) module, rotating through the tiles,
    plus the explicit instantiation; ``TS_COMPILE_ALL=1`` compiles all of them."""
    names = sl.all_page_scores_names()
    if os.environ.get("TS_COMPILE_ALL"):
        return names
    modules = [names[i : i + len(sl.SCORE_GROUP_TILES)] for i in range(0, len(names), len(sl.SCORE_GROUP_TILES))]
    chosen = [module[i % len(module)] for i, module in enumerate(modules)]
    return tuple(dict.fromkeys([*chosen, "page_scores_kernel<__half, 8, 16, 1, 4>"]))


@pytest.mark.parametrize(
    "name, expressions",
    [
        ("page_metadata.cu", sl.META_NAMES),
        ("page_scores.cu", _representative_score_names()),
        ("select_pages.cu", ()),
        ("seed_heuristics.cu", sl.SEED_NAMES),
    ],
)
def test_selection_kernels_compile(name, expressions):
    ptx = build.compile_check(name, tuple(expressions))
    extern_c = {"page_metadata.cu": 1, "page_scores.cu": 0, "select_pages.cu": 1, "seed_heuristics.cu": 2}[name]
    assert ptx.count(".entry") >= len(expressions) + extern_c


def test_every_head_dim_has_a_score_kernel():
    names = set(sl.all_page_scores_names())
    from tinyserve_sim.data.geometry import make_plan

    for dtype in (np.float16, np.float32):
        for head_dim in range(8, 257, 8):
            plan = make_plan(head_dim, dtype, 4)
            assert set(sl.page_scores_names(dtype, plan.lanes, plan.vecs_per_lane)) <= names


def test_launchers_check_on_the_host_before_launching():
    key_min = np.full((4, 2, 8), np.inf, np.float16)
    key_max = -key_min
    with pytest.raises(KernelInputError, match="outside"):
        sl.reset_page_metadata(np.array([4], np.int64), key_min, key_max)
    with pytest.raises(KernelInputError, match="twice"):
        sl.update_page_metadata(np.zeros((2, 2, 8), np.float16), np.array([3, 3], np.int64), key_min, key_max, 2)
    with pytest.raises(CopyConflictError):
        sl.copy_page_metadata(key_min, key_max, np.array([[0, 1], [1, 2]], np.int64))
    batch = DecodeBatch.from_tables([[0, 1]], [20], 16)
    with pytest.raises(KernelInputError, match="outside"):
        sl.page_scores(np.zeros((1, 4, 8), np.float16), key_min, key_max, DecodeBatch.from_tables([[0, 7]], [20], 16))
    with pytest.raises(KernelInputError, match="two pages"):
        sl.select_pages(np.zeros((1, 2, 2), np.float32), batch, 16)
    for bad in (0, -3, 2.5, True, "64", 1 << 40):
        with pytest.raises(KernelInputError, match="pages_per_block"):
            sl.prepare_page_scores(np.zeros((1, 4, 8), np.float16), key_min, key_max, batch, pages_per_block=bad)
    with pytest.raises(KernelInputError, match="cupy.ndarray"):  # valid, but host arrays
        sl.page_scores(np.zeros((1, 4, 8), np.float16), key_min, key_max, batch)
    with pytest.raises(KernelInputError, match="cupy.ndarray"):
        sl.prepare_page_scores(np.zeros((1, 4, 8), np.float16), key_min, key_max, batch, pages_per_block=64)
    with pytest.raises(KernelInputError, match="cupy.ndarray"):
        sl.select_pages(np.zeros((1, 2, 2), np.float32), batch, 32)
    with pytest.raises(KernelInputError, match="above"):
        sl.query_analysis(np.zeros((1, 8), np.float16), 0.9, 0.1)


class _CheckedKernel:
    """Stands in for a compiled kernel: checks a launch's arguments against the parameter list
    the .cu source declares (count; pointer or scalar; the scalar's C type), instead of launching."""

    SCALARS = (("long long", np.int64), ("unsigned", np.uint32), ("int", np.int32), ("float", np.float32))

    def __init__(self, file: str, name: str, launches: list) -> None:
        self.file, self.name, self.launches = file, name, launches
        self.max_dynamic_shared_size_bytes = 0

    def parameters(self) -> list[str]:
        import re

        src = re.sub(r"//[^\n]*", "", build.load_source(self.file))
        start = re.search(r"\b" + self.name.split("<")[0] + r"\(", src).end()  # the definition comes first
        return [p.strip() for p in src[start : src.index(")", start)].split(",") if p.strip()]

    def __call__(self, grid, block, args, shared_mem=0):
        params = self.parameters()
        assert len(params) == len(args), (self.name, params, len(args))
        for param, arg in zip(params, args):
            if "*" in param:
                assert isinstance(arg, np.ndarray), (self.name, param, type(arg))
            else:
                expected = next(t for c, t in self.SCALARS if c in param)
                assert type(arg) is expected, (self.name, param, type(arg))
        assert min(grid) >= 1 and 32 <= block[0] <= 1024 and shared_mem <= 227 * 1024
        assert shared_mem <= 48 * 1024 or self.max_dynamic_shared_size_bytes >= shared_mem
        self.launches.append(self.name)


def test_launch_arguments_match_the_kernels_parameters(monkeypatch):
    """Without a GPU: run every launcher with host arrays standing in for device arrays, and
    check each launch against the kernel's declared parameters (an argument too many, a
    float where an int is declared, would otherwise only show on the GPU)."""
    import types

    from tinyserve_sim.data import empty_page_metadata

    launches: list[str] = []
    fake_cupy = types.SimpleNamespace(ndarray=np.ndarray, asarray=np.asarray, empty=np.empty, full=np.full)
    monkeypatch.setattr(sl, "cp", fake_cupy)
    monkeypatch.setattr(
        sl, "get_module",
        lambda file, names=(): types.SimpleNamespace(get_function=lambda n: _CheckedKernel(file, n, launches)),
    )
    rng = np.random.default_rng(0)
    for dtype, D, G in ((np.float16, 128, 4), (np.float32, 256, 64), (np.float16, 40, 3)):
        key_min, key_max = empty_page_metadata(10, 2, D, dtype)
        kc = np.zeros((10, 16, 2, D), dtype)
        key = rng.standard_normal((5, 2, D)).astype(dtype)
        slots = np.array([0, 1, 17, -1, 40], np.int64)
        sl.reset_page_metadata(np.array([1, 2], np.int64), key_min, key_max)
        sl.update_page_metadata(key, slots, key_min, key_max, 16)
        sl.reshape_and_cache_with_metadata(key, key, kc, kc.copy(), slots, key_min, key_max)
        sl.copy_page_metadata(key_min, key_max, np.array([[1, 3]], np.int64))
        batch = DecodeBatch.from_tables([[0, 1, 2], [3, 4, 5]], [40, 20], 16)
        sl.page_scores(rng.standard_normal((2, 2 * G, D)).astype(dtype), key_min, key_max, batch)
        per_head = batch.with_head_tables(np.zeros((2, 2, 3), np.int32), np.full((2, 2), 33, np.int32))
        for b in (batch, per_head):
            sl.select_pages(np.zeros((2, 2, 3), np.float32), b, 32)
        sl.query_analysis(rng.standard_normal((3, 2 * G * D)).astype(dtype))
    sl.cache_selection(np.zeros(3, np.float32), np.zeros(3, np.int32), np.zeros(3, np.int32), 0.5)
    sl.adaptive_cache_management(np.zeros(3, np.float32), np.zeros(3, np.int32), np.zeros(3, np.int32), 0.5, 4)
    # reset, copy, update and fused x 2 dtypes, 3 score kernels, select, analysis x 2, selection, adaptive
    assert len(set(launches)) == 14


# ========================================================================== GPU
def _cp():
    import cupy as cp

    return cp


def _poisoned(shape, dtype, value):
    return _cp().full(shape, value, dtype=dtype)


@pytest.mark.gpu
@GPU_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    block_size=st.sampled_from([1, 3, 16, 32]),
    dtype=st.sampled_from([np.float16, np.float32]),
    head_dim=st.sampled_from([8, 64, 80, 128]),
)
def test_metadata_scores_and_selection_after_random_traces(seed, block_size, dtype, head_dim):
    rng = np.random.default_rng(seed)
    nb, heads = 24, 2
    manager = BlockManager(num_blocks=nb, block_size=block_size, policy="fifo")
    args = (nb, block_size, heads, head_dim, dtype)
    cpu = KVCache(*args, backend="numpy", fill=np.nan, page_metadata=True)
    fused = KVCache(*args, backend="cupy", fill=np.nan, page_metadata=True)
    separate = KVCache(*args, backend="cupy", fill=np.nan, page_metadata=True, metadata_update="separate")
    checked = []

    def compare(step, model):
        want = cpu.to_numpy() + cpu.metadata_to_numpy()
        for gpu in (fused, separate):
            for a, b in zip(gpu.to_numpy() + gpu.metadata_to_numpy(), want):
                assert_bits_equal(a, b)
        if manager.seq_ids():
            batch = DecodeBatch.from_manager(manager)
            q = (rng.standard_normal((batch.num_seqs, 4 * heads, head_dim)) * 3).astype(dtype)
            s_cpu = cpu.page_scores(q, batch)
            s_gpu = fused.page_scores(q, batch)
            assert_bits_equal(s_gpu.get(), s_cpu)
            budget = int(rng.integers(2, batch.max_blocks + 3)) * block_size
            b_cpu = select_pages(s_cpu, batch, budget)
            b_gpu = fused.backend.select_pages(s_gpu, batch, budget)
            assert_bits_equal(b_gpu.block_tables, b_cpu.block_tables)
            assert_bits_equal(b_gpu.seq_lens, b_cpu.seq_lens)
        checked.append(step.op)

    run_trace(manager, [cpu, fused, separate], rng, num_ops=25, on_step=compare)
    assert checked


@pytest.mark.gpu
@GPU_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float16, np.float32]),
    block_size=st.sampled_from([1, 5, 16, 64]),
    heads=st.integers(1, 4),
    head_dim=st.sampled_from([8, 40, 128, 256]),
)
def test_metadata_kernels_match_twins(seed, dtype, block_size, heads, head_dim):
    cp = _cp()
    rng = np.random.default_rng(seed)
    nb = int(rng.integers(1, 40))
    shape = (nb, block_size, heads, head_dim)
    T = int(rng.integers(0, min(nb * block_size, 300) + 1))
    slots = rng.permutation(nb * block_size)[:T].astype(np.int64)
    slots[rng.random(T) < 0.2] = -1
    key = (rng.standard_normal((T, heads, head_dim)) * rng.choice([1.0, 100.0])).astype(dtype)
    key[rng.random(key.shape) < 0.05] = 0.0
    key[rng.random(key.shape) < 0.05] = -0.0
    key[rng.random(key.shape) < 0.02] = np.nan
    value = rng.standard_normal((T, heads, head_dim)).astype(dtype)
    mn = rng.standard_normal((nb, heads, head_dim)).astype(dtype)
    mx = mn + np.abs(rng.standard_normal(mn.shape)).astype(dtype)
    kc, vc = np.full(shape, np.nan, dtype), np.full(shape, -0.0, dtype)
    # reset a few blocks, update, fused update, copy: on both sides
    blocks = rng.integers(0, nb, size=int(rng.integers(0, nb + 1))).astype(np.int64)
    h = [kc.copy(), vc.copy(), mn.copy(), mx.copy()]
    d = [cp.asarray(a) for a in h]
    reset_page_metadata(blocks, h[2], h[3])
    sl.reset_page_metadata(blocks, d[2], d[3])
    for a, b in zip(d, h):
        assert_bits_equal(a.get(), b)
    h2, d2 = [a.copy() for a in h], [a.copy() for a in d]
    update_page_metadata(key, slots, h[2], h[3], block_size)
    sl.update_page_metadata(cp.asarray(key), slots, d[2], d[3], block_size)
    reshape_and_cache_with_metadata(key, value, h2[0], h2[1], slots, h2[2], h2[3])
    sl.reshape_and_cache_with_metadata(cp.asarray(key), cp.asarray(value), d2[0], d2[1], slots, d2[2], d2[3])
    for a, b in zip(d + d2, h + h2):
        assert_bits_equal(a.get(), b)
    perm = rng.permutation(nb)
    pairs = int(rng.integers(0, nb // 2 + 1))
    mapping = np.stack([perm[:pairs], perm[pairs : 2 * pairs]], axis=1).astype(np.int64)
    copy_page_metadata(h[2], h[3], mapping)
    sl.copy_page_metadata(d[2], d[3], mapping)
    assert_bits_equal(d[2].get(), h[2])
    assert_bits_equal(d[3].get(), h[3])


@pytest.mark.gpu
@GPU_SETTINGS
@given(case=score_cases(max_pages=300))
def test_page_scores_match_twin(case: ScoreCase):
    cp = _cp()
    out = _poisoned((case.query.shape[0], case.key_min.shape[1], case.batch.max_blocks), np.float32, np.nan)
    gpu = sl.page_scores(cp.asarray(case.query), cp.asarray(case.key_min), cp.asarray(case.key_max), case.batch, out=out)
    assert_bits_equal(gpu.get(), page_scores(case.query, case.key_min, case.key_max, case.batch))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("group, head_dim", [(1, 128), (4, 128), (8, 64), (12, 96), (32, 128), (64, 256)])
def test_page_scores_every_group_tile(dtype, group, head_dim):
    """Register tiles 1, 4, 8 and the generic kernel (12, 32, 64 heads; 64 x 256 needs > 48 KiB)."""
    cp = _cp()
    rng = np.random.default_rng(group * head_dim)
    nb, bs, Hkv, S = 50, 16, 2, 3
    key_min = rng.standard_normal((nb, Hkv, head_dim)).astype(dtype)
    key_max = (key_min + np.abs(rng.standard_normal(key_min.shape))).astype(dtype)
    q = rng.standard_normal((S, Hkv * group, head_dim)).astype(dtype)
    batch = DecodeBatch.from_tables([rng.permutation(nb)[:40].tolist()] * S, [640, 17, 333], bs)
    gpu = sl.page_scores(cp.asarray(q), cp.asarray(key_min), cp.asarray(key_max), batch)
    assert_bits_equal(gpu.get(), page_scores(q, key_min, key_max, batch))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_page_scores_lanes_with_and_without_zero_queries(dtype, group):
    """The kernel takes a cheaper term on lanes whose query elements are all non-zero and
    the exact select on lanes with a zero: in one warp some lanes take each path. Empty
    pages (metadata still +inf / -inf) inside the rows check that the zero lanes' terms
    stay 0 (a product 0 * inf would be NaN). Bits equal the twin's."""
    cp = _cp()
    rng = np.random.default_rng(group)
    nb, bs, Hkv, S, D = 40, 16, 2, 3, 128
    key_min = rng.standard_normal((nb, Hkv, D)).astype(dtype)
    key_max = (key_min + np.abs(rng.standard_normal(key_min.shape))).astype(dtype)
    key_min[[3, 7]], key_max[[3, 7]] = np.inf, -np.inf  # two empty pages
    q = rng.standard_normal((S, Hkv * group, D)).astype(dtype)
    q[0, :, ::9] = 0.0  # sequence 0: zeros in some lanes of every head
    q[1, 0, 5] = -0.0  # sequence 1: one negative zero in one head
    table = [1, 3, 7] + [b for b in rng.permutation(nb).tolist() if b not in (1, 3, 7)][:27]
    batch = DecodeBatch.from_tables([table] * S, [480, 200, 17], bs)
    gpu = sl.page_scores(cp.asarray(q), cp.asarray(key_min), cp.asarray(key_max), batch)
    twin = page_scores(q, key_min, key_max, batch)
    assert_bits_equal(gpu.get(), twin)
    assert np.isneginf(twin[:, :, 1:3]).all() and not np.isnan(twin).any()  # the empty pages: -inf


@pytest.mark.gpu
@GPU_SETTINGS
@given(case=selection_cases())
@example(case=(np.zeros((1, 1, 5), np.float32), DecodeBatch.from_tables([[4, 3, 2, 1, 0]], [5], 1), 3))
def test_select_pages_matches_twin(case):
    scores, batch, budget = case
    cp = _cp()
    S, Hkv, W = scores.shape
    K = min(budget // batch.block_size, W)
    out = (_poisoned((S, Hkv, K), np.int32, -7), _poisoned((S, Hkv, K), np.int32, -7), _poisoned((S, Hkv), np.int32, -7))
    logical, tables, lens = sl.select_pages(cp.asarray(scores), batch, budget, out=out)
    twin = select_pages(scores, batch, budget)
    assert_bits_equal(logical.get(), select_page_indices(scores, batch, budget))
    assert_bits_equal(tables.get(), twin.block_tables)
    assert_bits_equal(lens.get(), twin.seq_lens)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "W, budget_pages", [(2048, 256), (2048, 3), (2049, 300), (4096, 2), (4097, 300), (5000, 4999), (13000, 1625)]
)
@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_select_pages_long_rows(W, budget_pages, kind):
    """Rows of thousands of pages; past 2,048 pages (512 threads x 4 keys in registers) the
    kernel works in tiles, reading the keys of the tiles after the first again from global memory."""
    cp = _cp()
    rng = np.random.default_rng(W + budget_pages)
    S, Hkv, bs = 2, 3, 16
    scores = rng.standard_normal((S, Hkv, W)) if kind == "continuous" else rng.integers(0, 4, (S, Hkv, W))
    scores = scores.astype(np.float32)
    lens = rng.integers(1, W * bs + 1, size=(S, Hkv)).astype(np.int32)
    lens[0, 0] = W * bs
    tables = rng.integers(0, 10**6, size=(S, Hkv, W)).astype(np.int32)
    batch = DecodeBatch(bs, tables, lens, np.zeros(0, np.int64))
    logical, t, n = sl.select_pages(cp.asarray(scores), batch, budget_pages * bs)
    twin = select_pages(scores, batch, budget_pages * bs)
    assert_bits_equal(logical.get(), select_page_indices(scores, batch, budget_pages * bs))
    assert_bits_equal(t.get(), twin.block_tables)
    assert_bits_equal(n.get(), twin.seq_lens)


@pytest.mark.gpu
@GPU_SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 300),
    hidden=st.sampled_from([1, 8, 127, 128, 4096, 5000]),
    dtype=st.sampled_from([np.float16, np.float32]),
    threshold=st.floats(-1, 3, width=32),
)
def test_seed_heuristics_match_twins(seed, n, hidden, dtype, threshold):
    cp = _cp()
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((n, hidden)) * rng.choice([0.05, 0.5, 1.0, 20.0])).astype(dtype)
    c_gpu, r_gpu = sl.query_analysis(cp.asarray(q), 0.2, 0.5)
    c, r = query_analysis(q, 0.2, 0.5)
    assert_bits_equal(c_gpu.get(), c)
    assert_bits_equal(r_gpu.get(), r)
    history = rng.integers(-100, 10**6, n).astype(np.int32)
    s_gpu, g_gpu = sl.cache_selection(cp.asarray(c), cp.asarray(r), cp.asarray(history), threshold)
    s, g = cache_selection(c, r, history, threshold)
    assert_bits_equal(s_gpu.get(), s)
    assert_bits_equal(g_gpu.get(), g)
    hit = rng.random(n).astype(np.float32)
    freq = rng.integers(0, 100, n).astype(np.int32)
    alloc = rng.integers(0, 5, n).astype(np.int32)
    new_gpu = sl.adaptive_cache_management(cp.asarray(hit), cp.asarray(freq), cp.asarray(alloc), threshold, 40)
    assert_bits_equal(new_gpu.get(), adaptive_cache_management(hit, freq, alloc, threshold, 40))
