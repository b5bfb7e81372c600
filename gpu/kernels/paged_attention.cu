// paged_attention.cu -- decode attention over a paged KV cache, bit-identical
// to its NumPy twin tinyserve_sim/data/paged_attention.py (read its docstring
// first: it states the exact order of every float operation done here).
//
// Grid (one thread block per work item):
//   x: kv_head * n_tiles + tile  -- a KV head and a tile of its GQA group's
//                                   query heads: K/V are read once per tile
//   y: sequence
//   z: partition (split-K; 1 for the one-pass variant)
// Block: NT = 128 threads = ROWS rows of LANES lanes. A row handles one token
// at a time; lane i of a row owns the 16-byte vectors i, i+LANES, ... of the
// head_dim elements (VPL of them), for both K and V.
//
// Per 128-token chunk (online softmax, as FlashAttention/FlashDecoding):
//   A. logits: each row computes q.k for its tokens (lane partials, then a
//      butterfly), into shared memory.
//   B. chunk max -> m_new, alpha = exp(m_old - m_new)      (one warp per head)
//   C. p = exp(x - m_new), in place in shared memory
//   D. each row: l_r, acc_r *= alpha; then += p_j, p_j * v_j for its tokens.
// Finally rows are combined by a butterfly / pairwise tree and divided by l.
// split-K writes (o, m, l) per partition; paged_attention_reduce combines.
#include <cuda_fp16.h>
#include "exact_math.cuh"

namespace {

constexpr int NT = 128;       // threads per block
constexpr int NWARPS = NT / 32;
constexpr int CHUNK = 128;    // tokens per online-softmax step (twin: CHUNK_TOKENS)
constexpr int UNROLL = 4;     // tokens whose loads are issued together

// 16 bytes of the cache, converted exactly to float.
__device__ __forceinline__ void to_float(const uint4& raw, float* out, __half) {
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}
__device__ __forceinline__ void to_float(const uint4& raw, float* out, float) {
    out[0] = __uint_as_float(raw.x);
    out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z);
    out[3] = __uint_as_float(raw.w);
}
__device__ __forceinline__ float load_float(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_float(const float* p) { return *p; }
__device__ __forceinline__ void store_out(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }

}  // namespace

