// reshape_and_cache.cu -- scatter new tokens' keys/values into the paged cache.
//
// Twin: tinyserve_sim/data/reshape_and_cache.py. A pure copy (bit-exact by nature).
// Layout (NHD): cache[num_blocks * block_size][row], where one slot's row is
// num_kv_heads * head_dim contiguous elements, exactly like key[t]. So token t
// is one contiguous row copy from key[t] to key_cache[slot_mapping[t]].
//
// Work split: a thread block handles TOKENS_PER_BLOCK consecutive tokens; its
// threads copy 16-byte vectors (uint4). head_dim is a multiple of 8 (checked
// on the host), so a row is a whole number of 16-byte vectors and every row
// starts 16-byte aligned (CuPy allocations are 256-byte aligned).

extern "C" __global__ void reshape_and_cache_kernel(
    const uint4* __restrict__ key,          // [T, row_vecs] (row = Hkv*D elements)
    const uint4* __restrict__ value,
    uint4* __restrict__ key_cache,          // [num_blocks*block_size, row_vecs]
    uint4* __restrict__ value_cache,
    const long long* __restrict__ slot_mapping,  // [T]; < 0 = padding, skip
    const int num_tokens,
    const int row_vecs,                     // 16-byte vectors per slot row
    const int tokens_per_block)
{
    const int first = blockIdx.x * tokens_per_block;
    const int last = min(first + tokens_per_block, num_tokens);
    for (int t = first; t < last; ++t) {
        const long long slot = slot_mapping[t];   // same for all threads: a broadcast load
        if (slot < 0) continue;                   // padding token
        const uint4* ksrc = key + static_cast<long long>(t) * row_vecs;
        const uint4* vsrc = value + static_cast<long long>(t) * row_vecs;
        uint4* kdst = key_cache + slot * row_vecs;
        uint4* vdst = value_cache + slot * row_vecs;
        // Consecutive threads move consecutive 16-byte vectors: coalesced.
        // Both loads are issued before both stores, two requests in flight.
        for (int i = threadIdx.x; i < row_vecs; i += blockDim.x) {
            const uint4 k = ksrc[i];
            const uint4 v = vsrc[i];
            kdst[i] = k;
            vdst[i] = v;
        }
    }
}
