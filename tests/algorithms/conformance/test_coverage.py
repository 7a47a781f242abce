"""Every registered algorithm has its conformance test (a new algorithm is not done without one)."""
from __future__ import annotations

from pathlib import Path

import harness.algorithms.grpo  # noqa: F401  (registers)
import harness.algorithms.igpo  # noqa: F401
import harness.algorithms.spg  # noqa: F401
import harness.algorithms.trace_rl  # noqa: F401
import harness.algorithms.wd1  # noqa: F401
from harness.registry import ALGORITHMS


def test_every_registered_algorithm_has_a_conformance_test():
    here = Path(__file__).parent
    missing = [n for n in ALGORITHMS.names() if not (here / f"test_{n}.py").exists()]
    assert not missing, f"algorithms without tests/algorithms/conformance/test_<name>.py: {missing}"
    assert len(ALGORITHMS.names()) >= 10
