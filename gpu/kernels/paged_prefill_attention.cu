// paged_prefill_attention.cu -- causal prefill attention over a paged KV cache,
// bit-identical to its NumPy twin tinyserve_sim/data/paged_prefill_attention.py
// (read its docstring first: it states the order of every float operation
// done here), with the geometry of tinyserve_sim/data/prefill_plan.py.
//
// FlashAttention-style tiling on CUDA cores (no tensor cores: their
// accumulation order is not specified, so no twin could reproduce it):
//
//   grid.x : work item = (sequence, first query row), longest first (host-sorted)
//   grid.y : KV head
//   block  : NT = 256 threads = 16 row groups (RG) x 16 column lanes (CL); two
//            blocks share an SM where their shared memory fits (float16, padded
//            head dims up to 192; at most 128 registers each), so one computes
//            while the other waits at a barrier
//
// A tile of BM = 16 * TM = 64 query rows (token-major (token, head of the GQA
// group) pairs of one KV head) stays in shared memory as float32. For every
// tile of BN keys (64, or 32 when the padded head dim DP exceeds 128):
//
//   S = Q K^T  thread (rg, cl) computes rows rg*TM .. rg*TM+TM-1 against keys
//              cl, cl+16, ...: a TM x TN register tile, each element one
//              sequential chain of fused multiply-adds over d. Every float4
//              loaded from shared memory feeds TN (or TM) x 4 FMAs.
//   softmax    per row: max over the thread's keys, then a 16-lane butterfly;
//              alpha, p = exp(x - m); the 16 lanes' sums of p by a butterfly.
//   O += P V   one FMA per (row, dim, key), keys in order, in a register tile
//              of its own mapping: at DP 128 and 256, a warp owns 8 rows and
//              lane l the dims 4l .. 4l+3 (+128): each float16 value converted
//              feeds 8 FMAs; at DP 64 and 192, the scores' own rows and dims
//              64u + 4cl .. 64u + 4cl + 3 (then a thread rescales and divides its
//              own rows; else alpha and l pass through shared memory).
//
// PV (the plan's tensor_core_values, float16, on top of the tensor-core scores): O += P V
// on tensor cores instead. Warp w owns rows 16 (w % 4) .. + 15 and half the padded dims
// (w / 4), as DP / 16 blocks of 8 dims of mma.sync m16n8k16 accumulators (the same
// number of registers as the CUDA-core mapping). Per 16 keys of the tile, each lane reads
// its 8 probabilities of the A fragment from P^T (conflict-free), splits each p * 2^15
// exactly into three float16 parts (h1 = f16(p), h2 = f16(p - h1), h3 = f16(p - h1 - h2):
// the twin's tensor_core.float16_parts), and issues one mma per part and 8 dims, with B
// (16 keys x 8 dims of V) from one ldmatrix.x4.trans per 16 dims. out = acc / (l * 2^15).
//
// Keys and values are copied global -> shared by cp.async in the cache's own
// dtype and converted to float as the inner loops read them (float16: one 8-byte
// load and two conversions per 4 elements), K of the next tile while this
// tile's P V runs, V of the next tile while the next tile's scores run.
//
// Shared memory rows are padded by 16 bytes (rows stay 16-byte aligned for
// cp.async): the 16 lanes that read 16 different key rows at the same d then
// hit 16 different bank quads (float32), or two lanes to a bank pair (float16:
// two wavefronts for the 16 rows' 8 bytes, as many as float32's 16 bytes).
#include <cuda_fp16.h>
// cache_vectors.cuh: to_float, cp_async16 (and its zero-filling form), commit, wait
#include "cache_vectors.cuh"
#include "exact_math.cuh"
#include "tensor_core.cuh"

