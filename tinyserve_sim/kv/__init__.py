"""The KV data plane: caches and the NumPy twin of every GPU kernel.

Each twin has its kernel's name, arguments and layout, and does the same
float32 operations in the same order, so its output is bit-identical to the
GPU's (``docs/concepts/gpu-validation.md`` explains how).
"""

from tinyserve_sim.kv.block_allocation import BatchAllocation, FifoBlockAllocator, check_racing_allocation
from tinyserve_sim.kv.block_tables import pack_block_tables
from tinyserve_sim.kv.cache import KVCache
from tinyserve_sim.kv.copy_blocks import copy_blocks
from tinyserve_sim.kv.exact_math import exp_f32, halving_sum, pairwise_sum, sequential_sum
from tinyserve_sim.kv.paged_attention import AttentionPlan, choose_variant, make_plan, paged_attention
from tinyserve_sim.kv.reference import attention_error_bound, reference_paged_attention
from tinyserve_sim.kv.reshape_and_cache import reshape_and_cache

__all__ = [
    "AttentionPlan",
    "BatchAllocation",
    "FifoBlockAllocator",
    "KVCache",
    "attention_error_bound",
    "check_racing_allocation",
    "choose_variant",
    "copy_blocks",
    "exp_f32",
    "halving_sum",
    "make_plan",
    "pack_block_tables",
    "paged_attention",
    "pairwise_sum",
    "reference_paged_attention",
    "reshape_and_cache",
    "sequential_sum",
]
