// paged_attention.cu -- decode attention over a paged KV cache, bit-identical
// to its NumPy twin tinyserve_sim/data/paged_attention.py (read its docstring
// first: it states the exact order of every float operation done here), with
// the geometry of tinyserve_sim/data/geometry.py (AttentionPlan).
//
// Grid (one thread block per work item):
//   x: kv_head * n_tiles + tile  -- a KV head and a tile of HS * HT of its GQA
//                                   group's query heads
//   y: sequence
//   z: partition (split-K; 1 for the one-pass variant)
// Block: NT = 128 threads in HS head slices (whole warps). A slice owns HT query
// heads and is ROWS rows of LANES lanes. A row handles one token at a time;
// lane i of a row owns the 16-byte vectors i, i+LANES, ... of the head_dim
// elements (VPL of them). Every slice reads the same keys and values.
//
// Keys and values travel through shared memory, one CHUNK of tokens at a time,
// copied by cp.async (global -> shared without registers; through L1 when the
// plan says so, L1 = l1_copies: MHA, else around it) ahead of their use:
//   K of chunk c+1 is copied while chunk c computes probabilities and
//   accumulates V; V of chunk c+1 while chunk c+1 computes its logits.
// So the memory system always has a chunk in flight, and the threads never
// wait on a global load inside the loop.
//
// Per chunk (online softmax, as FlashAttention / FlashDecoding):
//   A. logits: each row computes q.k for its tokens (lane partials with fused
//      multiply-adds, then a reduce-scatter butterfly), into shared memory. With TC
//      (the plan's tensor_core_logits: float16 GQA), warps compute them instead with
//      ldmatrix + mma.sync m16n8k16 over a swizzled K tile (see the TC branch below).
//   B. chunk max -> m_new, alpha = exp(m_old - m_new)      (one warp per head)
//   C. p = exp(x - m_new), in place in shared memory
//   D. each row: l_r, acc_r *= alpha; then l_r += p_j, acc_r = fma(p_j, v_j, acc_r)
//      for its tokens.
// Finally each slice's rows are combined by a butterfly inside a warp and a
// pairwise tree across its warps, and divided by l. split-K writes (o, m, l)
// per partition; paged_attention_reduce_kernel combines them.
//
// With PV (the plan's tensor_core_values, on top of TC), P V runs on tensor cores:
//   C. also splits every p * 2^15 exactly into three float16 parts (shared memory, laid
//      out as the mma's B fragments), and sums the chunk's p of each head: l = fma(l, alpha, sum)
//   D. warp w owns the 16-dim tiles w, w + 4, ... of the output: acc *= alpha, then per
//      16 tokens and part, acc = mma(V^T, part, acc), V^T by ldmatrix.trans.
//   The output is acc / (l * 2^15); no rows to combine.
#include <cuda_fp16.h>
#include "cache_vectors.cuh"
#include "exact_math.cuh"
#include "tensor_core.cuh"

namespace {

constexpr int NT = 128;        // threads per block
constexpr int NWARPS = NT / 32;
constexpr int MAX_HEADS = 32;  // HS * HT at most (4 slices of 8 heads)

template <bool B> struct ts_bool { static constexpr bool value = B; };  // a bool as a type

// N consecutive floats of shared memory (N = 1, 2, 4, 8; 4N-byte aligned) in the fewest loads.
template <int N>
__device__ __forceinline__ void load_heads(const float* src, float (&dst)[N]) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 4) {
            const float4 v = *reinterpret_cast<const float4*>(src + i);
            dst[i] = v.x; dst[i + 1] = v.y; dst[i + 2] = v.z; dst[i + 3] = v.w;
        }
    } else if constexpr (N == 2) {
        const float2 v = *reinterpret_cast<const float2*>(src);
        dst[0] = v.x; dst[1] = v.y;
    } else {
        dst[0] = src[0];
    }
}

}  // namespace

