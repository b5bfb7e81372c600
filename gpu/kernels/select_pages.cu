// select_pages.cu -- top-K pages per (sequence, KV head), compacted in logical
// order. Twin: tinyserve_sim/data/select_pages.py (the rule is in its docstring).
//
// Grid: x = KV head, y = sequence; one thread block (NT = 512 threads) per row.
// For a row of n pages and a budget of K pages:
//   * n <= K: every page, in order (dense attention).
//   * else the sink (page 0), the newest page (n - 1), and the M = K - 2 pages
//     of 1 .. n-2 with the largest keys, where a score's key is its float bits
//     mapped so that unsigned order is IEEE total order; ties to the lower index.
//
// How the M largest are found without sorting (a radix select, 3 passes: bits
// 31..21, 20..10, 9..0 of the key, so 11, 11 and 10 bits, 2,048 bins at most):
//   prefix = 0; remaining = M
//   for each digit, most significant first:
//       histogram the digit over the pages whose higher digits equal `prefix`;
//       walk the bins from the top down until `remaining` keys are covered: that
//       bin is the threshold's digit; subtract the keys of the bins above it.
//       If that bin holds exactly `remaining` keys, all of them are taken: stop.
//   Then T = prefix (on the digits looked at) splits the pages: every key above T
//   is selected, and of the keys equal to T the `remaining` with the lowest indices.
// Then a compaction in logical order: a block-wide scan of (keys above T, keys
// equal to T) counts, in page order, says where each selected page goes.
//
// The result is a set defined exactly (no arithmetic on the scores), so the
// twin reproduces it with a plain sort, and any correct algorithm gives the same bits.
//
// Why it is built this way. A decode step has few rows (8 sequences x 8 KV heads =
// 64 blocks on a 132-SM GPU), so the time is the length of one block's chain of
// dependent steps (memory round trips, barriers), and, since every warp of a block
// runs the same steps, the instructions each warp issues: an SM's 4 schedulers issue
// one instruction per cycle each, so with 32 warps every instruction costs 8 cycles.
// Measured on an H200 (in-kernel clock stamps; the launch itself, an empty kernel,
// is 3.5 us from Python with a cold L2): the committed 256-thread, 4-pass version
// took 13.7 us, this one 7.1-7.5 us (W = 2,048 pages, K = 256).
//   * Every global read is issued at the start, at once: the row's length, its
//     scores AND its block-table entries (only the selected ones are needed, but
//     reading all of them costs no extra round trip, while reading them at the end
//     would). The loads do not wait for the length: they cover the table's width W.
//   * 512 threads, each owning ITEMS = 4 consecutive pages of a tile of 2,048, their
//     keys in registers for all the passes (no staging, no rereading). 512 measured
//     faster than 256 (longer chains per thread) and 1,024 (twice the warps issuing
//     the same steps). Rows wider than one tile work tile by tile: the first tile
//     stays in registers, the others are read again from global memory (L2) at each
//     use (correct for any length, only slower).
//   * 3 passes of 11 bits instead of 4 of 8 (and an early exit when the threshold's
//     bin is taken whole, as it usually is after 2 passes on scores without ties).
//     A pass costs about 0.8 us here, most of it fixed (barriers, the search).
//   * The search for the threshold's bin is short: each thread owns BINS / NT = 4
//     adjacent bins; one warp-wide __reduce_add_sync gives each warp the keys in the
//     warps above it; only the warp holding the threshold scans its lanes, and the
//     one thread whose bins cross `remaining` publishes it (3 barriers a pass). Each
//     thread zeroes the bins it alone read, so clearing the histogram costs nothing.
//   * Histogram: plain shared-memory atomicAdd(+1). Measured faster than aggregating
//     the lanes of a warp by hand (__match_any_sync, or a __reduce_min/max test for
//     one common digit), on random, tied and all-equal scores alike.
//   * 1 barrier for the compaction: one scan of a packed pair (keys above T in the
//     low 16 bits, keys equal to T in the high 16) instead of two scans: the pages
//     taken before a page are (above before it) + min(equal before it, remaining).
//   * Tried and measured slower, so not here: 16-byte vector loads of a thread's 4
//     scores, and branch-free (select-based) histogram and compaction loops.

