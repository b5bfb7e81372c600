"""The geometry of the paged-attention kernel: how work is cut into threads, rows and chunks.

The CUDA kernel (``gpu/kernels/paged_attention.cu``) and its NumPy twin
(:mod:`tinyserve_sim.data.paged_attention`) must agree on every one of these
numbers, because they fix the order of the float operations. Both import
them from here, so neither has to reach into the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from tinyserve_sim.data.validation import check_partition_size
from tinyserve_sim.errors import KernelInputError

NUM_THREADS = 128  #: threads per thread block (4 warps)
CHUNK_TOKENS = 128  #: tokens per online-softmax step
DEFAULT_PARTITION_SIZE = 1024  #: split-K partition, in tokens (a multiple of CHUNK_TOKENS)
MAX_ACC_REGISTERS = 64  #: float accumulators a thread may hold (head_tile * lane elements)

Variant = Literal["one_pass", "split_k", "auto"]


@dataclass(frozen=True)
class AttentionPlan:
    """How the kernel maps a head dimension onto threads; the twin follows it.

    Attributes:
        head_dim: D.
        vec: elements per 16-byte vector (8 for float16, 4 for float32).
        lanes: threads that share one token row (a power of two, <= 32).
        vecs_per_lane: vectors each lane owns (1 or 2).
        rows: tokens in flight per thread block (``128 // lanes``).
        head_tile: query heads of one GQA group handled per pass of a block
            (their accumulators live in registers).
    """

    head_dim: int
    vec: int
    lanes: int
    vecs_per_lane: int
    rows: int
    head_tile: int

    @property
    def num_vecs(self) -> int:
        return self.head_dim // self.vec


def make_plan(head_dim: int, dtype: np.dtype | type, group_size: int) -> AttentionPlan:
    """The launch plan for ``head_dim`` elements of ``dtype`` and a GQA group of ``group_size``."""
    vec = 16 // np.dtype(dtype).itemsize
    num_vecs = head_dim // vec
    lanes = min(32, 1 << (num_vecs.bit_length() - 1))  # largest power of two <= num_vecs
    vecs_per_lane = -(-num_vecs // lanes)
    per_lane = vecs_per_lane * vec
    head_tile = 8
    while head_tile > 1 and head_tile * per_lane > MAX_ACC_REGISTERS:
        head_tile //= 2
    while head_tile > 1 and head_tile // 2 >= group_size:
        head_tile //= 2  # no idle register tiles for small groups
    return AttentionPlan(head_dim, vec, lanes, vecs_per_lane, NUM_THREADS // lanes, head_tile)


def choose_variant(num_seqs: int, num_kv_heads: int, max_seq_len: int, partition_size: int) -> str:
    """``"auto"``: split-K as soon as a sequence is longer than one partition.

    Measured on an H100 (docs/dev/kernel-notes.md), split-K was never slower
    than one pass once sequences span several partitions, even at batch 64,
    and far faster at small batch. Depends on shapes only, so both backends
    always pick the same variant. ``num_seqs``/``num_kv_heads`` are kept for
    finer rules."""
    if max_seq_len > partition_size:
        return "split_k"
    return "one_pass"


def resolve_variant(
    variant: str, partition_size: int, num_seqs: int, num_kv_heads: int, lens: np.ndarray
) -> str:
    """Validate ``variant`` and ``partition_size``; turn ``"auto"`` into a concrete variant.

    ``lens`` holds every row's length (``[S]`` or ``[S, Hkv]``): with per-head
    tables the longest head decides, as it decides the kernel's partition count."""
    check_partition_size(partition_size, CHUNK_TOKENS)
    if not isinstance(variant, str) or variant not in ("one_pass", "split_k", "auto"):
        raise KernelInputError(f"unknown paged_attention variant {variant!r} (one_pass, split_k or auto)")
    if variant == "auto":
        max_len = int(lens.max()) if lens.size else 0
        return choose_variant(num_seqs, num_kv_heads, max_len, partition_size)
    return variant


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
    if -(-longest // partition_size) > MAX_PARTITIONS:
        raise KernelInputError(
            f"{longest} tokens make {-(-longest // partition_size)} split-K partitions of {partition_size}; "
            f"at most {MAX_PARTITIONS} (use a larger partition_size)"
        )
