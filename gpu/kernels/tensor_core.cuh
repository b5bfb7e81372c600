// tensor_core.cuh -- the two tensor-core instructions the kernels use, as functions.
//
// The arithmetic of mma.sync.m16n8k16 (float16 in, float32 out) is modelled bit for bit
// by tinyserve_sim/data/tensor_core.py (mma_dot): exact products, every term cut toward
// zero 25 bits below the largest exponent field, an exact sum, one rounding toward zero.
// Measured on SM 9.0 (H200); a kernel that calls these must run on SM 9.0 only.
//
// The host emulation (tests/gpu/host_emulation/cuda_shim.h) has its own versions of the
// two, done by a warp of std::threads with the model's arithmetic.
#pragma once

#ifndef TS_HOST_EMULATION
// Four 8x8 matrices of 16-bit values from shared memory, the A fragment of an m16n8k16
// product: lane l gives the address of row l % 8 of matrix l / 8 (16 bytes, 16-byte
// aligned); afterwards lane l holds, in r[i], the two values of matrix i at row l / 4,
// columns 2 (l % 4) and 2 (l % 4) + 1.
__device__ __forceinline__ void ts_ldmatrix_x4(const void* smem_row, unsigned (&r)[4]) {
    const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// The same four matrices, each transposed on the way: lane l gives the address of row
// l % 8 of matrix l / 8 as above; afterwards lane l holds, in r[i], the values of matrix i
// at rows 2 (l % 4) and 2 (l % 4) + 1, column l / 4. With the rows of a matrix holding
// tokens and its columns dims, that is the A fragment of (dims x tokens): the decode
// kernel's values V^T, read from a tile stored token by token.
__device__ __forceinline__ void ts_ldmatrix_x4_trans(const void* smem_row, unsigned (&r)[4]) {
    const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// d = A B + d for one 16x16 float16 A (fragment a), one 16x8 float16 B (fragment b) and
// a 16x8 float32 accumulator (fragment d), by the whole warp (PTX ISA, "Matrix fragments
// for mma.m16n8k16": with g = lane / 4, t = lane % 4, d holds rows g and g + 8, columns
// 2t and 2t + 1; b holds column g, rows 2t, 2t + 1, 2t + 8, 2t + 9).
__device__ __forceinline__ void ts_mma_16816(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif
