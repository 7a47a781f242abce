"""The RL section: algorithms compared at matched rollout budgets.

A pure function of records of `rl` cells: the step records (outcome `train_reward`, the loop's log
under `estimate`) and the held-out records (outcome `accuracy`, one per test item and cell). Per
algorithm: final held-out accuracy over training seeds (mean and IQM with stratified bootstrap
intervals, n seeds stated), the measured rollout and likelihood NFE and FLOPs; the paired
comparison of each algorithm against the study's baseline (`options.baseline`, by default the
study's own `algorithm.name`, e.g. `diffu_grpo` in suites/rl.yaml; pairs = (seed, held-out item), exact McNemar,
Holm-corrected across algorithms), stated plainly even when nothing is significant; the gain of
each algorithm over the starting checkpoint on the same held-out items (pairs = (seed, item), exact
McNemar) with the minimum detectable effect (MDE) of both comparisons, so that a tie reads as "no
difference larger than the MDE", not as "no difference"; figures of training reward and held-out
accuracy against cumulative total NFE and FLOPs (mean over seeds).
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from harness.report.format import distinct, figure_md, md_table, save_figure, style
from harness.report.sections import register_section
from harness.stats.intervals import wilson_interval
from harness.stats.paired import compare_many, mcnemar_exact
from harness.stats.power import minimum_detectable_effect
from harness.stats.seeds import seed_aggregate

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


def _summary(name: str, a: dict) -> dict:
    seeds = sorted(a["acc"])
    per_seed = [float(np.mean(list(a["acc"][s].values()))) for s in seeds]
    agg = seed_aggregate({"task": per_seed}, seed=0) if per_seed else None
    last = [a["steps"][s][-1] for s in sorted(a["steps"]) if a["steps"][s]]
    mean = lambda k: float(np.mean([g[k] for g in last])) if last else math.nan  # noqa: E731
    steps = mean("step")
    if len(seeds) == 1:  # no spread over seeds to bootstrap: the interval is over the held-out items
        vals = list(a["acc"][seeds[0]].values())
        held = wilson_interval(sum(vals), len(vals)).fmt(3) + " (items, Wilson)"
        iqm = "n/a (one seed)"
    else:
        held = agg.mean.fmt(3) if agg else "n/a"
        iqm = agg.iqm.fmt(3) if agg else "n/a"
    return {"algorithm": name, "seeds": len(seeds),
            "held-out mean [95% CI]": held,
            "held-out IQM [95% CI]": iqm,
            "items/seed": len(a["acc"][seeds[0]]) if seeds else 0,
            "steps": f"{steps:.0f}", "rollout NFE": f"{mean('cum_rollout_nfe'):.0f}",
            "likelihood NFE": f"{mean('cum_likelihood_nfe'):.0f}",
            "lik. NFE / rollout NFE": f"{mean('cum_likelihood_nfe') / max(mean('cum_rollout_nfe'), 1):.2f}",
            "TFLOP (fwd+bwd)": f"{mean('cum_flops') / 1e12:.4f}",
            "final train reward": f"{mean('reward_mean'):.3f}"}


def _paired(analysis: dict, baseline: str | None) -> list[dict]:
    base = analysis.get(baseline)
    if base is None:
        return []
    diffs = {}
    for name, a in analysis.items():
        if name == baseline:
            continue
        d = [a["acc"][s][i] - base["acc"][s][i] for s in a["acc"] if s in base["acc"]
             for i in a["acc"][s] if i in base["acc"][s]]
        if d:
            diffs[name] = d
    if not diffs:
        return []
    rows = []
    for c in compare_many(diffs, binary=True, seed=0):
        verdict = {"better": f"beats {baseline}", "worse": f"worse than {baseline}"}.get(
            c.verdict, "no significant difference")
        rows.append({"algorithm": c.name, "pairs (seed x item)": c.n,
                     f"Δ accuracy vs {baseline} [95% CI]": c.interval.fmt(3), "test": c.test,
                     "p": f"{c.p:.3g}", "p (Holm)": f"{c.p_adjusted:.3g}", "verdict": verdict,
                     "MDE (α=0.05, power 0.8)": f"{_pair_mde(analysis, baseline).get(c.name, math.nan):.3f}"})
    return rows


def mde_paired_binary(a, b, alpha: float = 0.05, power: float = 0.8) -> float:
    """MDE of a paired binary comparison with the observed discordance (McNemar setting)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    d = max(float((a != b).mean()), 1.0 / len(a))  # never 0: at least one discordant pair's worth
    return minimum_detectable_effect(len(a), discordance=d, alpha=alpha, power=power)


def _gain(analysis: dict) -> list[dict]:
    """Each algorithm against the starting checkpoint on the same (seed, held-out item) pairs."""
    rows = []
    for name, a in sorted(analysis.items()):
        pairs = [(a["start"][s][i], a["acc"][s][i]) for s in a["acc"] if s in a["start"]
                 for i in a["acc"][s] if i in a["start"][s]]
        if not pairs:
            continue
        start, end = (np.array(x, dtype=float) for x in zip(*pairs))
        test = mcnemar_exact(start, end)
        d = end - start
        half = 1.96 * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.nan
        rows.append({"algorithm": name, "pairs (seed x item)": len(d), "start": f"{start.mean():.3f}",
                     "after RL": f"{end.mean():.3f}",
                     "gain [95% CI]": f"{d.mean():+.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]",
                     "fixed / broken": f"{test['b01']} / {test['b10']}", "McNemar p": f"{test['p']:.3g}",
                     "significant at 0.01": "yes" if test["p"] < 0.01 and d.mean() > 0 else "no",
                     "MDE (α=0.01, power 0.8)": f"{mde_paired_binary(start, end, alpha=0.01):.3f}"})
    return rows


