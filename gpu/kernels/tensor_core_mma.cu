// tensor_core_mma.cu -- one tensor-core instruction per tile, nothing else.
//
// Twin: tinyserve_sim/data/tensor_core.py (mma_m16n8k16), which models how the
// instruction adds its products: exact products, aligned on the largest exponent
// field, each cut toward zero 25 bits below it, summed exactly, rounded toward zero.
// No kernel of the project uses tensor cores yet; this one exists so that the model
// can be checked against the hardware (tests/gpu/test_gpu_tensor_core.py) before a
// kernel relies on it.
//
// One warp per tile: D[16x8] = A[16x16] . B[16x8] + C[16x8]. A is row-major; B is
// stored as its transpose B^T [8][16] (row j = column j of B, which is how the
// instruction's ".col" operand is laid out); C and D are row-major [16][8].
//
// The register layout is the PTX ISA's for mma.m16n8k16 with .f16 inputs ("Matrix
// fragments for mma.m16n8k16"): with g = lane / 4 and t = lane % 4, each thread holds
//   A: rows g and g + 8, columns 2t, 2t + 1 and 2t + 8, 2t + 9 (4 registers of 2 halves),
//   B: column g, rows 2t, 2t + 1 and 2t + 8, 2t + 9 (2 registers of 2 halves),
//   C, D: rows g and g + 8, columns 2t and 2t + 1 (4 floats).

#include <cuda_fp16.h>

// Two float16 values in one 32-bit register, the first in the low half.
__device__ __forceinline__ unsigned ts_pack_halves(const __half lo, const __half hi) {
    return (unsigned)__half_as_ushort(lo) | ((unsigned)__half_as_ushort(hi) << 16);
}

extern "C" __global__ void tensor_core_mma_kernel(
    const __half* __restrict__ a,    // [tiles, 16, 16]
    const __half* __restrict__ b_t,  // [tiles, 8, 16]
    const float* __restrict__ c,     // [tiles, 16, 8]
    float* __restrict__ d,           // [tiles, 16, 8]
    const long long tiles)
{
    const long long tile = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (tile >= tiles) return;  // whole warps only: blockDim.x is a multiple of 32
    const int lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const __half* A = a + tile * 256;
    const __half* Bt = b_t + tile * 128;
    const float* C = c + tile * 128;
    float* D = d + tile * 128;
    // A's fragment: (row, column) pairs as listed in the header.
    const unsigned a0 = ts_pack_halves(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]);
    const unsigned a1 = ts_pack_halves(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]);
    const unsigned a2 = ts_pack_halves(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]);
    const unsigned a3 = ts_pack_halves(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]);
    // B's fragment: B[k][g] = Bt[g][k] for k = 2t, 2t + 1, then 2t + 8, 2t + 9.
    const unsigned b0 = ts_pack_halves(Bt[g * 16 + 2 * t], Bt[g * 16 + 2 * t + 1]);
    const unsigned b1 = ts_pack_halves(Bt[g * 16 + 2 * t + 8], Bt[g * 16 + 2 * t + 9]);
    // C's fragment.
    const float c0 = C[g * 8 + 2 * t], c1 = C[g * 8 + 2 * t + 1];
    const float c2 = C[(g + 8) * 8 + 2 * t], c3 = C[(g + 8) * 8 + 2 * t + 1];
    float d0, d1, d2, d3;
    // The instruction itself (SASS: one HMMA.16816.F32).
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1),
          "f"(c0), "f"(c1), "f"(c2), "f"(c3));
    D[g * 8 + 2 * t] = d0;
    D[g * 8 + 2 * t + 1] = d1;
    D[(g + 8) * 8 + 2 * t] = d2;
    D[(g + 8) * 8 + 2 * t + 1] = d3;
}
