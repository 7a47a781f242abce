"""The sampler study section: accuracy, measured NFE and throughput per sampler cell, and figures.

A pure function of a run directory's records (the `generate` ones): one table row per cell with
the accuracy and its 95% interval (clustered by item when replicates repeat items), the measured
NFE per sequence split into full and cached passes, the model's wall time per sequence, and the
throughput. Throughput is always generated tokens up to and including the first EOS per second
of model time (the meter's wall time: the sampler's own bookkeeping is not in it), so numbers are
comparable across samplers; the speed-up is against plain `low_confidence` (no cache, one token
per step, greedy) of the same run. Figures (seaborn, PNG + SVG): accuracy against NFE and against
wall time per sequence, one line per sampler variant.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from harness.records import read_records
from harness.report.leaderboard import protocol_of
from harness.stats.intervals import mean_interval

FIGURES = ("samplers_accuracy_vs_nfe", "samplers_accuracy_vs_wall")
KNOBS = ("steps", "tau", "bound", "schedule", "eta", "alg_temp", "temperature", "block_length", "max_steps",
         "min_length", "gen_length", "cfg_scale", "refresh")


def _variant(name: str, params: dict) -> str:
    """A line in the figures: the sampler plus the knobs that are not swept along the budget axis."""
    extra = []
    if params.get("cache", "none") != "none":
        extra.append(f"cache={params['cache']}")
        if params.get("refresh"):
            extra.append(f"refresh={params['refresh']}")
    if name == "remdm":
        extra.append(str(params.get("schedule", "cap")))
    if params.get("temperature"):
        extra.append(f"T={params['temperature']:g}")
    if params.get("alg_temp"):
        extra.append(f"alg_temp={params['alg_temp']:g}")
    if params.get("block_length"):
        extra.append(f"block={params['block_length']}")
    return name + (f" ({', '.join(extra)})" if extra else "")


def _knobs(params: dict) -> str:
    shown = [f"{k}={params[k]}" for k in KNOBS if params.get(k) not in (None, 0, 0.0, "none")]
    return ", ".join(shown) or "defaults"


def cell_summaries(records: list[dict]) -> list[dict]:
    """One summary per generate cell with ok records: accuracy interval, NFE, wall time, tokens/s."""
    cells: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("kind") == "generate" and r.get("status") == "ok":
            cells[r["cell_id"]].append(r)
    out = []
    for cell_id, recs in cells.items():
        comp = recs[0]["component"]
        n = len(recs)
        iv = mean_interval([r["outcome"]["value"] for r in recs], clusters=[r["item_id"] for r in recs])
        mean = lambda key: sum(r["cost"][key] for r in recs) / n  # noqa: E731
        wall = sum(r["cost"]["wall_s"] for r in recs)
        tokens = sum(r["generation"]["gen_len"] for r in recs)
        out.append({
            "cell": cell_id, "study": recs[0]["study"], "sampler": comp["name"], "params": comp["params"],
            "variant": _variant(comp["name"], comp["params"]), "knobs": _knobs(comp["params"]),
            "accuracy": iv, "protocol": protocol_of(recs), "units": n,
            "replicates": len({r["replicate"] for r in recs}),
            "nfe": mean("nfe"), "nfe_full": mean("nfe_full"), "nfe_cached": mean("nfe_cached"),
            "ms_per_seq": 1000 * wall / n, "tokens_per_s": tokens / wall if wall > 0 else math.nan,
            "gen_len": tokens / n,
            # per-row decoding steps (last commit step + 1): exact per sequence, whereas the
            # per-unit NFE is the batch's meter total shared out over its units
            "steps": sum(max(r["generation"]["commit_step"]) + 1 for r in recs) / n,
        })
    return out


def _baseline(rows: list[dict]) -> dict | None:
    """Plain low_confidence: no cache, greedy, one token per step (the most steps of its cells)."""
    plain = [r for r in rows if r["sampler"] == "low_confidence" and r["params"].get("cache", "none") == "none"
             and not r["params"].get("temperature") and not r["params"].get("cfg_scale")]
    return max(plain, key=lambda r: r["nfe"]) if plain else None


def render_samplers_section(run_dir, out_dir, records: list[dict] | None = None) -> str:
    """Markdown for the sampler study of `run_dir` (or of `records` when given, e.g. several runs
    combined); figures are written into `out_dir` and linked by file name (the markdown is meant
    to live in `out_dir`)."""
    rows = cell_summaries(read_records(Path(run_dir)) if records is None else records)
    if not rows:
        return "## Samplers\n\n_no generate records in this run_\n"
    rows.sort(key=lambda r: (r["variant"], r["nfe"], r["cell"]))
    base = _baseline(rows)
    lines = [
        "## Samplers\n",
        "Accuracy is a mean with a 95% interval (Wilson for 0/1 outcomes; Student-t over item means when "
        "replicates repeat items; n = items). NFE is measured by the meter per sequence, split into full "
        "passes and cached passes (KV cache); steps/seq is each sequence's own number of decoding steps "
        "(its last commit step + 1; adaptive samplers vary per sequence). Throughput = generated tokens up "
        "to and including the first EOS per second of model wall time (the meter's; sampler bookkeeping "
        "excluded); wall times on a shared CPU are noisy, so compare speeds within one run."
        + (f" Speed-up is against `{base['cell']}` ({base['tokens_per_s']:.0f} tokens/s)." if base else "") + "\n",
        "| sampler | cell | knobs | accuracy [95% CI] | n items | units | NFE/seq (full + cached) | steps/seq | "
        "ms/seq | tokens/s | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        label = f" ({r['protocol']})" if r["protocol"] else ""  # the scoring protocol beside the accuracy
        lines.append(
            f"| {r['variant']} | `{r['cell']}` | {r['knobs']} | {r['accuracy'].fmt(3)}{label} | {r['accuracy'].n} | "
            f"{r['units']} | {r['nfe']:.2f} ({r['nfe_full']:.2f} + {r['nfe_cached']:.2f}) | {r['steps']:.2f} | "
            f"{r['ms_per_seq']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {speed} |")
    lines.append("")
    paths = _figures(rows, Path(out_dir))
    for stem, title in zip(FIGURES, ("Accuracy against measured NFE per sequence",
                                     "Accuracy against model wall time per sequence")):
        if stem in paths:
            lines.append(f"![{title}]({stem}.png) ([svg]({stem}.svg))\n")
    return "\n".join(lines)


def _figures(rows: list[dict], out_dir: Path) -> set[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from harness.report.markdown import save_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    variants = sorted({r["variant"] for r in rows})
    palette = dict(zip(variants, sns.color_palette("tab20", len(variants))))
    written = set()
    for stem, key, label in ((FIGURES[0], "nfe", "measured NFE per sequence"),
                             (FIGURES[1], "ms_per_seq", "model wall time per sequence (ms)")):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for v in variants:
            pts = sorted((r for r in rows if r["variant"] == v), key=lambda r: r[key])
            xs = [r[key] for r in pts]
            ys = [r["accuracy"].mean for r in pts]
            lo = [_half(r["accuracy"].mean - r["accuracy"].lo) for r in pts]  # floating-point: clamp at 0
            hi = [_half(r["accuracy"].hi - r["accuracy"].mean) for r in pts]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", ms=4, capsize=2, lw=1.2, label=v, color=palette[v])
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (95% CI)")
        if key == "ms_per_seq":
            ax.set_xscale("log")
        ax.legend(fontsize=7, loc="lower right", ncol=2)
        written.add(save_figure(fig, out_dir, stem))
    return written


def _half(width: float) -> float:
    return max(0.0, width) if math.isfinite(width) else 0.0
