"""The RL section: algorithms compared at matched rollout budgets, over training runs.

A pure function of records of `rl` cells: the step records (outcome `train_reward`, the loop's log
under `estimate`), the held-out records (outcome `accuracy`, one per test item and cell) and the
starting checkpoint's records on the same items (`start_accuracy`). The statistical unit is the
training run (one seed of one algorithm): its held-out accuracy and its gain over the starting
checkpoint are means over the held-out items, which are nested in the run. Per algorithm: the
runs' values (shown one by one), the mean over runs with a t interval over runs (none from fewer
than 3 runs: stats.seeds.MIN_RUNS), the between-run SD, the mean rank over seeds and the measured
NFE and FLOPs; the gain over the starting checkpoint tested over runs (one-sample t); each
algorithm against the study's baseline (`options.baseline`) by a t contrast over runs with the
between-run SD pooled over algorithms, Holm-corrected, with its minimum detectable effect (MDE) at
the training-run level; and the calibration pair (`options.calibration`: two algorithms that are one
objective, e.g. grpo with its defaults and diffu_grpo), whose difference is what training noise
alone produces. Figures of training reward and held-out accuracy against cumulative NFE and FLOPs
(mean over seeds), drawn only with at least 3 points per curve.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from harness.report.format import distinct, figure_md, md_table, save_figure, style
from harness.report.sections import register_section
from harness.stats.paired import holm
from harness.stats.seeds import (
    MIN_RUNS,
    pooled_run_sd,
    ranks_over_seeds,
    run_contrast,
    run_interval,
    run_mde,
    run_mean_test,
)

ALPHA = 0.05
MIN_CURVE_POINTS = 3  # a curve through fewer points is not drawn

FIGURES = ("rl_reward_vs_nfe", "rl_heldout_vs_nfe", "rl_heldout_vs_flops")


def has_rl(records: list[dict]) -> bool:
    return any(r.get("kind") == "rl" for r in records)


def _seed(r: dict) -> int:
    return int((r.get("point") or {}).get("seed", 0))


def baseline_of(records: list[dict], manifest: dict | None = None) -> str | None:
    """The algorithm the rl study compares against: its cells' `options.baseline` (set at plan
    time, config.py); for a run planned before that option existed, or records without their
    manifest, the algorithm of the study's first cell."""
    cells = [c for c in (manifest or {}).get("cells", []) if c.get("kind") == "rl"]
    for c in cells:
        if (c.get("options") or {}).get("baseline"):
            return c["options"]["baseline"]
    first = [c["component"]["name"] for c in cells] + [r["component"]["name"] for r in records if r.get("kind") == "rl"]
    return first[0] if first else None


def analyse(records: list[dict]) -> dict:
    """-> {algorithm: {"acc" / "start": {seed: {item: value}}, "steps": {seed: [log, ...]}}}."""
    out: dict = defaultdict(lambda: {"acc": defaultdict(dict), "start": defaultdict(dict),
                                     "steps": defaultdict(list)})
    for r in records:
        if r.get("kind") != "rl" or r.get("status") != "ok" or not r.get("outcome"):
            continue
        a = out[r["component"]["name"]]
        if r["outcome"]["metric"] == "accuracy":
            a["acc"][_seed(r)][r["item_id"]] = float(r["outcome"]["value"])
        elif r["outcome"]["metric"] == "start_accuracy":
            a["start"][_seed(r)][r["item_id"].removeprefix("start/")] = float(r["outcome"]["value"])
        elif r["outcome"]["metric"] == "train_reward":
            a["steps"][_seed(r)].append(r["estimate"])
    for a in out.values():
        for logs in a["steps"].values():
            logs.sort(key=lambda g: g["step"])
    return dict(out)


def calibration_of(manifest: dict | None) -> list[str]:
    """The study's calibration pair (`options.calibration`: two algorithms that are one objective), or []."""
    for c in (manifest or {}).get("cells", []):
        if c.get("kind") == "rl" and (c.get("options") or {}).get("calibration"):
            return list(c["options"]["calibration"])
    return []


