// select_pages.cu -- top-K pages per (sequence, KV head), compacted in logical order;
// twin: tinyserve_sim/data/select_pages.py. The algorithm, and why it is built this way,
// are in select_pages.cuh; here one block of 512 threads selects one row.
#include "select_pages.cuh"

extern "C" __global__ void __launch_bounds__(ts_select::NT, 1) select_pages_kernel(
    int* __restrict__ out_logical,         // [S, Hkv, out_width] selected logical pages, -1 padded
    int* __restrict__ out_tables,          // [S, Hkv, out_width] their physical blocks, -1 padded
    int* __restrict__ out_lens,            // [S, Hkv] tokens of the compacted rows
    const float* __restrict__ scores,      // [S, Hkv, W]
    const int* __restrict__ block_tables,  // [S, W] or [S, Hkv, W]
    const int* __restrict__ seq_lens,      // [S] or [S, Hkv]
    const int table_seq_stride, const int table_head_stride,
    const int lens_seq_stride, const int lens_head_stride,
    const int num_kv_heads, const int width, const int block_size,
    const int max_pages,                   // K >= 2
    const int out_width)                   // min(K, W)
{
    ts_select::select_block<ts_select::NT, false>(
        blockIdx.x, blockIdx.y, out_logical, out_tables, out_lens, scores, block_tables, seq_lens,
        table_seq_stride, table_head_stride, lens_seq_stride, lens_head_stride, num_kv_heads, width,
        block_size, max_pages, out_width);
}