template <typename T, int VEC, int LANES, int VPL, int HT, int HS, int CHUNK, bool L1, bool SPLIT, bool EVEN, bool TC, bool PV>
__global__ void __launch_bounds__(NT, 4) paged_attention_kernel(
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
    constexpr int SLICE = NT / HS;             // threads of one head slice
    constexpr int ROWS = SLICE / LANES;        // token rows of one slice
    constexpr int TPR = CHUNK / ROWS;          // tokens per row per chunk
    constexpr int EPL = VPL * VEC;             // elements per lane
    constexpr int WPS = SLICE / 32;            // warps per slice
    constexpr int HB = HT * HS;                // query heads of the block
    constexpr int CROWS = NT / LANES;          // rows when all 128 threads copy
    static_assert(SLICE % 32 == 0 && ROWS >= 1 && CHUNK % ROWS == 0, "slices are whole warps");
    static_assert(CHUNK % CROWS == 0 && CHUNK % 32 == 0 && HB <= MAX_HEADS, "geometry");
    static_assert(CHUNK <= NT, "thread t < CHUNK computes token t's row offset");
    static_assert(HT * EPL <= (TC ? 64 : 32), "accumulators and query in registers (TC: no query registers)");
    // TC (the plan's tensor_core_logits): the logits by mma.sync m16n8k16, the keys as A
    // (16 tokens x 16 dims), the block's query heads as B (16 dims x 8 heads, zeros past
    // HB), a chain over the head dim in C. Float16, whole 16-dim steps, at most 8 heads.
    constexpr int KD = LANES * VPL * VEC;      // head_dim when EVEN
    static_assert(!TC || (EVEN && sizeof(T) == 2 && KD % 16 == 0 && (KD / VEC) % 8 == 0 && HB <= 8 && CHUNK % 16 == 0),
                  "tensor-core logits: float16, head_dim a multiple of 16 (and 64 or more), at most 8 heads");
    // PV (the plan's tensor_core_values): P V by mma.sync m16n8k16, V^T as A (16 dims x 16
    // tokens), a float16 part of P as B (16 tokens x 8 heads), the output as C (16 dims x 8
    // heads). Warp w owns the MT dim tiles w, w + NWARPS, ...; KD = 64, 128 or 256 here.
    static_assert(!PV || (TC && KD % (16 * NWARPS) == 0), "tensor-core P V: on top of TC, whole dim tiles per warp");
    constexpr int MT = PV ? KD / (16 * NWARPS) : 1;
    constexpr float PSCALE = 32768.0f;  // 2^15: p * 2^15 <= 32768, inside float16's range

    // ---- shared memory: staged K and V tiles first (16-byte aligned) ----------
    extern __shared__ uint4 smem_u4[];
    // Vectors per token row: a compile-time constant when EVEN, so that every
    // shared-memory address below is a constant offset from a per-thread base.
    const int num_vecs = EVEN ? LANES * VPL : head_dim / VEC;
    uint4* k_s = smem_u4;                       // [CHUNK][num_vecs] keys of the chunk
    uint4* v_s = k_s + CHUNK * num_vecs;        // [CHUNK][num_vecs] values
    long long* base_s = reinterpret_cast<long long*>(v_s + CHUNK * num_vecs);  // [2][CHUNK] row byte offsets
    float* q_s = reinterpret_cast<float*>(base_s + 2 * CHUNK);                 // [HB][D] query, as float
    float* x_s = q_s + HB * head_dim;           // [CHUNK][HB] logits, then p (a token's heads together)
    // [NWARPS][HT][D] row-combine scratch, used after the last chunk. TC plans put it over
    // the K and V tiles, free by then (every copy waited for, every read behind a barrier):
    // 4 HT D floats fit in 2 CHUNK D halves since 4 HT <= CHUNK.
    float* red_s = TC ? reinterpret_cast<float*>(smem_u4) : x_s + HB * CHUNK;
    static_assert(!TC || 4 * HT <= CHUNK, "the row-combine scratch fits over the tiles");
    // PV: the probabilities' float16 parts, as B fragments: for 16-token group grp, part
    // (0, 1, 2) and head n, lane 4 n + t's two registers (tokens 2t, 2t + 1 | 2t + 8, 2t + 9)
    // at uint2 (grp * 3 + part) * 32 + 4 n + t. Eight heads always (zeros past hcount).
    unsigned short* ph_s = reinterpret_cast<unsigned short*>(x_s + HB * CHUNK);
    __shared__ float m_s[MAX_HEADS], alpha_s[MAX_HEADS], l_s[MAX_HEADS], lred_s[NWARPS][HT];

    const int tid = threadIdx.x;
    const int slice = tid / SLICE;              // which HT heads this thread accumulates
    const int row = (tid % SLICE) / LANES;      // its token row inside the slice
    const int lane = tid % LANES;
    const int warp = tid / 32;
    const int group = num_heads / num_kv_heads;
    const int n_tiles = (group + HB - 1) / HB;
    const int kv_head = blockIdx.x / n_tiles;
    const int g0 = kv_head * group + (blockIdx.x % n_tiles) * HB;  // first query head of the block
    const int hcount = min(HB, kv_head * group + group - g0);       // real heads of the block
    const int seq = blockIdx.y;
    // The table and length of this (sequence, KV head): one row per sequence
    // (head stride 0) or one per KV head (query-aware selection).
    const long long table_row = static_cast<long long>(seq) * row_seq_stride + static_cast<long long>(kv_head) * row_head_stride;
    const int len = seq_lens[table_row];
    const int a = SPLIT ? blockIdx.z * partition_size : 0;
    if (a >= len) return;  // split-K: this row has fewer partitions (uniform exit)
    const int b = SPLIT ? min(a + partition_size, len) : len;
    const int* table = block_tables + table_row * max_blocks;

    // Element offset of this lane's i-th owned vector, or -1 if it owns none.
    // EVEN (head_dim == LANES * VPL * VEC): every lane owns all VPL vectors, no check.
    auto vec_off = [&](int i) {
        const int c = lane + i * LANES;
        return (EVEN || c < num_vecs) ? c * VEC : -1;
    };

    // Stage the block's query heads as float (exact conversion); heads past the
    // group (a partial tile) get zeros, alpha 1 and p 0, so they compute
    // harmless values that are never stored.
    for (int i = tid; i < HB * head_dim; i += NT) {
        const int g = i / head_dim;
        q_s[i] = g < hcount ? load_float(query + (static_cast<long long>(seq) * num_heads + g0 + g) * head_dim + i % head_dim) : 0.0f;
    }
    if (tid < MAX_HEADS) {  // PV reads alpha for all 8 columns of the mma, heads past HB too
        m_s[tid] = TS_NEG_INF;
        alpha_s[tid] = 1.0f;
        l_s[tid] = 0.0f;
    }
    for (int i = tid; i < HB * CHUNK; i += NT) x_s[i] = 0.0f;  // heads past the group keep p = 0
    if constexpr (PV) {  // and their float16 parts
        for (int i = tid; i < 3 * 8 * CHUNK / 2; i += NT) reinterpret_cast<unsigned*>(ph_s)[i] = 0u;
    }

    // Byte offset of token t's row for this KV head, from the start of a cache, given
    // its block-table entry blk: one integer division per token, done once, for K and V.
    auto base_of = [&](long long blk, int t) {
        return ((blk * block_size + t % block_size) * num_kv_heads + kv_head) * head_dim
               * static_cast<long long>(sizeof(T));
    };
    auto token_base = [&](int t) { return base_of(table[t / block_size], t); };
    // Thread tid < CHUNK's entry for token t (0 where there is no such token). The entries
    // are loaded a chunk before their offsets are written: a load issued in chunk c for
    // chunk c+2 lands while chunk c computes, so no warp waits on it at the top of chunk c+1.
    auto load_entry = [&](int t) { return tid < CHUNK && t < b ? table[t / block_size] : 0; };
    // The copies: all 128 threads as CROWS rows of LANES lanes, each lane its
    // own vectors of every CROWS-th token of the chunk. Padding tokens (past b)
    // are not copied; their stale shared memory is never used for a result.
    // SWZ (TC's keys, PV's values): token j's vector v lands at v ^ (j % 8), so that the
    // eight rows an ldmatrix reads at once (eight tokens, the same 16 bytes of each) fall in
    // eight different bank groups instead of one. The rows past b of a last chunk are
    // zeroed instead of skipped: PV multiplies them (by p = 0), and stale bits could be NaN.
    auto copy_tile = [&](uint4* dst, const T* cache, const long long* bases, int c0, auto swz) {
        constexpr bool SWZ = decltype(swz)::value;
        const char* src = reinterpret_cast<const char*>(cache);
        const int crow = tid / LANES;
        const bool full = c0 + CHUNK <= b;
#pragma unroll
        for (int k = 0; k < CHUNK / CROWS; ++k) {
            const int j = k * CROWS + crow;
            if (!full && c0 + j >= b) {
                if constexpr (SWZ) {
#pragma unroll
                    for (int i = 0; i < VPL; ++i) dst[j * num_vecs + (vec_off(i) / VEC ^ (j % 8))] = make_uint4(0u, 0u, 0u, 0u);
                    continue;
                }
                break;
            }
#pragma unroll
            for (int i = 0; i < VPL; ++i) {
                const int off = vec_off(i);
                if (!EVEN && off < 0) continue;
                // L1 (the plan's l1_copies, MHA): through L1, so that the copies reach L2 as
                // whole lines; else around it (.cg). The same bytes either way.
                const int slot = SWZ ? (off / VEC) ^ (j % 8) : off / VEC;
                cp_async16_cached<L1>(dst + j * num_vecs + slot, src + bases[j] + off * static_cast<int>(sizeof(T)));
            }
        }
        cp_async_commit();
    };

    float qr[HT][EPL];   // this lane's query elements of the slice's heads
    float acc[HT][EPL];  // this row's running sum of p * v
    float lrow[HT];      // and of p
    float acc_tc[MT][4]; // PV: this lane's C fragments, dims 16 mt + l32 / 4 (+ 8), heads 2 (l32 % 4) (+ 1)
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc_tc[i][c] = 0.0f;
#pragma unroll
    for (int g = 0; g < HT; ++g) {
        lrow[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[g][e] = 0.0f;
    }
    if (tid < CHUNK && a + tid < b) base_s[tid] = token_base(a + tid);
    int next_entry = load_entry(a + CHUNK + tid);  // the second chunk's, ahead of time
    __syncthreads();
    if constexpr (!TC) {
#pragma unroll
        for (int g = 0; g < HT; ++g)
#pragma unroll
            for (int i = 0; i < VPL; ++i)
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    const int off = vec_off(i);
                    qr[g][i * VEC + e] = off >= 0 ? q_s[(slice * HT + g) * head_dim + off + e] : 0.0f;
                }
    }
    // TC: this lane's B fragments for every 16-dim step s: query head n = lane / 4 of the
    // block, dims 16s + 2t, +1 and 16s + 2t + 8, +9 (t = lane % 4), two float16 per
    // register, read from the staged queries (exact: they were float16). Zeros past hcount.
    unsigned qb[TC ? KD / 16 : 1][2];
    if constexpr (TC) {
        const int n = (tid % 32) / 4, t4 = tid % 4;
#pragma unroll
        for (int st = 0; st < KD / 16; ++st)
#pragma unroll
            for (int hi = 0; hi < 2; ++hi) {
                const int d0 = 16 * st + 2 * t4 + 8 * hi;
                const float lo = n < HB ? q_s[n * KD + d0] : 0.0f;
                const float up = n < HB ? q_s[n * KD + d0 + 1] : 0.0f;
                qb[st][hi] = static_cast<unsigned>(__half_as_ushort(__float2half_rn(lo)))
                             | (static_cast<unsigned>(__half_as_ushort(__float2half_rn(up))) << 16);
            }
    }
    // The pipeline starts: K and V of the first chunk.
    copy_tile(k_s, key_cache, base_s, a, ts_bool<TC>());
    copy_tile(v_s, value_cache, base_s, a, ts_bool<PV>());

    // One chunk of the online softmax. FULL: every token of the chunk is real
    // (c0 + CHUNK <= b), so no token needs a bounds check or a padding select;
    // the same body is compiled a second time, with the checks, for the last,
    // partial chunk. The arithmetic is the same in both.
    auto run_chunk = [&](const int c0, const int buf, auto full) {
        constexpr bool FULL = decltype(full)::value;
        auto real = [&](int j) { return FULL || c0 + j < b; };  // token c0 + j exists
        const bool more = c0 + CHUNK < b;                        // a next chunk exists
        long long* next_bases = base_s + (buf ^ 1) * CHUNK;
        cp_async_wait<1>();  // K of this chunk has landed (V may still be in flight)
        __syncthreads();     // ... for every thread's copies
        // Row offsets of the next chunk, for its copies below, from the table entries loaded
        // during the previous chunk. Their buffer was last read to copy the previous
        // chunk's V, before the barrier above. Then the entries of the chunk after next.
        if (more && tid < CHUNK && c0 + CHUNK + tid < b) next_bases[tid] = base_of(next_entry, c0 + CHUNK + tid);
        next_entry = load_entry(c0 + 2 * CHUNK + tid);
        // ---- A. logits -------------------------------------------------
        if constexpr (TC) {
            // Warp w takes the 16-token groups w, w + 4, ...: per group, KD / 16 ldmatrix and
            // mma.sync, the chain over the head dim in increasing steps (the twin's order).
            const int l32 = tid % 32;
            const int r8 = l32 % 8, mat = l32 / 8;  // this lane's ldmatrix row and matrix
            for (int grp = warp; grp < CHUNK / 16; grp += NWARPS) {
                const int tok = grp * 16 + r8 + (mat & 1) * 8;  // matrices 1 and 3: tokens 8-15
                const uint4* krow = k_s + tok * num_vecs;
                float dot[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int st = 0; st < KD / 16; ++st) {
                    unsigned afr[4];
                    ts_ldmatrix_x4(krow + ((2 * st + (mat >> 1)) ^ r8), afr);  // matrices 2, 3: dims + 8
                    ts_mma_16816(dot, afr, qb[st]);
                }
                // dot[2 hi + e]: token grp * 16 + l32 / 4 + 8 hi, head 2 (l32 % 4) + e.
#pragma unroll
                for (int hi = 0; hi < 2; ++hi) {
                    const int j = grp * 16 + l32 / 4 + 8 * hi;
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int h = 2 * (l32 % 4) + e;
                        if (h < hcount) x_s[j * HB + h] = real(j) ? dot[2 * hi + e] * scale : TS_NEG_INF;
                    }
                }
            }
        } else {
#pragma unroll
        for (int kk = 0; kk < TPR; ++kk) {
            const int j = kk * ROWS + row;
            float kf[VPL][VEC];
#pragma unroll
            for (int i = 0; i < VPL; ++i) {
                const int off = vec_off(i);
                const uint4 raw = (EVEN || off >= 0) ? k_s[j * num_vecs + off / VEC] : make_uint4(0u, 0u, 0u, 0u);
                to_float(raw, kf[i], T());
            }
            float part[HT];  // one partial dot product per head, sequential over this lane's elements
#pragma unroll
            for (int g = 0; g < HT; ++g) {
                part[g] = 0.0f;
#pragma unroll
                for (int i = 0; i < VPL; ++i)
#pragma unroll
                    for (int e = 0; e < VEC; ++e)  // one fused multiply-add, one rounding (twin: fma_f32)
                        part[g] = __fmaf_rn(qr[g][i * VEC + e], kf[i][e], part[g]);
            }
            // Sum the LANES partials of every head with a reduce-scatter butterfly
            // (masks LANES/2, ..., 1): the tree is the twin's halving_sum.
            int head;
            const float* tot = ts_reduce_scatter_sum<LANES, HT>(part, lane, head);
            if ((lane & (LANES / ts_min(LANES, HT) - 1)) == 0) {
#pragma unroll
                for (int c = 0; c < ts_max(1, HT / LANES); ++c) {
                    const int h = slice * HT + head + c;
                    if (h < hcount) x_s[j * HB + h] = real(j) ? tot[c] * scale : TS_NEG_INF;
                }
            }
        }
        }
        __syncthreads();  // logits complete; nobody reads k_s any more
        if (more) copy_tile(k_s, key_cache, next_bases, c0 + CHUNK, ts_bool<TC>());  // the next chunk's K, in flight from now
        // ---- B+C. chunk max, rescale factor, probabilities: warp w owns heads
        //          w, w+4, ...; no block barrier between max and exp ------
        for (int g = warp; g < hcount; g += NWARPS) {
            float x[CHUNK / 32];
            float mx = TS_NEG_INF;
#pragma unroll
            for (int i = 0; i < CHUNK / 32; ++i) {
                x[i] = x_s[(i * 32 + tid % 32) * HB + g];
                mx = fmaxf(mx, x[i]);  // max is exact in any order
            }
            mx = ts_butterfly_max<32>(mx);
            const float m_old = m_s[g];
            const float m_new = fmaxf(m_old, mx);
            __syncwarp();  // every lane has read m_old
            const float alpha = ts_exp(m_old - m_new);
            if (tid % 32 == 0) {
                alpha_s[g] = alpha;
                m_s[g] = m_new;
            }
            float psum = 0.0f;  // PV: this lane's probabilities, in increasing i
#pragma unroll
            for (int i = 0; i < CHUNK / 32; ++i) {
                const int jj = i * 32 + tid % 32;
                const float p = real(jj) ? ts_exp(x[i] - m_new) : 0.0f;
                if constexpr (!PV) {
                    x_s[jj * HB + g] = p;
                } else {
                    psum = psum + p;
                    // p * 2^15 = h1 + h2 + h3 exactly (down to 2^-25, i.e. 2^-40 of p): each
                    // part is the rest rounded to float16, and each rest is exact in float32.
                    const float ps = p * PSCALE;
                    const __half h1 = __float2half_rn(ps);
                    const float r1 = ps - __half2float(h1);
                    const __half h2 = __float2half_rn(r1);
                    const __half h3 = __float2half_rn(r1 - __half2float(h2));
                    // Token jj's place in its group's B fragments (see ph_s).
                    const int r = jj % 16, t = (r % 8) / 2;
                    unsigned short* dst = ph_s + ((jj / 16 * 3 * 8 + g) * 4 + t) * 4 + (r / 8) * 2 + r % 2;
                    dst[0] = __half_as_ushort(h1);
                    dst[8 * 4 * 4] = __half_as_ushort(h2);      // the next part: 8 heads x 4 lanes x 4 halves on
                    dst[2 * 8 * 4 * 4] = __half_as_ushort(h3);
                }
            }
            if constexpr (PV) {
                psum = ts_butterfly_sum<32>(psum);  // the twin's pairwise_sum over the 32 lanes
                if (tid % 32 == 0) l_s[g] = __fmaf_rn(l_s[g], alpha, psum);
            }
        }
        // V of this chunk has landed: wait for it (the next K may stay in flight).
        if (more) cp_async_wait<1>();
        else cp_async_wait<0>();
        __syncthreads();
        // ---- D. rescale, then accumulate p * v, row by row ---------------
        if constexpr (PV) {
            // Tensor cores: acc *= alpha per head (column), then for every 16 tokens in
            // increasing order and every part h1, h2, h3: acc = mma(V^T, part, acc).
            const int l32 = tid % 32;
            const float al0 = alpha_s[2 * (l32 % 4)], al1 = alpha_s[2 * (l32 % 4) + 1];
#pragma unroll
            for (int i = 0; i < MT; ++i) {
                acc_tc[i][0] = acc_tc[i][0] * al0; acc_tc[i][1] = acc_tc[i][1] * al1;
                acc_tc[i][2] = acc_tc[i][2] * al0; acc_tc[i][3] = acc_tc[i][3] * al1;
            }
            const int groups = FULL ? CHUNK / 16 : (b - c0 + 15) / 16;  // no group without a real token
            const uint2* parts = reinterpret_cast<const uint2*>(ph_s);
            const int r8 = l32 % 8, mat = l32 / 8;  // this lane's ldmatrix row and matrix
            for (int grp = 0; grp < groups; ++grp) {
                unsigned bfr[3][2];
#pragma unroll
                for (int part = 0; part < 3; ++part) {
                    const uint2 w = parts[(grp * 3 + part) * 32 + l32];
                    bfr[part][0] = w.x;
                    bfr[part][1] = w.y;
                }
                // Matrices 2, 3: tokens 8-15; matrices 1, 3: dims + 8 (the A fragment's order).
                const int tok = grp * 16 + r8 + (mat >> 1) * 8;
                const uint4* vrow = v_s + tok * num_vecs;
#pragma unroll
                for (int i = 0; i < MT; ++i) {
                    const int mt = warp + i * NWARPS;
                    unsigned afr[4];
                    ts_ldmatrix_x4_trans(vrow + ((2 * mt + (mat & 1)) ^ r8), afr);
#pragma unroll
                    for (int part = 0; part < 3; ++part) ts_mma_16816(acc_tc[i], afr, bfr[part]);
                }
            }
        } else {
#pragma unroll
        for (int g = 0; g < HT; ++g) {
            const float al = alpha_s[slice * HT + g];
            lrow[g] = lrow[g] * al;
#pragma unroll
            for (int e = 0; e < EPL; ++e) acc[g][e] = acc[g][e] * al;
        }
#pragma unroll
        for (int kk = 0; kk < TPR; ++kk) {  // tokens in increasing j: the twin's order
            const int j = kk * ROWS + row;
            if (!real(j)) continue;  // padding token: no add at all
            float vf[VPL][VEC];
#pragma unroll
            for (int i = 0; i < VPL; ++i) {
                const int off = vec_off(i);
                const uint4 raw = (EVEN || off >= 0) ? v_s[j * num_vecs + off / VEC] : make_uint4(0u, 0u, 0u, 0u);
                to_float(raw, vf[i], T());
            }
            float p_j[HT];  // this token's probability for each head of the slice, in one load
            load_heads<HT>(x_s + j * HB + slice * HT, p_j);
#pragma unroll
            for (int g = 0; g < HT; ++g) {
                const float p = p_j[g];
                lrow[g] = lrow[g] + p;
#pragma unroll
                for (int e = 0; e < EPL; ++e)  // acc = fma(p, v, acc): one instruction, one rounding
                    acc[g][e] = __fmaf_rn(p, vf[e / VEC][e % VEC], acc[g][e]);
            }
        }
        }
        __syncthreads();  // x_s, ph_s and v_s are rewritten next
        if (more) copy_tile(v_s, value_cache, next_bases, c0 + CHUNK, ts_bool<PV>());  // the next chunk's V
    };

    for (int c0 = a, buf = 0; c0 < b; c0 += CHUNK, buf ^= 1) {
        if (c0 + CHUNK <= b) run_chunk(c0, buf, ts_bool<true>());
        else run_chunk(c0, buf, ts_bool<false>());
    }

    if constexpr (PV) {
        // Each lane's C fragments are final: o = acc / (l * 2^15), l from l_s (complete
        // since the last chunk's barriers).
        const int l32 = tid % 32;
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int d = 16 * (warp + i * NWARPS) + l32 / 4 + 8 * (c / 2);
                const int h = 2 * (l32 % 4) + c % 2;
                if (h >= hcount) continue;
                const float o = acc_tc[i][c] / (l_s[h] * PSCALE);
                const long long head = static_cast<long long>(seq) * num_heads + g0 + h;
                if (SPLIT) part_out[(head * max_parts + blockIdx.z) * head_dim + d] = o;
                else store_out(out + head * head_dim + d, o);
            }
        if (SPLIT && tid < hcount) {
            const long long pi = (static_cast<long long>(seq) * num_heads + g0 + tid) * max_parts + blockIdx.z;
            part_m[pi] = m_s[tid];
            part_l[pi] = l_s[tid];
        }
        return;
    }
    // ---- combine a slice's rows: butterfly inside the warp, pairwise across its warps ---
