// block_allocation.cu -- batched block allocation on the GPU.
//
// 1. Deterministic FIFO allocator (twin: tinyserve_sim/data/block_allocation.py,
//    FifoBlockAllocator). Device state: ring[N] of free ids, state = {head, count},
//    is_free[N]. A batch of R requests n_i >= 0 is served by ONE thread block:
//    a block-wide inclusive scan gives c_i; request i is served iff c_i <= count
//    (c_i never decreases, so the served requests form a prefix: no overtaking);
//    the served requests together take ring[head .. head+total) in order.
//    Integer arithmetic is exact, so the ids equal the twin's and BlockPool's.
// 2. Racing allocator in the seed's style: one thread per request scans the
//    reference counts and claims the first free block with atomicCAS(0 -> 1).
//    Valid (no block handed out twice), but which thread wins which block
//    depends on scheduling, so it cannot match any fixed order.

constexpr int ALLOC_THREADS = 1024;

// Inclusive scan of one value per thread across the block (Hillis-Steele over
// warp shuffles, then over warp totals). Exact: integers.
__device__ long long block_inclusive_scan(long long v, long long* warp_sums) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        const long long o = __shfl_up_sync(0xffffffffu, v, d);
        if (lane >= d) v += o;
    }
    if (lane == 31) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        long long w = lane < blockDim.x / 32 ? warp_sums[lane] : 0;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            const long long o = __shfl_up_sync(0xffffffffu, w, d);
            if (lane >= d) w += o;
        }
        warp_sums[lane] = w;  // inclusive totals of warps 0..lane
    }
    __syncthreads();
    const long long before = warp > 0 ? warp_sums[warp - 1] : 0;
    __syncthreads();  // warp_sums is reused by the next tile
    return v + before;
}

extern "C" __global__ void __launch_bounds__(ALLOC_THREADS) fifo_allocate_kernel(
    int* __restrict__ ring,           // [N] free ids (a circular queue)
    int* __restrict__ state,          // [2]: head, count
    unsigned char* __restrict__ is_free,  // [N]
    const int* __restrict__ requests, // [R] n_i >= 0 (checked on the host)
    int* __restrict__ granted,        // [R] out: n_i or 0
    long long* __restrict__ offsets,  // [R] out: start of request i's ids in block_ids
    int* __restrict__ block_ids,      // [N] out: ids handed out, in order (first `total` valid)
    int* __restrict__ total_out,      // [1] out: number of ids handed out
    const int num_requests, const int num_blocks)
{
    __shared__ long long warp_sums[32];
    __shared__ long long carry_s;
    __shared__ long long total_s;
    const long long head = state[0];
    const long long count = state[1];
    if (threadIdx.x == 0) { carry_s = 0; total_s = 0; }
    __syncthreads();
    // Scan the batch tile by tile (1024 requests at a time), carrying the sum.
    for (int base = 0; base < num_requests; base += ALLOC_THREADS) {
        const int i = base + threadIdx.x;
        const long long n = i < num_requests ? requests[i] : 0;
        const long long carry = carry_s;
        const long long inclusive = carry + block_inclusive_scan(n, warp_sums);
        if (i < num_requests) {
            const bool fits = inclusive <= count;
            granted[i] = fits ? static_cast<int>(n) : 0;
            // Unserved requests point at the end of the handed-out ids (empty slice).
            offsets[i] = inclusive - n;
            if (fits) atomicMax(reinterpret_cast<unsigned long long*>(&total_s),
                                static_cast<unsigned long long>(inclusive));
        }
        __syncthreads();
        if (threadIdx.x == ALLOC_THREADS - 1) carry_s = inclusive;
        __syncthreads();
    }
    const long long total = total_s;
    for (int i = threadIdx.x; i < num_requests; i += ALLOC_THREADS)
        if (granted[i] == 0 && offsets[i] > total) offsets[i] = total;
    for (long long j = threadIdx.x; j < total; j += ALLOC_THREADS) {
        const int id = ring[(head + j) % num_blocks];
        block_ids[j] = id;
        is_free[id] = 0;
    }
    __syncthreads();  // everyone has read head/count and the ring
    if (threadIdx.x == 0) {
        state[0] = static_cast<int>((head + total) % num_blocks);
        state[1] = static_cast<int>(count - total);
        total_out[0] = static_cast<int>(total);
    }
}

// Counts ids of a free batch that are already free (a double free). The host
// reads the count and only then launches fifo_free_kernel: check, then mutate.
extern "C" __global__ void fifo_check_free_kernel(
    const unsigned char* __restrict__ is_free, const int* __restrict__ ids,
    const int num_ids, int* __restrict__ errors)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < num_ids && is_free[ids[i]]) atomicAdd(errors, 1);
}

// Appends ids at the tail, in the given order: ring[(head + count + k) % N].
extern "C" __global__ void __launch_bounds__(ALLOC_THREADS) fifo_free_kernel(
    int* __restrict__ ring, int* __restrict__ state, unsigned char* __restrict__ is_free,
    const int* __restrict__ ids, const int num_ids, const int num_blocks)
{
    const long long tail = static_cast<long long>(state[0]) + state[1];
    for (int k = threadIdx.x; k < num_ids; k += ALLOC_THREADS) {
        ring[(tail + k) % num_blocks] = ids[k];
        is_free[ids[k]] = 1;
    }
    __syncthreads();  // every thread has read state before it changes
    if (threadIdx.x == 0) state[1] += num_ids;
}

// Seed-style contrast: thread r wants one block; it starts at a different
// place per thread (to spread contention) and claims the first block whose
// reference count it can move 0 -> 1. -1 if it finds none.
extern "C" __global__ void racing_allocate_kernel(
    int* __restrict__ ref_counts, int* __restrict__ result,
    const int num_requests, const int num_blocks)
{
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= num_requests) return;
    const int start = static_cast<int>((static_cast<long long>(r) * 7919) % num_blocks);
    for (int k = 0; k < num_blocks; ++k) {
        const int b = (start + k) % num_blocks;
        if (atomicCAS(&ref_counts[b], 0, 1) == 0) { result[r] = b; return; }
    }
    result[r] = -1;
}
