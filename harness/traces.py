"""Per-sample decoding traces: `dlm-harness show-sample RUN ITEM`.

Every `generate` record stores, per generated position, the step at which the sampler committed it
(`generation.commit_step`, one integer a position, -1 for a position never committed) beside the text,
the generated length up to the first stop token (`gen_len`) and the NFE (`cost.nfe`). Samplers built on
the shared loop also store the confidence at commit (`generation.commit_conf`: the probability the
committing step gave the token, 3 decimals, null where no step committed it). That is the decoding trace,
stored compactly for every run (no flag needed); the sampler report draws it for the first item.

`show-sample` prints one item's records (all its cells, or one with `--cell`): the outcome, the text, the
positions committed at each step with their mean confidence, and grids of commit steps and confidences
(16 positions a line).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from harness.records import read_records
from harness.types import HarnessError

WIDTH = 16


def sample_records(run_dir: Path, item_id: str, cell: str | None = None) -> list[dict]:
    recs = [r for r in read_records(Path(run_dir)) if r.get("kind") == "generate" and r.get("item_id") == item_id
            and isinstance((r.get("generation") or {}).get("commit_step"), list)]
    if cell is not None:
        recs = [r for r in recs if r.get("cell_id") == cell]
    if not recs:
        items = sorted({r.get("item_id") for r in read_records(Path(run_dir)) if r.get("kind") == "generate"})
        shown = ", ".join(map(str, items[:10])) + (" ..." if len(items) > 10 else "")
        raise HarnessError(f"show-sample {run_dir} {item_id!r}{f' --cell {cell}' if cell else ''}: no generate record "
                           f"with a trace (items: {shown or 'none'})")
    return recs


def order(commit_step: list[int], gen_len: int) -> list[tuple[int, list[int]]]:
    """[(step, positions committed at that step)] in step order, positions < gen_len only."""
    by: dict[int, list[int]] = defaultdict(list)
    for pos, s in enumerate(commit_step[:gen_len]):
        by[s].append(pos)
    return sorted(by.items())


def sample_text(rec: dict) -> str:
    gen = rec["generation"]
    cs, n = gen["commit_step"], int(gen.get("gen_len", len(gen["commit_step"])))
    out = rec.get("outcome") or {}
    steps = order(cs, n)
    nfe = (rec.get("cost") or {}).get("nfe")
    lines = [f"{rec['cell_id']}  item {rec['item_id']}  replicate {rec.get('replicate', 0)}",
             f"outcome: {out.get('metric')} = {out.get('value')} ({out.get('protocol')}); "
             f"read: {out.get('extracted')!r}",
             f"generated {n} positions (up to the first stop) of {len(cs)}; {len(steps)} decoding steps; "
             f"NFE {nfe}; tokens per step {n / max(len(steps), 1):.2f}",
             "text:", "  " + (gen.get("text") or "").replace("\n", "\n  "),
             "decoding order (step: positions committed):"]
    conf = gen.get("commit_conf")
    for s, ps in steps:
        known = [conf[p] for p in ps if conf is not None and p < len(conf) and conf[p] is not None]
        mean = f"  (mean confidence {sum(known) / len(known):.3f})" if known else ""
        lines.append(f"  {s:>4}: {', '.join(map(str, ps))}{mean}")
    lines.append(f"commit step per position ({WIDTH} a line; '.' after the first stop):")
    lines += _grid(cs, n, lambda s: f"{s:>4}", 4)
    if conf is not None:
        lines.append(f"confidence at commit per position ({WIDTH} a line; '-' never committed):")
        lines += _grid(conf, n, lambda c: "    -" if c is None else f"{c:>5.2f}", 5)
    return "\n".join(lines)


def _grid(values: list, n: int, cell, width: int) -> list[str]:
    """Lines of WIDTH values each, positions from n on shown as '.'."""
    out = []
    for lo in range(0, len(values), WIDTH):
        cells = [cell(v) if lo + i < n else " " * (width - 1) + "." for i, v in enumerate(values[lo:lo + WIDTH])]
        out.append(f"  {lo:>4} |" + "".join(cells))
    return out
