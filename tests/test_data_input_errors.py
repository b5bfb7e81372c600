"""Bad input to the batch descriptions, the KV cache, the page metadata and the block manager:
each raises the project's own error naming the problem, and leaves the state exactly as it was.

Found by an input-validation audit; every case here failed before its fix (a raw Python
error, a changed state, or a silently wrong result).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyserve_sim import BlockManager
from tinyserve_sim.control.batch import DecodeBatch, pack_block_tables
from tinyserve_sim.control.prefill_batch import PrefillBatch
from tinyserve_sim.data.cache import KVCache
from tinyserve_sim.data.page_metadata import (
    copy_page_metadata,
    empty_page_metadata,
    page_metadata_from_cache,
    reset_page_metadata,
    reshape_and_cache_with_metadata,
    update_page_metadata,
)
from tinyserve_sim.errors import (
    CopyConflictError,
    InvalidArgumentError,
    InvalidTokenCountError,
    KernelInputError,
    UnknownSequenceError,
)
from tinyserve_sim.data import exact_math
from tinyserve_sim.data.block_allocation import check_racing_allocation
from tinyserve_sim.data.geometry import choose_split
from tinyserve_sim.serving.catalog import make_memory
from tinyserve_sim.serving.compaction import plan_compaction
from tinyserve_sim.serving.generator import WorkloadSpec, generate
from tinyserve_sim.serving.scheduler import Scheduler, simulate
from tinyserve_sim.serving.timing import get_time_model

F16 = np.float16


def manager_with_a_fork() -> BlockManager:
    """``a`` (6 tokens) and its fork ``b``: they share a partly filled last block."""
    m = BlockManager(8, 4)
    m.add("a", 6)
    m.fork("a", "b")
    return m


# ------------------------------------------------------------------ KVCache.apply
def filled_cache(metadata: str | None) -> KVCache:
    """A cache whose every element differs (and, with metadata, every summary too)."""
    cache = KVCache(8, 4, 2, 8, page_metadata=metadata is not None, metadata_update=metadata or "fused")
    n = cache.key_cache.size
    cache.key_cache[...] = (np.arange(n) % 2000).reshape(cache.key_cache.shape)
    cache.value_cache[...] = -(np.arange(n) % 2000).reshape(cache.value_cache.shape)
    if metadata is not None:
        cache.key_min[...] = np.arange(cache.key_min.size).reshape(cache.key_min.shape)
        cache.key_max[...] = cache.key_min + 1
    return cache


def cache_state(cache: KVCache) -> list[np.ndarray]:
    state = [cache.key_cache.copy(), cache.value_cache.copy()]
    return state + ([cache.key_min.copy(), cache.key_max.copy()] if cache.has_page_metadata else [])


BAD_RECORDS = [
    pytest.param({"allocated": (100,)}, KernelInputError, "record.allocated has a block id outside 0..7", id="allocated-out-of-range"),
    pytest.param({"allocated": (-1,)}, KernelInputError, "record.allocated has a block id", id="allocated-negative"),
    pytest.param({"allocated": ("x",)}, KernelInputError, "record.allocated must hold integers", id="allocated-str"),
    pytest.param({"allocated": (True,)}, KernelInputError, "record.allocated must hold integers", id="allocated-bool"),
    pytest.param({"allocated": ((1, 2),)}, KernelInputError, "record.allocated must be 1-D", id="allocated-2d"),
    pytest.param({"copies": ((0, 100),)}, KernelInputError, "record.copies: block_mapping has a block id", id="copies-out-of-range"),
    pytest.param({"copies": ((0, 1), (2, 1))}, CopyConflictError, "record.copies: .* twice", id="copies-conflict"),
]


@pytest.mark.parametrize("metadata", [None, "fused", "separate"])
@pytest.mark.parametrize("change, error, match", BAD_RECORDS)
def test_apply_checks_the_whole_record_before_the_copy_on_write_copy(metadata, change, error, match):
    m = manager_with_a_fork()
    record = m.append("b", 1)  # copy-on-write: copies the shared block, then writes one token
    assert record.copies
    cache = filled_cache(metadata)
    before = cache_state(cache)
    kv = np.ones((1, 2, 8), F16)
    with pytest.raises(error, match=match):
        cache.apply(record._replace(**change), kv, kv)
    for got, want in zip(cache_state(cache), before):
        np.testing.assert_array_equal(got, want)


def test_prefill_checks_every_record_before_applying_the_first():
    m = BlockManager(8, 4)
    first, second = m.add("a", 3), m.add("b", 2)
    batch = PrefillBatch.from_records(m, [first, second])
    cache = filled_cache("fused")
    before = cache_state(cache)
    query = np.ones((5, 2, 8), F16)
    with pytest.raises(KernelInputError, match="record.allocated"):
        cache.prefill([first, second._replace(allocated=(100,))], batch, query, query, query)
    for got, want in zip(cache_state(cache), before):
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ BlockManager
# (A bool among token ids counts as 0 or 1, as tinyserve_sim/control/tokens.py says and why.)
MANAGER_CALLS = [
    pytest.param(lambda m: m.decode(np.array(3)), InvalidArgumentError, "list of sequence ids", id="decode-0d-array"),
    pytest.param(lambda m: m.blocks_needed_to_decode(np.array(3)), InvalidArgumentError, "list of sequence ids", id="needed-0d-array"),
]


@pytest.mark.parametrize("prefix_caching", [False, True])
@pytest.mark.parametrize("call, error, match", MANAGER_CALLS)
def test_manager_refuses_0d_arrays_and_changes_nothing(prefix_caching, call, error, match):
    m = BlockManager(8, 4, prefix_caching=prefix_caching)
    m.add("a", [1, 2, 3])
    m.add("b", [4, 5])
    before = m.snapshot()
    with pytest.raises(error, match=match):
        call(m)
    assert m.snapshot() == before
    m.check_invariants()


def test_manager_docstring_counts_its_operations():
    import tinyserve_sim.control.manager as manager_module

    assert "The five operations" not in manager_module.__doc__


# ------------------------------------------------------------------ DecodeBatch and pack_block_tables
def two_sequences() -> BlockManager:
    m = BlockManager(8, 4)
    m.add("a", 6)
    m.add("b", 3)
    return m


DECODE_CALLS = [
    # silently wrong before: int32 wrap-around, uint64 wrap-around into the padding value, truncation
    pytest.param(lambda m, b: DecodeBatch.from_tables([[0]], [2**32 + 1], 4), "seq_lens must be in 1..2,147,483,647, got 4,294,967,297", id="from_tables-len-wraps"),
    pytest.param(lambda m, b: DecodeBatch.from_tables([[0]], [-5], 4), "seq_lens must be in 1..", id="from_tables-len-negative"),
    pytest.param(lambda m, b: DecodeBatch.from_tables([[0]], [1], 4, np.array([2**64 - 1], np.uint64)), "slot_mapping must be in", id="from_tables-slot-uint64"),
    pytest.param(lambda m, b: DecodeBatch.from_tables([[0]], [1], 4, [[1, 2]]), "slot_mapping must be a 1-D", id="from_tables-slot-2d"),
    pytest.param(lambda m, b: DecodeBatch.from_manager(m, slot_mapping=[1.5, 2]), "slot_mapping must hold integers", id="from_manager-slot-float"),
    pytest.param(lambda m, b: DecodeBatch.from_manager(m, seq_ids="ab"), "seq_ids must be a list", id="from_manager-ids-str"),
    pytest.param(lambda m, b: pack_block_tables([[2**40]]), "block table 0 must be in", id="pack-int32-overflow"),
    pytest.param(lambda m, b: pack_block_tables([[1.5]]), "block table 0 must hold integers", id="pack-float-id"),
    pytest.param(lambda m, b: pack_block_tables([[True]]), "block table 0 must hold integers", id="pack-bool-id"),
    # raw Python errors before
    pytest.param(lambda m, b: pack_block_tables([1, 2]), "block table 0 must be a 1-D list", id="pack-ints"),
    pytest.param(lambda m, b: pack_block_tables(None), "tables must be a list of block tables", id="pack-None"),
    pytest.param(lambda m, b: pack_block_tables([[1]], max_blocks="a"), "max_blocks must be a positive integer", id="pack-max-str"),
    pytest.param(lambda m, b: pack_block_tables([[1]], max_blocks=1.5), "max_blocks must be a positive integer", id="pack-max-float"),
    pytest.param(lambda m, b: DecodeBatch.from_tables(3, [1], 4), "tables must be a list of block tables", id="from_tables-tables-int"),
    pytest.param(lambda m, b: DecodeBatch.from_manager(m, slot_mapping=["x", "y"]), "slot_mapping must hold integers", id="from_manager-slot-str"),
    pytest.param(lambda m, b: DecodeBatch.from_manager(m, slot_mapping=[2**70, 1]), "slot_mapping must be in", id="from_manager-slot-2**70"),
    pytest.param(lambda m, b: DecodeBatch.from_manager(m, seq_ids=5), "seq_ids must be a list", id="from_manager-ids-int"),
    pytest.param(lambda m, b: DecodeBatch.from_manager(None), "manager must be a BlockManager", id="from_manager-None"),
    pytest.param(lambda m, b: b.broadcast_heads(-1), "num_kv_heads must be a positive integer", id="broadcast_heads-negative"),
    pytest.param(lambda m, b: b.broadcast_heads(1.5), "num_kv_heads must be a positive integer", id="broadcast_heads-float"),
    pytest.param(lambda m, b: b.broadcast_heads("a"), "num_kv_heads must be a positive integer", id="broadcast_heads-str"),
    pytest.param(lambda m, b: b.head_tables(-1), "num_kv_heads must be a positive integer", id="head_tables-negative"),
    pytest.param(lambda m, b: b.blocks_used(10), "row must be a non-negative integer no larger than 1, got 10", id="blocks_used-row"),
    pytest.param(lambda m, b: b.blocks_used(0, 0), "one table per sequence", id="blocks_used-head-of-shared"),
    pytest.param(lambda m, b: b.broadcast_heads(2).blocks_used(0, 5), "head must be", id="blocks_used-head-range"),
]


@pytest.mark.parametrize("call, match", DECODE_CALLS)
def test_decode_batch_refuses_bad_input_by_name(call, match):
    m = two_sequences()
    batch = DecodeBatch.from_manager(m)
    before = m.snapshot()
    with pytest.raises(InvalidArgumentError, match=match):
        call(m, batch)
    assert m.snapshot() == before


def test_decode_batch_valid_input_is_unchanged():
    batch = DecodeBatch.from_tables([[4, 2], [7]], [5, 1], 4, np.array([3, 9], np.uint64))
    assert batch.block_tables.tolist() == [[4, 2], [7, -1]] and batch.block_tables.dtype == np.int32
    assert batch.seq_lens.tolist() == [5, 1] and batch.slot_mapping.tolist() == [3, 9]
    assert pack_block_tables([np.array([1, 2], np.int64), (3,)], max_blocks=np.int64(3)).tolist() == [[1, 2, -1], [3, -1, -1]]
    assert batch.broadcast_heads(np.int64(2)).blocks_used(1, np.int64(1)).tolist() == [7]


# ------------------------------------------------------------------ PrefillBatch
class NotARecord:
    op = "add"
    slot_mapping = (1,)


PREFILL_CALLS = [
    pytest.param(lambda m: PrefillBatch.from_manager(m, seq_ids=[["a"]]), UnknownSequenceError, "unknown sequence", id="from_manager-unhashable-id"),
    pytest.param(lambda m: PrefillBatch.from_manager(m, seq_ids=5), InvalidArgumentError, "seq_ids must be a list", id="from_manager-ids-int"),
    pytest.param(lambda m: PrefillBatch.from_manager("m"), InvalidArgumentError, "manager must be a BlockManager", id="from_manager-not-a-manager"),
    pytest.param(lambda m: PrefillBatch.from_records(m, 5), InvalidArgumentError, "records must be an OpRecord or a list", id="from_records-int"),
    pytest.param(lambda m: PrefillBatch.from_records(m, None), InvalidArgumentError, "records must be an OpRecord or a list", id="from_records-None"),
    pytest.param(lambda m: PrefillBatch.from_records(m, [NotARecord()]), InvalidArgumentError, "records must be OpRecords", id="from_records-no-seq_id"),
    pytest.param(lambda m: PrefillBatch.from_tables(3, [1], [1], 4), InvalidArgumentError, "tables must be a list", id="from_tables-tables-int"),
    pytest.param(lambda m: PrefillBatch.from_tables([[0]], np.array([2**64 - 1], np.uint64), [1], 4), InvalidArgumentError, "seq_lens must be in", id="from_tables-uint64-len"),
    pytest.param(lambda m: PrefillBatch.from_tables([[0]], [4], [1], 4, [2**64 - 1]), InvalidArgumentError, "slot_mapping must be in", id="from_tables-uint64-slot"),
]


@pytest.mark.parametrize("call, error, match", PREFILL_CALLS)
def test_prefill_batch_refuses_bad_input_by_name(call, error, match):
    m = two_sequences()
    before = m.snapshot()
    with pytest.raises(error, match=match):
        call(m)
    assert m.snapshot() == before


# ------------------------------------------------------------------ page metadata
def test_empty_page_metadata_follows_the_cache_rules():
    key_min, key_max = empty_page_metadata(np.int64(2), 1, 8, np.float32)
    assert key_min.shape == (2, 1, 8) and key_min.dtype == np.float32 and np.isneginf(key_max).all()


@pytest.mark.parametrize(
    "args, match",
    [
        ((0, 2, 8), "num_blocks must be a positive integer"),
        ((8, 2, 7), "head_dim must be a multiple of 8"),
        ((8, 2, 8, np.int32), "dtype must be float16 or float32"),
        ((8, 2, 8, "foo"), "dtype must be float16 or float32"),
        ((8.0, 2, 8), "num_blocks must be a positive integer"),
        ((True, 2, 8), "num_blocks must be a positive integer"),
        ((2**40, 2, 8), "cannot be allocated"),
    ],
)
def test_empty_page_metadata_refuses_what_no_cache_has(args, match):
    with pytest.raises(KernelInputError, match=match):
        empty_page_metadata(*args)


KC = (np.arange(8 * 4 * 2 * 8) % 100).astype(F16).reshape(8, 4, 2, 8)


@pytest.mark.parametrize(
    "key_cache, fill, match",
    [
        (KC, np.full(8, -1), "block_fill must be in 0..4"),  # silently key_cache[b, :-1] before
        (KC, np.full(8, 5), "block_fill must be in 0..4"),
        (KC, np.full(8, 4.0), "block_fill must hold integers"),
        (KC, 4, "one token count per block"),
        (KC, [4], "one token count per block"),
        (KC, None, "block_fill must hold integers"),
        (KC, "a", "block_fill must hold integers"),
        (KC[0], np.full(8, 4), "key_cache must have 4 dims"),
        (KC.tolist(), np.full(8, 4), "key_cache must be a numpy.ndarray"),
    ],
)
def test_page_metadata_from_cache_refuses_bad_fills_and_caches(key_cache, fill, match):
    with pytest.raises(KernelInputError, match=match):
        page_metadata_from_cache(key_cache, fill)


def test_page_metadata_from_cache_valid_input_is_unchanged():
    key_min, key_max = page_metadata_from_cache(KC, [4, 0, 1, 2, 3, 4, 4, 4])
    np.testing.assert_array_equal(key_min[0], KC[0].min(axis=0))
    np.testing.assert_array_equal(key_max[2], KC[2, 0])
    assert np.isposinf(key_min[1]).all()


def metadata() -> tuple[np.ndarray, np.ndarray]:
    key_min, key_max = empty_page_metadata(8, 2, 8)
    key_min[...] = np.arange(key_min.size).reshape(key_min.shape)
    key_max[...] = key_min + 1
    return key_min, key_max


def read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.setflags(write=False)
    return a


KEY = np.ones((3, 2, 8), F16)
SLOTS = np.array([0, 1, 2])
METADATA_CALLS = [
    pytest.param(lambda lo, hi: reset_page_metadata([0, 1], lo, hi), "blocks must be a numpy.ndarray", id="reset-list"),
    pytest.param(lambda lo, hi: reset_page_metadata(np.array([0]), lo, read_only(hi)), "key_max is read-only", id="reset-read-only"),
    pytest.param(lambda lo, hi: reset_page_metadata(np.array([0]), lo.tolist(), hi), "key_min must be a numpy.ndarray", id="reset-metadata-list"),
    pytest.param(lambda lo, hi: update_page_metadata(KEY, [0, 1, 2], lo, hi, 4), "slot_mapping must be a numpy.ndarray", id="update-slots-list"),
    pytest.param(lambda lo, hi: update_page_metadata(KEY.tolist(), SLOTS, lo, hi, 4), "key must be a numpy.ndarray", id="update-key-list"),
    pytest.param(lambda lo, hi: update_page_metadata(KEY, SLOTS, read_only(lo), hi, 4), "key_min is read-only", id="update-read-only"),
    pytest.param(lambda lo, hi: copy_page_metadata(lo, read_only(hi), np.array([[0, 1]])), "key_max is read-only", id="copy-read-only"),
]


@pytest.mark.parametrize("call, match", METADATA_CALLS)
def test_metadata_twins_refuse_lists_and_read_only_arrays_and_change_nothing(call, match):
    key_min, key_max = metadata()
    before = key_min.copy(), key_max.copy()
    with pytest.raises(KernelInputError, match=match):
        call(key_min, key_max)
    np.testing.assert_array_equal(key_min, before[0])
    np.testing.assert_array_equal(key_max, before[1])


def test_fused_write_refuses_read_only_metadata_before_writing_the_cache():
    key_cache, value_cache = KC.copy(), KC.copy()
    key_min, key_max = metadata()
    key_max = read_only(key_max)
    before = [a.copy() for a in (key_cache, value_cache, key_min, key_max)]
    with pytest.raises(KernelInputError, match="key_max is read-only"):
        reshape_and_cache_with_metadata(KEY, KEY, key_cache, value_cache, SLOTS, key_min, key_max)
    for got, want in zip((key_cache, value_cache, key_min, key_max), before):
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ simulate: a rate too low for the clock
def test_a_rate_that_spreads_arrivals_past_the_clock_is_refused():
    with pytest.raises(InvalidArgumentError, match="last arrival must come within"):
        generate(WorkloadSpec(num_requests=5, rate=1e-300))
    assert generate(WorkloadSpec(num_requests=5, rate=1e-3)).requests[-1].arrival < 1e9


def test_simulate_refuses_a_rate_too_low_in_one_line(tmp_path: Path):
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "tinyserve_sim", "simulate",
         "--requests", "5", "--rate", "1e-300", "--no-plots", "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, timeout=120, check=False,
    )
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2, result.stderr.decode()[-500:]
    assert len(lines) == 1 and lines[0].startswith("error: --rate:"), lines
    assert not (tmp_path / "out").exists(), "refused before anything is written"


# ------------------------------------------------------------------ remaining public helpers
@pytest.mark.parametrize(
    "call, match",
    [
        pytest.param(lambda: exact_math.pairwise_sum(np.ones(0, np.float32)), "power-of-two length, got 0", id="pairwise-empty"),
        pytest.param(lambda: exact_math.halving_sum(np.float32(1)), "axis -1 is not an axis", id="halving-0d"),
        pytest.param(lambda: exact_math.sequential_sum(np.ones(4, np.float32), axis=5), "axis 5", id="sequential-axis"),
        pytest.param(lambda: exact_math.pairwise_sum(np.ones(3, np.float32)), "power-of-two length, got 3", id="pairwise-3"),
        pytest.param(lambda: exact_math.exp_f32("a"), "exp_f32 needs real numbers", id="exp-str"),
        pytest.param(lambda: check_racing_allocation([True, False], None), "1-D bool array", id="racing-junk"),
        pytest.param(lambda: choose_split(None, 32, 8, np.array([100])), "AttentionPlan", id="choose-split-no-plan"),
    ],
)
def test_exact_math_and_geometry_helpers_name_bad_input(call, match):
    with pytest.raises(KernelInputError, match=match):
        call()


@pytest.mark.parametrize(
    "call, match",
    [
        pytest.param(lambda w: get_time_model(None), "named by a string", id="time-model-none"),
        pytest.param(lambda w: Scheduler(w, None), "memory must be a KV memory manager", id="scheduler-memory"),
        pytest.param(lambda w: Scheduler(None, make_memory("paged-16", 10_000)), "workload must be a Workload", id="scheduler-workload"),
        pytest.param(lambda w: Scheduler(w, make_memory("paged-16", 10_000), "cfg"), "config must be a SchedulerConfig", id="scheduler-config"),
        pytest.param(lambda w: simulate(w, "paged-16"), "memory must be a KV memory manager", id="simulate-name"),
        pytest.param(lambda w: plan_compaction(None), "manager must be a BlockManager", id="compaction-none"),
    ],
)
def test_serving_entry_points_name_bad_input(call, match):
    workload = generate(WorkloadSpec(num_requests=4, seed=0))
    with pytest.raises(InvalidArgumentError, match=match):
        call(workload)
