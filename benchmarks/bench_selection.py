"""Query-aware (sparse) against dense paged attention on the GPU: one decode step, end to end.

Run on a GPU machine (it never asserts on time; it prints figures)::

    python benchmarks/bench_selection.py            # issue 17's cases
    python benchmarks/bench_selection.py --quick    # fewer repeats

The case (issue 17): 32,768 tokens of context per sequence, batch 8, 32 query heads,
8 KV heads, head dim 128, float16; budgets of 1/4, 1/8 and 1/16 of the context; pages
of 16 tokens (Quest's size) and of 64.

One decode step, both ways, its kernels back to back in one timed window, captured as a
CUDA graph (as a server that decodes with CUDA graphs runs it; vLLM does) and, for
comparison, launched one by one from Python:

* **dense**: ``reshape_and_cache`` of the 8 new tokens, then ``paged_attention`` over
  all 32,768 tokens of every sequence;
* **sparse**: the fused ``reshape_and_cache_with_metadata`` (the write and the page
  metadata update), then the library's sparse step (``gpu/sparse_step.py``):
  ``page_scores`` (reads every page's min/max), ``select_pages``, which writes its
  compacted tables where the attention reads them, and ``paged_attention`` over each
  (sequence, KV head)'s selected pages only, its partition chosen by ``auto``.

Beside the measured speed-up (dense time / sparse time) it prints two ceilings:

* ``1 / budget``: attention reads a ``budget`` share of the keys and values;
* the **byte ceiling** ``dense bytes / (selected bytes + metadata bytes)``: scoring must
  read a min and a max row per page, ``1 / block_size`` of the K and V bytes
  (1/16 for 16-token pages), so at a 1/8 budget no implementation can beat
  ``1 / (1/8 + 1/16) = 5.3x`` (issue 17's target: 80% of it, end to end).

and a **read floor**: the same step if scoring and attention took only the time of reading
their bytes, measured by two kernels that read (and XOR) exactly those bytes in the same
grid and order and do nothing else. At a 1/8 budget the sparse step reads about an eighth
of what the dense step reads, and a GPU serves 134 MB more slowly per byte than 1 GB (the
ramp and the tail of a 40-microsecond kernel weigh more), so the byte ceiling, which
assumes the dense step's bandwidth for both, is further than it looks; the floor says how
far. A second floor, **best**, replaces those two reads by contiguous reads of the same
sizes, the fastest pattern there is: no step whose kernels read one after the other can
beat it. A third bound, **one kernel**, is the write followed by one contiguous read of the
metadata and the selected K and V together, with the selection free: no step that writes,
then reads those bytes can beat it on this GPU, however its kernels are fused. Then scoring +
selection as a share of the sparse step, the time of each phase alone, and the fused against
the separate metadata update (decode and prefill).
Quest (Tang et al., ICML 2024, arXiv:2406.10774) reports up to 7.03x self-attention
speed-up and 2.23x lower end-to-end latency; its kernel benchmark uses 16-token pages
at 32,768 tokens (``scripts/bench_kernels.sh`` of github.com/mit-han-lab/Quest).

Each repetition first overwrites a buffer twice the size of L2, just before the timed
window, so no case runs from a warm cache (and the GPU is still busy with it while Python
enqueues the timed launches, so their launch latency is not counted as idle time);
``--flush read`` reads it instead (``flush_l2`` says what that changes).

The sparse attention is ``paged_attention`` itself, on the selection's compacted
per-(sequence, KV head) tables (a ``DecodeBatch`` with a head axis): no second kernel.
The phase times beside it (attention alone, at the fastest of three partitions) read a
copy of the selection's tables, which is the same work.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import cupy as cp
import numpy as np
from tinyserve_sim.gpu import launchers, sparse_step
from tinyserve_sim.gpu import selection_launchers as sl

from tinyserve_sim.control.batch import DecodeBatch
from tinyserve_sim.data.geometry import partition_count

_FLUSH: cp.ndarray | None = None
_SINK: cp.ndarray | None = None
#: How ``flush_l2`` evicts the L2 before each timed repetition: ``read`` or ``write`` (``--flush``).
FLUSH_MODE = "write"


def flush_l2() -> None:
    """Evict the L2 so that the next launch reads from DRAM, by the mode of ``--flush``.

    ``write`` (the default, as in every session's figures) overwrites a buffer twice the size
    of L2: the L2 is left full of dirty lines, which the timed kernels write back to DRAM, and
    the GPU stays busy long enough for Python to enqueue the timed launches. ``read`` reads
    that buffer instead, leaving clean lines, as before a real decode step's attention (its
    predecessors mostly read weights). Measured on an H200 (session 17,
    ``h200_s17_bench_selection_flush_{read,write}.log``): ``read`` makes the dense and the
    sparse steps 3-4% faster as CUDA graphs and leaves their ratio within 1%, but its flush
    ends too soon to hide Python's launch latency, which then inflates every time taken
    without a graph (the floors among them).
    """
    global _FLUSH
    if _FLUSH is None:
        l2 = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["l2CacheSize"]
        _FLUSH = cp.ones(2 * max(l2, 1 << 20) // 4, dtype=cp.float32)
    if FLUSH_MODE == "write":
        _FLUSH.fill(1.0)
    else:
        *_, read_contiguous = _read_floor_kernels()
        sms = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["multiProcessorCount"]
        read_contiguous((sms * 8,), (512,), (_FLUSH, np.int64(_FLUSH.nbytes // 16), _sink()))


def _sink() -> cp.ndarray:
    """The one word that the read kernels' never-taken store targets (it keeps their reads
    from being optimised away): made once, shared by the flush and the floors."""
    global _SINK
    if _SINK is None:
        _SINK = cp.zeros(1, cp.uint32)
    return _SINK


def time_ms(fn: Callable[[], object], reps: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` (CUDA events; L2 flushed before each repetition)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        flush_l2()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def as_graph(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn``'s launches captured once into a CUDA graph, replayed by the returned function:
    the step as a server that decodes with CUDA graphs (vLLM does) runs it, without the
    Python launch overhead between kernels. Call it on a non-default stream."""
    stream = cp.cuda.get_current_stream()
    fn()  # every module compiled and loaded before the capture
    stream.synchronize()
    stream.begin_capture()
    fn()
    graph = stream.end_capture()
    return lambda: graph.launch(stream)