namespace {

constexpr int GROUPS = 16;  // column lanes per row group (and per query row)

template <bool B> struct ts_bool { static constexpr bool value = B; };  // a bool as a type

// Blocks per SM the kernel is compiled for: two (at most 128 registers per thread)
// where two blocks' shared memory fits an SM (float16 tiles, padded head dims up to
// 192); else one, and the compiler may use more registers (no spills at D = 256).
template <typename T, int DP> struct blocks_per_sm {
    static constexpr int value = (sizeof(T) == 2 && DP <= 192) ? 2 : 1;
};

// Four consecutive elements of a shared-memory K or V tile (8 bytes of float16, or 16
// bytes of float32; aligned), converted exactly to float.
__device__ __forceinline__ float4 load4(const __half* p) {
    const float2 raw = *reinterpret_cast<const float2*>(p);  // one 8-byte load
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
    return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }

// Four consecutive output elements (8 bytes of float16 or 16 bytes of float32; aligned).
__device__ __forceinline__ void store4(__half* p, float a, float b, float c, float d) {
    __half2* h = reinterpret_cast<__half2*>(p);
    h[0] = __floats2half2_rn(a, b);
    h[1] = __floats2half2_rn(c, d);
}
__device__ __forceinline__ void store4(float* p, float a, float b, float c, float d) {
    *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
}

// Two consecutive output elements (4 bytes of float16, or 8 of float32; aligned).
__device__ __forceinline__ void store2(__half* p, float a, float b) {
    *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
}
__device__ __forceinline__ void store2(float* p, float a, float b) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
}

// A float16 pair as the 32 bits an mma fragment register holds (a in the low half).
__device__ __forceinline__ unsigned half2_bits(__half2 h) {
    return *reinterpret_cast<const unsigned*>(&h);
}


}  // namespace

