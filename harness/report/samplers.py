"""The sampler study section: accuracy, measured NFE and throughput per sampler cell, and figures.

A pure function of a run directory's records (the `generate` ones): one table row per cell with
the accuracy and its 95% interval (clustered by item when replicates repeat items), the measured
NFE per sequence split into full and cached passes, the model's wall time per sequence, and the
throughput. Throughput is always generated tokens up to and including the first EOS per second
of model time (the meter's wall time: the sampler's own bookkeeping is not in it), so numbers are
comparable across samplers; the speed-up is against the run's speed reference, the cell whose
sampler declares it (`speed_reference()`: plain `low_confidence`, LLaDA's generate with no cache,
greedy; the one with the most passes). A figure line is a sampler with its parameters away from
their defaults, except the ones it declares as `budget_knobs` (the x axis). Figures (seaborn, PNG +
SVG): accuracy against NFE and against wall time per sequence, one line per sampler variant.

Models at matched NFE (`model_pairs`): cells that run the same sampler configuration on the same
task with different models and the same measured NFE per sequence (e.g. a block-diffusion model and
its full-attention counterpart) are compared item by item: exact McNemar on the paired 0/1
outcomes (sign-flip permutation otherwise), Holm-adjusted over the pairs, a Student-t interval on
the mean paired difference; the summary gets one line naming the test.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from harness.records import read_records
from harness.registry import SAMPLERS
from harness.report.format import distinct, figure_md, pareto_front, save_figure, style
from harness.report.leaderboard import protocol_of
from harness.report.sections import register_section
from harness.stats.intervals import mean_interval
from harness.stats.paired import compare_many

FIGURES = ("samplers_accuracy_vs_nfe", "samplers_accuracy_vs_wall")
ORDER_FIGURE = "samplers_decoding_order"
ORDER_CELLS = 12  # at most this many cells in the decoding-order figure


def _changed(name: str, params: dict) -> list[tuple[str, object]]:
    """The sampler's parameters set away from their defaults, in the class's field order."""
    out = []
    for key, (_, default) in SAMPLERS.fields(name).items():
        value = params.get(key, default)
        if (tuple(value) if isinstance(value, list) else value) != default:
            out.append((key, value))
    return out


def _show(key: str, value) -> str:
    return f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"


def _variant(name: str, params: dict) -> str:
    """A line in the figures: the sampler plus every parameter set away from its default, except
    the ones the sampler declares as its budget knobs (`budget_knobs`: swept along the x axis)."""
    knobs = SAMPLERS.get(name).budget_knobs
    extra = [_show(k, v) for k, v in _changed(name, params) if k not in knobs]
    return name + (f" ({', '.join(extra)})" if extra else "")


def _at(row: dict) -> str:
    """A configuration as a sentence names it: its variant, and its budget knobs away from their defaults."""
    knobs = SAMPLERS.get(row["sampler"]).budget_knobs
    budget = [_show(k, v) for k, v in _changed(row["sampler"], row["params"]) if k in knobs]
    return f"`{row['variant']}`" + (f" at {', '.join(budget)}" if budget else "")


def _knobs(name: str, params: dict) -> str:
    return ", ".join(_show(k, v) for k, v in _changed(name, params)) or "defaults"


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
        nfe_total = sum(r["cost"]["nfe"] for r in recs)
        out.append({
            "cell": cell_id, "study": recs[0]["study"], "sampler": comp["name"], "params": comp["params"],
            "variant": _variant(comp["name"], comp["params"]), "knobs": _knobs(comp["name"], comp["params"]),
            "accuracy": iv, "protocol": protocol_of(recs), "units": n,
            "replicates": len({r["replicate"] for r in recs}),
            "nfe": mean("nfe"), "nfe_full": mean("nfe_full"), "nfe_cached": mean("nfe_cached"),
            "ms_per_seq": 1000 * wall / n, "tokens_per_s": tokens / wall if wall > 0 else math.nan,
            "gen_len": tokens / n, "items": _item_means(recs),
            "tpf": tokens / nfe_total if nfe_total > 0 else math.nan,  # tokens per forward pass
            "group": ((recs[0].get("task") or {}).get("name", "?"),
                      _model_label(recs[0].get("model") or {"name": "?"})),
            # per-row decoding steps (last commit step + 1): exact per sequence, whereas the
            # per-unit NFE is the batch's meter total shared out over its units
            "steps": sum(max(r["generation"]["commit_step"]) + 1 for r in recs) / n,
        })
    return out


def _item_means(recs: list[dict]) -> dict[str, float]:
    by: dict[str, list[float]] = defaultdict(list)
    for r in recs:
        by[r["item_id"]].append(float(r["outcome"]["value"]))
    return {k: sum(v) / len(v) for k, v in by.items()}


def accuracy_difference(base: dict, row: dict):
    """``row`` minus ``base`` in accuracy on their shared items, with its interval: Newcombe's paired
    interval for 0/1 outcomes, else the symmetric paired bootstrap-t on per-item differences."""
    from harness.stats.paired import paired_bootstrap, paired_proportion_difference

    shared = [k for k in base["items"] if k in row["items"]]
    a = [base["items"][k] for k in shared]
    b = [row["items"][k] for k in shared]
    if all(v in (0.0, 1.0) for v in a + b):
        return paired_proportion_difference(a, b)
    return paired_bootstrap([y - x for x, y in zip(a, b)], seed=0).interval


def _baseline(rows: list[dict]) -> dict | None:
    """The speed-up reference: the cells whose sampler says so (`speed_reference()`: plain
    low_confidence, i.e. LLaDA's generate without cache, greedy), the one with the most passes."""
    ref = [r for r in rows if SAMPLERS.build(r["sampler"], r["params"], where=f"cell {r['cell']}").speed_reference()]
    return max(ref, key=lambda r: r["nfe"]) if ref else None


def render_samplers_section(run_dir, out_dir, records: list[dict] | None = None) -> str:
    """Markdown for the sampler study of `run_dir` (or of `records` when given, e.g. several runs
    combined); figures are written into `out_dir` and linked by file name (the markdown is meant
    to live in `out_dir`)."""
    records = read_records(Path(run_dir)) if records is None else records  # read once for every part
    rows = cell_summaries(records)
    if not rows:
        return "## Samplers\n\n_no generate records in this run_\n"
    rows.sort(key=lambda r: (r["variant"], r["nfe"], r["cell"]))
    base = _baseline(rows)
    lines = [
        "## Samplers\n",
        "Accuracy is a mean with a 95% interval (Wilson for 0/1 outcomes, at the effective sample size when "
        "replicates repeat items; n = items). NFE is measured by the meter per sequence, split into full "
        "passes and cached passes (KV cache); steps/seq is each sequence's own number of decoding steps "
        "(its last commit step + 1; adaptive samplers vary per sequence). Throughput = generated tokens up "
        "to and including the first EOS per second of model wall time (the meter's; sampler bookkeeping "
        "excluded); wall times on a shared CPU are noisy, so compare speeds within one run."
        + (f" Speed-up is against `{base['cell']}` ({base['tokens_per_s']:.0f} tokens/s)." if base else "") + "\n",
        "TPF (tokens per forward pass) = generated tokens / NFE: parallelism that does not depend on the machine."
        "\n",
        "| sampler | cell | knobs | accuracy [95% CI] | n items | units | NFE/seq (full + cached) | TPF | steps/seq | "
        "ms/seq | tokens/s | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        label = f" ({r['protocol']})" if r["protocol"] else ""  # the scoring protocol beside the accuracy
        lines.append(
            f"| {r['variant']} | `{r['cell']}` | {r['knobs']} | {r['accuracy'].fmt(3)}{label} | {r['accuracy'].n} | "
            f"{r['units']} | {r['nfe']:.2f} ({r['nfe_full']:.2f} + {r['nfe_cached']:.2f}) | {r['tpf']:.2f} | "
            f"{r['steps']:.2f} | "
            f"{r['ms_per_seq']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {speed} |")
    lines.append("")
    lines += aup_md(rows)
    captions = (
        ("Accuracy against measured NFE per sequence",
         "Each point is one sampler configuration with its 95% interval, on the full accuracy range."),
        ("Accuracy against model wall time per sequence",
         "As above with measured model time on the x axis (log scale): KV caches cut time without cutting NFE."))
    lines += model_pairs_md(model_pairs(records))
    if out_dir is not None:
        drawn = _figures(rows, Path(out_dir))
        for stem, (title, caption) in zip(FIGURES, captions):
            if stem in drawn:
                caption += (" The black line is the Pareto frontier, drawn only through steps whose accuracy gain "
                            "is significant (Newcombe paired 95% interval above 0)." if drawn[stem] else
                            " No step up the Pareto frontier is a significant accuracy gain (Newcombe paired 95% "
                            "interval), so no frontier is drawn: the cheaper configurations are as accurate as far "
                            "as these items can tell.")
                lines.append(figure_md(stem, title, caption))
        item = _order_figure(records, Path(out_dir))
        if item is not None:
            lines.append(figure_md(
                ORDER_FIGURE, f"Decoding order of item {item}",
                f"One row per cell (first replicate; a cell of every study first, at most {ORDER_CELLS} cells), "
                "positions up to the first stop token. Left: when each position was committed, as a fraction of "
                "that sequence's decoding steps (dark = early, so left-to-right "
                "decoding is a dark-to-light ramp). Right: the probability the committing step gave the token. "
                "Blank: after the row's first stop token, never masked, or (right) a sampler that does not record it. "
                "`dlm-harness show-sample RUN ITEM` prints the same trace."))
    return "\n".join(lines)


def _order_figure(records: list[dict], out_dir: Path) -> str | None:
    """Draw the commit order and confidence of the first traced item across cells; -> its id (None: no trace)."""
    traced = [r for r in records if r.get("kind") == "generate"
              and isinstance((r.get("generation") or {}).get("commit_step"), list)]
    if not traced:
        return None
    item = traced[0]["item_id"]
    first: dict[str, dict] = {}
    for r in traced:
        if r["item_id"] == item and r["cell_id"] not in first:
            first[r["cell_id"]] = r
    by_study: dict[str, list[dict]] = defaultdict(list)  # one cell of every study first, then the rest
    for cell, r in first.items():
        by_study[cell.split("[")[0]].append(r)
    rows = [rs[k] for k in range(max(map(len, by_study.values()))) for rs in by_study.values() if k < len(rs)]
    rows = rows[:ORDER_CELLS]
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    style()
    width = max(int(r["generation"].get("gen_len", len(r["generation"]["commit_step"]))) for r in rows)
    order = np.full((len(rows), max(width, 1)), np.nan)
    conf = np.full((len(rows), max(width, 1)), np.nan)
    for i, r in enumerate(rows):
        gen = r["generation"]
        cs = gen["commit_step"]
        n = int(gen.get("gen_len", len(cs)))
        last = max(int(gen.get("steps") or 0) - 1, max(cs, default=0))  # the sequence's last step (any position)
        for j, s in enumerate(cs[:n]):
            if s >= 0:
                order[i, j] = s / max(last, 1)
        for j, c in enumerate((gen.get("commit_conf") or [])[:n]):
            if c is not None and cs[j] >= 0:
                conf[i, j] = c
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.9 + 0.32 * len(rows)), sharey=True)
    for ax, data, title, cmap in ((axes[0], order, "commit step / steps", "viridis"),
                                  (axes[1], conf, "confidence at commit", "magma")):
        im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=cmap, vmin=0, vmax=1,
                       interpolation="nearest")
        ax.set_xlabel("generated position")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=9)
        ax.grid(False)
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    axes[0].set_yticks(range(len(rows)), [r["cell_id"] for r in rows], fontsize=7)
    save_figure(fig, out_dir, ORDER_FIGURE)
    return str(item)


