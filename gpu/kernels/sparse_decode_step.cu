// sparse_decode_step.cu -- one query-aware decode step in ONE persistent launch:
// page_scores -> select_pages -> paged_attention (split-K) -> reduce, with the phases of
// different rows running at the same time. Bit for bit what the three kernels give one
// after the other (gpu/sparse_step.py, schedule="kernels"): each piece of work is done by
// the very device function that those kernels run (page_scores.cuh, select_pages.cuh,
// paged_attention.cuh), on the same inputs. Only *when* it runs changes.
//
// Why. Run one after the other, each kernel of a small decode step pays its own ramp up
// and tail: the GPU's memory system is idle while the last blocks of the scores finish,
// while 64 selections run on 64 SMs, and while the attention's first chunks are loaded.
// Here a row (a sequence and KV head) is attended as soon as its own selection is done,
// while other rows are still being scored: the reads of metadata and of K and V overlap.
//
// How. The host lays the step's work out as a list of items (gpu/sparse_step.py,
// fused_schedule), each one thread block's worth:
//   SCORE  (s, h, run)        the scores of one run of pages of row (s, h)
//   ATTEND (s, x, partition)  one split-K partition of one head tile x of KV head h
// Every block loops: take the next item with an atomic ticket, do it, repeat. A row's
// SCORE items all come before its ATTEND items in the list. Two things happen at the end
// of an item, decided by per-row counters:
//   * the block that finishes a row's LAST score item also selects the row's pages
//     (select_block, 128 threads), writes its tables and length, and raises its flag;
//   * the block that finishes a row's LAST attend item also reduces the row's heads.
// An ATTEND block waits (thread 0 spins on the row's flag, then a barrier) until the row is
// selected. This cannot deadlock: tickets are taken in list order, so when a block holds
// an ATTEND ticket, every SCORE item of its row has been taken by a block that is running
// (or done) and never waits; the last of them selects and raises the flag.
//
// Memory order: a writer stores its results, then __threadfence() and an atomic (counter or
// flag); a reader sees the atomic, then __threadfence(), then reads those results with
// ld.global.cg (ts_read<true>, from L2: never a stale L1 or read-only-cache line).
//
// Counters ([2 + 3 * rows] ints, zero before the first launch): the ticket, the blocks that
// have left, and per row the score items done, the selected flag and the attend items
// done. The last block to leave sets them all back to zero, so the next launch (a CUDA
// graph replay) starts clean with no memset.
#include "page_scores.cuh"
#include "select_pages.cuh"
#include "paged_attention.cuh"

namespace ts_step {

constexpr int NT = 128;    // threads per block: the attention's and the scores' block
constexpr int SCORE = 0;   // item kinds
constexpr int ATTEND = 1;

}  // namespace ts_step

static_assert(ts_step::NT == ts_attention::NT && ts_step::NT == ts_scores::NT, "one block shape for every role");