template <typename T, int VEC, int LANES, int VPL, int GT, bool SPLIT>
__global__ void __launch_bounds__(NT) paged_attention_kernel(
    T* __restrict__ out,                 // one-pass: [S, Hq, D]
    float* __restrict__ part_out,        // split-K: [S, Hq, max_parts, D]
    float* __restrict__ part_m,          // split-K: [S, Hq, max_parts]
    float* __restrict__ part_l,          // split-K: [S, Hq, max_parts]
    const T* __restrict__ query,         // [S, Hq, D]
    const T* __restrict__ key_cache,     // [num_blocks, block_size, Hkv, D]
    const T* __restrict__ value_cache,
    const int* __restrict__ block_tables,  // [rows, max_blocks]: [S] or [S, Hkv] rows
    const int* __restrict__ seq_lens,      // [rows]
    const float scale,
    const int num_heads, const int num_kv_heads, const int head_dim,
    const int block_size, const int max_blocks,
    const int row_seq_stride, const int row_head_stride,  // (1, 0) shared tables, (Hkv, 1) per head
    const int partition_size, const int max_parts)
{
    constexpr int ROWS = NT / LANES;
    constexpr int TPR = CHUNK / ROWS;          // tokens per row per chunk
    constexpr int EPL = VPL * VEC;             // elements per lane
    constexpr int RPW = 32 / LANES;            // rows per warp (1 when LANES == 32)
    static_assert(TPR % UNROLL == 0 || TPR < UNROLL, "chunk must split evenly");
    constexpr int UN = TPR < UNROLL ? TPR : UNROLL;

    extern __shared__ float smem[];
    float* q_s = smem;                          // [GT][D]   query, as float
    float* x_s = q_s + GT * head_dim;           // [GT][CHUNK] logits, then p
    float* red_s = x_s + GT * CHUNK;            // [NWARPS][GT][D] row-combine scratch
    long long* base_s = reinterpret_cast<long long*>(red_s + NWARPS * GT * head_dim);  // [2][CHUNK]
    __shared__ float m_s[GT], alpha_s[GT], lred_s[NWARPS][GT];

    const int tid = threadIdx.x;
    const int row = tid / LANES;
    const int lane = tid % LANES;
    const int warp = tid / 32;
    const int group = num_heads / num_kv_heads;
    const int n_tiles = (group + GT - 1) / GT;
    const int kv_head = blockIdx.x / n_tiles;
    const int g0 = kv_head * group + (blockIdx.x % n_tiles) * GT;  // first query head
    const int gcount = min(GT, kv_head * group + group - g0);
    const int seq = blockIdx.y;
    // The table and length of this (sequence, KV head): one row per sequence
    // (head stride 0) or one per KV head (query-aware selection).
    const long long table_row = static_cast<long long>(seq) * row_seq_stride + static_cast<long long>(kv_head) * row_head_stride;
    const int len = seq_lens[table_row];
    const int a = SPLIT ? blockIdx.z * partition_size : 0;
    if (a >= len) return;  // split-K: this row has fewer partitions (uniform exit)
    const int b = SPLIT ? min(a + partition_size, len) : len;
    const int num_vecs = head_dim / VEC;
    const int* table = block_tables + table_row * max_blocks;

    // Stage the tile's query heads as float (exact conversion).
    for (int i = tid; i < GT * head_dim; i += NT) {
        const int g = i / head_dim;
        q_s[i] = g < gcount ? load_float(query + (static_cast<long long>(seq) * num_heads + g0 + g) * head_dim + i % head_dim) : 0.0f;
    }
    if (tid < GT) m_s[tid] = TS_NEG_INF;

    // Keep this lane's query elements in registers when they are few (small
    // GQA tiles): reading them from shared memory for every key costs more
    // shared-memory bandwidth than the key itself costs DRAM bandwidth.
    constexpr bool QREG = GT * EPL <= 32;
    float qr[QREG ? GT : 1][QREG ? EPL : 1];
    float acc[GT][EPL];
    float lrow[GT];
#pragma unroll
    for (int g = 0; g < GT; ++g) {
        lrow[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[g][e] = 0.0f;
    }
    __syncthreads();

    // Element offset of this lane's i-th owned vector, or -1 if it owns none.
    auto vec_off = [&](int i) { const int c = lane + i * LANES; return c < num_vecs ? c * VEC : -1; };
    if constexpr (QREG) {
#pragma unroll
        for (int g = 0; g < (QREG ? GT : 1); ++g)
#pragma unroll
            for (int i = 0; i < VPL; ++i)
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    const int off = vec_off(i);
                    qr[g][i * VEC + e] = off >= 0 ? q_s[g * head_dim + off + e] : 0.0f;
                }
    }
    // Element offset of token t's row for this KV head.
    auto token_base = [&](int t) {
        const long long blk = table[t / block_size];
        return ((blk * block_size + t % block_size) * num_kv_heads + kv_head) * head_dim;
    };

    // Where each token lives: one integer division per token, done once and
    // shared by the K and the V phase. Double-buffered: chunk c+1's offsets
    // are written during chunk c, so no extra barrier is needed.
    static_assert(CHUNK == NT, "one token per thread");
    if (a + tid < b) base_s[tid] = token_base(a + tid);
    __syncthreads();

    for (int c0 = a, buf = 0; c0 < b; c0 += CHUNK, buf ^= 1) {
        const long long* bases = base_s + buf * CHUNK;
        // next chunk's offsets, into the other buffer (last read two barriers ago)
        if (c0 + CHUNK + tid < b) base_s[(buf ^ 1) * CHUNK + tid] = token_base(c0 + CHUNK + tid);
        // ---- A. logits -------------------------------------------------
#pragma unroll
        for (int k0 = 0; k0 < TPR; k0 += UN) {
            uint4 kr[UN][VPL];
#pragma unroll
            for (int u = 0; u < UN; ++u) {     // issue all loads first
                const int t = c0 + (k0 + u) * ROWS + row;
                const long long base = t < b ? bases[(k0 + u) * ROWS + row] : 0;
#pragma unroll
                for (int i = 0; i < VPL; ++i) {
                    const int off = vec_off(i);
                    kr[u][i] = (t < b && off >= 0)
                        ? *reinterpret_cast<const uint4*>(key_cache + base + off)
                        : make_uint4(0u, 0u, 0u, 0u);
                }
            }
#pragma unroll
            for (int u = 0; u < UN; ++u) {
                const int j = (k0 + u) * ROWS + row;
                float kf[VPL][VEC];
#pragma unroll
                for (int i = 0; i < VPL; ++i) to_float(kr[u][i], kf[i], T());
                float part[GT];                // one partial dot product per head
#pragma unroll
                for (int g = 0; g < GT; ++g) {
                    part[g] = 0.0f;            // sequential over this lane's elements
                    if (g >= gcount) continue; // heads past the group stay 0
#pragma unroll
                    for (int i = 0; i < VPL; ++i) {
                        const int off = vec_off(i);
                        if (off < 0) continue;
                        const float* qv = q_s + g * head_dim + off;
#pragma unroll
                        for (int e = 0; e < VEC; ++e) {
                            const float qe = QREG ? qr[QREG ? g : 0][QREG ? i * VEC + e : 0] : qv[e];
                            // float16 x float16 is exact in float32 (22 significant
                            // bits, no under/overflow), so one fused multiply-add
                            // rounds exactly like the twin's multiply then add.
                            // Not so for float32 inputs: there, two roundings.
                            if constexpr (sizeof(T) == 2) part[g] = __fmaf_rn(qe, kf[i][e], part[g]);
                            else part[g] = part[g] + qe * kf[i][e];
                        }
                    }
                }
                // Sum the LANES partials of every head with a reduce-scatter
                // butterfly (masks LANES/2, LANES/4, ..., 1): fewer shuffles
                // than one butterfly per head; the tree is the twin's halving_sum.
                int head;
                const float* tot = ts_reduce_scatter_sum<LANES, GT>(part, lane, head);
                if ((lane & (LANES / ts_min(LANES, GT) - 1)) == 0) {
#pragma unroll
                    for (int c = 0; c < ts_max(1, GT / LANES); ++c)
                        if (head + c < gcount)
                            x_s[(head + c) * CHUNK + j] = (c0 + j < b) ? tot[c] * scale : TS_NEG_INF;
                }
            }
        }
        __syncthreads();
        // ---- B+C. chunk max, rescale factor, probabilities: warp w owns heads
        //          w, w+4, ...; no block barrier between max and exp ------
        for (int g = warp; g < gcount; g += NWARPS) {
            float x[CHUNK / 32];
            float mx = TS_NEG_INF;
#pragma unroll
            for (int i = 0; i < CHUNK / 32; ++i) {
                x[i] = x_s[g * CHUNK + i * 32 + tid % 32];
                mx = fmaxf(mx, x[i]);          // max is exact in any order
            }
            mx = ts_butterfly_max<32>(mx);
            const float m_old = m_s[g];
            const float m_new = fmaxf(m_old, mx);
            __syncwarp();                      // every lane has read m_old
            if (tid % 32 == 0) {
                alpha_s[g] = ts_exp(m_old - m_new);
                m_s[g] = m_new;
            }
#pragma unroll
            for (int i = 0; i < CHUNK / 32; ++i) {
                const int jj = i * 32 + tid % 32;
                x_s[g * CHUNK + jj] = (c0 + jj < b) ? ts_exp(x[i] - m_new) : 0.0f;
            }
        }
        __syncthreads();
        // ---- D. rescale, then accumulate p * v, row by row ---------------
#pragma unroll
        for (int g = 0; g < GT; ++g) {
            const float al = g < gcount ? alpha_s[g] : 1.0f;
            lrow[g] = lrow[g] * al;
#pragma unroll
            for (int e = 0; e < EPL; ++e) acc[g][e] = acc[g][e] * al;
        }
#pragma unroll
        for (int k0 = 0; k0 < TPR; k0 += UN) {
            uint4 vr[UN][VPL];
#pragma unroll
            for (int u = 0; u < UN; ++u) {
                const int t = c0 + (k0 + u) * ROWS + row;
                const long long base = t < b ? bases[(k0 + u) * ROWS + row] : 0;
#pragma unroll
                for (int i = 0; i < VPL; ++i) {
                    const int off = vec_off(i);
                    vr[u][i] = (t < b && off >= 0)
                        ? *reinterpret_cast<const uint4*>(value_cache + base + off)
                        : make_uint4(0u, 0u, 0u, 0u);
                }
            }
#pragma unroll
            for (int u = 0; u < UN; ++u) {     // tokens in increasing j: the twin's order
                const int j = (k0 + u) * ROWS + row;
                if (c0 + j >= b) continue;     // padding token: no add at all
                float vf[VPL][VEC];
#pragma unroll
                for (int i = 0; i < VPL; ++i) to_float(vr[u][i], vf[i], T());
#pragma unroll
                for (int g = 0; g < GT; ++g) {
                    if (g >= gcount) break;
                    const float p = x_s[g * CHUNK + j];
                    lrow[g] = lrow[g] + p;
#pragma unroll
                    for (int i = 0; i < VPL; ++i)
#pragma unroll
                        for (int e = 0; e < VEC; ++e) acc[g][i * VEC + e] = acc[g][i * VEC + e] + p * vf[i][e];
                }
            }
        }
        __syncthreads();  // x_s is rewritten by the next chunk
    }

    // ---- combine rows: butterfly inside the warp, pairwise across warps ---
#pragma unroll
    for (int g = 0; g < GT; ++g) {
#pragma unroll
        for (int mask = LANES; mask < 32; mask <<= 1) {
            lrow[g] = lrow[g] + __shfl_xor_sync(0xffffffffu, lrow[g], mask);
#pragma unroll
            for (int e = 0; e < EPL; ++e) acc[g][e] = acc[g][e] + __shfl_xor_sync(0xffffffffu, acc[g][e], mask);
        }
    }
    if (tid % 32 < LANES) {  // the first row of each warp now holds the warp's sum
#pragma unroll
        for (int g = 0; g < GT; ++g) {
            if (g >= gcount) break;
            if (lane == 0) lred_s[warp][g] = lrow[g];
#pragma unroll
            for (int i = 0; i < VPL; ++i) {
                const int off = vec_off(i);
                if (off < 0) continue;
#pragma unroll
                for (int e = 0; e < VEC; ++e) red_s[(warp * GT + g) * head_dim + off + e] = acc[g][i * VEC + e];
            }
        }
    }
    __syncthreads();
    static_assert(NWARPS == 4, "the cross-warp tree below is written for 4 warps");
    for (int i = tid; i < gcount * head_dim; i += NT) {
        const int g = i / head_dim;
        const int d = i % head_dim;
        const float l = (lred_s[0][g] + lred_s[1][g]) + (lred_s[2][g] + lred_s[3][g]);
        const float s = (red_s[(0 * GT + g) * head_dim + d] + red_s[(1 * GT + g) * head_dim + d])
                      + (red_s[(2 * GT + g) * head_dim + d] + red_s[(3 * GT + g) * head_dim + d]);
        const float o = s / l;
        const long long head = static_cast<long long>(seq) * num_heads + g0 + g;
        if (SPLIT) {
            const long long pi = head * max_parts + blockIdx.z;
            part_out[pi * head_dim + d] = o;
            if (d == 0) { part_m[pi] = m_s[g]; part_l[pi] = l; }
        } else {
            store_out(out + head * head_dim + d, o);
        }
    }
}

