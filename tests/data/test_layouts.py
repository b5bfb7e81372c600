"""Cache layout converters: every element lands where the other kernel's layout says."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinyserve_sim.data.layouts import from_flashinfer_cache, to_flashinfer_cache, to_flex_attention_cache
from tinyserve_sim.errors import KernelInputError


@given(
    pages=st.integers(1, 6), page_size=st.integers(1, 9), heads=st.integers(1, 3),
    head_dim=st.sampled_from([8, 16, 64]), dtype=st.sampled_from([np.float16, np.float32]),
    layout=st.sampled_from(["NHD", "HND"]), seed=st.integers(0, 2**32 - 1),
)
def test_flashinfer_layouts_place_every_element_and_convert_back(pages, page_size, heads, head_dim, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    shape = (pages, page_size, heads, head_dim)
    k, v = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    kv = to_flashinfer_cache(k, v, layout)
    assert kv.flags.c_contiguous and kv.dtype == dtype
    for p, t, h in np.ndindex(pages, page_size, heads):
        got = kv[p, :, t, h] if layout == "NHD" else kv[p, :, h, t]
        assert (got[0] == k[p, t, h]).all() and (got[1] == v[p, t, h]).all()
    k2, v2 = from_flashinfer_cache(kv, layout)
    assert np.array_equal(k2, k) and np.array_equal(v2, v)


def test_flex_attention_layout_is_slot_major_per_head():
    k = np.arange(3 * 4 * 2 * 8, dtype=np.float32).reshape(3, 4, 2, 8)
    flex = to_flex_attention_cache(k)
    assert flex.shape == (1, 2, 12, 8)
    for block, offset, head in np.ndindex(3, 4, 2):
        assert (flex[0, head, block * 4 + offset] == k[block, offset, head]).all()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: to_flashinfer_cache(np.zeros((2, 4, 1, 8), np.float16), np.zeros((2, 4, 1, 8), np.float16), "NDH"), "layout"),
        (lambda: to_flashinfer_cache([[0.0]], [[0.0]]), "key_cache must be a"),
        (lambda: to_flashinfer_cache(np.zeros((2, 4, 1, 8), np.float16), np.zeros((2, 4, 1, 8), np.float32)), "must match"),
        (lambda: from_flashinfer_cache(np.zeros((2, 3, 4, 1, 8), np.float16)), r"\[num_pages, 2"),
        (lambda: from_flashinfer_cache(np.zeros((2, 2, 4, 1, 8), np.float64)), "dtype"),
        (lambda: from_flashinfer_cache("kv"), "kv_cache must be a"),
        (lambda: to_flex_attention_cache(np.zeros((2, 4, 8), np.float16)), "4 dims"),
    ],
)
def test_bad_caches_are_refused(call, match):
    with pytest.raises(KernelInputError, match=match):
        call()