template <typename T, int DP, int TM, int BN, int NT, bool TC, bool PV>
__global__ void __launch_bounds__(NT, (blocks_per_sm<T, DP>::value)) paged_prefill_attention_kernel(
    T* __restrict__ out,                     // [T, Hq, D]
    const T* __restrict__ query,             // [T, Hq, D]
    const T* __restrict__ key_cache,         // [num_blocks, block_size, Hkv, D]
    const T* __restrict__ value_cache,
    const int* __restrict__ block_tables,    // [S, max_blocks]
    const int* __restrict__ seq_lens,        // [S]: tokens after this step
    const int* __restrict__ query_start_loc, // [S + 1]
    const int* __restrict__ work,            // [gridDim.x, 2]: (sequence, first query row)
    const float scale,
    const int num_heads, const int num_kv_heads, const int head_dim,
    const int block_size, const int max_blocks)
{
    constexpr int BM = (NT / GROUPS) * TM;  // query rows of the tile: NT/16 row groups of TM
    constexpr int TN = BN / GROUPS;  // keys per column lane
    constexpr int DV = DP / 64;      // float4 output vectors per column lane (TD = 4 * DV)
    constexpr int EV = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte vector
    constexpr int QS = DP + 4;       // row stride (floats) of the Q tile
    constexpr int KS = DP + EV;      // row stride (elements of T) of the K and V tiles: 16 bytes of padding
    constexpr int PS = BM + 4;       // row stride of the transposed probabilities
    constexpr int NVP = DP / EV;     // 16-byte vectors of a padded row
    static_assert(BN % GROUPS == 0 && DP % 64 == 0 && TM % 4 == 0 && BN <= NT, "geometry");
    // The output phase (O += P V) has its own thread mapping: outside the contract (every
    // output element is one chain of fused multiply-adds over the keys in order, whoever
    // owns it), so it is chosen for speed. A thread owns OR rows x OC float4 columns: where
    // a warp's 32 lanes can take 32 float4 columns (DP 128, 256), one column each (OC =
    // DP / 128) and 8 rows, so that each float16 value converted feeds 8 FMAs (4 in the
    // scores' mapping); else (DP 64, 192) 16 lanes per row group, the scores' own mapping.
    constexpr int OL = (DP / 4) % 32 == 0 ? 32 : 16;  // column lanes of the output phase
    constexpr int OC = DP / (4 * OL);                 // float4 columns per thread
    constexpr int OR = BM * OL / NT;                  // output rows per thread
    static_assert(OR % 4 == 0 && OR * OC == TM * DV, "the same number of accumulators");
    // With 16 lanes the two mappings coincide: a thread's output rows are its score rows, so
    // it rescales its accumulators and divides by its own normalisers, with no shared memory.
    // (PV has a mapping of its own: alpha and l pass through shared memory.)
    constexpr bool SAME_ROWS = !PV && OL == GROUPS;
    // TC (the plan's tensor_core_scores, float16): S = Q K^T by mma.sync m16n8k16, warp w
    // taking rows 16 (w % 4) .. + 15 against half the tile's keys (8 n-blocks of 8 keys at
    // BN 64, 4 at BN 32): BN / 16 n-blocks, a chain over the padded head dim from +0. The
    // query tile is then kept as float16 (QH halves a row: 16 bytes of padding, so the
    // eight rows an ldmatrix reads fall in eight bank groups); the raw dot products go
    // through the probabilities' buffer (key-major) into the scores' own mapping.
    constexpr int QH = DP + 8;
    static_assert(!TC || (sizeof(T) == 2 && NT == 256 && BM == 64 && (BN == 64 || BN == 32)),
                  "tensor-core scores: float16, 8 warps over a 64-row tile");
    // PV: warp w's accumulators, rows 16 (w % 4) + lane / 4 (+ 8) x dims DP / 2 * (w / 4) +
    // 8 nb + 2 (lane % 4) (+ 1), nb < PNB (the C fragments of mma.sync m16n8k16).
    constexpr int PNB = DP / 16;
    constexpr float PSCALE = 32768.0f;  // 2^15: p * 2^15 <= 32768, inside float16's range
    static_assert(!PV || (TC && PNB % 2 == 0), "tensor-core P V: on top of the tensor-core scores");

    // ---- shared memory (dynamic; the launcher sizes it: PrefillPlan.shared_memory_bytes)
    extern __shared__ float4 ts_smem[];
    float* q_s = reinterpret_cast<float*>(ts_smem);  // [BM][QS] queries, float32
    float* p_s = q_s + BM * QS;                      // [BN][PS] probabilities, key-major
    T* k_t = reinterpret_cast<T*>(p_s + BN * PS);    // [BN][KS] keys of the tile, as stored
    T* v_t = k_t + BN * KS;                          // [BN][KS] values
    long long* base_s = reinterpret_cast<long long*>(v_t + BN * KS);  // [2][BN] token offsets
    float* row_s = reinterpret_cast<float*>(base_s + 2 * BN);        // [BM] a tile's alpha per row; at the end, l

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int rg = (tid >> 5) * 2 + (lane >> 4);  // row group: rows rg*TM .. rg*TM + TM - 1
    const int cl = lane & 15;                     // column lane
    const int orow = tid / OL * OR;               // output phase: rows orow .. orow + OR - 1
    const int ocol = tid % OL;                    // ... and dims 4 * ocol + 4 * OL * u, u < OC
    const int seq = work[2 * blockIdx.x];
    const int row0 = work[2 * blockIdx.x + 1];
    const int kv_head = blockIdx.y;
    const int group = num_heads / num_kv_heads;
    const int q_begin = query_start_loc[seq];
    const int q_len = query_start_loc[seq + 1] - q_begin;
    const int prefix = seq_lens[seq] - q_len;
    const int n_rows = min(BM, q_len * group - row0);        // real rows of this tile
    const int min_pos = prefix + row0 / group;               // position of its first token
    const int kv_end = prefix + (row0 + n_rows - 1) / group + 1;  // keys 0 .. kv_end-1 are read
    const int* table = block_tables + static_cast<long long>(seq) * max_blocks;

    // Element offset of key t's row (this KV head) in a cache.
    auto token_base = [&](int t) {
        const long long blk = table[t / block_size];
        return ((blk * block_size + t % block_size) * num_kv_heads + kv_head) * static_cast<long long>(head_dim);
    };
    // cp.async copies of a tile of keys (or values) starting at key c0 into `dst`, in the
    // cache's own dtype, with bases[j] the offset of key c0 + j. Rows past kv_end and the
    // padding dims are zero-filled (a copy of 0 source bytes): every element read later
    // is written by every tile.
    auto copy_tile = [&](T* dst, const T* cache, const long long* bases, int c0) {
        const int nv = head_dim / EV;  // real vectors of a row
        for (int i = tid; i < BN * NVP; i += NT) {
            const int j = i / NVP, v = i % NVP;
            const bool real = v < nv && c0 + j < kv_end;
            cp_async16(dst + j * KS + v * EV, real ? cache + bases[j] + v * EV : cache, real ? 16 : 0);
        }
        cp_async_commit();
    };

    // ---- prologue: offsets of the first key tile, the query tile (float32, or float16 with
    // TC; padded with zeros)
    if (tid < BN && tid < kv_end) base_s[tid] = token_base(tid);
    for (int i = tid; i < BM * NVP; i += NT) {  // one 16-byte vector of a query row at a time
        const int r = i / NVP, v = i % NVP;
        uint4 raw = make_uint4(0u, 0u, 0u, 0u);  // padding rows and dims: zeros
        if (r < n_rows && v * EV < head_dim) {
            const int row = row0 + r;
            const int tok = row / group;
            const long long head = static_cast<long long>(q_begin + tok) * num_heads + kv_head * group + (row - tok * group);
            raw = *reinterpret_cast<const uint4*>(query + head * head_dim + v * EV);
        }
        if constexpr (TC) {  // the float16 vector as it is, for ldmatrix
            *reinterpret_cast<uint4*>(reinterpret_cast<__half*>(q_s) + r * QH + v * EV) = raw;
        } else {  // as float32 (exact)
            float x[EV];
            to_float(raw, x, T());
            float4* q4 = reinterpret_cast<float4*>(q_s + r * QS + v * EV);
#pragma unroll
            for (int e = 0; e < EV; e += 4) q4[e / 4] = make_float4(x[e], x[e + 1], x[e + 2], x[e + 3]);
        }
    }
    __syncthreads();
    copy_tile(k_t, key_cache, base_s, 0);
    copy_tile(v_t, value_cache, base_s, 0);

    // ---- this thread's rows: positions, running max and normaliser (scores' mapping), and
    // the output accumulators (the output phase's mapping)
    int pos[TM];
    float m[TM], l[TM], acc[OR][4 * OC];  // (PV: unused, and compiled away)
    float acc_tc[PV ? PNB : 1][4];        // PV: this lane's C fragments (see PNB)
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int r = rg * TM + i;
        pos[i] = r < n_rows ? prefix + (row0 + r) / group : kv_end - 1;  // padding rows: never stored
        m[i] = TS_NEG_INF;
        l[i] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < OR; ++i)
