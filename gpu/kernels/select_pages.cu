// select_pages.cu -- top-K pages per (sequence, KV head), compacted in logical
// order. Twin: tinyserve_sim/data/select_pages.py (the rule is in its docstring).
//
// Grid: x = KV head, y = sequence; one thread block (NT = 256 threads) per row.
// For a row of n pages and a budget of K pages:
//   * n <= K: every page, in order (dense attention).
//   * else the sink (page 0), the newest page (n - 1), and the M = K - 2 pages
//     of 1 .. n-2 with the largest keys, where a score's key is its float bits
//     mapped so that unsigned order is IEEE total order; ties to the lower index.
//
// How the M largest are found without sorting (a radix select, 4 passes of 8 bits):
//   prefix = 0; remaining = M
//   for the digit d = bits 31..24, then 23..16, 15..8, 7..0 of the key:
//       histogram the digit over the pages whose higher digits equal `prefix`
//       (warp-aggregated shared-memory atomics: counts are exact in any order);
//       walk the bins from 255 down until `remaining` keys are covered: that
//       bin is the threshold's digit; subtract the keys of the bins above it.
//   After the last pass, T = prefix is the M-th largest key: every key > T is
//   selected, and of the keys == T the `remaining` with the lowest indices.
// Then a compaction in logical order: each thread owns a contiguous range of
// pages; a block-wide exclusive scan of its tie count says how many ties come
// before it (so it knows which of its ties are taken), a second scan of its
// selected count says where its pages go in the output.
//
// The result is a set defined exactly (no arithmetic on the scores), so the
// twin reproduces it with a plain sort. The keys are staged in shared memory
// when the row fits (`stage`), else read from global memory (L2) at each pass.

namespace {

constexpr int NT = 256;
constexpr int NWARPS = NT / 32;
constexpr unsigned FULL = 0xffffffffu;

// Unsigned order of the result == IEEE total order of the float
// (-NaN < -inf < ... < -0 < +0 < ... < +inf < +NaN).
__device__ __forceinline__ unsigned order_key(float x) {
    const unsigned b = __float_as_uint(x);
    return (b >> 31) ? ~b : (b | 0x80000000u);
}

// Block-wide exclusive prefix sum of one int per thread (in thread order).
// `warp_tot` is NWARPS ints of shared memory; the leading barrier makes it
// safe to call twice in a row.
__device__ __forceinline__ int block_exclusive_scan(int v, int* warp_tot) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    int incl = v;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const int y = __shfl_up_sync(FULL, incl, off);
        if (lane >= off) incl += y;
    }
    __syncthreads();
    if (lane == 31) warp_tot[warp] = incl;
    __syncthreads();
    int before = 0;
    for (int w = 0; w < warp; ++w) before += warp_tot[w];
    return before + incl - v;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(NT) select_pages_kernel(
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
    const int out_width,                   // min(K, W)
    const int stage)                       // 1: keys staged in shared memory ([W] unsigned)
{
    extern __shared__ unsigned keys_s[];
    __shared__ int hist[256];
    __shared__ int warp_tot[NWARPS];
    __shared__ int sh_digit, sh_remaining;

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int h = blockIdx.x;
    const int s = blockIdx.y;
    const long long row = static_cast<long long>(s) * num_kv_heads + h;
    const float* sc = scores + row * width;
    const int* table = block_tables + static_cast<long long>(s) * table_seq_stride
                                    + static_cast<long long>(h) * table_head_stride;
    const int len = seq_lens[s * lens_seq_stride + h * lens_head_stride];
    const int n = (len + block_size - 1) / block_size;
    const int k = min(n, max_pages);       // pages this row keeps
    int* logical = out_logical + row * out_width;
    int* tables = out_tables + row * out_width;

    // Padding and the length: entries k.. are never written below.
    for (int j = k + tid; j < out_width; j += NT) {
        logical[j] = -1;
        tables[j] = -1;
    }
    if (tid == 0) out_lens[row] = (k - 1) * block_size + (len - (n - 1) * block_size);
    if (n <= max_pages) {                  // everything: the dense row
        for (int j = tid; j < n; j += NT) {
            logical[j] = j;
            tables[j] = table[j];
        }
        return;                            // uniform: n is the same for the whole block
    }

    if (tid == 0) {                        // the sink and the newest page (k == max_pages here)
        logical[0] = 0;
        tables[0] = table[0];
        logical[max_pages - 1] = n - 1;
        tables[max_pages - 1] = table[n - 1];
    }
    if (max_pages == 2) return;            // nothing to choose (uniform)

    if (stage) {
        for (int p = tid; p < n; p += NT) keys_s[p] = order_key(sc[p]);
        __syncthreads();
    }
    auto key_at = [&](int p) { return stage ? keys_s[p] : order_key(sc[p]); };

    // ---- radix select of the M-th largest key among pages 1 .. n-2 ----------
    unsigned prefix = 0u, mask = 0u;
    int remaining = max_pages - 2;         // M >= 1 here, and n - 2 > M candidates
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += NT) hist[i] = 0;
        __syncthreads();
        // Warp-aggregated: the lanes holding the same digit add their count with one atomic
        // (the first pass sees mostly a few exponent bytes: without this they would queue
        // on the same bins). Every lane runs every step, so __match_any_sync sees all 32.
        for (int p0 = 1; p0 < n - 1; p0 += NT) {
            const int p = p0 + tid;
            const unsigned key = p < n - 1 ? key_at(p) : 0u;
            const bool counted = p < n - 1 && (key & mask) == prefix;
            const unsigned digit = counted ? (key >> shift) & 255u : 256u;  // 256: no bin
            const unsigned peers = __match_any_sync(FULL, digit);
            if (counted && __ffs(peers) - 1 == lane) atomicAdd(&hist[digit], __popc(peers));  // exact counts
        }
        __syncthreads();
        if (warp == 0) {
            // Lane l holds bins 255-8l, 255-8l-1, ..., 255-8l-7 (descending).
            int c[8];
            int sum = 0;
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                c[j] = hist[255 - 8 * lane - j];
                sum += c[j];
            }
            int incl = sum;                    // keys in the bins down to this lane's last