template <typename T, int VEC, int LANES, int VPL, int GQ, int HT, int HS, int CHUNK, bool EVEN>
__global__ void __launch_bounds__(ts_step::NT, 4) sparse_decode_step_kernel(
    // outputs: every stage's, as the three kernels write them
    float* __restrict__ scores,            // [S, Hkv, W]
    int* __restrict__ logical,             // [S, Hkv, K'] selected logical pages
    int* __restrict__ tables,              // [S, Hkv, K'] their physical blocks
    int* __restrict__ lens,                // [S, Hkv] selected lengths
    T* __restrict__ out,                   // [S, Hq, D]
    float* __restrict__ part_out,          // [S, Hq, max_parts, D] split-K partials
    float* __restrict__ part_m,            // [S, Hq, max_parts]
    float* __restrict__ part_l,
    // inputs
    const T* __restrict__ query,           // [S, Hq, D]
    const T* __restrict__ key_cache,       // [num_blocks, block_size, Hkv, D]
    const T* __restrict__ value_cache,
    const T* __restrict__ key_min,         // [num_blocks, Hkv, D]
    const T* __restrict__ key_max,
    const int* __restrict__ block_tables,  // the batch's: [S, W] or [S, Hkv, W]
    const int* __restrict__ seq_lens,      // [S] or [S, Hkv]
    const int4* __restrict__ work,         // [n_work]: (kind, s, h or x, run or partition)
    const int2* __restrict__ row_items,    // [S * Hkv]: (score items, attend items) of each row
    int* counters,                         // [2 + 3 * S * Hkv], see above
    const float scale,
    const int table_seq_stride, const int table_head_stride,
    const int lens_seq_stride, const int lens_head_stride,
    const int num_heads, const int num_kv_heads, const int head_dim, const int block_size,
    const int width, const int pages_per_item, const int max_pages, const int out_width,
    const int partition_size, const int max_parts, const int n_work, const int num_rows,
    long long* __restrict__ trace)         // null, or [n_work][4]: see below
{
    using namespace ts_step;
    __shared__ int item_s, last_s;
    const int tid = threadIdx.x;
    const int group = num_heads / num_kv_heads;
    const int n_tiles = (group + HT * HS - 1) / (HT * HS);  // head tiles per KV head (as attend_block counts)
    int* ticket = counters;
    int* left = counters + 1;
    int* score_done = counters + 2;                 // [rows] score items finished
    int* selected = score_done + num_rows;          // [rows] 1 once the row's tables and length are written
    int* attend_done = selected + num_rows;         // [rows] attend items finished

    // Thread 0 adds one to a row's counter after the block's writes (fenced); the whole block
    // learns whether it was the last of `total`, and if so sees every other block's writes.
    auto finish = [&](int* counter, int total) {
        __syncthreads();  // the block's writes are issued
        if (tid == 0) {
            __threadfence();  // ... and visible to the GPU before the count says so
            last_s = atomicAdd(counter, 1) == total - 1;
            if (last_s) __threadfence();  // the other blocks' writes, before ours are read
        }
        __syncthreads();
        return last_s != 0;
    };

    // The optional trace, for the benchmark's timeline: per item, in nanoseconds of the GPU's
    // global timer, (start, middle, end, SM * 2 + extra): middle is the end of the scores or
    // of the wait for the selection; end includes the selection or the reduce, if the item
    // did one (extra = 1).
    auto stamp = [&](int item, int k, long long v) {
        if (trace != nullptr && tid == 0) trace[4 * static_cast<long long>(item) + k] = v;
    };
    auto now = []() {
        long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        return t;
    };
    auto smid = []() {
        unsigned id;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
        return static_cast<long long>(id);
    };

    for (;;) {
        if (tid == 0) item_s = atomicAdd(ticket, 1);
        __syncthreads();
        const int item = item_s;
        __syncthreads();  // everyone has read item_s before thread 0 may take the next ticket
        if (item >= n_work) break;
        stamp(item, 0, now());
        const int4 w = work[item];
        const int s = w.y;
        long long extra = 0;
        if (w.x == SCORE) {
            const int h = w.z;
            const int row = s * num_kv_heads + h;
            ts_scores::score_block<T, VEC, LANES, VPL, GQ>(
                w.w, h, s, scores, query, key_min, key_max, block_tables, seq_lens,
                table_seq_stride, table_head_stride, lens_seq_stride, lens_head_stride,
                num_heads, num_kv_heads, head_dim, block_size, width, pages_per_item);
            stamp(item, 1, now());
            if (finish(score_done + row, row_items[row].x)) {
                extra = 1;
                // The row's last run of scores: select its pages now, reading every run's
                // scores from L2, and raise its flag for the attention.
                ts_select::select_block<NT, true>(
                    h, s, logical, tables, lens, scores, block_tables, seq_lens,
                    table_seq_stride, table_head_stride, lens_seq_stride, lens_head_stride,
                    num_kv_heads, width, block_size, max_pages, out_width);
                __syncthreads();
                if (tid == 0) {
                    __threadfence();
                    atomicExch(selected + row, 1);
                }
            }
        } else {  // ATTEND
            const int x = w.z;
            const int row = s * num_kv_heads + x / n_tiles;
            if (tid == 0) {
                // Wait for the row's selection (volatile: read from L2 at every try).
                while (*static_cast<volatile int*>(selected + row) == 0) __nanosleep(256);
                __threadfence();
            }
            __syncthreads();
            stamp(item, 1, now());
            ts_attention::attend_block<T, VEC, LANES, VPL, HT, HS, CHUNK, true, EVEN, true>(
                x, s, w.w, out, part_out, part_m, part_l, query, key_cache, value_cache,
                tables, lens, scale, num_heads, num_kv_heads, head_dim, block_size, out_width,
                num_kv_heads, 1, partition_size, max_parts);
            if (finish(attend_done + row, row_items[row].y)) {
                extra = 1;
                // The row's last partition: combine every partition of its query heads.
                float* w_s = reinterpret_cast<float*>(smem_u4);  // the attention's shared memory is free
                const int kv_head = x / n_tiles;
                for (int g = 0; g < group; ++g)
                    ts_attention::reduce_head<T, true>(
                        s, kv_head * group + g, w_s, out, part_out, part_m, part_l, lens,
                        num_heads, num_kv_heads, head_dim, num_kv_heads, 1, partition_size, max_parts);
            }
        }
        stamp(item, 2, now());
        stamp(item, 3, smid() * 2 + extra);
    }

    // The last block to leave resets the counters for the next launch: every other block has
    // left, so nobody reads them any more.
    if (tid == 0) {
        __threadfence();
        if (atomicAdd(left, 1) == static_cast<int>(gridDim.x) - 1) {
            for (int i = 0; i < 2 + 3 * num_rows; ++i) counters[i] = 0;
            __threadfence();
        }
    }
}

// One explicit instantiation (float16, head_dim 128, GQA-4: the benchmark's shape), so that
// compiling this file alone emits a kernel (the CPU compile-check). The launcher asks NVRTC
// for the instantiation it needs by name (gpu/sparse_step.py).
template __global__ void sparse_decode_step_kernel<__half, 8, 16, 1, 4, 4, 1, 64, true>(
    float*, int*, int*, int*, __half*, float*, float*, float*, const __half*, const __half*, const __half*,
    const __half*, const __half*, const int*, const int*, const int4*, const int2*, int*, float,
    int, int, int, int, int, int, int, int, int, int, int, int, int, int, int, int, long long*);