class Case:
    """Caches, metadata, tables, the new tokens and the query of one block size."""

    def __init__(self, S: int, L: int, Hq: int, Hkv: int, D: int, bs: int, seed: int = 0) -> None:
        self.S, self.L, self.Hq, self.Hkv, self.D, self.bs = S, L, Hq, Hkv, D, bs
        self.pages = L // bs
        nb = S * self.pages
        rng = np.random.default_rng(seed)
        shape = (nb, bs, Hkv, D)
        self.key_cache = cp.random.standard_normal(shape, dtype=cp.float32).astype(cp.float16)
        self.value_cache = cp.random.standard_normal(shape, dtype=cp.float32).astype(cp.float16)
        # min/max over each block: exact in float16 (the kernels keep it so on every write)
        self.key_min = self.key_cache.min(axis=1)
        self.key_max = self.key_cache.max(axis=1)
        tables = rng.permutation(nb).reshape(S, self.pages).astype(np.int32)
        self.batch = DecodeBatch.from_tables(tables.tolist(), [L] * S, bs)
        self.query = cp.random.standard_normal((S, Hq, D), dtype=cp.float32).astype(cp.float16)
        self.new_k = cp.random.standard_normal((S, Hkv, D), dtype=cp.float32).astype(cp.float16)
        self.new_v = cp.random.standard_normal((S, Hkv, D), dtype=cp.float32).astype(cp.float16)
        last = tables[:, -1].astype(np.int64)  # each sequence's newest token: the last slot
        self.slots = last * bs + bs - 1
        self.scale = D**-0.5

    @property
    def dense_bytes(self) -> float:
        return 2.0 * self.S * self.L * self.Hkv * self.D * 2

    @property
    def metadata_bytes(self) -> float:
        return 2.0 * self.S * self.pages * self.Hkv * self.D * 2


