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
    """Validate ``variant`` and ``partition_size``; turn ``"auto"`` into a concrete variant."""
    if partition_size < CHUNK_TOKENS or partition_size % CHUNK_TOKENS:
        raise KernelInputError(f"partition_size must be a positive multiple of {CHUNK_TOKENS}")
    if variant == "auto":
        max_len = int(lens.max()) if lens.size else 0
        return choose_variant(num_seqs, num_kv_heads, max_len, partition_size)
    if variant not in ("one_pass", "split_k"):
        raise KernelInputError(f"unknown paged_attention variant {variant!r}")
    return variant
