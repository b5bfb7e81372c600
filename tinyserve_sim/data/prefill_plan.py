"""The geometry of the paged prefill-attention kernel: tiles of query rows x tiles of keys.

The CUDA kernel (``gpu/kernels/paged_prefill_attention.cu``) and its NumPy twin
(:mod:`tinyserve_sim.data.paged_prefill_attention`) both read these numbers from
here. Only two of them fix the order of float operations, and so are part of
the bit-exactness contract: the **key tile** (how many keys one online-softmax
step takes) and the **column lanes** (how a tile's probabilities are summed).
The rest (how many query rows a thread block takes, how the head dim is padded,
in which order the blocks run) only decides how fast the kernel is: every query
row's arithmetic is the same whatever tile of rows it lands in.

A thread block has 256 threads: 16 *row groups* of ``rows_per_thread`` = 4
query rows, times 16 *column lanes*: a 64-row tile. Two blocks share an SM
(the kernel asks for at most 128 registers per thread, and the float16 tiles
of two blocks fit in its shared memory), so that one computes while the other
waits at a barrier. A query row is one (new token, query head) pair;
the rows of a tile share one KV head (so a GQA group's query heads share every
key and value the block reads), token-major: with ``G`` query heads per KV head,
row ``r`` is token ``r // G`` and head ``r % G`` of the group.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tinyserve_sim.data.geometry import check_head_dim_and_dtype
from tinyserve_sim.errors import KernelInputError

GROUPS = 16  #: column lanes per row group: the 16 lanes that share a query row
#: Query rows of one row group (``TM``): each thread keeps 4 rows' scores and outputs in registers.
ROWS_PER_THREAD = 4
#: Query rows of a thread block: 16 row groups of 4.
ROW_TILE = 64
#: Head dims are padded with zeros to a multiple of this in shared memory (a column lane owns
#: whole float4 vectors: 16 lanes x 4 floats).
DIM_QUANTUM = 64
#: The largest key tile; head dims above 128 use half of it (shared memory is finite).
MAX_KEY_TILE = 64
MIN_KEY_TILE = 32
#: CUDA's limit on ``gridDim.y`` (the KV heads).
MAX_GRID_Y = 65535
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class PrefillPlan:
    """How the kernel tiles one head dim; the twin follows ``key_tile`` and ``column_lanes``.

    Attributes:
        head_dim: D.
        padded_dim: D rounded up to a multiple of 64 (zeros: they change no bit, see the kernel page).
        key_tile: keys per online-softmax step (64, or 32 when ``padded_dim > 128``).
        row_tile: query rows per thread block (64).
        column_lanes: the 16 lanes that share a query row; lane ``c`` holds keys
            ``c, c + 16, ...`` of a key tile and sums their probabilities in that order.
        tensor_core_scores: ``S = Q K^T`` on tensor cores (float16 only): per 16 query
            rows x 8 keys, one ``mma.sync`` m16n8k16 per 16 padded dims, a chain from
            ``+0``, by the measured rule of :mod:`~tinyserve_sim.data.tensor_core` (the
            twin: ``mma_chain``). On for float16 while :data:`TENSOR_CORE_SCORES` is set (the
            default since session 16: bit-identical and 1.26-1.51x faster on an H200).
        tensor_core_values: ``O += P V`` on tensor cores too (on top of
            ``tensor_core_scores``): each probability times ``2**15`` split exactly into
            three float16 parts, then per 16 keys and each part one ``mma.sync`` m16n8k16
            onto the running output (the twin: ``tensor_core.accumulate_values``); the
            output is ``acc / (l * 2**15)``. On while :data:`TENSOR_CORE_VALUES` is set.
    """

    head_dim: int
    padded_dim: int
    key_tile: int
    row_tile: int
    column_lanes: int = GROUPS
    tensor_core_scores: bool = False
    tensor_core_values: bool = False

    @property
    def rows_per_thread(self) -> int:
        """``TM``: query rows of one row group."""
        return ROWS_PER_THREAD

    @property
    def threads(self) -> int:
        """``NT``: threads per block, 16 column lanes for each of ``row_tile / TM`` row groups (256)."""
        return self.row_tile // ROWS_PER_THREAD * GROUPS

    @property
    def keys_per_lane(self) -> int:
        """``TN``: keys of a tile each column lane holds."""
        return self.key_tile // GROUPS

    @property
    def dims_per_lane(self) -> int:
        """``TD``: output elements of a row each column lane accumulates."""
        return self.padded_dim // GROUPS

    def shared_memory_bytes(self, dtype: np.dtype | type) -> int:
        """Dynamic shared memory of one thread block, in the kernel's order: the query tile
        (float32, rows padded by 4 floats against bank conflicts), the probabilities
        (transposed, padded too), the key and value tiles in the cache's dtype (rows
        padded by 16 bytes), two buffers of token offsets, and one float per query row (a
        key tile's rescale factors, then the normalisers, for the output phase).

        >>> make_prefill_plan(128).shared_memory_bytes(np.float16)   # two blocks fit an H100's SM
        87296
        """
        itemsize = np.dtype(dtype).itemsize
        floats = self.row_tile * (self.padded_dim + 4) + self.key_tile * (self.row_tile + 4)
        tiles = 2 * self.key_tile * (self.padded_dim * itemsize + 16)
        return 4 * floats + tiles + 2 * self.key_tile * 8 + 4 * self.row_tile


#: Whether float16 plans take their scores from the tensor cores (``tensor_core_scores``).
#: On: on an H200 the GPU equals the twin bit for bit with it, and prefill runs 1.26-1.51x
#: faster than with the scores on CUDA cores (kernel notes, session 16). Set it to
#: ``False`` to run the CUDA-core scores instead (both backends follow), e.g. on a GPU
#: whose tensor cores are not modelled (the launcher refuses the tensor-core plans there).
TENSOR_CORE_SCORES = True
#: Whether the plans with tensor-core scores also add ``P V`` on tensor cores
#: (``tensor_core_values``). ``False`` keeps ``P V`` on CUDA cores (both backends follow).
TENSOR_CORE_VALUES = True


def prefill_plan_for(head_dim: int, dtype: np.dtype | type) -> PrefillPlan:
    """The plan the kernel and the twin use for ``head_dim`` elements of ``dtype``: the
    tiling of :func:`make_prefill_plan`, with tensor-core scores for float16 when
    :data:`TENSOR_CORE_SCORES` is set, and ``P V`` on tensor cores too when
    :data:`TENSOR_CORE_VALUES` is set.

    Raises:
        KernelInputError: a head dim or dtype the kernel is not built for.

    >>> prefill_plan_for(128, np.float16).tensor_core_scores
    True
    >>> prefill_plan_for(128, np.float32).tensor_core_scores   # tensor cores take float16 only
    False
    """
    check_head_dim_and_dtype(head_dim, dtype)
    plan = make_prefill_plan(head_dim)
    if TENSOR_CORE_SCORES and np.dtype(dtype) == np.float16:
        plan = replace(plan, tensor_core_scores=True, tensor_core_values=TENSOR_CORE_VALUES)
    return plan


def make_prefill_plan(head_dim: int) -> PrefillPlan:
    """The plan for head dim ``head_dim`` (a multiple of 8, at most 256), for either dtype.

    >>> make_prefill_plan(128)
    PrefillPlan(head_dim=128, padded_dim=128, key_tile=64, row_tile=64, column_lanes=16, tensor_core_scores=False, tensor_core_values=False)
    >>> make_prefill_plan(160).key_tile
    32
    """
    padded = -(-head_dim // DIM_QUANTUM) * DIM_QUANTUM
    small = padded <= 128
    return PrefillPlan(head_dim, padded, MAX_KEY_TILE if small else MIN_KEY_TILE, ROW_TILE)


#: Launch shapes that reach every kernel instantiation (dtype x padded head dim: 64, 128,
#: 192, 256), with row tiles cut mid-group, key tiles cut mid-block, prefixes ending
#: mid-block, one-token sequences and several sequences per launch. Each is ``(dtype,
#: head_dim, block_size, GQA group, seq_lens, new tokens per sequence)``; the GPU tests and
#: ``benchmarks/bench_prefill.py``'s checks both run them.
INSTANTIATION_SHAPES: tuple[tuple[type, int, int, int, list[int], list[int]], ...] = (
    (np.float16, 128, 16, 4, [700, 64, 1], [300, 64, 1]),
    (np.float32, 128, 16, 4, [700, 64, 1], [300, 64, 1]),
    (np.float16, 64, 5, 3, [333, 17], [150, 1]),
    (np.float32, 40, 5, 3, [333, 17], [150, 1]),
    (np.float16, 192, 7, 2, [259, 40], [97, 40]),
    (np.float32, 136, 7, 2, [259, 40], [97, 40]),
    (np.float16, 256, 32, 8, [130, 65], [65, 65]),
    (np.float32, 256, 1, 1, [130, 65], [65, 33]),
)


def work_items(query_start_loc: np.ndarray, seq_lens: np.ndarray, group: int, row_tile: int) -> np.ndarray:
    """The thread blocks of one KV head: int32 ``[N, 2]`` of (sequence, first query row),
    the longest first.

    Sequence ``s`` has ``query_lens[s] * group`` query rows for each KV head, cut
    into tiles of ``row_tile``. A tile reads keys up to the position of its last
    token, so tiles deep in a long sequence have the most work: running them
    first leaves the short ones to fill the last wave. The order changes no bit.

    >>> work_items(np.array([0, 3, 4], np.int32), np.array([3, 9], np.int32), group=2, row_tile=4).tolist()
    [[1, 0], [0, 4], [0, 0]]
    """
    items: list[tuple[int, int, int]] = []
    qlens = np.diff(query_start_loc.astype(np.int64))
    for s, (q, n) in enumerate(zip(qlens.tolist(), seq_lens.tolist())):
        rows = q * group
        for r0 in range(0, rows, row_tile):
            last_token = (min(r0 + row_tile, rows) - 1) // group
            items.append((-(n - q + last_token + 1), s, r0))  # keys it reads, negated: longest first
    items.sort()
    return np.array([(s, r0) for _, s, r0 in items], dtype=np.int32).reshape(-1, 2)


@dataclass(frozen=True)
class PrefillCost:
    """What one launch computes and moves (the kernel page's table is made of these).

    Attributes:
        flops: the useful attention FLOPs, ``4 D Hq`` per causal (query, key) pair
            (``2 D`` for ``q . k``, ``2 D`` for ``p v``).
        executed_flops: the FLOPs the kernel's fused multiply-adds really do: every
            row of a row tile (padding rows too) against every key of the key tiles
            up to the tile's last position (masked ones too).
        min_bytes: every input read once and the output written once (Q, K, V, O).
        tile_bytes: K and V bytes copied into shared memory, summed over thread blocks
            (from L2 mostly: the blocks of one sequence and KV head read the same keys).
        blocks: thread blocks of the launch.
    """

    flops: int
    executed_flops: int
    min_bytes: int
    tile_bytes: int
    blocks: int


def prefill_cost(
    query_start_loc: np.ndarray, seq_lens: np.ndarray, num_heads: int, num_kv_heads: int, head_dim: int, itemsize: int
) -> PrefillCost:
    """The :class:`PrefillCost` of a launch (a batch's offsets and lengths, the heads, the dtype's size).

    >>> c = prefill_cost(np.array([0, 2048], np.int32), np.array([2048], np.int32), 32, 8, 128, 2)
    >>> c.flops, c.blocks
    (34376515584, 1024)
    """
    plan = make_prefill_plan(head_dim)
    group = num_heads // num_kv_heads
    qlens = np.diff(query_start_loc.astype(np.int64))
    prefix = seq_lens.astype(np.int64) - qlens
    pairs = int((qlens * prefix + qlens * (qlens + 1) // 2).sum())
    items = work_items(query_start_loc, seq_lens, group, plan.row_tile)
    executed = tiles = 0
    for s, r0 in items.tolist():
        rows = min(plan.row_tile, int(qlens[s]) * group - r0)
        kv_end = int(prefix[s]) + (r0 + rows - 1) // group + 1
        n = -(-kv_end // plan.key_tile)
        tiles += n
        executed += n * plan.key_tile * plan.row_tile
    q_bytes = int(qlens.sum()) * num_heads * head_dim * itemsize
    kv_bytes = 2 * int(seq_lens.astype(np.int64).sum()) * num_kv_heads * head_dim * itemsize
    return PrefillCost(
        flops=4 * head_dim * num_heads * pairs,
        executed_flops=4 * head_dim * num_kv_heads * executed,
        min_bytes=2 * q_bytes + kv_bytes,
        tile_bytes=2 * tiles * plan.key_tile * head_dim * itemsize * num_kv_heads,
        blocks=len(items) * num_kv_heads,
    )


def check_prefill_launch_limits(num_tokens: int, num_heads: int, num_kv_heads: int, num_items: int) -> None:
    """Refuse shapes the kernel's grid or int32 row arithmetic cannot hold; the twin
    refuses them too, so both backends accept exactly the same inputs."""
    if num_tokens * num_heads > INT32_MAX:
        raise KernelInputError(
            f"query has {num_tokens} tokens x {num_heads} heads = {num_tokens * num_heads} rows; "
            f"one launch takes at most {INT32_MAX}"
        )
    if num_kv_heads > MAX_GRID_Y:
        raise KernelInputError(f"{num_kv_heads} KV heads; one launch takes at most {MAX_GRID_Y}")
    if num_items > INT32_MAX:  # pragma: no cover - implied by the row limit
        raise KernelInputError(f"{num_items} row tiles; one launch takes at most {INT32_MAX}")
