// tensor_core_mma.cu -- one tensor-core instruction per tile, nothing else.
//
// Twin: tinyserve_sim/data/tensor_core.py (mma_m16n8k16), which models how the
// instruction adds its products: exact products, aligned on the largest exponent
// field, each cut toward zero 25 bits below it, summed exactly, rounded toward zero.
// The decode kernel's logits now use the instruction (paged_attention.cu, for plans
// with tensor_core_logits; its twin calls mma_chain). This probe kernel still exists
// so that the model itself can be checked against the hardware
// (tests/gpu/test_gpu_tensor_core.py), on every new device, apart from any kernel.
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
#include "tensor_core.cuh"

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
    // The instruction itself (tensor_core.cuh; SASS: one HMMA.16816.F32), accumulating into
    // the C fragment.
    const unsigned afr[4] = {a0, a1, a2, a3};
    const unsigned bfr[2] = {b0, b1};
    float dfr[4] = {c0, c1, c2, c3};
    ts_mma_16816(dfr, afr, bfr);
    D[g * 8 + 2 * t] = dfr[0];
    D[g * 8 + 2 * t + 1] = dfr[1];
    D[(g + 8) * 8 + 2 * t] = dfr[2];
    D[(g + 8) * 8 + 2 * t + 1] = dfr[3];
}
