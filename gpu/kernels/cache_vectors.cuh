// cache_vectors.cuh -- reading and writing the caches' 16-byte vectors, shared by the kernels.
//
// Every conversion here is exact (float16 -> float32 always is; a float32 ->
// float16 store rounds to nearest even, as NumPy's astype(np.float16)), so
// none of them adds an operation the NumPy twins must mirror.
#pragma once
#include <cuda_fp16.h>

// 16 bytes of the cache (8 halves or 4 floats), converted exactly to float.
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

// One element as float, and one float stored in the element type.
__device__ __forceinline__ float load_float(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_float(const float* p) { return *p; }
__device__ __forceinline__ void store_out(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }

// cp.async (sm_80+): a 16-byte global -> shared copy that bypasses registers
// (and L1: .cg). Copies are grouped by commit; wait<N> returns once at most N
// of this thread's groups are still in flight (groups complete in order).
// .L2::128B is a prefetch-size hint: a miss fetches the whole 128-byte line into
// L2, not only the 32-byte sectors asked for, so the other lanes of a token row
// find it there. Measured on an H200 (kernel notes, session 7): decode up to 2.5%
// faster (GQA-4 2-2.5%, MHA 0.7%, GQA-8 level), prefill level; .L2::256B slowed
// MHA decode by 4.5%.
// The host emulation of the prefill kernel (tests/gpu/host_emulation) supplies
// its own versions of these three on the CPU.
#ifndef TS_HOST_EMULATION
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src));
}
// With src_bytes < 16, only that many bytes are read and the rest of the 16
// are zero-filled (src_bytes = 0: nothing is read, 16 zero bytes are written).
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, int src_bytes) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes));
}
// The same copy through L1 (.ca): the SMs' requests then reach L2 as whole 128-byte lines.
// Paged attention takes it for MHA plans (one query head per block): measured on an H200
// (kernel notes, session 11), 1-18% faster there, with the split rule that goes with it;
// 0.3-1.4% slower at GQA-4, whose plans keep .cg.
__device__ __forceinline__ void cp_async16_l1(void* smem_dst, const void* gmem_src) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
    asm volatile("cp.async.ca.shared.global.L2::128B [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
#endif

// One 16-byte copy, through L1 when THROUGH_L1 (a plan's choice, fixed at compile time),
// else around it. The same bytes land either way; only the caching differs. (Outside the
// #ifndef: the host emulation's versions of the two copies serve it as well.)
template <bool THROUGH_L1>
__device__ __forceinline__ void cp_async16_cached(void* smem_dst, const void* gmem_src) {
    if constexpr (THROUGH_L1) cp_async16_l1(smem_dst, gmem_src);
    else cp_async16(smem_dst, gmem_src);
}
