"""Shared test configuration: Hypothesis profiles and the ``gpu`` marker.

Profiles
--------
* ``ci``: Hypothesis's built-in profile, loaded automatically when the ``CI``
  environment variable is set: derandomized, no deadline, no example database.
* ``dev`` (default elsewhere): randomized, a modest number of examples.
* ``thorough``: randomized, many examples and long stateful runs. Use it on the
  GPU machine: ``HYPOTHESIS_PROFILE=thorough pytest -m gpu``.

Every failure found by a randomized run is pinned with ``@example`` in the test.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
if "HYPOTHESIS_PROFILE" in os.environ:
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
elif not os.environ.get("CI"):
    settings.load_profile("dev")


def _gpu_skip_reason() -> str | None:
    """Return why GPU tests cannot run here, or None when they can.

    The reason is the GPU backend's own (``tinyserve_sim.gpu.backend``): "no CUDA
    device" where there is no NVIDIA driver or device at all, the CUDA error where
    a driver is there but does not work (a real driver mismatch).
    """
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA install
        return f"CuPy is not importable ({exc.__class__.__name__}: {exc})"
    from tinyserve_sim.errors import BackendUnavailableError
    from tinyserve_sim.gpu.backend import _require_gpu

    try:
        _require_gpu()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


GPU_SKIP_REASON = _gpu_skip_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if GPU_SKIP_REASON is None:
        return
    skip = pytest.mark.skip(reason=f"GPU test skipped: {GPU_SKIP_REASON}")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not "gpu" in keywords: that also matches the tests/gpu folder
            item.add_marker(skip)
