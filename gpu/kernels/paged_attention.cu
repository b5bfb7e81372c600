// paged_attention.cu -- decode attention over a paged KV cache, bit-identical to its
// NumPy twin tinyserve_sim/data/paged_attention.py. The work of one thread block is in
// paged_attention.cuh (read it first: the grid, the block, the chunk pipeline); here
// each block takes the work item named by its grid coordinates.
#include "paged_attention.cuh"

template <typename T, int VEC, int LANES, int VPL, int HT, int HS, int CHUNK, bool SPLIT, bool EVEN>
__global__ void __launch_bounds__(ts_attention::NT, 4) paged_attention_kernel(
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
    ts_attention::attend_block<T, VEC, LANES, VPL, HT, HS, CHUNK, SPLIT, EVEN, false>(
        blockIdx.x, blockIdx.y, blockIdx.z, out, part_out, part_m, part_l, query, key_cache, value_cache,
        block_tables, seq_lens, scale, num_heads, num_kv_heads, head_dim, block_size, max_blocks,
        row_seq_stride, row_head_stride, partition_size, max_parts);
}

// Split-K reduce: one block per (query head, sequence); partitions in order.
template <typename T>
__global__ void __launch_bounds__(ts_attention::NT) paged_attention_reduce_kernel(
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
    ts_attention::reduce_head<T, false>(blockIdx.y, blockIdx.x, w_s, out, part_out, part_m, part_l, seq_lens,
                                        num_heads, num_kv_heads, head_dim, row_seq_stride, row_head_stride,
                                        partition_size, max_parts);
}