#pragma unroll
        for (int e = 0; e < 4 * OC; ++e) acc[i][e] = 0.0f;
#pragma unroll
    for (int nb = 0; nb < (PV ? PNB : 1); ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_tc[nb][e] = 0.0f;

    // ---- S = Q K^T for this thread's TM x TN tile, online softmax, P^T to shared memory.
    // FULL: every key of the tile is visible to every row (no mask); the same body is
    // compiled a second time, with the mask, for the tiles that cross the diagonal.
    auto scores_and_softmax = [&](const int c0, auto full) {
        constexpr bool FULL = decltype(full)::value;
        float s[TM][TN];
        if constexpr (TC) {
            // Warp w: rows 16 mb .. 16 mb + 15 (mb = w % 4) against n-blocks nh * NBW ..
            // + NBW - 1 (nh = w / 4) of 8 keys each. Per 16-dim step, one ldmatrix.x4 of
            // queries (A: matrices rows 0-7 | 8-15 x dims lo | hi) and, per two n-blocks,
            // one ldmatrix.x4 of keys (B: n-block lo | hi x dims lo | hi).
            constexpr int NBW = BN / 16;
            const int mb = (tid >> 5) & 3, nh = tid >> 7;
            const int r8 = lane & 7;
            const __half* q_h = reinterpret_cast<const __half*>(q_s);
            const __half* arow = q_h + (16 * mb + r8 + 8 * ((lane >> 3) & 1)) * QH + 8 * (lane >> 4);
            float dot[NBW][4];
#pragma unroll
            for (int nb = 0; nb < NBW; ++nb)
#pragma unroll
                for (int e = 0; e < 4; ++e) dot[nb][e] = 0.0f;
#pragma unroll 4
            for (int st = 0; st < DP / 16; ++st) {
                unsigned afr[4];
                ts_ldmatrix_x4(arow + 16 * st, afr);
#pragma unroll
                for (int pb = 0; pb < NBW; pb += 2) {
                    const int key = 8 * (nh * NBW + pb + (lane >> 4)) + r8;
                    unsigned bfr[4];
                    ts_ldmatrix_x4(k_t + key * KS + 16 * st + 8 * ((lane >> 3) & 1), bfr);
                    const unsigned b_lo[2] = {bfr[0], bfr[1]}, b_hi[2] = {bfr[2], bfr[3]};
                    ts_mma_16816(dot[pb], afr, b_lo);
                    ts_mma_16816(dot[pb + 1], afr, b_hi);
                }
            }
            // dot[nb][2 hi + e]: row 16 mb + lane / 4 + 8 hi, key 8 (nh NBW + nb) + 2 (lane % 4) + e.
#pragma unroll
            for (int nb = 0; nb < NBW; ++nb)
#pragma unroll
                for (int hi = 0; hi < 2; ++hi)
#pragma unroll
                    for (int e = 0; e < 2; ++e)
                        p_s[(8 * (nh * NBW + nb) + 2 * (lane & 3) + e) * PS + 16 * mb + (lane >> 2) + 8 * hi] = dot[nb][2 * hi + e];
            __syncthreads();  // every warp's dot products, before any thread reads its own
#pragma unroll
            for (int b = 0; b < TN; ++b)
#pragma unroll
                for (int i = 0; i < TM; i += 4) {
                    const float4 d4 = *reinterpret_cast<const float4*>(p_s + (cl + GROUPS * b) * PS + rg * TM + i);
                    s[i][b] = d4.x; s[i + 1][b] = d4.y; s[i + 2][b] = d4.z; s[i + 3][b] = d4.w;
                }
        } else {
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int b = 0; b < TN; ++b) s[i][b] = 0.0f;
#pragma unroll 8
        for (int d = 0; d < DP; d += 4) {
            float4 kv[TN];
#pragma unroll
            for (int b = 0; b < TN; ++b) kv[b] = load4(k_t + (cl + GROUPS * b) * KS + d);
#pragma unroll
            for (int i = 0; i < TM; ++i) {
                const float4 qv = *reinterpret_cast<const float4*>(q_s + (rg * TM + i) * QS + d);
#pragma unroll
                for (int b = 0; b < TN; ++b) {  // d, d+1, d+2, d+3: the twin's sequential chain
                    s[i][b] = __fmaf_rn(qv.x, kv[b].x, s[i][b]);
                    s[i][b] = __fmaf_rn(qv.y, kv[b].y, s[i][b]);
                    s[i][b] = __fmaf_rn(qv.z, kv[b].z, s[i][b]);
                    s[i][b] = __fmaf_rn(qv.w, kv[b].w, s[i][b]);
                }
            }
        }
        }
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            float mx = TS_NEG_INF;
#pragma unroll
            for (int b = 0; b < TN; ++b) {
                float x = s[i][b] * scale;
                if (!FULL && c0 + cl + GROUPS * b > pos[i]) x = TS_NEG_INF;  // causal mask
                s[i][b] = x;
                mx = fmaxf(mx, x);  // max is exact in any order
            }
            mx = ts_butterfly_max<GROUPS>(mx);  // over the row's 16 column lanes
            const float m_new = fmaxf(m[i], mx);
            // alpha = exp(m - m_new). An unchanged max gives exactly exp(0) = 1, so the
            // exp, and below the rescale by 1, are skipped: the same bits, less work.
            const float diff = m[i] - m_new;
            const float alpha = diff == 0.0f ? 1.0f : ts_exp(diff);
            m[i] = m_new;
            float tile_sum = 0.0f;  // this lane's keys cl, cl+16, ... in order
#pragma unroll
            for (int b = 0; b < TN; ++b) {
                s[i][b] = ts_exp(s[i][b] - m_new);
                tile_sum = tile_sum + s[i][b];
            }
            tile_sum = ts_butterfly_sum<GROUPS>(tile_sum);  // masks 1, 2, 4, 8: pairwise tree
            if (alpha != 1.0f) {
                l[i] = l[i] * alpha;
                if constexpr (SAME_ROWS) {
#pragma unroll
                    for (int e = 0; e < 4 * OC; ++e) acc[i][e] = acc[i][e] * alpha;
                }
            }
            if (!SAME_ROWS && cl == 0) row_s[rg * TM + i] = alpha;  // the output phase rescales its rows
            l[i] = l[i] + tile_sum;
        }
        // P^T: key-major, so that the output phase reads TM rows of one key as float4s.