def runs(a: dict) -> dict:
    """{seed: {"acc", "start", "gain", "items"}}: one training run each; acc is its mean held-out
    accuracy, gain its mean over the items also decoded by the starting checkpoint (items nested)."""
    out = {}
    for s in sorted(a["acc"]):
        acc = a["acc"][s]
        if not acc:
            continue
        both = [i for i in acc if i in a["start"].get(s, {})]
        start = float(np.mean([a["start"][s][i] for i in both])) if both else math.nan
        after = float(np.mean([acc[i] for i in both])) if both else math.nan
        out[s] = {"acc": float(np.mean(list(acc.values()))), "start": start, "gain": after - start,
                  "items": len(acc)}
    return out


def _values(vals, digits: int = 3, sign: bool = False) -> str:
    return ", ".join(f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}" for v in vals)


def _mean_or_runs(vals, sign: bool = False) -> str:
    """The mean over runs with its t interval over runs, or, below MIN_RUNS runs, no interval."""
    iv = run_interval(vals)
    if iv is None:
        m = float(np.mean(vals)) if len(vals) else math.nan
        return f"{m:+.3f}" if sign else f"{m:.3f}"  # the runs are shown beside it: no interval
    if sign:
        return f"{iv.mean:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}]"
    return iv.fmt(3)


def _summary(name: str, a: dict, ranks: dict | None = None) -> dict:
    r = runs(a)
    acc = [v["acc"] for v in r.values()]
    gain = [v["gain"] for v in r.values() if not math.isnan(v["gain"])]
    last = [a["steps"][s][-1] for s in sorted(a["steps"]) if a["steps"][s]]
    mean = lambda k: float(np.mean([g[k] for g in last])) if last else math.nan  # noqa: E731
    rk = (ranks or {}).get(name) or []
    return {"algorithm": name, "runs (seeds)": f"{len(r)} ({', '.join(map(str, r))})",
            "held-out accuracy per run": _values(acc),
            "mean over runs [95% CI]": _mean_or_runs(acc),
            "between-run SD": f"{np.std(acc, ddof=1):.3f}" if len(acc) > 1 else "n/a",
            "gain over start per run": _values(gain, sign=True),
            "mean gain [95% CI]": _mean_or_runs(gain, sign=True),
            "p (t over runs)": f"{run_mean_test(gain):.3g}" if len(gain) >= MIN_RUNS else f"n/a (< {MIN_RUNS} runs)",
            "mean rank over seeds": f"{np.mean(rk):.2f}" if rk else "n/a",
            "items/run": max((v["items"] for v in r.values()), default=0),
            "steps": f"{mean('step'):.0f}", "rollout NFE": f"{mean('cum_rollout_nfe'):.0f}",
            "likelihood NFE": f"{mean('cum_likelihood_nfe'):.0f}",
            "lik. NFE / rollout NFE": f"{mean('cum_likelihood_nfe') / max(mean('cum_rollout_nfe'), 1):.2f}",
            "TFLOP (fwd+bwd)": f"{mean('cum_flops') / 1e12:.4f}",
            "final train reward": f"{mean('reward_mean'):.3f}"}


def _groups(analysis: dict) -> dict:
    return {name: [v["acc"] for v in runs(a).values()] for name, a in analysis.items()}


