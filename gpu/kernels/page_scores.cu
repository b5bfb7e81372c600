// page_scores.cu -- for each (sequence, KV head, page): an upper bound on q.k over the
// page's tokens, from the page metadata; bit-identical to the NumPy twin
// tinyserve_sim/data/page_scores.py. The block's work is in page_scores.cuh (read it
// first); here each block takes the run of pages named by its grid coordinates.
#include "page_scores.cuh"

template <typename T, int VEC, int LANES, int VPL, int GQ>
__global__ void __launch_bounds__(ts_scores::NT) page_scores_kernel(
    float* __restrict__ scores,            // [S, Hkv, W]
    const T* __restrict__ query,           // [S, Hq, D]
    const T* __restrict__ key_min,         // [num_blocks, Hkv, D]
    const T* __restrict__ key_max,
    const int* __restrict__ block_tables,  // [S, W] or [S, Hkv, W]
    const int* __restrict__ seq_lens,      // [S] or [S, Hkv]
    const int table_seq_stride, const int table_head_stride,  // head stride 0: no head axis
    const int lens_seq_stride, const int lens_head_stride,
    const int num_heads, const int num_kv_heads, const int head_dim,
    const int block_size, const int width, const int pages_per_block)
{
    ts_scores::score_block<T, VEC, LANES, VPL, GQ>(
        blockIdx.x, blockIdx.y, blockIdx.z, scores, query, key_min, key_max, block_tables, seq_lens,
        table_seq_stride, table_head_stride, lens_seq_stride, lens_head_stride, num_heads, num_kv_heads,
        head_dim, block_size, width, pages_per_block);
}

// One explicit instantiation (float16, head_dim 128, a GQA group of 4: Llama-style
// 32 query / 8 KV heads), so that compiling this file alone emits a kernel (the CPU
// compile-check of tests/gpu/test_compile.py). The launcher asks NVRTC for the
// instantiation it needs by name (gpu/selection_launchers.py::page_scores_names).
template __global__ void page_scores_kernel<__half, 8, 16, 1, 4>(
    float*, const __half*, const __half*, const __half*, const int*, const int*,
    int, int, int, int, int, int, int, int, int, int);
