"""Fixtures of the sampler tests: the default tiny checkpoint and a few addition prompts."""
from __future__ import annotations

import pytest

from harness.registry import MODELS, TASKS
from harness.text import encode_prompts


@pytest.fixture(scope="session")
def tiny_addition():
    return MODELS.build("tiny", {}).load()


@pytest.fixture(scope="session")
def addition_items():
    return TASKS.build("addition", {"n_digits": 3}).items("test")


@pytest.fixture(scope="session")
def addition_prompts(tiny_addition, addition_items):
    items = addition_items[:6]
    return encode_prompts(tiny_addition.tokenizer, [it.prompt for it in items], tiny_addition.pad_id)