def _contrasts(analysis: dict, baseline: str | None) -> list[dict]:
    """Each algorithm against the baseline over training runs (pooled between-run SD, Holm)."""
    groups = _groups(analysis)
    if baseline not in groups:
        return []
    sd, df = pooled_run_sd(groups)
    found = [(n, run_contrast(v, groups[baseline], sd=sd, df=df)) for n, v in sorted(groups.items()) if n != baseline]
    tested = [(n, c) for n, c in found if c is not None]
    adj, reject = holm([c.p for _, c in tested], ALPHA) if tested else ([], [])
    rows = []
    for (n, c), p_adj, rej in zip(tested, adj, reject):
        verdict = ("beats " if c.diff > 0 else "worse than ") + baseline if rej else "no significant difference"
        rows.append({"algorithm": n, f"runs vs {baseline}": f"{c.n_a} vs {c.n_b}",
                     f"Δ accuracy vs {baseline} [95% CI over runs]": c.fmt(3), "p": f"{c.p:.3g}",
                     "p (Holm)": f"{p_adj:.3g}", "verdict": verdict,
                     "MDE (runs; α=0.05, power 0.8)": f"{c.mde:.3f}"})
    for n, c in found:
        if c is None:
            rows.append({"algorithm": n, f"runs vs {baseline}": f"{len(groups[n])} vs {len(groups[baseline])}",
                         f"Δ accuracy vs {baseline} [95% CI over runs]":
                             f"{np.mean(groups[n]) - np.mean(groups[baseline]):+.3f}",
                         "p": f"n/a (< {MIN_RUNS} runs)", "p (Holm)": "n/a", "verdict": "not tested",
                         "MDE (runs; α=0.05, power 0.8)": "n/a"})
    return rows


def _calibration(analysis: dict, pair: list[str]) -> dict | None:
    """The identical-objective pair: their difference over runs, and their item-level disagreement."""
    if len(pair) != 2 or any(p not in analysis for p in pair):
        return None
    groups = _groups(analysis)
    sd, df = pooled_run_sd(groups)
    a, b = (analysis[p] for p in pair)
    seeds = [s for s in a["acc"] if s in b["acc"]]
    discord = [sum(a["acc"][s][i] != b["acc"][s][i] for i in a["acc"][s] if i in b["acc"][s]) for s in seeds]
    items = [sum(1 for i in a["acc"][s] if i in b["acc"][s]) for s in seeds]
    return {"pair": pair, "contrast": run_contrast(groups[pair[0]], groups[pair[1]], sd=sd, df=df),
            "a": groups[pair[0]], "b": groups[pair[1]], "discordant": discord, "items": items}


def _calibration_text(c: dict) -> str:
    x, y = c["pair"]
    con = c["contrast"]
    diff = float(np.mean(c["a"]) - np.mean(c["b"]))
    what = (f"{con.fmt(3)} (p {con.p:.3g})" if con is not None
            else f"{diff:+.3f} (runs {_values(c['a'])} vs {_values(c['b'])}; no interval from < {MIN_RUNS} runs)")
    dis = ", ".join(f"{d}/{n}" for d, n in zip(c["discordant"], c["items"]))
    return (f"`{x}` and `{y}` are one objective trained as separate runs: they differ by {what} in mean held-out "
            f"accuracy over runs, and their runs disagree on {dis} held-out items seed by seed. That is what "
            "training noise alone produces: a difference between two algorithms no larger than this is no "
            "evidence about them.")


def _run_mde(analysis: dict) -> tuple[float, int, float, int]:
    """-> (MDE of a two-algorithm contrast at the typical number of runs, runs, pooled SD, df)."""
    groups = _groups(analysis)
    sd, df = pooled_run_sd(groups)
    n = int(np.median([len(v) for v in groups.values()])) if groups else 0
    return run_mde(n, n, sd, df), n, sd, df


def _curves(analysis: dict) -> list[dict]:
    """One row per (algorithm, seed, step): the logged quantities the figures draw. The x values
    (cumulative NFE, FLOPs) are the mean over seeds at that step, so seeds line up and the band
    across them is a band in y only."""
    rows = []
    for name, a in analysis.items():
        by_step: dict[int, list[dict]] = defaultdict(list)
        for logs in a["steps"].values():
            for g in logs:
                by_step[g["step"]].append(g)
        for step, gs in sorted(by_step.items()):
            nfe = float(np.mean([g["cum_nfe"] for g in gs]))
            flops = float(np.mean([g["cum_flops"] for g in gs]))
            for g in gs:
                acc = g.get("heldout_accuracy")
                rows.append({"algorithm": name, "step": step, "reward": float(g["reward_mean"]), "nfe": nfe,
                             "flops": flops, "heldout": float(acc) if acc is not None else math.nan})
    return rows


