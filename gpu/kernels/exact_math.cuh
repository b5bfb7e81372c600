// exact_math.cuh -- float32 helpers that the NumPy twins reproduce bit for bit.
//
// Mirror of tinyserve_sim/data/exact_math.py. Every operation below is a single
// correctly rounded IEEE-754 float32 operation, and the module is compiled
// with --fmad=false (gpu/build.py), so `a * b + c` is a multiply and an add,
// rounded twice, exactly like NumPy. Never call expf/__expf/ldexpf here:
// they are not correctly rounded and differ from NumPy.
#pragma once

// Hexadecimal float literals: the very same bits as the Python constants.
#define TS_LOG2E 0x1.715476p+0f
#define TS_LN2_HI 0x1.63p-1f        // 9 significant bits: k * LN2_HI is exact
#define TS_LN2_LO (-0x1.bd0106p-13f)
#define TS_EXP_MIN_K (-125.0f)      // below: flush to 0 (no subnormal results)
#define TS_EXP_MAX_K 127.0f         // above: +inf
#define TS_NEG_INF __int_as_float(0xff800000)

// Deterministic exp: k = rint(x*log2e); r = fma(-k, LN2_LO, fma(-k, LN2_HI, x));
// p = degree-7 Taylor polynomial of e^r in Horner form, one fused multiply-add
// per step; result p * 2^k with 2^k assembled from its exponent bits (exact,
// always a normal float). The twin (exp_f32) does the same fused multiply-adds
// with its exact fma_f32. (k * LN2_HI is exact, so the first FMA is the same
// value as x - k * LN2_HI; the others round once where a multiply and an add
// would round twice, and save an instruction each: 8 of about 32 in the SASS.)
__device__ __forceinline__ float ts_exp(float x) {
    if (isnan(x)) return x;
    const float kf = rintf(x * TS_LOG2E);
    if (kf < TS_EXP_MIN_K) return 0.0f;                    // also x == -inf
    if (kf > TS_EXP_MAX_K) return __int_as_float(0x7f800000);  // +inf
    float r = __fmaf_rn(-kf, TS_LN2_HI, x);
    r = __fmaf_rn(-kf, TS_LN2_LO, r);
    float p = 0x1.a01a02p-13f;                  // 1/7!
    p = __fmaf_rn(p, r, 0x1.6c16c2p-10f);       // 1/6!
    p = __fmaf_rn(p, r, 0x1.111112p-7f);        // 1/5!
    p = __fmaf_rn(p, r, 0x1.555556p-5f);        // 1/4!
    p = __fmaf_rn(p, r, 0x1.555556p-3f);        // 1/3!
    p = __fmaf_rn(p, r, 0x1.0p-1f);             // 1/2!
    p = __fmaf_rn(p, r, 0x1.0p+0f);             // 1/1!
    p = __fmaf_rn(p, r, 0x1.0p+0f);             // 1/0!
    const float two_k = __int_as_float((static_cast<int>(kf) + 127) << 23);
    return p * two_k;
}

// Butterfly sum over the `width` lanes of an aligned lane group (width a power
// of two <= 32). Lane i adds lane i^1, then i^2, ...: the pairwise tree of the
// twin's pairwise_sum; every lane of the group ends with identical bits.
template <int WIDTH>
__device__ __forceinline__ float ts_butterfly_sum(float v) {
#pragma unroll
    for (int mask = 1; mask < WIDTH; mask <<= 1) {
        v = v + __shfl_xor_sync(0xffffffffu, v, mask);
    }
    return v;
}

// Max over the same lane group. Max is exact in any order (up to the sign of
// zero, which no later operation can observe), so no tree has to be mirrored.
template <int WIDTH>
__device__ __forceinline__ float ts_butterfly_max(float v) {
#pragma unroll
    for (int mask = 1; mask < WIDTH; mask <<= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, mask));
    }
    return v;
}

__host__ __device__ constexpr int ts_min(int a, int b) { return a < b ? a : b; }
__host__ __device__ constexpr int ts_max(int a, int b) { return a > b ? a : b; }

// Reduce-scatter butterfly: V partial sums per lane (one per head), summed
// over the W lanes of an aligned lane group. Level k uses mask W >> (k+1):
// while there are several values, a lane keeps the lower or upper half of
// them (by its mask bit), sends the other half to its partner and adds what
// it receives; once one value is left it continues as a plain butterfly.
// Every head's total is therefore the tree "add lanes i and i + W/2, then
// i and i + W/4, ...", which is the twin's halving_sum. On return `head` is
// the first head whose total this lane holds, and the result holds
// max(1, V / W) consecutive heads' totals.
template <int W, int V>
__device__ __forceinline__ const float* ts_reduce_scatter_sum(float (&v)[V], int lane, int& head) {
    head = 0;
    int cnt = V;
#pragma unroll
    for (int mask = W / 2; mask >= 1; mask >>= 1) {
        if (cnt > 1) {
            const bool upper = (lane & mask) != 0;
            const int half = cnt / 2;
#pragma unroll
            for (int k = 0; k < V / 2; ++k) {
                if (k < half) {
                    const float send = upper ? v[k] : v[k + half];
                    const float keep = upper ? v[k + half] : v[k];
                    v[k] = keep + __shfl_xor_sync(0xffffffffu, send, mask);
                }
            }
            if (upper) head += half;
            cnt = half;
        } else {
            v[0] = v[0] + __shfl_xor_sync(0xffffffffu, v[0], mask);
        }
    }
    return v;
}
