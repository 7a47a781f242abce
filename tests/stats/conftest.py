"""Statistics tests: keep BLAS single-threaded (small matrix products; threads only contend here)."""
from __future__ import annotations

import pytest

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: only speed depends on it
    threadpool_limits = None


@pytest.fixture(scope="package", autouse=True)
def _single_threaded_blas():
    if threadpool_limits is None:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
