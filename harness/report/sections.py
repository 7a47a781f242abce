"""The report's section registry: one registered section per family of study kinds.

A section module (any module of `harness.report` that calls `register_section`) declares which
study kinds it reads, how to render its markdown, and the headline sentences it contributes to the
report's summary. `markdown.py` discovers the modules of this package and renders every section
whose kinds occur in the records, so adding a study kind's report is one new file.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

CORE = {"format", "html", "markdown", "sections", "leaderboard"}  # not sections themselves


@dataclass
class Context:
    """What a section may read: the records (of one run or several combined), the first manifest,
    the run directory (or directories, for the reproduce line) and where figures go (None: none)."""

    records: list[dict]
    manifest: dict
    run_dir: object
    out_dir: Path | None
    _cache: dict = field(default_factory=dict)

    def memo(self, key: str, fn: Callable):
        """Analyse once per report: a section's render and summary share one analysis."""
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]


@dataclass(frozen=True)
class Section:
    name: str
    kinds: tuple[str, ...]
    order: int
    render: Callable[[Context], str]
    summary: Callable[[Context], list[str]] | None = None

    def applies(self, records: list[dict]) -> bool:
        return any(r.get("kind") in self.kinds for r in records)


SECTIONS: dict[str, Section] = {}


def register_section(name: str, *, kinds, order: int, render, summary=None) -> Section:
    if name in SECTIONS and SECTIONS[name].render is not render:
        raise ValueError(f"report section {name!r} registered twice")
    section = Section(name, tuple(kinds), order, render, summary)
    SECTIONS[name] = section
    return section


def load_sections() -> list[Section]:
    """Import every section module of harness.report once; -> the sections in report order."""
    import harness.report as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in CORE and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    return sorted(SECTIONS.values(), key=lambda s: (s.order, s.name))
