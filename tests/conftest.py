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


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random (untrained) tiny checkpoint: fast to load, exercises every code path."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-random"
    den = make_tiny()
    save_checkpoint(path, den.module, den.tokenizer, {"task": "addition", "note": "random init for tests"})
    return path
