// page_metadata.cu -- the channel-wise min/max of the keys of every (block, KV head).
//
// Twin: tinyserve_sim/data/page_metadata.py (read its docstring first).
// Metadata layout: key_min/key_max [num_blocks][num_kv_heads * head_dim], in the
// cache dtype, so one block's metadata row has exactly the shape of one token's
// key row: num_kv_heads * head_dim elements, a whole number of 16-byte vectors
// (head_dim is a multiple of 8, checked on the host).
//
// Three kernels here (the metadata copy of copy-on-write is copy_blocks_kernel
// of copy_blocks.cu, run on the two metadata arrays):
//   reset_page_metadata_kernel              blocks -> (+inf, -inf)
//   update_page_metadata_kernel<T>          fold new keys into their blocks' min/max
//   reshape_and_cache_with_metadata_kernel<T>  the same, fused with the K/V write
//
// Why the update is grouped by block: several tokens of one launch can land in
// the same block (a prefill), and there is no atomic min for float16. So the
// launcher sorts the valid tokens by block on the host (it already holds the
// slot mapping, to validate it) and hands each touched block to ONE thread
// block: token_order[group_start[u] .. group_start[u+1]) are the tokens of block
// group_block[u], in slot-mapping order. Each thread owns one 16-byte vector of
// the row, keeps its running min/max in registers, and writes it back once.
// min/max are exact, so the result does not depend on the order anyway; the
// only ambiguity IEEE leaves, the sign of min(-0, +0), is removed by storing
// every zero as +0 (the twin does the same). NaN keys are ignored (fminf).
// cache_vectors.cuh: to_float, the exact 16-byte vector -> floats conversion.
#include "cache_vectors.cuh"

namespace {

// The way back: floats -> one 16-byte vector of T (the unpacking is to_float).
template <typename T> struct Vec;
template <> struct Vec<__half> {
    static constexpr int N = 8;
    // Every value packed back is one of the halves unpacked (or +-inf, or +0):
    // the conversion is exact.
    __device__ static uint4 pack(const float* v) {
        uint4 raw;
        __half2* h = reinterpret_cast<__half2*>(&raw);
#pragma unroll
        for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
        return raw;
    }
};
template <> struct Vec<float> {
    static constexpr int N = 4;
    __device__ static uint4 pack(const float* v) {
        return make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3]));
    }
};

// -0 and +0 compare equal; store +0 so that both backends hold the same bits.
__device__ __forceinline__ float plus_zero(float x) { return x == 0.0f ? 0.0f : x; }

// Fold one 16-byte vector of a key into the running min/max (fminf/fmaxf ignore NaN).
template <typename T>
__device__ __forceinline__ void fold(const uint4& raw, float* mn, float* mx) {
    float k[Vec<T>::N];
    to_float(raw, k, T());
#pragma unroll
    for (int e = 0; e < Vec<T>::N; ++e) {
        mn[e] = fminf(mn[e], k[e]);
        mx[e] = fmaxf(mx[e], k[e]);
    }
}

// Write one vector's running min/max back, every zero as +0 (the tail of both update kernels).
template <typename T>
__device__ __forceinline__ void store_min_max(uint4* key_min, uint4* key_max, float* mn, float* mx) {
#pragma unroll
    for (int e = 0; e < Vec<T>::N; ++e) {
        mn[e] = plus_zero(mn[e]);
        mx[e] = plus_zero(mx[e]);
    }
    *key_min = Vec<T>::pack(mn);
    *key_max = Vec<T>::pack(mx);
}

}  // namespace

// Grid: one thread block per listed block. min_word/max_word are +inf/-inf of
// the dtype, replicated to 32 bits (0x7C007C00/0xFC00FC00 for float16,
// 0x7F800000/0xFF800000 for float32). A block listed twice is written twice
// with the same bits: harmless.
extern "C" __global__ void reset_page_metadata_kernel(
    uint4* __restrict__ key_min,            // [num_blocks, row_vecs]
    uint4* __restrict__ key_max,
    const long long* __restrict__ blocks,   // [B]
    const int row_vecs,                     // 16-byte vectors per block row (Hkv * D)
    const unsigned int min_word,
    const unsigned int max_word)
{
    const long long base = blocks[blockIdx.x] * row_vecs;
    const uint4 lo = make_uint4(min_word, min_word, min_word, min_word);
    const uint4 hi = make_uint4(max_word, max_word, max_word, max_word);
    for (int i = threadIdx.x; i < row_vecs; i += blockDim.x) {
        key_min[base + i] = lo;
        key_max[base + i] = hi;
    }
}

// Grid: one thread block per touched block (see the top of the file).
template <typename T>
__global__ void update_page_metadata_kernel(
    const uint4* __restrict__ key,          // [T, row_vecs]
    uint4* __restrict__ key_min,            // [num_blocks, row_vecs]
    uint4* __restrict__ key_max,
    const int* __restrict__ token_order,    // valid tokens, grouped by block
    const long long* __restrict__ group_block,  // [U] the block of each group
    const int* __restrict__ group_start,    // [U + 1] group u = token_order[start[u] .. start[u+1])
    const int row_vecs)
{
    constexpr int N = Vec<T>::N;
    const long long base = group_block[blockIdx.x] * row_vecs;
    const int t0 = group_start[blockIdx.x];
    const int t1 = group_start[blockIdx.x + 1];
    for (int i = threadIdx.x; i < row_vecs; i += blockDim.x) {  // consecutive threads: coalesced
        float mn[N], mx[N];
        to_float(key_min[base + i], mn, T());
        to_float(key_max[base + i], mx, T());
        for (int j = t0; j < t1; ++j) {
            fold<T>(key[static_cast<long long>(token_order[j]) * row_vecs + i], mn, mx);
        }
        store_min_max<T>(key_min + base + i, key_max + base + i, mn, mx);
    }
}

// The fused variant: the same grid, and each token's K and V rows are copied to
// its slot as they are read (the key only once, for both purposes). Same work
// split as reshape_and_cache.cu: a slot's row is contiguous in the NHD layout.
template <typename T>
__global__ void reshape_and_cache_with_metadata_kernel(
    const uint4* __restrict__ key,          // [T, row_vecs]
    const uint4* __restrict__ value,
    uint4* __restrict__ key_cache,          // [num_blocks * block_size, row_vecs]
    uint4* __restrict__ value_cache,
    const long long* __restrict__ slot_mapping,  // [T]
    uint4* __restrict__ key_min,            // [num_blocks, row_vecs]
    uint4* __restrict__ key_max,
    const int* __restrict__ token_order,
    const long long* __restrict__ group_block,
    const int* __restrict__ group_start,
    const int row_vecs)
{
    constexpr int N = Vec<T>::N;
    const long long base = group_block[blockIdx.x] * row_vecs;
    const int t0 = group_start[blockIdx.x];
    const int t1 = group_start[blockIdx.x + 1];
    for (int i = threadIdx.x; i < row_vecs; i += blockDim.x) {
        float mn[N], mx[N];
        to_float(key_min[base + i], mn, T());
        to_float(key_max[base + i], mx, T());
        for (int j = t0; j < t1; ++j) {
            const long long t = token_order[j];
            const long long slot = slot_mapping[t];      // >= 0: the host grouped valid tokens only
            const uint4 k = key[t * row_vecs + i];       // both loads first: two requests in flight
            const uint4 v = value[t * row_vecs + i];
            key_cache[slot * row_vecs + i] = k;
            value_cache[slot * row_vecs + i] = v;
            fold<T>(k, mn, mx);
        }
        store_min_max<T>(key_min + base + i, key_max + base + i, mn, mx);
    }
}
