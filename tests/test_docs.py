"""The documentation stays true: the component reference matches the code, and the worked example
of docs/extending.md runs."""
from __future__ import annotations

import re
import types
from pathlib import Path

import torch

from harness.registry import SAMPLERS
from tests.helpers import make_tiny

ROOT = Path(__file__).resolve().parents[1]


def test_components_reference_is_current():
    from harness.cli import components_markdown

    committed = (ROOT / "docs" / "components.md").read_text()
    assert committed == components_markdown(), "docs/components.md is stale: run `dlm-harness docs`"


def test_worked_example_runs():
    text = (ROOT / "docs" / "extending.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    code = code.replace('@SAMPLERS.register("left_to_right")', '@SAMPLERS.register("_doc_example")')
    module = types.ModuleType("doc_example")
    try:
        exec(compile(code, "docs/extending.md", "exec"), module.__dict__)
        sampler = SAMPLERS.build("_doc_example", {"steps": 4})
        den = make_tiny(seed=0, max_len=16)
        prompt = torch.tensor([den.tokenizer.encode("12+34=")])
        gen = sampler(den, prompt, generator=[torch.Generator().manual_seed(0)], gen_length=4)
        # left to right: position k is committed at step k (one token per step)
        assert gen.commit_step[0].tolist() == [0, 1, 2, 3]
    finally:
        SAMPLERS._entries.pop("_doc_example", None)