def aup_md(rows: list[dict]) -> list[str]:
    """AUP (harness/stats/aup.py, d3LLM's definition) per sampler variant over its configurations, for
    each (task, model) with a sweep: TPF against accuracy in percent, y_max the best accuracy of the
    (task, model) group."""
    from harness.stats.aup import aup

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["tpf"] > 0:
            groups[r["group"]].append(r)
    out = []
    for (task, model), rs in groups.items():
        variants: dict[str, list[dict]] = defaultdict(list)
        for r in rs:
            variants[r["variant"]].append(r)
        if len(rs) < 2:
            continue
        y_max = 100 * max(r["accuracy"].mean for r in rs)
        parts = []
        for v, vr in sorted(variants.items()):
            score, dropped = aup([(r["tpf"], 100 * r["accuracy"].mean) for r in vr], y_max)
            parts.append(f"`{v}` {score:.1f} ({len(vr)} point{'s' if len(vr) > 1 else ''}"
                         + (f", {dropped} more than 5 points below its lowest-TPF accuracy dropped" if dropped else "")
                         + ")")
        out.append(f"AUP on {task} ({model}), accuracy under parallelism as d3LLM defines it (TPF x accuracy %, "
                   f"weighted by min(exp(-3 (1 - y / {y_max:.1f})), 1)): " + "; ".join(parts) + ".\n")
    return out