# ---------------------------------------------------------------- the read floor
# Two kernels that only read (and XOR together) the bytes a kernel of the step reads, in the
# same grid and order, with no arithmetic: how fast this GPU serves those reads at this size.
# Not part of the backend (nothing here is compared with a twin); compiled by CuPy itself.
READ_FLOOR_SOURCE = r"""
extern "C" __global__ void read_kv(const uint4* __restrict__ kc, const uint4* __restrict__ vc,
    const int* __restrict__ tables, const int* __restrict__ lens, int seq_stride, int head_stride,
    int max_blocks, int num_kv_heads, int block_size, int row_vecs, int part, unsigned* sink)
{   // paged_attention's reads: grid (KV head, sequence, partition); 128 threads = rows of
    // row_vecs lanes, each lane one 16-byte vector of a token's K and V rows
    const int h = blockIdx.x, s = blockIdx.y;
    const int rows = blockDim.x / row_vecs, row = threadIdx.x / row_vecs, lane = threadIdx.x % row_vecs;
    const long long r = (long long)s * seq_stride + (long long)h * head_stride;
    const int a = blockIdx.z * part, len = lens[r];
    if (a >= len) return;
    const int b = min(a + part, len);
    const int* table = tables + r * max_blocks;
    unsigned acc = 0;
#pragma unroll 8
    for (int t = a + row; t < b; t += rows) {
        const long long at = (((long long)table[t / block_size] * block_size + t % block_size) * num_kv_heads + h) * row_vecs + lane;
        const uint4 k = kc[at], v = vc[at];
        acc ^= k.x ^ k.y ^ k.z ^ k.w ^ v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) sink[0] = acc;  // keeps the reads; (almost) never true
}
extern "C" __global__ void read_metadata(const uint4* __restrict__ kmin, const uint4* __restrict__ kmax,
    const int* __restrict__ tables, int width, int num_kv_heads, int row_vecs, int pages_per_block, unsigned* sink)
{   // page_scores' reads: grid (run of pages, KV head, sequence); rows of row_vecs lanes, a page per row
    const int h = blockIdx.y, s = blockIdx.z;
    const int rows = blockDim.x / row_vecs, row = threadIdx.x / row_vecs, lane = threadIdx.x % row_vecs;
    const int first = blockIdx.x * pages_per_block, last = min(first + pages_per_block, width);
    unsigned acc = 0;
#pragma unroll 4
    for (int p = first + row; p < last; p += rows) {
        const long long at = ((long long)tables[(long long)s * width + p] * num_kv_heads + h) * row_vecs + lane;
        const uint4 lo = kmin[at], hi = kmax[at];
        acc ^= lo.x ^ lo.y ^ lo.z ^ lo.w ^ hi.x ^ hi.y ^ hi.z ^ hi.w;
    }
    if (acc == 0x9e3779b9u) sink[0] = acc;
}
extern "C" __global__ void read_contiguous(const uint4* __restrict__ a, long long n, unsigned* sink)
{   // n 16-byte vectors from one contiguous buffer, grid-stride, four loads in flight per thread:
    // the fastest pattern there is for the same number of bytes
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned acc = 0;
    for (; i + 3 * stride < n; i += 4 * stride) {
        const uint4 x0 = a[i], x1 = a[i + stride], x2 = a[i + 2 * stride], x3 = a[i + 3 * stride];
        acc ^= x0.x ^ x0.w ^ x1.y ^ x1.x ^ x2.z ^ x2.y ^ x3.w ^ x3.z;
    }
    for (; i < n; i += stride) {
        const uint4 x = a[i];
        acc ^= x.x ^ x.w;
    }
    if (acc == 0x9e3779b9u) sink[0] = acc;
}
"""
_READ_FLOOR: cp.RawModule | None = None


