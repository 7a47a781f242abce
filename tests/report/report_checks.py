"""Mechanical checks of a rendered report: what a reviewer would reject, found by code.

- `interval_problems`: every interval the statistics build (each `Interval` made while the report
  renders) lies inside its quantity's support, and the markdown agrees: accuracies in [0, 1],
  variances, MSEs, traces and standard deviations never below 0.
- `claim_problems`: every comparative sentence of the summary and the findings names the test (or the
  exactness, or the check) that backs it, and every stated test level is the report's one α.
- `figure_problems`: every figure holds at least two distinct data points (a heat map's finite cells
  count), no panel is empty, and
  accuracy error bars stay inside [0, 1].

`capture(monkeypatch)` instruments a report run; the `*_problems` functions return readable
problems (empty when the report passes).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

NUM = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|inf|nan)"
INTERVAL = re.compile(rf"({NUM}) \[({NUM}), ({NUM})\]")
UNIT = {"accuracy", "share", "exact_match", "between share", "outside"}  # headers of [0, 1] quantities
NONNEG = ("variance", "var ", "var x", "mse", "tr cov", "std", "‖", "within", "between t", "total")
COMPARATIVE = re.compile(r"\b(better|worse|faster|slower|lowest|highest|smallest|largest|significant(?:ly)?|beats?|"
                         r"ahead|outperforms?|dominates?|raises?|lowers?|cuts?|[\d.]+x as many|x as many)\b", re.I)
BACKED = re.compile(r"McNemar|permutation|Newcombe|paired|bootstrap|Holm|exact|check|not tested|interval|CI\b|"
                    r"t-test", re.I)
LEVEL = re.compile(r"(?:significant at|α =|alpha =|p <) ?(0\.\d+)")


@dataclass
class Capture:
    intervals: list = field(default_factory=list)
    figures: list = field(default_factory=list)  # (stem, summary of its axes)


def _axes_summary(fig) -> list[dict]:
    """Per axes: the finite data points it draws and the y values of its error bars."""
    from matplotlib.collections import LineCollection, PathCollection
    from matplotlib.patches import Rectangle

    out = []
    for ax in fig.axes:
        pts, bars = [], []
        for line in ax.get_lines():
            if line.get_marker() in ("_", "|") and line.get_linestyle() in ("None", "none", ""):
                continue  # error-bar caps: not data points
            xy = np.asarray(line.get_xydata(), dtype=float)
            pts += [tuple(p) for p in xy if np.isfinite(p).all()]
        for col in ax.collections:
            if isinstance(col, LineCollection):
                for seg in col.get_segments():
                    bars += [float(y) for y in np.asarray(seg)[:, 1] if np.isfinite(y)]
            elif isinstance(col, PathCollection):
                pts += [tuple(p) for p in np.asarray(col.get_offsets(), dtype=float) if np.isfinite(p).all()]
        pts += [(p.get_x(), p.get_width()) for p in ax.patches if isinstance(p, Rectangle) and p.get_width() > 0]
        for im in ax.images:  # a heat map: each finite (unmasked) cell is a data point
            arr = np.ma.masked_invalid(np.ma.asarray(im.get_array(), dtype=float))
            pts += [(float(i), float(j)) for i, j in zip(*np.nonzero(~np.ma.getmaskarray(arr)))]
        legend_only = all(len(line.get_xydata()) == 0 for line in ax.get_lines())
        out.append({"points": set(pts), "bars": bars, "ylabel": ax.get_ylabel(), "visible": ax.get_visible(),
                    "empty_legend_only": legend_only and not ax.collections and not ax.patches and not ax.images})
    return out


def capture(monkeypatch) -> Capture:
    """Record every Interval built and every figure saved while a report renders."""
    import harness.report.estimators as est
    import harness.report.exact_moments as xm
    import harness.report.format as fmt
    import harness.report.rl as rl
    import harness.report.samplers as smp
    from harness.stats.intervals import Interval

    cap = Capture()
    init = Interval.__init__

    def tracked(self, *args, **kwargs):
        init(self, *args, **kwargs)
        cap.intervals.append(self)

    monkeypatch.setattr(Interval, "__init__", tracked)
    save = fmt.save_figure

    def saving(fig, out_dir, stem):
        cap.figures.append((stem, _axes_summary(fig)))
        return save(fig, out_dir, stem)

    for mod in (fmt, est, xm, rl, smp):
        if hasattr(mod, "save_figure"):
            monkeypatch.setattr(mod, "save_figure", saving)
    return cap


def _tables(md: str):
    """(header, row) cell lists of every markdown table."""
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|(-+:?\|)+$", lines[i + 1].replace(" ", "")):
            header = [c.strip() for c in line.strip("|").split(" | ")]
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                yield header, [c.strip() for c in lines[j].strip("|").split(" | ")]
                j += 1


def interval_problems(md: str, cap: Capture | None = None) -> list[str]:
    bad = []
    for iv in (cap.intervals if cap else []):
        if not iv.inside_support():
            bad.append(f"interval {iv} leaves its support {iv.support}")
    for header, row in _tables(md):
        for h, cell in zip(header, row):
            name = h.lower()
            for m in INTERVAL.finditer(cell):
                lo, hi = float(m.group(2)), float(m.group(3))
                if any(name.startswith(u) for u in UNIT) and not (-1e-9 <= lo and hi <= 1 + 1e-9):
                    bad.append(f"table column {h!r}: {m.group(0)} outside [0, 1]")
                if any(k in name for k in NONNEG) and "bias" not in name and lo < 0:
                    bad.append(f"table column {h!r}: {m.group(0)} below 0")
                if not lo <= hi:
                    bad.append(f"table column {h!r}: {m.group(0)} has lo > hi")
    for m in re.finditer(rf"accuracy[^\[\n|]{{0,40}}?(?<![+\-\d.])(\d+\.\d+) \[({NUM}), ({NUM})\]", md, re.I):
        if not (0 <= float(m.group(2)) and float(m.group(3)) <= 1):
            bad.append(f"accuracy interval outside [0, 1]: {m.group(0)}")
    return bad


def _statements(md: str) -> list[str]:
    """The summary's bullets and the findings' statements (bold leads and their bullets)."""
    out, section = [], ""
    for line in md.splitlines():
        if line.startswith("## ") or line.startswith("### "):
            section = line.strip("# ").strip()
            continue
        if section == "Summary" and line.startswith("- "):
            out.append(line[2:])
        elif section.startswith("Findings") and (line.startswith("**") or line.startswith("  - ")):
            out.append(line.strip())
    return out


def claim_problems(md: str, alpha: float = 0.05, skip: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for s in _statements(md):
        if s.startswith(skip):
            continue
        if COMPARATIVE.search(s) and not BACKED.search(s):
            bad.append(f"comparative statement without its test: {s[:160]}")
        for level in LEVEL.findall(s):
            if not math.isclose(float(level), alpha):
                bad.append(f"statement at level {level}, the report's α is {alpha:g}: {s[:160]}")
    return bad


def figure_problems(cap: Capture) -> list[str]:
    bad = []
    for stem, axes in cap.figures:
        used = [a for a in axes if a["visible"] and not a["empty_legend_only"]]
        points = set().union(*(a["points"] for a in used)) if used else set()
        if len(points) < 2:
            bad.append(f"figure {stem}: {len(points)} data point(s)")
        for a in axes:
            if a["visible"] and a["empty_legend_only"] and a["ylabel"]:
                bad.append(f"figure {stem}: an empty panel ({a['ylabel']!r})")
            if "accuracy" in a["ylabel"].lower() and any(y < -1e-9 or y > 1 + 1e-9 for y in a["bars"]):
                bad.append(f"figure {stem}: accuracy error bars outside [0, 1]")
    return bad