MARGIN = 0.02  # the sampler study's question: the fastest decoder within 2 accuracy points of the reference


def speedup_headline(rows: list[dict], margin: float = MARGIN) -> str | None:
    """The sampler study's question, answered: the fastest decoder (a sampler with its non-budget
    knobs, other than the speed reference's own) whose accuracy is non-inferior to the speed reference
    (`_baseline`) within `margin`: the lower limit of the paired difference's interval (Newcombe's for
    0/1 outcomes) above -margin. Throughput is measured, not tested, and said so."""
    base = _baseline(rows)
    if base is None or not base["tokens_per_s"] > 0:
        return None
    question = (f"Samplers (the study's question: the fastest decoder within {margin:g} accuracy of the speed "
                f"reference {_at(base)}, non-inferiority by the paired interval)")
    others = [r for r in rows if r["variant"] != base["variant"] and r["tokens_per_s"] > 0]
    if not others:
        return f"{question}: the run has no other decoder to compare."
    diffs = {r["cell"]: accuracy_difference(base, r) for r in others}
    ok = [r for r in others if diffs[r["cell"]].lo > -margin]
    if not ok:
        best = max(others, key=lambda r: r["tokens_per_s"])
        d = diffs[best["cell"]]
        return (f"{question}: no decoder is shown within the margin; the fastest, {_at(best)}, differs by "
                f"{d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] ({d.method}, {d.n} items), "
                f"an interval that reaches below -{margin:g}.")
    best = max(ok, key=lambda r: r["tokens_per_s"])
    d = diffs[best["cell"]]
    speedup = best["tokens_per_s"] / base["tokens_per_s"]
    return (f"{question}: {_at(best)}, {best['nfe']:.2f} vs {base['nfe']:.2f} NFE per sequence, "
            f"{speedup:.1f}x the reference's tokens/s (measured in this run, not tested); accuracy "
            f"difference {d.mean:+.3f} [{d.lo:+.3f}, {d.hi:+.3f}] ({d.method}, {d.n} items), non-inferior within "
            f"{margin:g}.")


