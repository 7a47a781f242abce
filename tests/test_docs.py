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


def _sources():
    for folder in ("harness", "suites", "tests", "docs", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".yaml", ".md") and path.is_file():
                yield path
    yield ROOT / "README.md"


def test_citations_point_into_the_repository():
    """Code, suites and docs cite docs/methods.md by section and docs/architecture.md by section or
    convention number; every cited section exists, and nothing cites a note outside the repository."""
    methods = (ROOT / "docs" / "methods.md").read_text()
    arch = (ROOT / "docs" / "architecture.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", methods, flags=re.M))
    conventions = set(re.findall(r"^(\d+)\. ", arch[arch.index("## Conventions"):], flags=re.M))
    headings = set(re.findall(r"^## (.+)$", arch, flags=re.M))
    outside, cited = [], 0
    for path in _sources():
        if path.name == "test_docs.py":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(ROOT)
        outside += [f"{rel}: {m}" for m in re.findall(r"(?<![\w/])(?:DESIGN|METHODS)\.md", text)]
        for sec in re.findall(r"docs/methods\.md,? §(\d+)", text):
            cited += 1
            assert sec in sections, f"{rel} cites docs/methods.md §{sec}; sections are {sorted(sections)}"
        for conv in re.findall(r"docs/architecture\.md, convention (\d+)", text):
            cited += 1
            assert conv in conventions, f"{rel} cites convention {conv}; there are {sorted(conventions)}"
        for head in re.findall(r'docs/architecture\.md, "([^"]+)"', text):
            cited += 1
            assert head in headings, f"{rel} cites docs/architecture.md, {head!r}; headings are {sorted(headings)}"
    assert not outside, "citations of notes that are not in the repository: " + "; ".join(outside[:10])
    assert cited > 50  # the check saw the citations it guards