#pragma unroll
    for (int g = 0; g < HT; ++g) {
#pragma unroll
        for (int mask = LANES; mask < 32; mask <<= 1) {
            lrow[g] = lrow[g] + __shfl_xor_sync(0xffffffffu, lrow[g], mask);
#pragma unroll
            for (int e = 0; e < EPL; ++e) acc[g][e] = acc[g][e] + __shfl_xor_sync(0xffffffffu, acc[g][e], mask);
        }
    }
    if (tid % 32 < LANES) {  // the first row of each warp now holds the warp's sum
#pragma unroll
        for (int g = 0; g < HT; ++g) {
            if (lane == 0) lred_s[warp][g] = lrow[g];
#pragma unroll
            for (int i = 0; i < VPL; ++i) {
                const int off = vec_off(i);
                if (off < 0) continue;
#pragma unroll
                for (int e = 0; e < VEC; ++e) red_s[(warp * HT + g) * head_dim + off + e] = acc[g][i * VEC + e];
            }
        }
    }
    __syncthreads();
    // Warp w of slice s is warp s * WPS + w; the tree over a slice's warps is
    // pairwise: (w0 + w1) + (w2 + w3) for four, w0 + w1 for two, w0 for one.
    auto slice_sum = [&](auto value) {
        if constexpr (WPS == 4) return (value(0) + value(1)) + (value(2) + value(3));
        else if constexpr (WPS == 2) return value(0) + value(1);
        else return value(0);
    };
    for (int i = tid; i < hcount * head_dim; i += NT) {
        const int h = i / head_dim;  // head of the block
        const int d = i % head_dim;
        const int s = h / HT, g = h % HT;
        const float l = slice_sum([&](int w) { return lred_s[s * WPS + w][g]; });
        const float sum = slice_sum([&](int w) { return red_s[((s * WPS + w) * HT + g) * head_dim + d]; });
        const float o = sum / l;
        const long long head = static_cast<long long>(seq) * num_heads + g0 + h;
        if (SPLIT) {
            const long long pi = head * max_parts + blockIdx.z;
            part_out[pi * head_dim + d] = o;
            if (d == 0) { part_m[pi] = m_s[h]; part_l[pi] = l; }
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
        float num = 0.0f;                  // num = fma(w_i, o_i, num), i = 0, 1, ...
        for (int i = 0; i < n; ++i) num = __fmaf_rn(w_s[i], part_out[(head * max_parts + i) * head_dim + d], num);
        store_out(out + head * head_dim + d, num / den);
    }
}