CAPTION = ("Lines are the mean over training seeds and the band is ± 1 standard deviation across seeds (no band "
           "with one seed). Read the x axis as compute actually spent, measured by the meter: an algorithm whose "
           "curve rises further left reaches that reward or accuracy for less compute.")


def _figures(curves: list[dict], out_dir: Path) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    if not curves:  # rl cells with no step record yet (a run stopped after the start evaluation)
        return []
    style()
    df = pd.DataFrame(curves)
    made = []
    for stem, x, y, xlabel, ylabel in (
            ("rl_reward_vs_nfe", "nfe", "reward", "cumulative NFE (rollout + likelihood)", "training reward"),
            ("rl_heldout_vs_nfe", "nfe", "heldout", "cumulative NFE (rollout + likelihood)", "held-out accuracy"),
            ("rl_heldout_vs_flops", "flops", "heldout", "cumulative FLOPs (fwd + est. bwd)", "held-out accuracy")):
        sub = df.dropna(subset=[y])
        if sub.empty or distinct(sub[x]) < MIN_CURVE_POINTS:  # no two-point curves
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4))
        sns.lineplot(data=sub, x=x, y=y, hue="algorithm", marker="o", errorbar="sd", ax=ax)
        ax.set(xlabel=xlabel, ylabel=ylabel + " (mean over seeds ± SD)")
        ax.legend(fontsize=7, ncol=2)
        made.append((save_figure(fig, out_dir, stem), f"{ylabel} against {xlabel}"))
    return made


def _headlines(ctx) -> list[str]:
    analysis = ctx.memo("rl", lambda: analyse(ctx.records))
    baseline = baseline_of(ctx.records, ctx.manifest)
    if not analysis:
        return []
    out = []
    for name, a in sorted(analysis.items()):
        r = runs(a)
        gain = [v["gain"] for v in r.values() if not math.isnan(v["gain"])]
        if not gain:
            continue
        start = float(np.mean([v["start"] for v in r.values()]))
        acc = float(np.mean([v["acc"] for v in r.values()]))
        if len(gain) >= MIN_RUNS:
            p = run_mean_test(gain)
            word = "significant" if p < ALPHA else "not significant"
            out.append(f"RL: `{name}` moves held-out accuracy {start:.3f} → {acc:.3f} over {len(gain)} training runs, "
                       f"a gain of {_mean_or_runs(gain, sign=True)} ({word} at {ALPHA}: one-sample t-test over runs, "
                       f"p {p:.3g}; between-run SD {np.std([v['acc'] for v in r.values()], ddof=1):.3f}).")
        else:
            out.append(f"RL: `{name}` gains {_values(gain, sign=True)} over the starting checkpoint in its "
                       f"{len(gain)} training run(s): too few runs (< {MIN_RUNS}) for an interval or a test.")
    cal = _calibration(analysis, calibration_of(ctx.manifest))
    if cal is not None:
        (x, y), con = cal["pair"], cal["contrast"]
        what = (f"{con.fmt(3)} (p {con.p:.3g})" if con is not None else
                f"{np.mean(cal['a']) - np.mean(cal['b']):+.3f} (no interval from < {MIN_RUNS} runs)")
        out.append(f"RL calibration: `{x}` and `{y}`, one objective, differ by {what} over training runs: "
                   "what training noise alone produces.")
    rows = _contrasts(analysis, baseline)
    tested = [r for r in rows if r["verdict"] != "not tested"]
    if tested:
        wins = [r["algorithm"] for r in tested if r["verdict"].startswith("beats")]
        losses = [r["algorithm"] for r in tested if r["verdict"].startswith("worse")]
        mde, n, _, _ = _run_mde(analysis)
        out.append(f"RL against `{baseline}` over training runs (t-test contrast with the pooled between-run SD, "
                   "Holm): "
                   + (f"{', '.join(wins)} significantly better" if wins else "none significantly better")
                   + (f"; {', '.join(losses)} significantly worse" if losses else "; none significantly worse")
                   + f"; with {n} runs each the smallest difference detectable is {mde:.3f}.")
    return out