namespace {

constexpr int NT = 512;                    // threads per block (one block per row)
constexpr int NWARPS = NT / 32;
constexpr int TILE = 2048;                 // pages per tile (the scan packs counts in 16 bits)
constexpr int ITEMS = TILE / NT;           // pages per thread, kept in registers
constexpr int BINS = 2048;                 // histogram bins: 11 bits
constexpr int BPT = BINS / NT;             // bins per thread in the search for the threshold
constexpr int PASSES = 3;                  // digits of 11, 11 and 10 bits (see digit_shift)
constexpr unsigned FULL = 0xffffffffu;
static_assert(NT % 32 == 0 && NWARPS <= 32 && TILE % NT == 0 && BINS % NT == 0, "block shape");
static_assert(ITEMS <= 32, "candidates are a 32-bit mask");

// Unsigned order of the result == IEEE total order of the float
// (-NaN < -inf < ... < -0 < +0 < ... < +inf < +NaN).
__device__ __forceinline__ unsigned order_key(float x) {
    const unsigned b = __float_as_uint(x);
    return (b >> 31) ? ~b : (b | 0x80000000u);
}

// The digit of pass 0, 1, 2 is (key >> digit_shift) & ((1 << digit_bits) - 1):
// bits 31..21 (sign, exponent, 2 bits of mantissa), 20..10, 9..0.
__device__ __forceinline__ int digit_shift(int pass) { return pass == 0 ? 21 : pass == 1 ? 10 : 0; }
__device__ __forceinline__ int digit_bits(int pass) { return pass == 2 ? 10 : 11; }

// Inclusive prefix sum over the 32 lanes of a warp (lane l gets v_0 + ... + v_l).
__device__ __forceinline__ int warp_inclusive_scan(int v) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const int y = __shfl_up_sync(FULL, v, off);
        if (lane >= off) v += y;
    }
    return v;
}

// Sum over the warps before this thread's of one value per warp (in shared memory):
// one warp-wide reduction, lane l contributing warp l's value if l comes before us.
__device__ __forceinline__ int sum_of_warps_before(const int* per_warp) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    return __reduce_add_sync(FULL, lane < warp ? per_warp[lane] : 0);
}

}  // namespace

extern "C" __global__ void __launch_bounds__(NT, 1) select_pages_kernel(
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
    alignas(16) __shared__ int hist[BINS];  // 16-byte aligned: a thread reads its bins as int4
    __shared__ int warp_tot[2][NWARPS];    // per-warp totals (two buffers: see the compaction)
    __shared__ int sh_digit, sh_remaining, sh_in_bin;

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int h = blockIdx.x;
    const int s = blockIdx.y;
    const long long row = static_cast<long long>(s) * num_kv_heads + h;
    const float* sc = scores + row * width;
    const int* table = block_tables + static_cast<long long>(s) * table_seq_stride
                                    + static_cast<long long>(h) * table_head_stride;
    int* logical = out_logical + row * out_width;
    int* tables = out_tables + row * out_width;

    // ---- every global read at once: the length, the first tile's keys and blocks ----
    const int len = seq_lens[s * lens_seq_stride + h * lens_head_stride];
    // Thread t owns pages first .. first + ITEMS - 1 of each tile of TILE pages:
    // consecutive pages per thread, so thread order is page order (for the compaction).
    const int first = tid * ITEMS;
    unsigned key0[ITEMS];                  // the first tile's keys (registers: indices are constants)
    int block0[ITEMS];                     // and its block-table entries
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int p = first + i;
        key0[i] = p < width ? order_key(sc[p]) : 0u;
        block0[i] = p < width ? table[p] : -1;
    }

    const int n = (len + block_size - 1) / block_size;
    const int k = min(n, max_pages);       // pages this row keeps
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

    // ---- radix select of the M-th largest key among pages 1 .. last ---------------
    // Here n > K, so there are n - 2 > M candidates. Rows longer than one tile (only
    // rows wider than TILE pages) read the keys of the later tiles again at each use.
    const int last = n - 2;
    auto candidates = [&](int base) {      // bit i: item i of the tile at `base` is a candidate
        unsigned bits = 0u;
#pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
            const int p = base + first + i;
            if (p >= 1 && p <= last) bits |= 1u << i;
        }
        return bits;
    };
    auto key_at = [&](int base, int i) -> unsigned {
        return base == 0 ? key0[i] : order_key(sc[base + first + i]);
    };
    const unsigned cand0 = candidates(0);
    // Thread t owns bins lo_bin .. lo_bin + BPT - 1; thread 0 the top ones, so that
    // thread order is descending bin order (the order in which bins are taken).
    const int lo_bin = BINS - BPT * (tid + 1);
    unsigned prefix = 0u, mask = 0u;       // the threshold's digits found so far, and where they are
    int remaining = max_pages - 2;         // M: keys still to take at the threshold (0 if K == 2)
#pragma unroll
    for (int j = 0; j < BPT; ++j) hist[lo_bin + j] = 0;
    __syncthreads();
    for (int pass = 0; pass < PASSES && remaining > 0; ++pass) {  // uniform: every thread agrees
        const int shift = digit_shift(pass);
        const unsigned digit_mask = (1u << digit_bits(pass)) - 1u;

        // (1) Histogram of the digit over the candidates whose higher digits equal prefix.
        // Shared-memory atomics are exact in any order. (The compiler turns these
        // increments into ATOMS.POPC.INC: the lanes of a warp that add 1 to the same
        // bin are combined by the hardware, so a run of equal scores does not queue.)
        for (int base = 0; base <= last; base += TILE) {
            const unsigned cand = base == 0 ? cand0 : candidates(base);
#pragma unroll
            for (int i = 0; i < ITEMS; ++i) {
                if ((cand >> i) & 1u) {
                    const unsigned key = key_at(base, i);
                    if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & digit_mask], 1);
                }
            }
        }
        __syncthreads();                   // (a) the histogram is complete

        // (2) This thread's bins, top first, and the total of its warp's bins.
        int c[BPT];
        int mine = 0;
