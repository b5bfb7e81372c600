// cuda_shim.h -- just enough of CUDA to run a kernel source as C++ on the CPU.
//
// Force-included (g++ -include cuda_shim.h) before a kernel of gpu/kernels/, it
// turns every CUDA thread into a std::thread: a thread block is NT threads that
// meet at a std::barrier for __syncthreads() and per warp of 32 for shuffles.
// The float arithmetic is IEEE float32 on both sides (g++ -ffp-contract=off,
// std::fmaf for __fmaf_rn, _Float16 for __half), so the emulated kernel must give
// its NumPy twin's bits, like the GPU: a check of the kernel's indexing and
// operation order that needs no GPU (tests/gpu/test_prefill_emulation.py).
//
// cp.async copies are queued per thread and done when the thread's wait retires
// their group (the latest moment the hardware may complete them), so a read of a
// tile before its wait sees the poison the shared memory is filled with. It
// checks neither memory races nor timing: compute-sanitizer does that on the GPU.
#pragma once
#define TS_HOST_EMULATION 1

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __launch_bounds__(...)

struct dim3 { unsigned x = 0, y = 0, z = 0; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(8) uint2 { unsigned x, y; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }

using std::fmaxf;
using std::isnan;
using std::max;
using std::min;
using std::rintf;

inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }

inline thread_local dim3 threadIdx;
inline dim3 blockIdx, blockDim, gridDim;

namespace ts_emu {
constexpr int MAX_THREADS = 1024;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::barrier<>*> warp_barriers;
inline float shfl_buf[MAX_THREADS];

struct Copy { void* dst; const void* src; int bytes; };
inline thread_local std::vector<std::vector<Copy>> pending;  // committed groups, oldest first
inline thread_local std::vector<Copy> open_group;

inline void run_copy(const Copy& c) {
    if (c.bytes) std::memcpy(c.dst, c.src, c.bytes);
    std::memset(static_cast<char*>(c.dst) + c.bytes, 0, 16 - c.bytes);
}
}  // namespace ts_emu

inline void __syncthreads() { ts_emu::block_barrier->arrive_and_wait(); }
inline void __syncwarp() { ts_emu::warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int mask) {
    const unsigned t = threadIdx.x, w = t / 32;
    ts_emu::shfl_buf[t] = v;
    ts_emu::warp_barriers[w]->arrive_and_wait();
    const float r = ts_emu::shfl_buf[w * 32 + ((t % 32) ^ static_cast<unsigned>(mask))];
    ts_emu::warp_barriers[w]->arrive_and_wait();
    return r;
}

// Tensor cores (gpu/kernels/tensor_core.cuh): ldmatrix.x4 and mma.sync m16n8k16 done by
// the warp's 32 threads together, through a per-warp scratch, with the arithmetic of the
// measured rule of tinyserve_sim/data/tensor_core.py (a C++ port: exact products,
// exponent fields, every term cut toward zero 25 bits below the largest, an exact sum in
// double, one rounding toward zero). Emulated, the kernel's tensor-core path checks its
// fragment indexing and swizzle on the CPU; the rule itself is checked against the
// hardware by tests/gpu/test_gpu_tensor_core.py.
namespace ts_emu {
inline const void* ldm_rows[MAX_THREADS];
inline unsigned mma_a[MAX_THREADS][4], mma_b[MAX_THREADS][2];

inline double half_bits_to_double(unsigned short bits) {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return static_cast<double>(h);
}
// The exponent a float's fields encode: floor(log2 |x|), at least the smallest normal one.
inline int place_of(double x, int smallest) {
    int e;
    std::frexp(x, &e);
    return std::max(e - 1, smallest);
}
// d = a[0] b[0] + ... + a[15] b[15] + c by the rule (tensor_core.mma_dot).
inline float mma_dot(const double (&a)[16], const double (&b)[16], float c) {
    const double cd = c;
    bool finite = std::isfinite(cd);
    for (int k = 0; k < 16; ++k) finite = finite && std::isfinite(a[k]) && std::isfinite(b[k]);
    if (!finite) {  // IEEE-754's special value
        double s = cd;
        for (int k = 0; k < 16; ++k) s += a[k] * b[k];
        return static_cast<float>(s);
    }
    constexpr int NONE = -(1 << 20);
    double p[16];
    int top = cd != 0 ? place_of(cd, -126) : NONE;
    for (int k = 0; k < 16; ++k) {
        p[k] = a[k] * b[k];  // exact
        if (p[k] != 0) top = std::max(top, place_of(a[k], -14) + place_of(b[k], -14));
    }
    if (top == NONE) {  // every term zero: -0 only if all are negative zeros
        bool negative = std::signbit(cd);
        for (int k = 0; k < 16; ++k) negative = negative && std::signbit(p[k]);
        return negative ? -0.0f : 0.0f;
    }
    const double to_units = std::ldexp(1.0, 25 - top);  // 2**-(top - 25)
    double total = std::trunc(cd * to_units);
    for (int k = 0; k < 16; ++k) total += std::trunc(p[k] * to_units);
    total += 0.0;  // a zero sum is +0
    const double x = total / to_units;
    float y = static_cast<float>(x);
    if (std::fabs(static_cast<double>(y)) > std::fabs(x)) y = std::nextafterf(y, 0.0f);
    return y;
}
}  // namespace ts_emu

