"""Shared fixtures: a small random tiny-MDLM checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.models.tiny import save_checkpoint
from tests.helpers import make_tiny

# The test models are tiny: with several intra-op threads on a 2-core machine, thread hand-off
# costs far more than the arithmetic. One thread keeps the suite fast (results are unaffected).
torch.set_num_threads(1)


def pytest_configure(config):
    """On a machine without namespaces the sandbox refuses generated code unless allowed; the
    tests' programs are the project's own (reference solutions, fixed completions), so the
    session allows them there. Hostile-program tests pick their isolation level explicitly, and
    the refusal test unsets the permission (tests/tasks/test_sandbox.py)."""
    import os

    from harness.tasks.sandbox import ALLOW_ENV, LEVELS, probe

    if not any(probe(level) for level in LEVELS):
        os.environ.setdefault(ALLOW_ENV, "1")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random (untrained) tiny checkpoint: fast to load, exercises every code path."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-random"
    den = make_tiny()
    save_checkpoint(path, den.module, den.tokenizer, {"task": "addition", "note": "random init for tests"})
    return path