def _pair_mde(analysis: dict, baseline: str | None) -> dict:
    """MDE (α = 0.05, power 0.8) of each algorithm-vs-baseline comparison at its observed discordance."""
    base = analysis.get(baseline)
    out = {}
    for name, a in analysis.items():
        if base is None or name == baseline:
            continue
        pairs = [(base["acc"][s][i], a["acc"][s][i]) for s in a["acc"] if s in base["acc"]
                 for i in a["acc"][s] if i in base["acc"][s]]
        if pairs:
            x, y = zip(*pairs)
            out[name] = mde_paired_binary(x, y)
    return out


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
        if sub.empty or distinct(sub[x]) < 2:
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
    def held_out(a: dict) -> float:
        per_seed = [float(np.mean(list(v.values()))) for v in a["acc"].values() if v]
        return float(np.mean(per_seed)) if per_seed else -1.0

    gains = _gain(analysis)
    best = _summary(*max(sorted(analysis.items()), key=lambda kv: held_out(kv[1])))
    out = [] if gains else [f"RL: highest held-out accuracy after training is `{best['algorithm']}` at "
                            f"{best['held-out mean [95% CI]']} over {best['seeds']} seed(s), at matched "
                            "rollout budgets."]
    for g in gains:  # against the starting checkpoint, same items
        verdict = "significant" if g["significant at 0.01"] == "yes" else "not significant"
        out.append(f"RL: `{g['algorithm']}` moves held-out accuracy {g['start']} → {g['after RL']}, a gain of "
                   f"{g['gain [95% CI]']} ({verdict} at 0.01: McNemar p {g['McNemar p']}, "
                   f"{g['pairs (seed x item)']} seed x item pairs; detectable effect {g['MDE (α=0.01, power 0.8)']}).")
    paired = _paired(analysis, baseline)
    if paired:
        wins = [r["algorithm"] for r in paired if r["verdict"].startswith("beats")]
        losses = [r["algorithm"] for r in paired if r["verdict"].startswith("worse")]
        out.append(f"RL against `{baseline}` (paired McNemar, Holm): "
                   + (f"{', '.join(wins)} significantly better" if wins else "none significantly better")
                   + (f"; {', '.join(losses)} significantly worse." if losses else "; none significantly worse."))
    return out


def render_section(records: list[dict], out_dir: Path | None = None, manifest: dict | None = None) -> str:
    analysis = analyse(records)
    baseline = baseline_of(records, manifest)
    out = ["## RL algorithms at matched rollout budgets\n"]
    if not analysis:
        return out[0] + "_no rl records_\n"
    summary = [_summary(n, a) for n, a in sorted(analysis.items())]
    seeds = sorted({s["seeds"] for s in summary})
    out.append("Every algorithm spends the same rollout budget (prompts × G × rollout NFE per step, same steps); "
               "the likelihood NFE each spends on top is measured. Held-out accuracy: greedy decoding of the "
               f"final policy; interval over training seeds (n = {', '.join(map(str, seeds))} seeds; stratified "
               "bootstrap, mean and IQM; with one seed, a Wilson interval over the held-out items).\n")
    out.append(md_table(summary))
    gain = _gain(analysis)
    if gain:
        ok = [r["algorithm"] for r in gain if r["significant at 0.01"] == "yes"]
        out.append("\n**Against the starting checkpoint** (the same held-out items decoded greedily before RL; "
                   "pairs = (seed, item), exact McNemar; the MDE is the smallest true gain this many pairs detect "
                   "with power 0.8 at α = 0.01, given the observed discordance): "
                   + (f"{', '.join(ok)} raise{'s' * (len(ok) == 1)} held-out accuracy significantly (p < 0.01).\n"
                      if ok else "no algorithm raises held-out accuracy significantly (p < 0.01).\n"))
        out.append(md_table(gain))
    paired = _paired(analysis, baseline)
    if paired:
        wins = [r["algorithm"] for r in paired if r["verdict"].startswith("beats")]
        losses = [r["algorithm"] for r in paired if r["verdict"].startswith("worse")]
        plain = (f"At matched rollout compute, {', '.join(wins)} beat{'s' * (len(wins) == 1)} {baseline}"
                 if wins else f"No algorithm beats {baseline} significantly")
        plain += (f"; {', '.join(losses)} {'is' if len(losses) == 1 else 'are'} significantly worse." if losses
                  else "; none is significantly worse.")
        out.append(f"\n**Against `{baseline}`** (paired on (seed, held-out item), exact McNemar, Holm across "
                   f"algorithms, α = 0.05): {plain}\n")
        out.append(md_table(paired))
        out.append("\nA difference smaller than its row's MDE is one this study cannot detect: a tie there is "
                   "\"no difference larger than the MDE\", not \"equal\".\n")
    if out_dir is not None:
        for stem, title in _figures(_curves(analysis), Path(out_dir)):
            out.append("\n" + figure_md(stem, title, CAPTION))
    return "\n".join(out)


SECTION = register_section("rl", kinds=("rl",), order=40, summary=_headlines,
                           render=lambda ctx: render_section(ctx.records, ctx.out_dir, ctx.manifest))