inline void ts_ldmatrix_x4(const void* smem_row, unsigned (&r)[4]) {
    const unsigned t = threadIdx.x, w = t / 32, l = t % 32;
    ts_emu::ldm_rows[t] = smem_row;
    ts_emu::warp_barriers[w]->arrive_and_wait();
    for (unsigned i = 0; i < 4; ++i) {  // matrix i, row l / 4, columns 2 (l % 4) and + 1
        const auto* row = static_cast<const unsigned short*>(ts_emu::ldm_rows[w * 32 + i * 8 + l / 4]);
        r[i] = static_cast<unsigned>(row[2 * (l % 4)]) | (static_cast<unsigned>(row[2 * (l % 4) + 1]) << 16);
    }
    ts_emu::warp_barriers[w]->arrive_and_wait();
}

inline void ts_ldmatrix_x4_trans(const void* smem_row, unsigned (&r)[4]) {
    const unsigned t = threadIdx.x, w = t / 32, l = t % 32;
    ts_emu::ldm_rows[t] = smem_row;
    ts_emu::warp_barriers[w]->arrive_and_wait();
    for (unsigned i = 0; i < 4; ++i) {  // matrix i, rows 2 (l % 4) and + 1, column l / 4
        const auto* lo = static_cast<const unsigned short*>(ts_emu::ldm_rows[w * 32 + i * 8 + 2 * (l % 4)]);
        const auto* hi = static_cast<const unsigned short*>(ts_emu::ldm_rows[w * 32 + i * 8 + 2 * (l % 4) + 1]);
        r[i] = static_cast<unsigned>(lo[l / 4]) | (static_cast<unsigned>(hi[l / 4]) << 16);
    }
    ts_emu::warp_barriers[w]->arrive_and_wait();
}

inline void ts_mma_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    const unsigned t = threadIdx.x, w = t / 32, l = t % 32;
    for (int i = 0; i < 4; ++i) ts_emu::mma_a[t][i] = a[i];
    for (int i = 0; i < 2; ++i) ts_emu::mma_b[t][i] = b[i];
    ts_emu::warp_barriers[w]->arrive_and_wait();
    // The element (row, k) of A, and (k, col) of B, from the lane that holds it.
    auto half_of = [](unsigned reg, int k) { return static_cast<unsigned short>(k % 2 ? reg >> 16 : reg & 0xFFFFu); };
    auto a_at = [&](int row, int k) {
        const unsigned lane = (row % 8) * 4 + (k % 8) / 2;
        return ts_emu::half_bits_to_double(half_of(ts_emu::mma_a[w * 32 + lane][(row >= 8) + 2 * (k >= 8)], k));
    };
    auto b_at = [&](int k, int col) {
        const unsigned lane = col * 4 + (k % 8) / 2;
        return ts_emu::half_bits_to_double(half_of(ts_emu::mma_b[w * 32 + lane][k >= 8], k));
    };
    float out[4];
    for (int i = 0; i < 4; ++i) {  // this lane's outputs: rows l/4 and l/4 + 8, columns 2 (l % 4) and + 1
        const int row = static_cast<int>(l / 4) + 8 * (i / 2), col = 2 * static_cast<int>(l % 4) + i % 2;
        double av[16], bv[16];
        for (int k = 0; k < 16; ++k) {
            av[k] = a_at(row, k);
            bv[k] = b_at(k, col);
        }
        out[i] = ts_emu::mma_dot(av, bv, d[i]);
    }
    ts_emu::warp_barriers[w]->arrive_and_wait();
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

// cp.async: queued, done when a wait retires the group.
inline void cp_async16(void* dst, const void* src, int src_bytes) { ts_emu::open_group.push_back({dst, src, src_bytes}); }
inline void cp_async16(void* dst, const void* src) { cp_async16(dst, src, 16); }
inline void cp_async16_l1(void* dst, const void* src) { cp_async16(dst, src, 16); }  // L1 or not: the same bytes
inline void cp_async_commit() {
    ts_emu::pending.push_back(std::move(ts_emu::open_group));
    ts_emu::open_group.clear();
}
template <int N>
inline void cp_async_wait() {
    while (static_cast<int>(ts_emu::pending.size()) > N) {
        for (const auto& c : ts_emu::pending.front()) ts_emu::run_copy(c);
        ts_emu::pending.erase(ts_emu::pending.begin());
    }
}

namespace ts_emu {
// Run `kernel` (a callable doing one CUDA thread's work) over a grid, one block
// at a time; `smem` (the dynamic shared memory, `smem_bytes`) is poisoned with
// 0xFF bytes (NaN floats) before each block. (A kernel's static __shared__
// variables are `static` locals in the emulation: emulate.py rewrites them.)
inline void launch(unsigned gx, unsigned gy, unsigned threads, void* smem, size_t smem_bytes,
                   const std::function<void()>& kernel, unsigned gz = 1) {
    gridDim = {gx, gy, gz};
    blockDim = {threads, 1, 1};
    std::barrier<> bar(threads);
    block_barrier = &bar;
    std::vector<std::barrier<>*> warps;
    for (unsigned w = 0; w < (threads + 31) / 32; ++w) warps.push_back(new std::barrier<>(32));
    warp_barriers = warps;
    for (unsigned z = 0; z < gz; ++z)
    for (unsigned y = 0; y < gy; ++y)
        for (unsigned x = 0; x < gx; ++x) {
            blockIdx = {x, y, z};
            std::memset(smem, 0xFF, smem_bytes);
            std::vector<std::thread> pool;
            for (unsigned t = 0; t < threads; ++t)
                pool.emplace_back([t, &kernel] {
                    threadIdx = {t, 0, 0};
                    pending.clear();
                    open_group.clear();
                    kernel();
                });
            for (auto& th : pool) th.join();
        }
    for (auto* w : warps) delete w;
}
}  // namespace ts_emu
