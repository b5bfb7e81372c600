"""The data plane: the bytes in the blocks.

The control plane (:mod:`tinyserve_sim.control`) decides which block holds
which token; this package holds the keys and values themselves and runs the
kernels on them:

* :mod:`~tinyserve_sim.data.cache` - :class:`KVCache`, the two cache arrays
  of one layer, and how a control-plane record is applied to them;
* :mod:`~tinyserve_sim.data.backends` - where the kernels run: NumPy here,
  or the CUDA kernels of :mod:`tinyserve_sim.gpu` (found lazily, only when asked for);
* :mod:`~tinyserve_sim.data.layouts` - the caches in the layouts of other
  kernels (FlashInfer's NHD/HND paged tensor, FlexAttention's paged cache);
* the NumPy twin of every GPU kernel, one module each
  (:mod:`~tinyserve_sim.data.reshape_and_cache`, :mod:`~tinyserve_sim.data.copy_blocks`,
  :mod:`~tinyserve_sim.data.paged_attention`, :mod:`~tinyserve_sim.data.block_allocation`),
  and, for query-aware selection, :mod:`~tinyserve_sim.data.page_metadata`,
  :mod:`~tinyserve_sim.data.page_scores`, :mod:`~tinyserve_sim.data.select_pages`
  and the seed's :mod:`~tinyserve_sim.data.seed_heuristics`;
  for prefill, :mod:`~tinyserve_sim.data.paged_prefill_attention` with its
  :mod:`~tinyserve_sim.data.prefill_plan`, :mod:`~tinyserve_sim.data.prefill_checks`,
  :mod:`~tinyserve_sim.data.prefill_reference` and the step record
  :mod:`~tinyserve_sim.data.prefill_step`;
  with the kernels' shared :mod:`~tinyserve_sim.data.geometry` and
  :mod:`~tinyserve_sim.data.exact_math`, their host-side
  :mod:`~tinyserve_sim.data.validation`, and a float64
  :mod:`~tinyserve_sim.data.reference` with its error bound.

Each twin has its kernel's name, arguments and layout, and does the same
float32 operations in the same order, so its output is bit-identical to the
GPU's (``docs/concepts/gpu-validation.md`` explains how).
"""

from tinyserve_sim.data.backends import Backend, NumpyBackend, get_backend
from tinyserve_sim.data.block_allocation import (
    BatchAllocation,
    FifoBlockAllocator,
    check_racing_allocation,
)
from tinyserve_sim.control.batch import DecodeBatch, pack_block_tables
from tinyserve_sim.data.cache import KVCache
from tinyserve_sim.data.copy_blocks import copy_blocks
from tinyserve_sim.data.exact_math import (
    exp_f32,
    halving_sum,
    pairwise_sum,
    sequential_sum,
)
from tinyserve_sim.data.geometry import AttentionPlan, SplitCandidate, choose_split, make_plan, split_candidates
from tinyserve_sim.data.layouts import from_flashinfer_cache, to_flashinfer_cache, to_flex_attention_cache
from tinyserve_sim.data.paged_attention import paged_attention
from tinyserve_sim.control.prefill_batch import PrefillBatch
from tinyserve_sim.data.paged_prefill_attention import paged_prefill_attention
from tinyserve_sim.data.prefill_plan import PrefillPlan, make_prefill_plan
from tinyserve_sim.data.prefill_reference import prefill_error_bound, reference_paged_prefill_attention
from tinyserve_sim.data.prefill_step import PrefillStep, PrefillWork
from tinyserve_sim.data.reference import (
    attention_error_bound,
    external_kernel_error_bound,
    reference_paged_attention,
)
from tinyserve_sim.data.reshape_and_cache import reshape_and_cache
from tinyserve_sim.data.page_metadata import (
    copy_page_metadata,
    empty_page_metadata,
    page_metadata_from_cache,
    reset_page_metadata,
    reshape_and_cache_with_metadata,
    update_page_metadata,
)
from tinyserve_sim.data.page_scores import page_scores, page_scores_reference
from tinyserve_sim.data.select_pages import compact_tables, select_page_indices, select_pages
from tinyserve_sim.data.seed_heuristics import adaptive_cache_management, cache_selection, query_analysis

__all__ = [
    "Backend",
    "DecodeBatch",
    "NumpyBackend",
    "get_backend",
    "AttentionPlan",
    "BatchAllocation",
    "FifoBlockAllocator",
    "KVCache",
    "SplitCandidate",
    "attention_error_bound",
    "check_racing_allocation",
    "choose_split",
    "copy_blocks",
    "exp_f32",
    "from_flashinfer_cache",
    "external_kernel_error_bound",
    "halving_sum",
    "make_plan",
    "pack_block_tables",
    "paged_attention",
    "pairwise_sum",
    "reference_paged_attention",
    "split_candidates",
    "reshape_and_cache",
    "sequential_sum",
    "to_flashinfer_cache",
    "to_flex_attention_cache",
    # query-aware selection
    "adaptive_cache_management",
    "cache_selection",
    "compact_tables",
    "copy_page_metadata",
    "empty_page_metadata",
    "page_metadata_from_cache",
    "page_scores",
    "page_scores_reference",
    "query_analysis",
    "reset_page_metadata",
    "reshape_and_cache_with_metadata",
    "select_page_indices",
    "select_pages",
    "update_page_metadata",
    # prefill
    "PrefillBatch",
    "PrefillPlan",
    "PrefillStep",
    "PrefillWork",
    "make_prefill_plan",
    "paged_prefill_attention",
    "prefill_error_bound",
    "reference_paged_prefill_attention",
]