#pragma unroll
        for (int j = 0; j < BPT; ++j) {
            c[j] = hist[lo_bin + BPT - 1 - j];   // c[0]: my highest bin
            mine += c[j];
        }
#pragma unroll
        for (int j = 0; j < BPT; ++j) hist[lo_bin + j] = 0;  // only I read these: zeroed for the next pass
        const int warp_keys = __reduce_add_sync(FULL, mine);
        if (lane == 0) warp_tot[0][warp] = warp_keys;
        __syncthreads();                   // (b) the warp totals are in

        // (3) The bins are taken from the top: the threshold is in the bins of the one
        // warp, then the one thread, with fewer than `remaining` keys above them and at
        // least `remaining` down to their last bin. Only that warp scans its lanes.
        const int above_warp = sum_of_warps_before(warp_tot[0]);
        if (above_warp < remaining && remaining <= above_warp + warp_keys) {  // warp-uniform
            const int above = above_warp + warp_inclusive_scan(mine) - mine;  // keys above my bins
            if (above < remaining && remaining <= above + mine) {             // one thread
                int acc = above;
#pragma unroll
                for (int j = 0; j < BPT; ++j) {
                    if (acc + c[j] >= remaining) {
                        sh_digit = lo_bin + BPT - 1 - j;
                        sh_remaining = remaining - acc;
                        sh_in_bin = c[j];
                        break;
                    }
                    acc += c[j];
                }
            }
        }
        __syncthreads();                   // (c) the threshold's digit is published
        const int in_bin = sh_in_bin;
        remaining = sh_remaining;          // keys equal to the threshold (so far) still to take
        prefix |= static_cast<unsigned>(sh_digit) << shift;
        mask |= digit_mask << shift;
        if (in_bin == remaining) break;    // the whole bin is taken: T is known well enough
    }
    // Now: take a candidate if (key & mask) > prefix, or if (key & mask) == prefix and
    // fewer than `remaining` such keys come before it. (If the loop ended early, every
    // key equal to prefix on the mask is taken, whatever its lower bits.)

    // ---- compaction in logical order, tile by tile ------------------------------------
    // Slot 0 is the sink, slot K - 1 the newest page; candidate pages fill 1 .. K - 2.
    int above_carry = 0, equal_carry = 0;  // counts of the tiles before
    for (int base = 0, t = 0; base < n; base += TILE, t ^= 1) {
        const unsigned cand = base == 0 ? cand0 : candidates(base);
        // This thread's counts, packed: keys above T in the low 16 bits, equal in the high
        // 16 (a tile has at most TILE = 2,048 pages: no carry between the halves).
        int mine = 0;
#pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
            if ((cand >> i) & 1u) {
                const unsigned key = key_at(base, i) & mask;
                mine += key > prefix ? 1 : key == prefix ? 0x10000 : 0;
            }
        }
        // Block-wide exclusive scan of `mine`, in thread order (= page order). The two
        // warp_tot buffers alternate: tile j + 2 writes tile j's only after tile j + 1's
        // barrier, when every thread has read it (the select's reads ended at its barrier (c)).
        const int incl = warp_inclusive_scan(mine);
        if (lane == 31) warp_tot[t][warp] = incl;
        __syncthreads();
        const int before = sum_of_warps_before(warp_tot[t]) + incl - mine;
        const int tile_total = __reduce_add_sync(FULL, lane < NWARPS ? warp_tot[t][lane] : 0);
        int above_before = above_carry + (before & 0xffff);
        int equal_before = equal_carry + (before >> 16);
#pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
            const int p = base + first + i;
            int slot = -1;
            if (p == 0) {
                slot = 0;
            } else if (p == n - 1) {
                slot = max_pages - 1;
            } else if ((cand >> i) & 1u) {
                const unsigned key = key_at(base, i) & mask;
                if (key > prefix) {        // taken; so are the first `remaining` equal ones
                    slot = 1 + above_before + min(equal_before, remaining);
                    ++above_before;
                } else if (key == prefix) {
                    if (equal_before < remaining) slot = 1 + above_before + equal_before;
                    ++equal_before;
                }
            }
            if (slot >= 0) {
                logical[slot] = p;
                tables[slot] = base == 0 ? block0[i] : table[p];
            }
        }
        above_carry += tile_total & 0xffff;
        equal_carry += tile_total >> 16;
    }
}