def _model_label(model: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in sorted((model.get("params") or {}).items()))
    return f"{model['name']}({params})" if params else model["name"]


def model_pairs(records: list[dict], rel_nfe: float = 1e-6, seed: int = 0) -> list[dict]:
    """Cells with the same task and sampler configuration on two models, at the same measured NFE
    per sequence, compared on their shared (item, replicate) units (module docstring). The first
    model to appear in the records is the base; -> one dict per pair, with its Comparison."""
    import json

    cells: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("kind") == "generate" and r.get("status") == "ok":
            cells[r["cell_id"]].append(r)
    groups: dict[str, list[str]] = defaultdict(list)  # same task and sampler configuration
    for cell_id, recs in cells.items():
        groups[json.dumps([recs[0]["task"], recs[0]["component"]], sort_keys=True, default=str)].append(cell_id)
    found = []
    for ids in groups.values():
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                ra, rb = cells[a], cells[b]
                if ra[0]["model"] == rb[0]["model"]:
                    continue
                nfe_a = sum(r["cost"]["nfe"] for r in ra) / len(ra)
                nfe_b = sum(r["cost"]["nfe"] for r in rb) / len(rb)
                if abs(nfe_a - nfe_b) > rel_nfe * max(nfe_a, nfe_b, 1.0):
                    continue  # not matched: an adaptive sampler spent different budgets
                va = {(r["item_id"], r["replicate"]): float(r["outcome"]["value"]) for r in ra}
                vb = {(r["item_id"], r["replicate"]): float(r["outcome"]["value"]) for r in rb}
                keys = [k for k in va if k in vb]
                if not keys:
                    continue
                found.append({"base": a, "new": b, "base_model": _model_label(ra[0]["model"]),
                              "new_model": _model_label(rb[0]["model"]), "sampler": ra[0]["component"]["name"],
                              "knobs": _knobs(ra[0]["component"]["name"], ra[0]["component"]["params"]),
                              "nfe": nfe_a, "base_acc": sum(va[k] for k in keys) / len(keys),
                              "new_acc": sum(vb[k] for k in keys) / len(keys),
                              "diff": [vb[k] - va[k] for k in keys],
                              "binary": all(v in (0.0, 1.0) for v in [*va.values(), *vb.values()])})
    if found:
        tests = compare_many({i: f["diff"] for i, f in enumerate(found)}, binary={i: f["binary"] for i, f in
                                                                                  enumerate(found)}, seed=seed)
        for f, c in zip(found, tests):
            f["comparison"] = c
    return found


