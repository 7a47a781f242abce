"""What every report section shares: markdown tables, the figure style, saved figures with captions.

Section modules import from here (never from `markdown.py`, which imports them), so the report
package has no import cycle.
"""
from __future__ import annotations

import math
from pathlib import Path


def _cell(value) -> str:
    # A pipe inside a cell would split it (GFM tables split on pipes even inside code spans).
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(rows: list[dict], empty: str = "_no records_") -> str:
    """Rows of equal keys -> a markdown table (the keys are the header)."""
    if not rows:
        return empty + "\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def bullets(rows, empty: str, header: str, line) -> str:
    """A report statement: `header`, then one "  - " line per row of the DataFrame `rows` (`line(r)`
    -> its text); `empty` when there are no rows."""
    if not len(rows):
        return empty
    return "\n".join([header, *(f"  - {line(r)}" for _, r in rows.iterrows())])


def num(x, digits: int = 3) -> str:
    """A number for a report table: n/a for a missing one, inf kept, scientific when tiny or huge."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    a = abs(x)
    if a != 0 and (a >= 1e5 or a < 10 ** -digits):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}f}"


def style():
    """The one figure style of every report: seaborn's whitegrid in paper context, Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")


def save_figure(fig, out_dir: Path, stem: str) -> str:
    """Write a matplotlib figure as `stem`.png (150 dpi) and `stem`.svg under out_dir, close it; -> stem."""
    import matplotlib.pyplot as plt

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(Path(out_dir) / f"{stem}.{ext}", dpi=150 if ext == "png" else None)
    plt.close(fig)
    return stem


def figure_md(stem: str, title: str, caption: str) -> str:
    """A figure as the report shows it: the image, its svg link, and a caption saying what to read."""
    return f"![{title}]({stem}.png) ([svg]({stem}.svg))\n\n*Figure: {title}.* {caption}\n"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (cost lower-or-equal and value higher-or-equal,
    one of them strictly): the configurations worth choosing when cost is x and quality is y."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def distinct(values, rel: float = 1e-9) -> int:
    """How many distinct values (up to a relative tolerance): a figure over one x value is degenerate."""
    vals = sorted(float(v) for v in values)
    n = 0
    last = None
    for v in vals:
        if last is None or abs(v - last) > rel * max(1.0, abs(last)):
            n += 1
            last = v
    return n
