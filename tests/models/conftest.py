"""Session fixtures of the model tests: checkpoints built once from the public LLaDA/Dream code."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.models import _real_code


@pytest.fixture(scope="session")
def llada_real_ckpt(tmp_path_factory) -> Path:
    """build_llada.py's random-weight LLaDA checkpoint (real config keys and special ids, d 64, 2 layers)."""
    _real_code.require()
    return _real_code.build("llada", tmp_path_factory.mktemp("real-code") / "llada")


@pytest.fixture(scope="session")
def dream_real_ckpt(tmp_path_factory) -> Path:
    """build_dream.py's random-weight Dream checkpoint (real config keys and special ids, d 64, 2 layers)."""
    _real_code.require()
    return _real_code.build("dream", tmp_path_factory.mktemp("real-code") / "dream")