def model_pairs_md(pairs: list[dict]) -> list[str]:
    """The section's table of model pairs at matched NFE."""
    if not pairs:
        return []
    lines = ["### Models at matched NFE\n",
             "Same sampler configuration and task, two models, equal measured NFE per sequence; paired by "
             "(item, replicate); p-values Holm-adjusted over the pairs.\n",
             "| new model (cell) | base model (cell) | sampler (knobs) | NFE/seq | accuracy new vs base | "
             "difference [95% CI] | test | p (Holm) |", "|---|---|---|---|---|---|---|---|"]
    for f in pairs:
        c = f["comparison"]
        lines.append(f"| {f['new_model']} (`{f['new']}`) | {f['base_model']} (`{f['base']}`) | {f['sampler']} "
                     f"({f['knobs']}) | {f['nfe']:.2f} | {f['new_acc']:.3f} vs {f['base_acc']:.3f} | "
                     f"{c.mean_diff:+.3f} [{c.interval.lo:+.3f}, {c.interval.hi:+.3f}] | {c.test} | "
                     f"{c.p_adjusted:.3g} |")
    return lines + [""]


def model_pairs_headline(pairs: list[dict]) -> str | None:
    """One summary line over the model pairs at matched NFE (the first model pair found)."""
    if not pairs:
        return None
    first = (pairs[0]["new_model"], pairs[0]["base_model"])
    same = [f for f in pairs if (f["new_model"], f["base_model"]) == first]
    parts = [f"{f['sampler']} ({f['knobs']}) at {f['nfe']:.2f} NFE: {f['new_acc']:.3f} vs {f['base_acc']:.3f}, "
             f"{f['comparison'].mean_diff:+.3f} [{f['comparison'].interval.lo:+.3f}, "
             f"{f['comparison'].interval.hi:+.3f}], p = {f['comparison'].p_adjusted:.2g}" for f in same]
    test = "exact McNemar" if all(f["binary"] for f in same) else "paired tests"
    return (f"Models at matched NFE: {first[0]} vs {first[1]} ({test} paired by item, Holm-adjusted over "
            f"{len(pairs)} pair{'s' if len(pairs) > 1 else ''}): " + "; ".join(parts) + ".")


