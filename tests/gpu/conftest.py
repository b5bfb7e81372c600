"""GPU test fixtures (the Hypothesis profiles and the gpu marker live in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cupy_backend():
    from tinyserve_sim.data.backends import get_backend

    return get_backend("cupy")
