// seed_heuristics.cu -- the seed README's three cache heuristics, as they were
// evidently meant to work. Twin: tinyserve_sim/data/seed_heuristics.py (its
// docstring says what each computes and why; docs/errata.md lists the printed
// versions' bugs). Every float operation below is one float32 operation in the
// twin's order; the module is compiled with --fmad=false.
#include <cuda_fp16.h>
#include "cache_vectors.cuh"
#include "exact_math.cuh"

// Query analysis. Grid: one thread block of 128 threads per query position.
// Thread t sums q_d * q_d for d = t, t + 128, ... (sequential; consecutive
// threads read consecutive elements: coalesced). The 128 partial sums are
// added by a butterfly in each warp (masks 1..16: a pairwise tree over the
// lanes) and then the 4 warp totals pairwise, (w0 + w1) + (w2 + w3): together
// the twin's pairwise_sum over the 128 partials in thread order. (The seed's
// version read one element hidden_size times and raced on the sum.)
template <typename T>
__global__ void __launch_bounds__(128) query_analysis_kernel(
    float* __restrict__ complexity,        // [N] mean of the squared elements
    int* __restrict__ requirement,         // [N] 0 low, 1 medium, 2 high
    const T* __restrict__ queries,         // [N, hidden]
    const int hidden,
    const float low_threshold,
    const float high_threshold)
{
    __shared__ float warp_sum[4];
    const T* q = queries + static_cast<long long>(blockIdx.x) * hidden;
    float part = 0.0f;
    for (int d = threadIdx.x; d < hidden; d += 128) {
        const float x = load_float(q + d);
        part = part + x * x;               // multiply, then add: two roundings
    }
    part = ts_butterfly_sum<32>(part);
    if (threadIdx.x % 32 == 0) warp_sum[threadIdx.x / 32] = part;
    __syncthreads();
    if (threadIdx.x == 0) {
        const float total = (warp_sum[0] + warp_sum[1]) + (warp_sum[2] + warp_sum[3]);
        const float c = total / static_cast<float>(hidden);   // IEEE division (-prec-div=true)
        complexity[blockIdx.x] = c;
        requirement[blockIdx.x] = c > high_threshold ? 2 : (c > low_threshold ? 1 : 0);
    }
}

// Cache selection: one thread per position. Position i owns the seed's cache
// slots 4i .. 4i+3, so the count granted is all there is to write (in the seed,
// positions i and i/4 overwrote each other's slots).
extern "C" __global__ void cache_selection_kernel(
    float* __restrict__ score,             // [N] the seed's selection score
    int* __restrict__ granted,             // [N] cache blocks granted, 0..4
    const float* __restrict__ complexity,  // [N]
    const int* __restrict__ requirement,   // [N] 0..2
    const int* __restrict__ history,       // [N] past accesses
    const int n,
    const float threshold)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int r = requirement[i];
    // complexity * 0.4f + requirement * 0.3f + (history / 100.0f) * 0.3f, left to right:
    const float a = complexity[i] * 0.4f;
    const float b = static_cast<float>(r) * 0.3f;
    const float hist = static_cast<float>(history[i]) / 100.0f;
    const float s = (a + b) + hist * 0.3f;
    score[i] = s;
    granted[i] = s > threshold ? min(r + 1, 4) : (s > threshold * 0.5f ? 1 : 0);
}

// Adaptive cache management: one thread per cache block; a new allocation
// array (the seed's incremented a const input through atomicAdd and did not compile).
extern "C" __global__ void adaptive_cache_management_kernel(
    int* __restrict__ new_allocation,      // [B] 0..4
    const float* __restrict__ hit_rates,   // [B] in [0, 1]
    const int* __restrict__ access_frequencies,  // [B]
    const int* __restrict__ allocation,    // [B] 0..4
    const int n,
    const float hit_rate_threshold,
    const int frequency_threshold)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float hit = hit_rates[i];
    const int freq = access_frequencies[i];
    int a = allocation[i];
    if (hit < hit_rate_threshold && freq > frequency_threshold) {
        a = min(a + 1, 4);                 // missing often on a busy block: give it more
    } else if (hit > hit_rate_threshold * 1.5f
               && static_cast<float>(freq) < static_cast<float>(frequency_threshold) * 0.5f) {
        a = max(a - 1, 0);                 // hitting anyway on a quiet block: take some back
    }
    new_allocation[i] = a;
}