def render_section(records: list[dict], out_dir: Path | None = None, manifest: dict | None = None) -> str:
    analysis = analyse(records)
    baseline = baseline_of(records, manifest)
    out = ["## RL algorithms at matched rollout budgets\n"]
    if not analysis:
        return out[0] + "_no rl records_\n"
    ranks = ranks_over_seeds({n: {s: v["acc"] for s, v in runs(a).items()} for n, a in analysis.items()})
    summary = [_summary(n, a, ranks) for n, a in sorted(analysis.items())]
    out.append("Every algorithm spends the same rollout budget (prompts × G × rollout NFE per step, same steps); "
               "the likelihood NFE each spends on top is measured. **The unit is the training run** (one seed of "
               "one algorithm): its held-out accuracy is the mean over its held-out items (greedy decoding of the "
               "final policy), which are nested in the run, and its gain is over the starting checkpoint on the "
               "same items. Every run is shown; intervals and tests are over runs (Student t), and none is given "
               f"from fewer than {MIN_RUNS} runs. The mean rank ranks the algorithms on each seed (1 = best).\n")
    out.append(md_table(summary))
    per_run = {n: [v["gain"] for v in runs(a).values() if not math.isnan(v["gain"])] for n, a in analysis.items()}
    gains = {n: g for n, g in sorted(per_run.items()) if len(g) >= MIN_RUNS}
    sig = [n for n, g in gains.items() if run_mean_test(g) < ALPHA and np.mean(g) > 0]
    if gains:
        out.append(f"\n**Against the starting checkpoint** (gain per run, one-sample t over runs, α = {ALPHA}): "
                   + (f"{', '.join(sig)} raise{'s' * (len(sig) == 1)} held-out accuracy significantly.\n" if sig
                      else "no algorithm raises held-out accuracy significantly.\n"))
    cal = _calibration(analysis, calibration_of(manifest))
    if cal is not None:
        out.append("\n**Calibration (training noise)**: " + _calibration_text(cal) + "\n")
    rows = _contrasts(analysis, baseline)
    if rows:
        tested = [r for r in rows if r["verdict"] != "not tested"]
        wins = [r["algorithm"] for r in tested if r["verdict"].startswith("beats")]
        losses = [r["algorithm"] for r in tested if r["verdict"].startswith("worse")]
        plain = (f"over training runs, {', '.join(wins)} beat{'s' * (len(wins) == 1)} {baseline}" if wins
                 else f"over training runs, no algorithm beats {baseline} significantly")
        plain += (f"; {', '.join(losses)} {'is' if len(losses) == 1 else 'are'} significantly worse." if losses
                  else "; none is significantly worse.")
        if not tested:
            plain = f"no comparison is tested: fewer than {MIN_RUNS} runs per algorithm."
        mde, n, sd, df = _run_mde(analysis)
        out.append(f"\n**Against `{baseline}`** (mean held-out accuracy over runs; t contrast with the between-run SD "
                   f"pooled over algorithms, {sd:.3f} on {df} df; Holm across algorithms, α = {ALPHA}): {plain}\n")
        out.append(md_table(rows))
        out.append(f"\nMDE at the training-run level: with {n} runs per algorithm, the smallest true difference in "
                   f"mean held-out accuracy this study detects (α = {ALPHA}, power 0.8) is {mde:.3f}; a tie is "
                   "\"no difference larger than the MDE\", not \"equal\". More held-out items shrink only the "
                   "item part of each run's noise; more runs shrink the training part.\n")
    if out_dir is not None:
        for stem, title in _figures(_curves(analysis), Path(out_dir)):
            out.append("\n" + figure_md(stem, title, CAPTION))
    return "\n".join(out)


SECTION = register_section("rl", kinds=("rl",), order=40, summary=_headlines,
                           render=lambda ctx: render_section(ctx.records, ctx.out_dir, ctx.manifest))