#pragma unroll
        for (int b = 0; b < TN; ++b)
#pragma unroll
            for (int i = 0; i < TM; i += 4)
                *reinterpret_cast<float4*>(p_s + (cl + GROUPS * b) * PS + rg * TM + i) =
                    make_float4(s[i][b], s[i + 1][b], s[i + 2][b], s[i + 3][b]);
    };

    // ---- O += P V in the output phase's mapping: first the rescale by this tile's alpha
    // (skipped where it is exactly 1: the same bits), then keys in order, one fused
    // multiply-add per (row, dim, key); or, with PV, per 16 keys in order and each float16
    // part of the probabilities, one mma.sync per 8 dims.
    auto accumulate = [&]() {
        if constexpr (PV) {
            // Tensor cores. Lane (g, t) = (lane / 4, lane % 4) of warp (mb, nh) = (w % 4, w / 4):
            // rows r0 = 16 mb + g and r0 + 8; the A fragment's keys 2t, 2t + 1 (+ 8) of each 16.
            const int warp = tid >> 5, mb = warp & 3, nh = warp >> 2;
            const int g = lane >> 2, t = lane & 3, r0 = 16 * mb + g;
            // acc *= alpha for each of the two rows (skipped where it is exactly 1: same bits).
            const float al0 = row_s[r0], al1 = row_s[r0 + 8];
            if (al0 != 1.0f) {
#pragma unroll
                for (int nb = 0; nb < PNB; ++nb) { acc_tc[nb][0] = acc_tc[nb][0] * al0; acc_tc[nb][1] = acc_tc[nb][1] * al0; }
            }
            if (al1 != 1.0f) {
#pragma unroll
                for (int nb = 0; nb < PNB; ++nb) { acc_tc[nb][2] = acc_tc[nb][2] * al1; acc_tc[nb][3] = acc_tc[nb][3] * al1; }
            }
            // ldmatrix.x4.trans rows: lane l gives key 8 ((l / 8) % 2) + l % 8 of the 16, at
            // dims + 8 (l / 16) of each 16: matrices 0, 1 (keys 0-7, 8-15) are B of the lower
            // 8 dims, matrices 2, 3 of the upper 8.
            const int vkey = 8 * ((lane >> 3) & 1) + (lane & 7);
            const T* vbase = v_t + vkey * KS + nh * (DP / 2) + 8 * (lane >> 4);
#pragma unroll
            for (int ks = 0; ks < BN / 16; ++ks) {
                // The A fragment's probabilities (P^T is key-major): a0 a1 (r0, k, k + 1),
                // a2 a3 (r0 + 8, ...), a4 .. a7 the same at keys + 8; k = 16 ks + 2t.
                const float* pk = p_s + (16 * ks + 2 * t) * PS + r0;
                const float pa[8] = {pk[0], pk[PS], pk[8], pk[PS + 8],
                                     pk[8 * PS], pk[9 * PS], pk[8 * PS + 8], pk[9 * PS + 8]};
                // p * 2^15 = h1 + h2 + h3 exactly (down to 2^-25): each part is the rest
                // rounded to float16, each rest exact in float32 (two values per conversion).
                unsigned afr[3][4];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float x0 = pa[2 * i] * PSCALE, x1 = pa[2 * i + 1] * PSCALE;
                    const __half2 h1 = __floats2half2_rn(x0, x1);
                    const float2 f1 = __half22float2(h1);
                    const float y0 = x0 - f1.x, y1 = x1 - f1.y;
                    const __half2 h2 = __floats2half2_rn(y0, y1);
                    const float2 f2 = __half22float2(h2);
                    const __half2 h3 = __floats2half2_rn(y0 - f2.x, y1 - f2.y);
                    afr[0][i] = half2_bits(h1);
                    afr[1][i] = half2_bits(h2);
                    afr[2][i] = half2_bits(h3);
                }
                // Then, per 16 dims, B of V from one ldmatrix.x4.trans, and per part and 8 dims
                // one mma: every accumulator takes h1, h2, h3 of these 16 keys in that order.
#pragma unroll
                for (int pb = 0; pb < PNB / 2; ++pb) {
                    unsigned bfr[4];
                    ts_ldmatrix_x4_trans(vbase + 16 * ks * KS + 16 * pb, bfr);
                    const unsigned b_lo[2] = {bfr[0], bfr[1]}, b_hi[2] = {bfr[2], bfr[3]};
#pragma unroll
                    for (int part = 0; part < 3; ++part) {
                        ts_mma_16816(acc_tc[2 * pb], afr[part], b_lo);
                        ts_mma_16816(acc_tc[2 * pb + 1], afr[part], b_hi);
                    }
                }
            }
            return;  // (the CUDA-core phase below is compiled away)
        }
        if constexpr (!SAME_ROWS) {
            float alpha[OR];
#pragma unroll
            for (int i = 0; i < OR; i += 4) {
                const float4 a4 = *reinterpret_cast<const float4*>(row_s + orow + i);
                alpha[i] = a4.x; alpha[i + 1] = a4.y; alpha[i + 2] = a4.z; alpha[i + 3] = a4.w;
            }
#pragma unroll
            for (int i = 0; i < OR; ++i) {
                if (alpha[i] != 1.0f) {
#pragma unroll
                    for (int e = 0; e < 4 * OC; ++e) acc[i][e] = acc[i][e] * alpha[i];
                }
            }
        }
