"""The geometry of the paged-attention kernel: how work is cut into threads, rows and chunks.

The CUDA kernel (``gpu/kernels/paged_attention.cu``) and its NumPy twin
(:mod:`tinyserve_sim.data.paged_attention`) must agree on every one of these
numbers, because they fix the order of the float operations. Both import
them from here, so neither has to reach into the other.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from tinyserve_sim.control.checks import is_int, short_repr
from tinyserve_sim.data.validation import CACHE_DTYPES, HEAD_DIM_MULTIPLE, MAX_HEAD_DIM, check_partition_size
from tinyserve_sim.errors import KernelInputError

NUM_THREADS = 128  #: threads per thread block (4 warps)
WARP = 32  #: threads per warp
#: Under ``variant="auto"``, rows of at most this many tokens take one pass; it is also the
#: partition of ``variant="split_k"`` without one when every row fits one partition.
DEFAULT_PARTITION_SIZE = 1024
#: A split-K partition is a multiple of this many tokens. It need not be a whole number of
#: chunks: a partition starts a fresh run of chunks, and its last one may be partial.
MIN_PARTITION_SIZE = 64
MAX_ACC_REGISTERS = 32  #: float accumulators a thread holds: head_tile * (elements per lane)
#: A chunk's keys and values are staged in shared memory (cp.async). Its length in tokens
#: follows the bytes of one token's row (head_dim * itemsize): 128 tokens for rows of at
#: most TINY_ROW_BYTES, 64 for rows of at most SMALL_ROW_BYTES, 32 for longer rows. Each
#: chunk pays a fixed cost (four barriers, a softmax step), so short rows want long chunks,
#: and long rows short ones (two chunk-sized tiles must leave room for four blocks per SM).
TINY_ROW_BYTES = 128
SMALL_ROW_BYTES = 256
#: Shared memory of one block that still lets four blocks share an H100 or H200 SM (228 KiB,
#: 1 KiB of it reserved per block): a 128-token chunk is taken only within it (a large GQA
#: group's logits and scratch can push a tiny-row plan past it; then 64 tokens).
FOUR_BLOCKS_SHARED_MEMORY = 56 * 1024

Variant = Literal["one_pass", "split_k", "auto"]


@dataclass(frozen=True)
class AttentionPlan:
    """How the kernel maps a head dimension and a GQA group onto threads; the twin follows it.

    A thread block works on one KV head (and a tile of its query heads) of one
    sequence (and one partition). Its 128 threads form ``head_slices`` slices;
    each slice owns ``head_tile`` query heads and is ``rows`` rows of ``lanes``
    threads. Every slice reads the same staged keys and values: a chunk of
    ``chunk`` tokens, token ``j`` handled by row ``j % rows`` of each slice.

    Attributes:
        head_dim: D.
        vec: elements per 16-byte vector (8 for float16, 4 for float32).
        lanes: threads that share one token row (a power of two, <= 32).
        vecs_per_lane: vectors each lane owns (1 or 2).
        rows: token rows of one slice (``128 // lanes // head_slices``).
        head_tile: query heads of one slice (their accumulators and queries
            live in registers: ``head_tile * vecs_per_lane * vec <= 32``).
        head_slices: slices of the block (1, 2 or 4; a slice is whole warps).
        chunk: tokens per online-softmax step: 128, 64 or 32 as rows grow (see
            :data:`TINY_ROW_BYTES`).
        l1_copies: the kernel copies keys and values through L1 (``cp.async.ca``, whole
            128-byte lines at L2) instead of around it (``.cg``): MHA plans (one query
            head per KV head), where it was measured faster (kernel notes, session 11).
            It moves no bit; it changes which grids ``variant="auto"`` accepts
            (:func:`wave_verdict`).
        tensor_core_logits: the logits ``q . k`` on tensor cores (``mma.sync`` m16n8k16:
            16 tokens x 16 dims of keys times 16 dims x 8 query heads, a chain over the head
            dim), modelled bit for bit by :func:`~tinyserve_sim.data.tensor_core.mma_dot`.
            Float16 only, head dims that are multiples of 16 from 64, at most 8 heads per
            block. Changes the logits' bits (the twin follows).
        tensor_core_values: ``P V`` on tensor cores too (plans with ``tensor_core_logits``
            and GQA groups of 4 or more, while :data:`TENSOR_CORE_VALUES` is set): each probability is scaled by
            ``2**15`` and split exactly into three float16 parts, and every 16 tokens add
            ``V^T`` (16 dims x 16 tokens) times each part (16 tokens x 8 heads) to a float32
            accumulator by ``mma.sync``, the twin by the same rule
            (:func:`~tinyserve_sim.data.tensor_core.mma_steps`); the normaliser is a sum
            per head (see the twin's docstring).
    """

    head_dim: int
    vec: int
    lanes: int
    vecs_per_lane: int
    rows: int
    head_tile: int
    head_slices: int = 1
    chunk: int = 64
    l1_copies: bool = False
    tensor_core_logits: bool = False
    tensor_core_values: bool = False

    @property
    def num_vecs(self) -> int:
        return self.head_dim // self.vec

    @property
    def even(self) -> bool:
        """Every lane owns all its vectors (``head_dim == lanes * vecs_per_lane * vec``): the
        kernel's ``EVEN``, with no check per element."""
        return self.num_vecs == self.lanes * self.vecs_per_lane

    @property
    def heads_per_block(self) -> int:
        """Query heads one thread block covers: ``head_tile * head_slices``."""
        return self.head_tile * self.head_slices

    def grid(self, num_seqs: int, num_heads: int, num_kv_heads: int, partitions: int = 1) -> tuple[int, int, int]:
        """The main kernel's grid: x = (KV head, tile of its query heads), y = sequence,
        z = split-K partition (1 for one pass; see :func:`partition_count`).

        >>> make_plan(128, np.float16, 8).grid(num_seqs=2, num_heads=64, num_kv_heads=8, partitions=3)
        (8, 2, 3)
        """
        return (num_kv_heads * self.head_tiles(num_heads // num_kv_heads), num_seqs, partitions)

    def head_tiles(self, group_size: int) -> int:
        """Thread blocks that share one KV head's group of ``group_size`` query heads.

        >>> make_plan(128, np.float16, 32).head_tiles(32)   # 16 heads per block (4 slices of 4)
        2
        """
        return -(-group_size // self.heads_per_block)

    @property
    def shared_memory_bytes(self) -> int:
        """Dynamic shared memory of one thread block, in the kernel's order: the staged K and
        V tiles (``chunk`` tokens of 16-byte vectors each), two buffers of token row offsets
        (int64), the block's queries as float, the logits (a token's heads together) and the
        row-combine scratch (four warps' partial outputs; over the tiles with
        ``tensor_core_logits``), and with ``tensor_core_values`` the probabilities'
        float16 parts (three per token and head, for 8 heads).

        >>> make_plan(128, np.float16, 4).shared_memory_bytes   # Llama-style GQA-4, D 128
        39936
        >>> make_plan(128, np.float32, 4).shared_memory_bytes   # the same on CUDA cores
        44032
        """
        heads = self.heads_per_block
        tiles = 2 * self.chunk * self.num_vecs * 16
        # Plans with tensor-core logits keep the row-combine scratch over the tiles (free
        # after the last chunk); the others after the logits.
        scratch = 0 if self.tensor_core_logits else 4 * self.head_tile * self.head_dim
        floats = heads * self.head_dim + heads * self.chunk + scratch
        parts = 3 * 8 * self.chunk * 2 if self.tensor_core_values else 0
        return tiles + 2 * self.chunk * 8 + 4 * floats + parts


def check_head_dim_and_dtype(head_dim: int, dtype: np.dtype | type) -> None:
    """The head dims and dtypes the attention kernels are built for (decode and prefill).

    Raises:
        KernelInputError: ``head_dim`` not a multiple of 8 in 8..256, or ``dtype`` not float16 or float32.
    """
    if not isinstance(head_dim, (int, np.integer)) or head_dim % HEAD_DIM_MULTIPLE or not 0 < head_dim <= MAX_HEAD_DIM:
        raise KernelInputError(f"head_dim must be a multiple of {HEAD_DIM_MULTIPLE} in 8..{MAX_HEAD_DIM}, got {head_dim!r}")
    try:
        known = np.dtype(dtype) in CACHE_DTYPES
    except TypeError:
        known = False
    if not known:
        raise KernelInputError(f"dtype must be float16 or float32, got {dtype!r}")


#: Whether plans with tensor-core logits take ``P V`` from the tensor cores too
#: (``tensor_core_values``), for GQA groups of :data:`TENSOR_CORE_VALUES_MIN_GROUP` or more.
#: Set it to ``False`` to keep ``P V`` on the CUDA cores (both backends follow).
TENSOR_CORE_VALUES = True
#: The smallest GQA group whose ``P V`` goes to the tensor cores. Measured on an H200
#: (kernel notes, session 16): 1.22-1.28x faster at GQA-8, 1.03-1.06x at GQA-4, but 1.02x
#: at GQA-2, where 6 of the instruction's 8 head columns are zeros; and the twin pays three
#: sequential instructions per 16 tokens (on tutorial 4's GQA-2 shapes it would run 1.8x
#: slower than on CUDA cores), so GQA-2 keeps ``P V`` on the CUDA cores.
TENSOR_CORE_VALUES_MIN_GROUP = 4


def make_plan(head_dim: int, dtype: np.dtype | type, group_size: int) -> AttentionPlan:
    """The launch plan for ``head_dim`` elements of ``dtype`` and a GQA group of ``group_size``.

    >>> make_plan(128, np.float16, 4)     # GQA-4 at head dim 128: one slice of 4 heads
    AttentionPlan(head_dim=128, vec=8, lanes=16, vecs_per_lane=1, rows=8, head_tile=4, head_slices=1, chunk=64, l1_copies=False, tensor_core_logits=True, tensor_core_values=True)
    >>> make_plan(128, np.float16, 8)     # GQA-8: two slices of 4 heads read the same K and V
    AttentionPlan(head_dim=128, vec=8, lanes=16, vecs_per_lane=1, rows=4, head_tile=4, head_slices=2, chunk=64, l1_copies=False, tensor_core_logits=True, tensor_core_values=True)
    >>> make_plan(128, np.float32, 8).tensor_core_logits, make_plan(128, np.float16, 1).tensor_core_logits
    (False, False)
    >>> make_plan(128, np.float16, 2).tensor_core_values   # GQA-2: P V stays on CUDA cores
    False
    >>> make_plan(128, np.float16, 1).l1_copies   # MHA: copies through L1
    True
    >>> make_plan(64, np.float16, 4).chunk, make_plan(256, np.float16, 4).chunk   # 128- and 512-byte rows
    (128, 32)
    >>> make_plan(32, np.float32, 32).chunk   # 32 heads' logits: 128 tokens would leave room for 3 blocks
    64

    Raises:
        KernelInputError: a head dim, dtype or group the kernels are not built for.
    """
    check_head_dim_and_dtype(head_dim, dtype)
    if not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise KernelInputError(f"group_size must be a positive integer, got {group_size!r}")
    itemsize = np.dtype(dtype).itemsize
    vec = 16 // itemsize
    num_vecs = head_dim // vec
    # The largest power of two <= num_vecs, and at least 2 so that every chunk holds whole rows.
    lanes = max(2, min(WARP, 1 << (num_vecs.bit_length() - 1)))
    vecs_per_lane = -(-num_vecs // lanes)
    per_lane = vecs_per_lane * vec
    # As many heads per slice as 32 accumulators allow, but no idle heads for small groups.
    head_tile = 8
    while head_tile > 1 and (head_tile * per_lane > MAX_ACC_REGISTERS or head_tile // 2 >= group_size):
        head_tile //= 2
    # Then as many slices (whole warps each) as the group still needs, up to 4.
    head_slices = 1
    max_slices = min(4, NUM_THREADS // max(lanes, WARP))
    while head_slices < max_slices and head_tile * head_slices < group_size:
        head_slices *= 2
    rows = NUM_THREADS // lanes // head_slices
    row_bytes = head_dim * itemsize
    chunk = 128 if row_bytes <= TINY_ROW_BYTES else 64 if row_bytes <= SMALL_ROW_BYTES else 32
    # MHA (one query head per KV head): keys and values through L1 (``l1_copies``).
    plan = AttentionPlan(head_dim, vec, lanes, vecs_per_lane, rows, head_tile, head_slices, chunk, bool(group_size == 1))
    if chunk == 128 and plan.shared_memory_bytes > FOUR_BLOCKS_SHARED_MEMORY:
        plan = replace(plan, chunk=64)
    if uses_tensor_core_logits(plan, dtype, group_size):
        values = TENSOR_CORE_VALUES and group_size >= TENSOR_CORE_VALUES_MIN_GROUP
        plan = replace(plan, tensor_core_logits=True, tensor_core_values=values)
    return plan


def uses_tensor_core_logits(plan: AttentionPlan, dtype: np.dtype | type, group_size: int) -> bool:
    """Whether a plan takes its logits from the tensor cores (``tensor_core_logits``).

    Float16 (the instruction's inputs), every lane owning all its vectors, head dims that are
    whole 16-dim steps of at least 64 (eight 16-byte vectors a row, for the conflict-free
    ldmatrix), at most 8 query heads a block (the instruction's n), and a GQA group of 2 or
    more: measured on an H200 (kernel notes, session 15), 1.41x faster at GQA-8, 1.07x at
    GQA-4, 1.02x at GQA-2; MHA keeps its CUDA-core logits (1 head of the instruction's 8).

    >>> uses_tensor_core_logits(make_plan(192, np.float16, 8), np.float16, 8)   # 192 = 16 lanes x 1.5 vectors
    False
    """
    return (np.dtype(dtype) == np.float16 and plan.even and plan.head_dim % 16 == 0 and plan.head_dim >= 64
            and plan.heads_per_block <= 8 and group_size >= 2)


def partition_count(longest: int, partition_size: int) -> int:
    """Split-K partitions of the longest row: ``ceil(longest / partition_size)``. The grid
    and the partial-result buffers are sized for it; shorter rows leave the rest unused.

    >>> partition_count(4096, 1024), partition_count(4097, 1024)
    (4, 5)
    """
    return -(-longest // partition_size)


#: The GPU that ``variant="auto"`` is tuned for: 132 SMs, as the H100 SXM and the H200 have.
#: The choice changes the order of float operations, so the twin must make it too, without
#: a GPU: it is a rule on shapes, and the SM count is assumed, not queried.
REFERENCE_SMS = 132
#: Split-K partition lengths ``"auto"`` may choose, longest first (rows of at most
#: :data:`DEFAULT_PARTITION_SIZE` tokens always take one pass). Not longer: on an H200, one
#: wave of 16,384-token blocks ran 7% slower than 2,048-token ones (kernel notes, session 8).
AUTO_PARTITIONS = (4096, 2048, 1024, 512)
#: When no grid fills the waves (a small batch of short rows), ``"auto"`` estimates each
#: grid's time as its waves, rounded up, times (tokens per block + this fixed cost of a block,
#: in tokens: the query staging, the first chunk's wait, the partial results), and takes the
#: least. Fitted on an H200 (kernel notes, session 9; 64 to 512 did about as well) ...
BLOCK_COST_TOKENS = 128
#: ... among one pass, :data:`AUTO_PARTITIONS` and this shorter partition (more, shorter
#: blocks for a batch too small to fill the GPU otherwise).
SHORTEST_PARTITION = 256
#: A grid of one wave or less uses the GPU well when it keeps at least this share (in percent)
#: of the wave's places busy: on an H200, single waves 73-97% busy beat every longer grid of
#: shorter blocks at MHA, GQA-2, GQA-4 and GQA-8, and waves 48-61% busy lost (kernel notes,
#: sessions 8, 9, 11 and 12) ...
ONE_WAVE_PERCENT = 70
#: ... a longer grid when it keeps at least this share of its waves' places busy, so that a
#: part-empty last wave wastes less than a tenth ...
FULL_WAVE_PERCENT = 90
#: ... or when it is at least this many waves long (then a part-empty last wave matters little).
#: Not for plans that copy through L1 (``l1_copies``: MHA): their steady state is faster and a
#: part-empty last wave costs even after three (2,048 MHA blocks, 3.1 waves 78% busy, ran 8-11%
#: slower than 8,192 shorter ones; session 11). Blocks of two query heads (GQA-2) take only
#: this: their grids of 1.9 and 2.9 waves, 97% busy, ran 4-9% slower than 3.9 waves or more
#: of shorter blocks (session 12).
MANY_WAVES = 3


@dataclass(frozen=True)
class WaveRule:
    """Which grids a kind of plan accepts (:func:`wave_verdict`), as measured on an H200.

    Attributes:
        name: the kind of plan, in words.
        one_wave_percent: a grid of at most one wave must keep this share (percent) of its
            places busy.
        more_waves_percent: a longer grid is accepted when it keeps this share of its waves'
            places busy (``None``: never on that count alone) ...
        many_waves: ... or when it runs at least this many waves (``None``: never on that count).
    """

    name: str
    one_wave_percent: int = ONE_WAVE_PERCENT
    more_waves_percent: int | None = FULL_WAVE_PERCENT
    many_waves: int | None = MANY_WAVES

    def __post_init__(self) -> None:
        for what, value, low, high in (("one_wave_percent", self.one_wave_percent, 0, 100),
                                       ("more_waves_percent", self.more_waves_percent, 0, 100),
                                       ("many_waves", self.many_waves, 1, 1_000_000)):
            if value is None and what != "one_wave_percent":
                continue
            if not is_int(value) or not low <= value <= high:
                raise KernelInputError(f"WaveRule {what} must be an integer in {low}..{high}, got {short_repr(value)}")


def wave_rule(plan: AttentionPlan) -> WaveRule:
    """The rule of :func:`wave_verdict` for ``plan``'s grids.

    >>> wave_rule(make_plan(128, np.float16, 1)).name, wave_rule(make_plan(128, np.float16, 2)).name
    ('copies through L1 (MHA)', 'two query heads a block (GQA-2)')
    """
    if not isinstance(plan, AttentionPlan):
        raise KernelInputError(f"wave_rule needs an AttentionPlan (make_plan), got {type(plan).__name__}")
    if plan.l1_copies:
        return WaveRule("copies through L1 (MHA)", many_waves=None)
    if plan.heads_per_block == 2:
        return WaveRule("two query heads a block (GQA-2)", more_waves_percent=None)
    return WaveRule(f"{plan.heads_per_block} query heads a block")


#: Shared memory of one SM on the reference GPU, and what CUDA reserves of it per block.
SM_SHARED_MEMORY = 228 * 1024
BLOCK_RESERVED_SHARED_MEMORY = 1024 + 512  # + the kernel's few static arrays


def blocks_per_sm(plan: AttentionPlan) -> int:
    """Thread blocks of ``plan`` one SM of the reference GPU holds at once: an estimate (the
    real figure belongs to the compiled kernel), used only to choose the split.

    Registers: the kernel's launch bounds ask for 4 blocks of 128 threads, so at most 128
    registers a thread; a thread that accumulates at most 8 elements (one head at head dim
    128 in float16: MHA) compiles to 96 (NVRTC, sm_90; kernel notes, session 6), so 5
    blocks. Shared memory: whatever is smaller.

    >>> blocks_per_sm(make_plan(128, np.float16, 1)), blocks_per_sm(make_plan(128, np.float16, 4))
    (5, 4)
    """
    by_registers = 5 if plan.head_tile * plan.vecs_per_lane * plan.vec <= 8 else 4
    by_shared = SM_SHARED_MEMORY // (plan.shared_memory_bytes + BLOCK_RESERVED_SHARED_MEMORY)
    return max(1, min(by_registers, by_shared))


def wave_verdict(
    blocks: int, slots: int, rule: WaveRule = WaveRule("any"), busy_blocks: float | None = None
) -> tuple[bool, str]:
    """Whether a grid of ``blocks`` uses ``slots`` places (SMs x blocks per SM) well under
    ``rule`` (:func:`wave_rule`), and why in words. A grid of at most one wave must keep
    ``rule.one_wave_percent`` of its places busy; a longer one ``rule.more_waves_percent`` of
    its waves' places, or run ``rule.many_waves`` waves or more.

    ``busy_blocks``: how many blocks' worth of work the grid holds when that is fewer than
    its blocks. One pass in one wave lasts as long as its longest row, so rows of mixed
    lengths keep the places busy for only (their tokens / the longest) blocks' worth.

    >>> print(wave_verdict(1024, 660)[1])
    1024 blocks = 1.55 waves of 660, 78% of their places busy: a part-empty wave idles too many
    >>> print(wave_verdict(2048, 660, WaveRule("MHA", many_waves=None))[1])   # copies through L1
    2048 blocks = 3.10 waves of 660, 78% of their places busy: a part-empty wave idles too many
    >>> print(wave_verdict(512, 660)[1])   # one wave
    512 blocks = 0.78 waves of 660, 78% of their places busy: one wave, at least 70%
    >>> print(wave_verdict(512, 528, busy_blocks=300.5)[1])   # one pass over rows of mixed lengths
    512 blocks = 0.97 waves of 528, 57% of their places busy (rows of mixed lengths): one wave, under 70%
    """
    if not is_int(blocks) or blocks < 0 or not is_int(slots) or slots < 1:
        raise KernelInputError(f"a grid needs blocks >= 0 and slots >= 1 (integers), got {short_repr(blocks)} and {short_repr(slots)}")
    if not isinstance(rule, WaveRule):
        raise KernelInputError(f"rule must be a WaveRule (wave_rule), got {type(rule).__name__}")
    if busy_blocks is not None and not (isinstance(busy_blocks, (int, float)) and 0 <= busy_blocks <= blocks):
        raise KernelInputError(f"busy_blocks must be a number in 0..{blocks}, got {short_repr(busy_blocks)}")
    waves = -(-blocks // slots)
    work = blocks if busy_blocks is None else busy_blocks
    busy = work / (waves * slots)
    mixed = "" if busy_blocks is None else " (rows of mixed lengths)"
    head = f"{blocks} blocks = {blocks / slots:.2f} waves of {slots}, {busy:.0%} of their places busy{mixed}"
    if waves <= 1:
        if 100 * work >= rule.one_wave_percent * slots:
            return True, f"{head}: one wave, at least {rule.one_wave_percent}%"
        return False, f"{head}: one wave, under {rule.one_wave_percent}%"
    if rule.many_waves is not None and blocks >= rule.many_waves * slots:
        return True, f"{head}: {rule.many_waves} waves or more, the last one matters little"
    if rule.more_waves_percent is not None and 100 * work >= rule.more_waves_percent * waves * slots:
        return True, f"{head}: at least {rule.more_waves_percent}%"
    if rule.more_waves_percent is None and rule.many_waves is None:
        return False, f"{head}: {rule.name} takes no grid of more than one wave"
    if rule.more_waves_percent is None:
        return False, f"{head}: under {rule.many_waves} waves, which {rule.name} needs"
    return False, f"{head}: a part-empty wave idles too many"


@dataclass(frozen=True)
class SplitCandidate:
    """One grid that :func:`choose_split` weighed: what it would launch, and the verdict.

    Attributes:
        partition: tokens per split-K block, or ``None`` for one pass.
        blocks: thread blocks of the main kernel (blocks of rows with fewer partitions
            exit at once, and are not counted).
        slots: places of one wave on the reference GPU (SMs x blocks per SM).
        accepted: whether the rule takes it (the first accepted one is chosen).
        why: the reason, in words.
    """

    partition: int | None
    blocks: int
    slots: int
    accepted: bool
    why: str

    @property
    def waves(self) -> float:
        """The grid's length in waves of :attr:`slots` blocks."""
        return self.blocks / self.slots


def split_candidates(
    plan: AttentionPlan, num_heads: int, num_kv_heads: int, lens: np.ndarray, partition_size: int | None = None
) -> list[SplitCandidate]:
    """Every grid :func:`choose_split` weighs, longest work per block first, with its verdict:
    the rule made visible (print them, or draw them).

    >>> for c in split_candidates(make_plan(128, np.float16, 4), 32, 8, np.full(8, 32768))[:2]:
    ...     print(c.partition, c.accepted, c.why)
    None False 64 blocks = 0.12 waves of 528, 12% of their places busy: one wave, under 70%
    4096 True 512 blocks = 0.97 waves of 528, 97% of their places busy: one wave, at least 70%
    """
    if partition_size is not None:
        partition_size = check_partition_size(partition_size, MIN_PARTITION_SIZE)
    if not 1 <= num_kv_heads <= num_heads or num_heads % num_kv_heads:
        raise KernelInputError(f"{num_heads} query heads cannot share {num_kv_heads} KV heads (a positive multiple is needed)")
    rows = _rows(lens, num_kv_heads)
    rule = wave_rule(plan)  # first: it refuses anything but an AttentionPlan
    tiles = plan.head_tiles(num_heads // num_kv_heads)
    slots = REFERENCE_SMS * blocks_per_sm(plan)

    def blocks(part: int | None) -> int:  # a row of n tokens has ceil(n / part) blocks per tile
        return tiles * (rows.size if part is None else int((-(-rows // part)).sum()))

    limit = DEFAULT_PARTITION_SIZE if partition_size is None else partition_size
    longest = int(rows.max()) if rows.size else 0
    if longest <= limit:
        return [SplitCandidate(None, blocks(None), slots, True, f"every row fits one partition ({limit} tokens)")]
    skewed = longest > 2 * float(rows.mean())
    if skewed:
        out = [SplitCandidate(None, blocks(None), slots, False, "the longest row is more than twice the mean: it would run alone")]
    else:
        # One pass in one wave lasts as long as its longest row: rows of mixed lengths keep
        # the places busy for only (their tokens / the longest) blocks' worth.
        busy = tiles * float(rows.sum()) / longest if longest > rows.min() and blocks(None) <= slots else None
        out = [SplitCandidate(None, blocks(None), slots, *wave_verdict(blocks(None), slots, rule, busy))]
    if partition_size is not None:
        return [*out, SplitCandidate(partition_size, blocks(partition_size), slots, True, "the partition given")]
    for part in (p for p in AUTO_PARTITIONS if p < longest):
        out.append(SplitCandidate(part, blocks(part), slots, *wave_verdict(blocks(part), slots, rule)))
    if any(c.accepted for c in out):
        return out
    # No grid fills the waves: a small batch under-fills the GPU whatever runs. Then every
    # grid runs in as many rounds as it has waves (rounded up), each as long as one block's
    # tokens plus a fixed cost; take the least estimated time (on a tie, the longer blocks).
    # One pass stays out when a row is more than twice the mean (it would run alone).
    if SHORTEST_PARTITION < longest:
        n = blocks(SHORTEST_PARTITION)
        head = f"{n} blocks = {n / slots:.2f} waves of {slots}"
        out.append(SplitCandidate(SHORTEST_PARTITION, n, slots, False, f"{head}: weighed by its estimated time only"))
    best = _least_estimated([c for c in out if c.partition is not None or not skewed], longest)
    note = (f"; nothing above fills the waves, and this grid's estimated time is the least: "
            f"{-(-best.blocks // slots)} x ({best.partition or longest} + {BLOCK_COST_TOKENS}) tokens")
    return [replace(c, accepted=True, why=c.why + note) if c is best else c for c in out]


def estimated_token_times(blocks: int, slots: int, tokens: int) -> int:
    """A grid's time when it cannot fill the GPU, in token-times: its waves of ``slots``
    blocks, rounded up, each as long as one block's ``tokens`` plus :data:`BLOCK_COST_TOKENS`.

    >>> estimated_token_times(64, 528, 256), estimated_token_times(768, 528, 256)   # 1 and 2 waves
    (384, 768)
    """
    return -(-blocks // slots) * (tokens + BLOCK_COST_TOKENS)


def _least_estimated(candidates: list[SplitCandidate], longest: int) -> SplitCandidate:
    """The candidate of least :func:`estimated_token_times` (one pass's blocks hold the
    ``longest`` row); on a tie the first, the one with longer blocks."""
    return min(candidates, key=lambda c: estimated_token_times(c.blocks, c.slots, c.partition or longest))


def choose_split(
    plan: AttentionPlan, num_heads: int, num_kv_heads: int, lens: np.ndarray, partition_size: int | None = None
) -> tuple[str, int]:
    """``variant="auto"``: one pass or split-K, and the partition length, from the shapes.

    Every (sequence, KV head) row of ``lens`` (``[S]`` or ``[S, Hkv]``) is one thread block
    per tile of its query heads and per partition; a block of a row with fewer partitions
    exits at once. The rule, longest work per block first: one pass if the rows fill the
    GPU's waves (:func:`wave_verdict` under the plan's :func:`wave_rule`, for
    :func:`blocks_per_sm` blocks on each of :data:`REFERENCE_SMS` SMs) and none is more
    than twice the mean (a long row would run
    alone); else the longest partition of :data:`AUTO_PARTITIONS` (or only
    ``partition_size``, when given) whose blocks fill the waves; else, when nothing fills
    them (a small batch of short rows), the grid of least estimated time, its waves rounded
    up times (tokens per block + :data:`BLOCK_COST_TOKENS`), among one pass (unless a row
    is more than twice the mean), those partitions and :data:`SHORTEST_PARTITION`. Rows of at most
    :data:`DEFAULT_PARTITION_SIZE` tokens (or ``partition_size``) take one pass.
    :func:`split_candidates` lists what was weighed.

    Why: measured on an H200 (kernel notes, sessions 8 and 9), fewer and longer blocks are
    faster (each split adds partial results and a reduce), as long as the grid's last wave
    is not left part-empty: at MHA (5 blocks per SM, 660 places) 1,024 blocks (1.55 waves)
    ran 7-13% slower than the fastest (six shapes), at GQA-4 (4 per SM, 528 places) 512
    blocks in one wave beat 1,024 and 2,048. Under one wave, a block's time is about its
    tokens plus a fixed cost, so shorter blocks win until they need another wave: at
    batch 1 and 2,048 tokens, 256-token partitions ran 1.2-1.5x faster than 512. MHA plans
    copy through L1 (``l1_copies``, session 11): they accept only grids that keep 90% of
    their waves busy, because there 2,048 blocks (3.1 waves) ran 8-11% slower than 8,192;
    on the 13 MHA shapes measured, the rule then picked the fastest grid every time.
    Session 12 measured GQA-2 (25 shapes): a single wave 73% busy beat longer grids there, as
    it had at GQA-4 and GQA-8, so a grid of one wave needs only :data:`ONE_WAVE_PERCENT`;
    blocks of two query heads lost 4-9% at 1.9 and 2.9 waves however busy, so theirs take
    only :data:`MANY_WAVES`; and one pass over rows of mixed lengths in one wave ran 26%
    slower than split-K, because its longest row sets its time.

    >>> plan = make_plan(128, np.float16, 4)                # GQA-4: 528 places
    >>> choose_split(plan, 32, 8, np.full(64, 4096))        # 512 rows: one wave
    ('one_pass', 1024)
    >>> choose_split(plan, 32, 8, np.full(8, 32768))        # 64 rows x 8 partitions = 512 blocks
    ('split_k', 4096)
    >>> choose_split(plan, 32, 8, np.full(1, 2048))         # 8 rows: nothing fills a wave
    ('split_k', 256)
    >>> choose_split(make_plan(128, np.float16, 1), 32, 32, np.full(32, 4096))   # MHA, 1,024 rows x 8
    ('split_k', 512)
    >>> choose_split(make_plan(128, np.float16, 2), 32, 16, np.full(64, 4096))   # GQA-2: 1.94 waves are not enough
    ('split_k', 2048)
    >>> choose_split(plan, 32, 8, np.full(64, 4096), partition_size=256)   # one pass still
    ('one_pass', 256)
    """
    chosen = next(c for c in split_candidates(plan, num_heads, num_kv_heads, lens, partition_size) if c.accepted)
    if chosen.partition is None:
        return "one_pass", DEFAULT_PARTITION_SIZE if partition_size is None else partition_size
    return "split_k", chosen.partition


def split_partition(plan: AttentionPlan, num_heads: int, num_kv_heads: int, lens: np.ndarray) -> int:
    """For ``variant="split_k"`` without a partition: the first split candidate the rule
    accepts (:func:`split_candidates`); when it accepts only one pass, the split of least
    estimated time (:func:`estimated_token_times`); :data:`DEFAULT_PARTITION_SIZE` when
    every row fits one partition."""
    splits = [c for c in split_candidates(plan, num_heads, num_kv_heads, lens) if c.partition is not None]
    for c in splits:
        if c.accepted:
            return c.partition
    if not splits:
        return DEFAULT_PARTITION_SIZE
    return _least_estimated(splits, longest=0).partition  # type: ignore[return-value]  (splits have partitions)


def _rows(lens: np.ndarray, num_kv_heads: int) -> np.ndarray:
    """Every (sequence, KV head) row's length, int64 ``[S, Hkv]``, from ``[S]`` or ``[S, Hkv]``."""
    lens = np.asarray(lens)
    if lens.ndim == 2 and lens.shape[1] != num_kv_heads or lens.ndim not in (1, 2) or lens.dtype.kind not in "iu":
        raise KernelInputError(f"lengths must be integers [S] or [S, {num_kv_heads}], got {lens.dtype} {lens.shape}")
    if lens.size and lens.min() < 0:
        raise KernelInputError(f"lengths must not be negative, got {int(lens.min())}")
    lens = lens.astype(np.int64)
    return np.broadcast_to(lens[:, None], (lens.shape[0], num_kv_heads)) if lens.ndim == 1 else lens


def resolve_launch(
    variant: str, partition_size: int | None, plan: AttentionPlan, num_heads: int, num_kv_heads: int, lens: np.ndarray
) -> tuple[str, int]:
    """Validate ``variant`` and ``partition_size`` (``None``: chosen with the variant); turn
    ``"auto"`` into a concrete variant, and return it with the partition length to use.

    ``lens`` holds every row's length (``[S]`` or ``[S, Hkv]``): with per-head tables each
    row's own length counts, as it does in the kernel's grid."""
    if partition_size is not None:
        partition_size = check_partition_size(partition_size, MIN_PARTITION_SIZE)
    if not isinstance(variant, str) or variant not in ("one_pass", "split_k", "auto"):
        raise KernelInputError(f"unknown paged_attention variant {variant!r} (one_pass, split_k or auto)")
    if variant == "auto":
        return choose_split(plan, num_heads, num_kv_heads, lens, partition_size)
    if partition_size is None:
        partition_size = split_partition(plan, num_heads, num_kv_heads, lens) if variant == "split_k" else DEFAULT_PARTITION_SIZE
    return variant, partition_size


def plan_launch(
    query_shape: tuple[int, int, int], dtype: np.dtype | type, num_kv_heads: int, lens: np.ndarray,
    variant: str, partition_size: int | None,
) -> tuple[AttentionPlan, str, int]:
    """Everything one ``paged_attention`` call's shapes decide, computed in one place for both
    backends: the plan, the concrete variant and the partition (:func:`resolve_launch`), after
    the launch limits are checked (:func:`check_launch_limits`). ``lens`` is the batch's
    validated ``[S, Hkv]`` lengths."""
    num_seqs, num_heads, head_dim = query_shape
    plan = make_plan(head_dim, dtype, num_heads // num_kv_heads)
    variant, partition_size = resolve_launch(variant, partition_size, plan, num_heads, num_kv_heads, lens)
    check_launch_limits(num_seqs, lens, partition_size if variant == "split_k" else None)
    return plan, variant, partition_size


#: CUDA's limit on ``gridDim.y`` and ``gridDim.z`` (sequences and split-K partitions).
MAX_GRID_YZ = 65535
#: Split-K partitions of one row at most: the reduce kernel keeps one float weight
#: per partition in shared memory (48 KiB without an opt-in).
MAX_PARTITIONS = 12_000


def check_launch_limits(num_seqs: int, lens: np.ndarray, partition_size: int | None) -> None:
    """Refuse shapes the kernels' grid or int32 token arithmetic cannot hold.

    The twin refuses them too, so both backends accept exactly the same inputs.
    ``partition_size`` is ``None`` for the one-pass variant."""
    if num_seqs > MAX_GRID_YZ:
        raise KernelInputError(f"query has {num_seqs} sequences; one launch takes at most {MAX_GRID_YZ}")
    if not lens.size or partition_size is None:
        return
    longest = int(lens.max())
    if longest + partition_size > 2**31 - 1:
        raise KernelInputError(
            f"batch.seq_lens: {longest} tokens plus a partition of {partition_size} overflow the kernels' int32 positions"
        )
    parts = partition_count(longest, partition_size)
    if parts > MAX_PARTITIONS:
        raise KernelInputError(
            f"{longest} tokens make {parts} split-K partitions of {partition_size}; "
            f"at most {MAX_PARTITIONS} (use a larger partition_size)"
        )
