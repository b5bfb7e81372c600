"""paged_prefill_attention on the GPU against its NumPy twin, bit for bit (raw bits), with the
output poisoned (NaN) before every launch so that an element the kernel fails to write
cannot pass; the data-plane prefill on the two backends; the launcher's host checks.

Under compute-sanitizer (memcheck on the fixed cases, which cover every instantiation,
partial tiles and one-token sequences, and a few random ones; racecheck, which
instruments every shared-memory access, on the small sanitizer cases)::

    TS_GPU_MAX_EXAMPLES=3 compute-sanitizer --tool memcheck --error-exitcode 9 \\
        python -m pytest -m gpu tests/gpu/test_gpu_prefill.py -q -p no:cacheprovider -k "fixed or sanitizer or bit_for_bit"
    compute-sanitizer --tool racecheck --error-exitcode 9 \\
        python -m pytest -m gpu tests/gpu/test_gpu_prefill.py -q -p no:cacheprovider -k sanitizer
    compute-sanitizer --tool synccheck --error-exitcode 9 \\
        python -m pytest -m gpu tests/gpu/test_gpu_prefill.py -q -p no:cacheprovider -k sanitizer
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cupy", reason="the launcher needs CuPy importable (its host checks need no GPU)")

from gpu_helpers import GPU_SETTINGS, assert_bits_equal  # noqa: E402  (puts tests/data on the path)
from hypothesis import example, given  # noqa: E402
from prefill_strategies import (  # noqa: E402
    BAD_PREFILL_INPUTS,
    PrefillCase,
    fixed_prefill_case,
    good_prefill_args,
    minus_zero_prefill_case,
    prefill_cases,
)

from tinyserve_sim import BlockManager  # noqa: E402
from tinyserve_sim.control.prefill_batch import PrefillBatch  # noqa: E402
from tinyserve_sim.data import KVCache, paged_prefill_attention  # noqa: E402
from tinyserve_sim.data.prefill_plan import INSTANTIATION_SHAPES  # noqa: E402
from tinyserve_sim.errors import KernelInputError  # noqa: E402
from tinyserve_sim.gpu import prefill_launchers  # noqa: E402


#: Every instantiation (dtype x padded head dim), and the awkward cuts (prefill_plan.INSTANTIATION_SHAPES).
FIXED = [
    fixed_prefill_case(i, dtype, d, bs, g, lens, qlens)
    for i, (dtype, d, bs, g, lens, qlens) in enumerate(INSTANTIATION_SHAPES)
]


#: Small launches for compute-sanitizer (racecheck instruments every shared-memory access):
#: several key tiles, a partial last tile, a prefix ending mid-block, both staging paths.
SANITIZER = [
    fixed_prefill_case(20 + i, dtype, d, bs, g, lens, qlens, num_kv_heads=1)
    for i, (dtype, d, bs, g, lens, qlens) in enumerate(
        [
            (np.float16, 128, 16, 2, [150, 5], [70, 5]),
            (np.float32, 128, 16, 2, [150, 5], [70, 5]),
            (np.float16, 256, 7, 1, [100], [40]),
            (np.float32, 40, 5, 3, [90], [33]),
        ]
    )
]


def _run_gpu(case: PrefillCase) -> np.ndarray:
    import cupy as cp

    out = cp.full(case.query.shape, np.nan, dtype=case.query.dtype)  # poison: every element must be written
    prefill_launchers.paged_prefill_attention(
        cp.asarray(case.query), cp.asarray(case.key_cache), cp.asarray(case.value_cache), case.batch, case.scale, out=out
    )
    return out.get()


@pytest.mark.gpu
@pytest.mark.parametrize("case", FIXED, ids=[f"{c.query.dtype}-D{c.query.shape[2]}" for c in FIXED])
def test_fixed_cases_equal_the_twin(case):
    assert_bits_equal(_run_gpu(case), paged_prefill_attention(*case.args()))


@pytest.mark.gpu
@pytest.mark.parametrize("case", SANITIZER, ids=[f"{c.query.dtype}-D{c.query.shape[2]}" for c in SANITIZER])
def test_small_cases_for_the_sanitizer(case):
    assert_bits_equal(_run_gpu(case), paged_prefill_attention(*case.args()))


@pytest.mark.gpu
@GPU_SETTINGS
@given(case=prefill_cases())
@example(case=FIXED[0])
def test_gpu_equals_twin_bit_for_bit(case):
    assert_bits_equal(_run_gpu(case), paged_prefill_attention(*case.args()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_minus_zero_accumulator_gives_the_same_bits(dtype):
    # An accumulator of -0 that the kernel's extra key tile turns into +0 (prefill_strategies).
    case = minus_zero_prefill_case(dtype)
    assert_bits_equal(_run_gpu(case), paged_prefill_attention(*case.args()))


@pytest.mark.gpu
@pytest.mark.parametrize("case", [c for c in FIXED + SANITIZER if c.query.dtype == np.float16],
                         ids=lambda c: f"D{c.query.shape[2]}-G{c.query.shape[1] // c.key_cache.shape[2]}")
@pytest.mark.parametrize("scores, values", [(False, False), (True, False)], ids=["cuda_core", "cuda_core_values"])
def test_cuda_core_paths_equal_the_twin(monkeypatch, case, scores, values):
    # float16 with part of the tensor-core work switched off (prefill_plan.TENSOR_CORE_SCORES
    # and TENSOR_CORE_VALUES; the other tests run the default, both on): every float16
    # instantiation, the awkward cuts and the sanitizer's small launches.
    from tinyserve_sim.data import prefill_plan

    monkeypatch.setattr(prefill_plan, "TENSOR_CORE_SCORES", scores)
    monkeypatch.setattr(prefill_plan, "TENSOR_CORE_VALUES", values)
    assert_bits_equal(_run_gpu(case), paged_prefill_attention(*case.args()))


@pytest.mark.gpu
def test_a_benchmark_sized_case_equals_the_twin():
    # Two sequences of 256 new tokens over 512 and 0 cached ones, 32 query heads over
    # 8 KV heads, head dim 128: the benchmark's shape, smaller (the twin's tensor-core
    # P V takes a minute on the GPU machine's CPU for it: 2 x 512 over 1,024 took over three).
    case = fixed_prefill_case(7, np.float16, 128, 16, 4, [768, 256], [256, 256], num_kv_heads=8)
    assert_bits_equal(_run_gpu(case), paged_prefill_attention(*case.args()))


@pytest.mark.gpu
def test_data_plane_prefill_with_a_prefix_hit_is_the_same_on_both_backends(cupy_backend):
    rng = np.random.default_rng(5)
    D, Hkv, Hq, bs = 128, 2, 8, 16
    prompt_a, prompt_b = list(range(150)), list(range(100)) + [999] * 30
    caches = {name: KVCache(64, bs, Hkv, D, backend=name, fill=np.nan) for name in ("numpy", "cupy")}
    managers = {name: BlockManager(64, bs, prefix_caching=True) for name in caches}
    tensors = [rng.standard_normal((150, h, D)).astype(np.float16) for h in (Hq, Hkv, Hkv)]
    outs = {}
    for name, cache in caches.items():
        m = managers[name]
        steps = []
        for seq, prompt in (("a", prompt_a), ("b", prompt_b)):
            rec = m.add(seq, prompt)
            batch = PrefillBatch.from_records(m, [rec])
            n = batch.num_query_tokens
            steps.append(cache.prefill(rec, batch, *(t[len(prompt) - n : len(prompt)] for t in tensors)))
        outs[name] = [cache.backend.to_numpy(s.output) for s in steps] + list(cache.to_numpy())
        assert steps[1].work[0].num_prefix_cache_tokens == 96
    for gpu, host in zip(outs["cupy"], outs["numpy"]):
        assert_bits_equal(gpu, host)


# ------------------------------------------------------------ host checks (no GPU needed)
@pytest.mark.parametrize("change, match", BAD_PREFILL_INPUTS)
def test_the_launcher_checks_everything_before_launch(change, match):
    args = good_prefill_args()
    change(args)
    with pytest.raises(KernelInputError, match=match):
        prefill_launchers.prepare_paged_prefill_attention(**args)


def test_valid_host_inputs_get_as_far_as_the_device_check():
    with pytest.raises(KernelInputError, match="cupy.ndarray on the GPU"):
        prefill_launchers.prepare_paged_prefill_attention(**good_prefill_args())
