"""Shared fixtures: a small random tiny-MDLM checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.models.tiny import save_checkpoint
from tests.helpers import make_tiny


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random (untrained) tiny checkpoint: fast to load, exercises every code path."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny-random"
    den = make_tiny()
    save_checkpoint(path, den.module, den.tokenizer, {"task": "addition", "note": "random init for tests"})
    return path