#pragma unroll
            for (int off = 1; off < 32; off <<= 1) {
                const int y = __shfl_up_sync(FULL, incl, off);
                if (lane >= off) incl += y;
            }
            const int excl = incl - sum;       // keys in the bins above this lane's
            if (excl < remaining && remaining <= incl) {  // exactly one lane
                int acc = excl;
                for (int j = 0; j < 8; ++j) {
                    if (acc + c[j] >= remaining) {
                        sh_digit = 255 - 8 * lane - j;
                        sh_remaining = remaining - acc;
                        break;
                    }
                    acc += c[j];
                }
            }
        }
        __syncthreads();
        prefix |= static_cast<unsigned>(sh_digit) << shift;
        mask |= 255u << shift;
        remaining = sh_remaining;          // keys == threshold still to take
    }
    const unsigned threshold = prefix;

    // ---- compaction in logical order -----------------------------------------
    const int m = n - 2;                   // candidate pages 1 .. n-2
    const int per = (m + NT - 1) / NT;
    const int lo = 1 + min(tid * per, m);
    const int hi = 1 + min(tid * per + per, m);
    int ties = 0;
    for (int p = lo; p < hi; ++p) ties += key_at(p) == threshold;
    const int ties_before = block_exclusive_scan(ties, warp_tot);
    int taken = 0;
    for (int p = lo, rank = ties_before; p < hi; ++p) {
        const unsigned key = key_at(p);
        if (key > threshold) ++taken;
        else if (key == threshold) taken += (rank++ < remaining);
    }
    int pos = 1 + block_exclusive_scan(taken, warp_tot);   // slot 0 is the sink
    for (int p = lo, rank = ties_before; p < hi; ++p) {
        const unsigned key = key_at(p);
        const bool take = key > threshold || (key == threshold && rank++ < remaining);
        if (take) {
            logical[pos] = p;
            tables[pos] = table[p];
            ++pos;
        }
    }
}