def _summary(ctx) -> list[str]:
    rows = ctx.memo("samplers", lambda: cell_summaries(ctx.records))
    line = speedup_headline(rows) if rows else None
    pairs = ctx.memo("sampler_model_pairs", lambda: model_pairs(ctx.records))
    return [x for x in (line, model_pairs_headline(pairs)) if x]


def significant_front(pts: list[dict], key: str) -> tuple[list[dict], list[dict]]:
    """The Pareto frontier (cost `key` on x, accuracy on y) and the part of it a paired test backs:
    each step up the frontier (a costlier point that is more accurate than the one before) counts only
    when the accuracy difference's interval (`accuracy_difference`) excludes 0. -> (frontier, backed
    frontier: the first frontier point and each significant step; one point when nothing is)."""
    front = [pts[i] for i in pareto_front([(r[key], r["accuracy"].mean) for r in pts])]
    if not front:
        return [], []
    backed = [front[0]]
    for r in front[1:]:
        d = accuracy_difference(backed[-1], r)
        if d.lo > 0:
            backed.append(r)
    return front, backed


def _figures(rows: list[dict], out_dir: Path) -> dict[str, bool]:
    """Write the two figures; -> {stem: whether a significant frontier was drawn}."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    style()
    variants = sorted({r["variant"] for r in rows})
    palette = dict(zip(variants, sns.color_palette("tab20", len(variants))))
    written = {}
    for stem, key, label in ((FIGURES[0], "nfe", "measured NFE per sequence"),
                             (FIGURES[1], "ms_per_seq", "model wall time per sequence (ms)")):
        pts = [r for r in rows if math.isfinite(r[key]) and math.isfinite(r["accuracy"].mean)]
        if len(pts) < 2 or distinct(r[key] for r in pts) < 2:
            continue  # every configuration at one x value: nothing to read from a plot
        front, backed = significant_front(pts, key)
        fig, ax = plt.subplots(figsize=(8, 4.8))
        for v in variants:
            mine = [r for r in pts if r["variant"] == v]
            if not mine:
                continue
            iv = [r["accuracy"] for r in mine]
            ax.errorbar([r[key] for r in mine], [i.mean for i in iv],
                        yerr=[[_half(i.mean - i.lo) for i in iv], [_half(i.hi - i.mean) for i in iv]],
                        marker="o", ms=5, capsize=2, lw=0, elinewidth=1, color=palette[v], label=v)
        if len(backed) > 1:
            ax.plot([r[key] for r in backed], [r["accuracy"].mean for r in backed], color="k", lw=1.2, zorder=1,
                    label="frontier (significant steps)")
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (95% CI)")
        if all(r["accuracy"].support == (0.0, 1.0) for r in pts):
            ax.set_ylim(0, 1.02)  # the whole range of a proportion: no zoom that turns noise into a slope
        if key == "ms_per_seq" or max(r[key] for r in pts) / max(min(r[key] for r in pts), 1e-9) > 20:
            ax.set_xscale("log")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        save_figure(fig, out_dir, stem)
        written[stem] = len(backed) > 1
    return written


def _half(width: float) -> float:
    return max(0.0, width) if math.isfinite(width) else 0.0


SECTION = register_section(
    "samplers", kinds=("generate",), order=30, summary=_summary,
    render=lambda ctx: render_samplers_section(ctx.run_dir, ctx.out_dir, records=ctx.records))
