// page_scores.cu -- for each (sequence, KV head, page): an upper bound on q.k over
// the page's tokens, from the page metadata. Bit-identical to the NumPy twin
// tinyserve_sim/data/page_scores.py (read its docstring first: it states the
// exact order of every float operation done here).
//
//   term_d = q_d > 0 ? q_d * max_d : (q_d < 0 ? q_d * min_d : 0)
//   bound_g = sum_d term_d             (lane partials by fused multiply-adds, then a butterfly)
//   score   = max over the GQA group's query heads g of bound_g
//
// Grid: x = a run of `pages_per_block` pages, y = KV head, z = sequence.
// Block: NT = 128 threads = ROWS rows of LANES lanes (the lanes/vec/vecs-per-lane
// plan of paged attention, tinyserve_sim/data/geometry.py::make_plan). A row
// scores one page at a time; lane i owns the 16-byte vectors i, i+LANES, ... of
// the page's min and max rows. Each row takes UN pages per step, and the loads
// are double-buffered: a step's loads are issued before the previous step's
// pages are scored, so memory is always busy (the kernel reads every byte once
// and does little arithmetic per byte: it is bound by how many loads are in
// flight, not by the arithmetic).
//
// The group's queries are staged as float in shared memory; when the group fits
// a register tile (GQ heads, GQ * elements-per-lane <= 64) each lane keeps its
// own query elements in registers, as paged attention does: the products read
// no shared memory at all. GQ = 0 is the generic kernel (any group size, the
// queries read from shared memory).
#include <cuda_fp16.h>
#include "cache_vectors.cuh"
#include "exact_math.cuh"

namespace {

constexpr int NT = 128;
constexpr int UN = 2;  // pages per row and step (each of the two load buffers holds one step)


// One step of a lane's partial sum: `part` plus the term of the bound for one element,
//   q > 0: fma(q, max, part)   q < 0: fma(q, min, part)   else (0, NaN): part + 0
// with ONE rounding where q is not 0 (an explicit __fmaf_rn: nothing is contracted
// behind our back under --fmad=false). For float16 inputs the product is exact in
// float32 (11 + 11 significant bits), so this is bit for bit the multiply-then-add
// of Quest's max(q * min, q * max) term; for float32 it is the product rounded once
// with the sum, and the twin uses its exact fma_f32 at the same place.
__device__ __forceinline__ float add_term(float part, float q, float lo, float hi) {
    return q > 0.0f ? __fmaf_rn(q, hi, part) : (q < 0.0f ? __fmaf_rn(q, lo, part) : part + 0.0f);
}
// The same step when q is known to be neither 0 nor NaN: one comparison, one select,
// one fused multiply-add (add_term compiles to two comparisons). For such a q both
// give the same FMA of the same operands, hence the same bits.
__device__ __forceinline__ float add_term_nonzero(float part, float q, float lo, float hi) {
    return __fmaf_rn(q, q < 0.0f ? lo : hi, part);
}

}  // namespace