def _read_floor_kernels() -> tuple:
    global _READ_FLOOR
    if _READ_FLOOR is None:
        _READ_FLOOR = cp.RawModule(code=READ_FLOOR_SOURCE)
    return tuple(_READ_FLOOR.get_function(n) for n in ("read_kv", "read_metadata", "read_contiguous"))


def read_contiguous_floor(buffer: cp.ndarray, nbytes: float, reps: int) -> float:
    """Fastest read of the first ``nbytes`` of ``buffer`` (contiguous) over a few grids, in
    ms: what the same number of bytes costs in the best pattern, whatever kernel reads them."""
    *_, read_contiguous = _read_floor_kernels()
    assert buffer.nbytes >= nbytes
    sink = _sink()
    sms = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["multiProcessorCount"]
    n = np.int64(nbytes // 16)
    best = float("inf")
    for blocks_per_sm, threads in ((8, 512), (16, 256), (32, 256)):
        grid = (sms * blocks_per_sm,)
        best = min(best, time_ms(lambda grid=grid, threads=threads: read_contiguous(grid, (threads,), (buffer, n, sink)), reps))
    return best


def read_kv_floor(case: Case, tables: cp.ndarray, lens: cp.ndarray, per_head: bool, longest: int, reps: int) -> float:
    """Fastest read of the K and V rows of ``tables`` / ``lens`` over split-K partitions of
    256, 512 and 1,024 tokens (as ``fastest_sparse_attention`` chooses ours), in ms."""
    read_kv, _, _ = _read_floor_kernels()
    sink = _sink()
    row_vecs = case.D * 2 // 16
    seq_stride, head_stride = (case.Hkv, 1) if per_head else (1, 0)
    best = float("inf")
    for part in (256, 512, 1024):
        args = (case.key_cache, case.value_cache, tables, lens, np.int32(seq_stride), np.int32(head_stride),
                np.int32(tables.shape[-1]), np.int32(case.Hkv), np.int32(case.bs), np.int32(row_vecs), np.int32(part), sink)
        grid = (case.Hkv, case.S, partition_count(longest, part))
        best = min(best, time_ms(lambda grid=grid, args=args: read_kv(grid, (128,), args), reps))
    return best


def read_metadata_floor(case: Case, reps: int) -> float:
    """Fastest read of every page's min and max rows over runs of 64, 128 and 256 pages, in ms."""
    _, read_metadata, _ = _read_floor_kernels()
    sink = _sink()
    tables = cp.asarray(case.batch.block_tables)
    best = float("inf")
    for ppb in (64, 128, 256):
        args = (case.key_min, case.key_max, tables, np.int32(case.pages), np.int32(case.Hkv),
                np.int32(case.D * 2 // 16), np.int32(ppb), sink)
        grid = (-(-case.pages // ppb), case.Hkv, case.S)
        best = min(best, time_ms(lambda grid=grid, args=args: read_metadata(grid, (128,), args), reps))
    return best


def prepare_sparse_attention(
    case: Case, tables: np.ndarray, lens: np.ndarray, partition_size: int
) -> tuple[Callable, str]:
    """Paged attention over the selection's per-(sequence, KV head) tables."""
    selected = case.batch.with_head_tables(np.ascontiguousarray(tables), np.ascontiguousarray(lens))
    run = launchers.prepare_paged_attention(
        case.query, case.key_cache, case.value_cache, selected, case.scale, partition_size=partition_size,
    )
    return run, "per-head tables"


def fastest_sparse_attention(case: Case, tables: np.ndarray, lens: np.ndarray, reps: int) -> tuple[Callable, str]:
    """The split-K partition size that suits the selected (shorter) rows best: a row of a
    1/16 budget holds 2,048 tokens, so 1,024-token partitions would leave SMs idle."""
    timed = []
    for partition_size in (256, 512, 1024):
        run, kind = prepare_sparse_attention(case, tables, lens, partition_size)
        timed.append((time_ms(run, max(3, reps // 5)), partition_size, run, kind))
    _, partition_size, run, kind = min(timed, key=lambda x: x[0])
    return run, f"{kind}, partitions of {partition_size}"


def bench_block_size(case: Case, budgets: list[int], reps: int) -> list[tuple]:
    dense_write = launchers.prepare_reshape_and_cache(case.new_k, case.new_v, case.key_cache, case.value_cache, case.slots)
    dense_attn = launchers.prepare_paged_attention(case.query, case.key_cache, case.value_cache, case.batch, case.scale)

    def dense_step() -> None:
        dense_write()
        dense_attn()

    t_dense = time_ms(dense_step, reps)
    t_dense_graph = time_ms(as_graph(dense_step), reps)
    t_dense_attn = time_ms(dense_attn, reps)
    fused = sl.prepare_reshape_and_cache_with_metadata(
        case.new_k, case.new_v, case.key_cache, case.value_cache, case.slots, case.key_min, case.key_max
    )
    scores = cp.empty((case.S, case.Hkv, case.pages), dtype=cp.float32)
    score = sl.prepare_page_scores(case.query, case.key_min, case.key_max, case.batch, out=scores)
    score()
    t_write, t_score = time_ms(fused, reps), time_ms(score, reps)
    t_dense_read = read_kv_floor(case, cp.asarray(case.batch.block_tables), cp.asarray(case.batch.seq_lens), False, case.L, reps)
    t_meta_read = read_metadata_floor(case, reps)
    t_meta_contiguous = read_contiguous_floor(case.key_cache, case.metadata_bytes, reps)
    print(
        f"\nblock size {case.bs}: {case.pages} pages per sequence; dense step {t_dense_graph:.3f} ms as a "
        f"CUDA graph ({t_dense:.3f} ms launched from Python) "
        f"(attention {t_dense_attn:.3f} ms, {case.dense_bytes / t_dense_attn / 1e6:.0f} GB/s); "
        f"fused write + metadata {t_write * 1e3:.1f} us; page_scores {t_score * 1e3:.1f} us "
        f"({case.metadata_bytes / t_score / 1e6:.0f} GB/s of metadata)\n"
        f"  read floor (kernels that only read the same bytes in the same grid): dense K and V "
        f"{t_dense_read * 1e3:.1f} us ({case.dense_bytes / t_dense_read / 1e6:.0f} GB/s), metadata "
        f"{t_meta_read * 1e3:.1f} us ({case.metadata_bytes / t_meta_read / 1e6:.0f} GB/s)"
    )
    rows = []
    for div in budgets:
        budget_tokens = case.L // div
        K = budget_tokens // case.bs
        select = sl.prepare_select_pages(scores, case.batch, budget_tokens)
        _, tables_d, lens_d = select()
        attn, kind = fastest_sparse_attention(case, tables_d.get(), lens_d.get(), reps)
        library = sparse_step.prepare_sparse_decode_step(
            case.query, case.key_cache, case.value_cache, case.key_min, case.key_max, case.batch, budget_tokens, case.scale
        )

        def full_step(library: Callable = library) -> None:
            fused()
            library()

        t_sparse = time_ms(full_step, reps)
        t_sparse_graph = time_ms(as_graph(full_step), reps)
        kind += f"; the step's attention: {library.variant}, partitions of {library.partition_size}"
        # Same bits as the attention on a copy of the tables at the same partition?
        same = launchers.prepare_paged_attention(
            case.query, case.key_cache, case.value_cache, case.batch.with_head_tables(tables_d.get(), lens_d.get()),
            case.scale, library.variant, library.partition_size,
        )()
        kind += ", bits equal to paged_attention on the selected batch" if bool(
            (same.view(cp.uint16) == library.out.view(cp.uint16)).all()) else ", BITS DIFFER from paged_attention on the selected batch"
        t_select, t_attn = time_ms(select, reps), time_ms(attn, reps)
        speedup, speedup_graph = t_dense / t_sparse, t_dense_graph / t_sparse_graph
        byte_ceiling = case.dense_bytes / (case.dense_bytes * K / case.pages + case.metadata_bytes)
        share = (t_score + t_select) / t_sparse_graph
        # The read floor of this step: write, select, and scoring and attention that only read.
        selected_bytes = float(cp.sum(lens_d.astype(cp.int64)).get()) * 2 * case.D * 2
        t_kv_read = read_kv_floor(case, tables_d, lens_d, True, budget_tokens, reps)
        t_floor = t_write + t_meta_read + t_select + t_kv_read
        # The same, had both reads been contiguous reads of the same sizes (the best pattern).
        t_kv_contiguous = read_contiguous_floor(case.key_cache, selected_bytes, reps)
        t_best = t_write + t_meta_contiguous + t_select + t_kv_contiguous
        # One kernel that reads the metadata and the selected K and V together, contiguously,
        # after the write, with the selection free: what no implementation can beat here.
        t_one_read = read_contiguous_floor(case.key_cache, case.metadata_bytes + selected_bytes, reps)
        t_one = t_write + t_one_read
        rows.append((case.bs, div, K, t_dense_graph, t_sparse_graph, speedup_graph, speedup, div, byte_ceiling, share,
                     t_dense_graph / t_floor, t_dense_graph / t_best, t_dense_graph / t_one))
        print(
            f"  budget 1/{div:<2d} ({K:4d} pages): sparse step {t_sparse_graph:.3f} ms as a CUDA graph = "
            f"{speedup_graph:5.2f}x ({t_sparse:.3f} ms = {speedup:5.2f}x launched from Python)   "
            f"ceilings 1/budget {div:.1f}x, bytes {byte_ceiling:.2f}x ({speedup_graph / byte_ceiling:.0%} of it)   "
            f"score+select {share:.0%} of the step (select {t_select * 1e3:.1f} us, attention "
            f"{t_attn * 1e3:.1f} us; {kind})\n"
            f"    read floor: the selected K and V ({selected_bytes / 1e6:.0f} MB) read alone in {t_kv_read * 1e3:.1f} us "
            f"({selected_bytes / t_kv_read / 1e6:.0f} GB/s); write + metadata read + select + that read = "
            f"{t_floor * 1e3:.1f} us: at most {t_dense_graph / t_floor:.2f}x "
            f"({t_dense_graph / t_floor / byte_ceiling:.0%} of the byte ceiling); ours is {t_floor / t_sparse_graph:.0%} of the floor's speed\n"
            f"    contiguous reads of the same sizes (metadata {t_meta_contiguous * 1e3:.1f} us, K and V "
            f"{t_kv_contiguous * 1e3:.1f} us): at most {t_dense_graph / t_best:.2f}x "
            f"({t_dense_graph / t_best / byte_ceiling:.0%} of the byte ceiling) for any step whose kernels read one after the other\n"
            f"    one kernel reading the metadata and the selected K and V together ({(case.metadata_bytes + selected_bytes) / 1e6:.0f} MB, "
            f"contiguous, {t_one_read * 1e3:.1f} us), after the write, selection free: at most {t_dense_graph / t_one:.2f}x "
            f"({t_dense_graph / t_one / byte_ceiling:.0%} of the byte ceiling) for any step that writes, then reads those bytes, on this GPU",
            flush=True,
        )
    return rows


def bench_metadata_update(reps: int) -> None:
    """Fused write + metadata against the write followed by the update kernel."""
    print("\nmetadata update: fused into reshape_and_cache, or a second kernel")
    Hkv, D, bs = 8, 128, 16
    for label, T in (("decode, 8 tokens", 8), ("prefill, 8 x 2048 tokens", 8 * 2048)):
        nb = max(64, 2 * T // bs)
        kc = cp.zeros((nb, bs, Hkv, D), cp.float16)
        vc = cp.zeros_like(kc)
        kmin = cp.full((nb, Hkv, D), np.inf, cp.float16)
        kmax = cp.full((nb, Hkv, D), -np.inf, cp.float16)
        k = cp.random.standard_normal((T, Hkv, D), dtype=cp.float32).astype(cp.float16)
        v = cp.random.standard_normal((T, Hkv, D), dtype=cp.float32).astype(cp.float16)
        slots = np.random.default_rng(T).permutation(nb * bs)[:T].astype(np.int64)
        if T > 8:
            slots = np.arange(T, dtype=np.int64)  # a prefill fills whole blocks
        write = launchers.prepare_reshape_and_cache(k, v, kc, vc, slots)
        update = sl.prepare_update_page_metadata(k, slots, kmin, kmax, bs)
        fused = sl.prepare_reshape_and_cache_with_metadata(k, v, kc, vc, slots, kmin, kmax)

        def separate(write: Callable = write, update: Callable = update) -> None:
            write()
            update()

        t_write, t_sep, t_fused = time_ms(write, reps), time_ms(separate, reps), time_ms(fused, reps)
        print(
            f"  {label:<26s} write alone {t_write * 1e3:8.1f} us   write + update {t_sep * 1e3:8.1f} us   "
            f"fused {t_fused * 1e3:8.1f} us   -> {'fused' if t_fused <= t_sep else 'separate'} is faster"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16], help="denominators: 1/4, 1/8, 1/16")
    parser.add_argument("--flush", choices=("read", "write"), default="write",
                        help="how the L2 is evicted before each repetition (write: dirty lines, every session's "
                             "figures; read: clean lines, as before a decode step's attention; see flush_l2)")
    args = parser.parse_args()
    global FLUSH_MODE
    FLUSH_MODE = args.flush
    reps = 10 if args.quick else 50
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"device: {name}; context {args.seq_len} tokens, batch {args.batch}, Hq 32, Hkv 8, D 128, float16; "
          f"L2 evicted by a {args.flush} before each repetition")
    rows = []
    with cp.cuda.Stream(non_blocking=True):  # CUDA graphs are captured on a non-default stream
        for bs in args.block_sizes:
            rows += bench_block_size(Case(args.batch, args.seq_len, 32, 8, 128, bs), args.budgets, reps)
        bench_metadata_update(reps)
    print("\nsummary (one decode step as a CUDA graph; speed-up end to end; ceilings; share of the byte ceiling)")
    print(f"{'block':>5s} {'budget':>7s} {'pages':>6s} {'dense ms':>9s} {'sparse ms':>9s} {'speedup':>8s} "
          f"{'(Python)':>8s} {'1/budget':>8s} {'bytes':>6s} {'of bytes':>8s} {'score+select':>12s} {'floor':>7s} {'of bytes':>8s}"
          f" {'best':>7s} {'of bytes':>8s} {'one kernel':>10s} {'of bytes':>8s}")
    for bs, div, K, td, ts, sp, sp_py, cb, bc, share, floor, best, one in rows:
        print(f"{bs:5d} {'1/' + str(div):>7s} {K:6d} {td:9.3f} {ts:9.3f} {sp:7.2f}x {sp_py:7.2f}x {cb:7.1f}x "
              f"{bc:5.2f}x {sp / bc:8.0%} {share:12.0%} {floor:6.2f}x {floor / bc:8.0%} {best:6.2f}x {best / bc:8.0%}"
              f" {one:9.2f}x {one / bc:8.0%}")
    print("target (issue 17): at a 1/8 budget, at least 80% of the byte ceiling, end to end")
    print("floor: the speed-up if scoring and attention took only the time of reading their bytes at this size")
    print("best: the same with contiguous reads of the same sizes, the fastest pattern (kernels one after the other)")
    print("one kernel: the write, then one contiguous read of the metadata and the selected K and V, selection free:")
    print("            a bound for any step that writes, then reads those bytes, on this GPU")


if __name__ == "__main__":
    main()