// Split-K reduce: one block per (query head, sequence); partitions in order.
template <typename T>
__global__ void __launch_bounds__(NT) paged_attention_reduce_kernel(
    T* __restrict__ out,                   // [S, Hq, D]
    const float* __restrict__ part_out,    // [S, Hq, max_parts, D]
    const float* __restrict__ part_m,      // [S, Hq, max_parts]
    const float* __restrict__ part_l,
    const int* __restrict__ seq_lens,      // [rows], as in the main kernel
    const int num_heads, const int num_kv_heads, const int head_dim,
    const int row_seq_stride, const int row_head_stride,
    const int partition_size, const int max_parts)
{
    extern __shared__ float w_s[];         // [max_parts] weights w_i
    const long long head = static_cast<long long>(blockIdx.y) * num_heads + blockIdx.x;
    const int kv_head = blockIdx.x / (num_heads / num_kv_heads);
    const long long table_row = static_cast<long long>(blockIdx.y) * row_seq_stride + static_cast<long long>(kv_head) * row_head_stride;
    // This row's partition count (its own length, with per-head tables).
    const int n = static_cast<int>((static_cast<long long>(seq_lens[table_row]) + partition_size - 1) / partition_size);
    const float* m = part_m + head * max_parts;
    const float* l = part_l + head * max_parts;
    float gmax = TS_NEG_INF;                // max is exact in any order
    for (int i = 0; i < n; ++i) gmax = fmaxf(gmax, m[i]);
    for (int i = threadIdx.x; i < n; i += NT) w_s[i] = l[i] * ts_exp(m[i] - gmax);
    __syncthreads();
    float den = 0.0f;                      // sequential, i = 0, 1, ...
    for (int i = 0; i < n; ++i) den = den + w_s[i];
    for (int d = threadIdx.x; d < head_dim; d += NT) {
        float num = 0.0f;
        for (int i = 0; i < n; ++i) num = num + w_s[i] * part_out[(head * max_parts + i) * head_dim + d];
        store_out(out + head * head_dim + d, num / den);
    }
}