#pragma unroll 8
        for (int j = 0; j < BN; ++j) {
            float p[OR];  // key j's probabilities for this thread's rows: one float4 per 4 rows
#pragma unroll
            for (int i = 0; i < OR; i += 4) {
                const float4 p4 = *reinterpret_cast<const float4*>(p_s + j * PS + orow + i);
                p[i] = p4.x; p[i + 1] = p4.y; p[i + 2] = p4.z; p[i + 3] = p4.w;
            }
#pragma unroll
            for (int u = 0; u < OC; ++u) {
                const float4 v4 = load4(v_t + j * KS + 4 * OL * u + 4 * ocol);
#pragma unroll
                for (int i = 0; i < OR; ++i) {
                    acc[i][4 * u + 0] = __fmaf_rn(p[i], v4.x, acc[i][4 * u + 0]);
                    acc[i][4 * u + 1] = __fmaf_rn(p[i], v4.y, acc[i][4 * u + 1]);
                    acc[i][4 * u + 2] = __fmaf_rn(p[i], v4.z, acc[i][4 * u + 2]);
                    acc[i][4 * u + 3] = __fmaf_rn(p[i], v4.w, acc[i][4 * u + 3]);
                }
            }
        }
    };

    // ---- the key tiles: two barriers per tile. cp.async groups, per thread, in issue
    // order: K0 V0 | K1 | V1 | K2 | V2 | ... K of tile c+1 is copied while
    // tile c's P V runs (the K tile is free once the scores are done); V of tile c is
    // copied while tile c's scores run, issued just after the tile's first barrier, which
    // is also the moment every thread has finished tile c-1's P V: the V tile and P^T
    // are free, and no third barrier is needed to say so. Two blocks share each SM, so
    // one computes while the other waits at a barrier.
    for (int c0 = 0, buf = 0; c0 < kv_end; c0 += BN, buf ^= 1) {
        const bool more = c0 + BN < kv_end;
        long long* next_bases = base_s + (buf ^ 1) * BN;
        // Offsets of the next tile's keys. Their buffer (tile c-1's) was last read by
        // tile c-1's V copy, issued before tile c-1's second barrier.
        if (more && tid < BN && c0 + BN + tid < kv_end) next_bases[tid] = token_base(c0 + BN + tid);
        if (c0 == 0) cp_async_wait<1>();  // K0 has landed (V0 may be in flight)
        else cp_async_wait<0>();          // this tile's keys (the only group in flight)
        __syncthreads();  // every thread's keys; next_bases written; tile c-1's P V done
        if (c0 > 0) copy_tile(v_t, value_cache, base_s + buf * BN, c0);  // this tile's values
        if (c0 + BN - 1 <= min_pos) scores_and_softmax(c0, ts_bool<true>());
        else scores_and_softmax(c0, ts_bool<false>());
        cp_async_wait<0>();  // this tile's values
        __syncthreads();     // P^T complete, the K tile no longer read, the values visible
        if (more) copy_tile(k_t, key_cache, next_bases, c0 + BN);
        accumulate();
    }

    // ---- out = acc / l for the real rows and dims (the normalisers through shared memory,
    // from the scores' mapping to the output phase's, where the two differ)
    if constexpr (!SAME_ROWS) {
        __syncthreads();  // every thread's last output phase has read row_s
#pragma unroll
        for (int i = 0; i < TM; ++i)
            if (cl == 0) row_s[rg * TM + i] = l[i];
        __syncthreads();
    }
    if constexpr (PV) {
        // out = acc / (l * 2^15) for this lane's two rows and its dims (two per 8), + 0.0f as below.
        const int warp = tid >> 5, mb = warp & 3, nh = warp >> 2;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = 16 * mb + (lane >> 2) + 8 * h;
            if (r >= n_rows) continue;
            const float lr = row_s[r] * PSCALE;
            const int row = row0 + r;
            const int tok = row / group;
            const long long head = static_cast<long long>(q_begin + tok) * num_heads + kv_head * group + (row - tok * group);
#pragma unroll
            for (int nb = 0; nb < PNB; ++nb) {
                const int d = nh * (DP / 2) + 8 * nb + 2 * (lane & 3);
                if (d >= head_dim) continue;  // head_dim is a multiple of 8: both or neither
                store2(out + head * head_dim + d, acc_tc[nb][2 * h] / lr + 0.0f, acc_tc[nb][2 * h + 1] / lr + 0.0f);
            }
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < OR; ++i) {
        const int r = orow + i;
        if (r >= n_rows) continue;
        float lr;
        if constexpr (SAME_ROWS) lr = l[i];
        else lr = row_s[r];
        const int row = row0 + r;
        const int tok = row / group;
        const long long head = static_cast<long long>(q_begin + tok) * num_heads + kv_head * group + (row - tok * group);
#pragma unroll
        for (int u = 0; u < OC; ++u) {
            const int d = 4 * OL * u + 4 * ocol;
            if (d >= head_dim) continue;  // head_dim is a multiple of 8: all 4 or none
            // + 0.0f turns a -0 into +0 and changes nothing else: the key tiles wholly past
            // an earlier row's position add fma(0, v, acc) to it, which is acc except that
            // -0 becomes +0 (0 * v + -0 = +0 for v >= 0); the twin, which does not walk those
            // tiles for that row, adds the same +0 (its docstring).
            store4(out + head * head_dim + d, acc[i][4 * u] / lr + 0.0f, acc[i][4 * u + 1] / lr + 0.0f,
                   acc[i][4 * u + 2] / lr + 0.0f, acc[i][4 * u + 3] / lr + 0.0f);
        }
    }
}