template <typename T, int VEC, int LANES, int VPL, int GQ>
__global__ void __launch_bounds__(NT) page_scores_kernel(
    float* __restrict__ scores,            // [S, Hkv, W]
    const T* __restrict__ query,           // [S, Hq, D]
    const T* __restrict__ key_min,         // [num_blocks, Hkv, D]
    const T* __restrict__ key_max,
    const int* __restrict__ block_tables,  // [S, W] or [S, Hkv, W]
    const int* __restrict__ seq_lens,      // [S] or [S, Hkv]
    const int table_seq_stride, const int table_head_stride,  // head stride 0: no head axis
    const int lens_seq_stride, const int lens_head_stride,
    const int num_heads, const int num_kv_heads, const int head_dim,
    const int block_size, const int width, const int pages_per_block)
{
    constexpr int ROWS = NT / LANES;
    constexpr int EPL = VPL * VEC;                     // elements per lane
    constexpr bool QREG = GQ > 0 && GQ * EPL <= 64;    // the group's query in registers
    extern __shared__ float q_s[];                     // [G][D] the group's queries, as float

    const int tid = threadIdx.x;
    const int row = tid / LANES;
    const int lane = tid % LANES;
    const int h = blockIdx.y;
    const int s = blockIdx.z;
    const int group = num_heads / num_kv_heads;
    const int num_vecs = head_dim / VEC;
    const int len = seq_lens[s * lens_seq_stride + h * lens_head_stride];
    const int n = (len + block_size - 1) / block_size;   // pages of this row
    const int* table = block_tables + static_cast<long long>(s) * table_seq_stride
                                    + static_cast<long long>(h) * table_head_stride;
    float* out = scores + (static_cast<long long>(s) * num_kv_heads + h) * width;

    // Stage the group's query heads (exact conversion to float).
    const T* q_src = query + (static_cast<long long>(s) * num_heads + h * group) * head_dim;
    for (int i = tid; i < group * head_dim; i += NT) q_s[i] = load_float(q_src + i);
    __syncthreads();

    // Element offset of this lane's i-th owned vector, or -1 if it owns none.
    auto vec_off = [&](int i) { const int c = lane + i * LANES; return c < num_vecs ? c * VEC : -1; };
    float qr[QREG ? GQ : 1][QREG ? EPL : 1];
    // `nonzero`: every query element this lane owns (real heads, owned vectors) is
    // neither 0 nor NaN, so the cheaper add_term_nonzero gives the same bits. Almost
    // always true for real queries; a lane with an exact zero takes add_term.
    bool nonzero = QREG;
    if constexpr (QREG) {
#pragma unroll
        for (int g = 0; g < GQ; ++g)
#pragma unroll
            for (int i = 0; i < VPL; ++i)
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    const int off = vec_off(i);
                    const bool real = g < group && off >= 0;
                    const float q = real ? q_s[g * head_dim + off + e] : 0.0f;
                    qr[g][i * VEC + e] = q;
                    if (real && !(q > 0.0f || q < 0.0f)) nonzero = false;
                }
    }

    const int first = blockIdx.x * pages_per_block;
    const int last = min(first + pages_per_block, width);
    constexpr int STEP = ROWS * UN;                    // pages of one step, over the block's rows

    // Issue the loads of the step starting at page p0 into (lo, hi); pages past the
    // block's run or the row's length, and vectors past the head dim, are zeros.
    auto load_step = [&](uint4 (&lo)[UN][VPL], uint4 (&hi)[UN][VPL], const int p0) {
#pragma unroll
        for (int u = 0; u < UN; ++u) {
            const int p = p0 + u * ROWS + row;
            const bool live = p < last && p < n;
            const long long base = live
                ? (static_cast<long long>(table[p]) * num_kv_heads + h) * head_dim : 0;
#pragma unroll
            for (int i = 0; i < VPL; ++i) {
                const int off = vec_off(i);
                const bool ok = live && off >= 0;
                lo[u][i] = ok ? *reinterpret_cast<const uint4*>(key_min + base + off) : make_uint4(0u, 0u, 0u, 0u);
                hi[u][i] = ok ? *reinterpret_cast<const uint4*>(key_max + base + off) : make_uint4(0u, 0u, 0u, 0u);
            }
        }
    };

    // Score the step starting at page p0 from (lo, hi) and write the scores.
    auto score_step = [&](const uint4 (&lo)[UN][VPL], const uint4 (&hi)[UN][VPL], const int p0) {
#pragma unroll
        for (int u = 0; u < UN; ++u) {
            const int p = p0 + u * ROWS + row;
            float lf[VPL][VEC], hf[VPL][VEC];
#pragma unroll
            for (int i = 0; i < VPL; ++i) {
                to_float(lo[u][i], lf[i], T());
                to_float(hi[u][i], hf[i], T());
            }
            float best = TS_NEG_INF;
            if constexpr (QREG) {
                // Each head's lane partial: sequential over this lane's elements, from +0.
                // (Heads past the group have q = 0: computed, never used.)
                float part[GQ];
                auto sum_terms = [&](auto step) {  // the same loop with either form of the step
#pragma unroll
                    for (int g = 0; g < GQ; ++g) {
                        part[g] = 0.0f;
#pragma unroll
                        for (int i = 0; i < VPL; ++i) {
                            if (vec_off(i) < 0) continue;
#pragma unroll
                            for (int e = 0; e < VEC; ++e)
                                part[g] = step(part[g], qr[g][i * VEC + e], lf[i][e], hf[i][e]);
                        }
                    }
                };
                if (nonzero) sum_terms([](float t, float q, float lo, float hi) { return add_term_nonzero(t, q, lo, hi); });
                else sum_terms([](float t, float q, float lo, float hi) { return add_term(t, q, lo, hi); });
                // Outside the branch (every lane of the warp takes part): masks 1, 2, 4, ...,
                // the twin's pairwise_sum over the lanes.
#pragma unroll
                for (int g = 0; g < GQ; ++g) {
                    const float total = ts_butterfly_sum<LANES>(part[g]);
                    if (g < group) best = fmaxf(best, total);  // max is exact in any order
                }
            } else {
                for (int g = 0; g < group; ++g) {
                    float part = 0.0f;                 // sequential over this lane's elements
#pragma unroll
                    for (int i = 0; i < VPL; ++i) {
                        const int off = vec_off(i);
                        if (off < 0) continue;
#pragma unroll
                        for (int e = 0; e < VEC; ++e)
                            part = add_term(part, q_s[g * head_dim + off + e], lf[i][e], hf[i][e]);
                    }
                    // Masks 1, 2, 4, ...: the twin's pairwise_sum over the lanes.
                    const float total = ts_butterfly_sum<LANES>(part);
                    best = fmaxf(best, total);     // max is exact in any order
                }
            }
            if (lane == 0 && p < last) out[p] = p < n ? best : TS_NEG_INF;
        }
    };

    // Two buffers, two steps per iteration (registers cannot be indexed at run time).
    // Every row runs every step (the butterflies need all lanes of the warp); a row
    // without a page scores zeros and writes nothing.
    uint4 lo_a[UN][VPL], hi_a[UN][VPL], lo_b[UN][VPL], hi_b[UN][VPL];
    load_step(lo_a, hi_a, first);
    for (int p0 = first; p0 < last; p0 += 2 * STEP) {
        load_step(lo_b, hi_b, p0 + STEP);              // in flight while step p0 is scored
        score_step(lo_a, hi_a, p0);
        if (p0 + STEP >= last) break;                  // uniform: p0 is the same for the whole block
        load_step(lo_a, hi_a, p0 + 2 * STEP);
        score_step(lo_b, hi_b, p0 + STEP);
    }
}

// One explicit instantiation (float16, head_dim 128, a GQA group of 4: Llama-style
// 32 query / 8 KV heads), so that compiling this file alone emits a kernel (the CPU
// compile-check of tests/gpu/test_compile.py). The launcher asks NVRTC for the
// instantiation it needs by name (gpu/selection_launchers.py::page_scores_names).
template __global__ void page_scores_kernel<__half, 8, 16, 1, 4>(
    float*, const __half*, const __half*, const __half*, const int*, const int*,
    int, int, int, int, int, int, int, int, int, int);
