"""The estimator study section of a report: statements, tables and figures from records.

A pure function of a run's records (the kinds in KINDS) through harness.stats.estimators. Every
statement is generated from the numbers: intervals are 95% (Student-t over items for signed
quantities, chi-square for variances and MSEs, cut to the true range where stated;
bootstrap where it says so), and each ends with the command that reproduces it. Figures (seaborn,
matplotlib's Agg backend) are written as PNG and SVG next to index.md.
"""
from __future__ import annotations

import math
from pathlib import Path

from harness.report import exact_moments as XR
from harness.report.format import bullets, figure_md, md_table, num, save_figure
from harness.report.sections import register_section

KINDS = ("estimator_variance", "exact_reference", "gradient_variance", "t_mask_decomposition", "exact_moments")
FIGURES = ("estimators_variance_vs_nfe", "estimators_mse_vs_nfe", "estimators_bias", "estimators_ratio_spread")
CAPTIONS = {
    "estimators_variance_vs_nfe": (
        "Estimator variance against measured NFE (log-log)",
        "A family whose points fall along a slope of -1 gains exactly what a plain average of independent draws "
        "gains; flatter is worse, steeper better. Lower at equal NFE is a better estimator."),
    "estimators_mse_vs_nfe": (
        "Mean squared error against the exact ELBO, against measured NFE (log-log)",
        "MSE = bias² + variance: a family that flattens out at high NFE has a bias that more draws do not remove."),
    "estimators_bias": (
        "Bias against the exact ELBO and exact log p at each family's largest NFE",
        "A 95% interval that crosses the vertical line means no detectable bias; ELBO estimators should sit on the "
        "line in the left panel and to its left (below log p) in the right one."),
    "estimators_ratio_spread": (
        "Spread of the importance log-ratio at θ = θ_old",
        "With independent draws for π_θ and π_old the ratio is noisy even though the policies are equal (95% "
        "bootstrap intervals); sharing the draws makes Δ exactly 0 and the ratio exactly 1, which a log axis "
        "cannot show and which is a check, not a finding."),
}
SEED = 0  # every bootstrap in this section
ADAM_LR = 3e-6  # d1's learning rate: the parameter step of the first-order ratio estimate


def has_estimator_study(records: list[dict]) -> bool:
    return any(r.get("kind") in KINDS for r in records)


def _f(x: float, digits: int = 3) -> str:
    return num(x, digits)


def _ci(row, q: str, digits: int = 3) -> str:
    return f"{_f(row[q], digits)} [{_f(row[q + '_lo'], digits)}, {_f(row[q + '_hi'], digits)}]"


def _md(rows: list[dict]) -> str:
    return md_table(rows, empty="_none_")


def analyse(records: list[dict]) -> dict:
    """Every table the section needs, from the ok records of the estimator kinds."""
    from harness.records import to_frame
    from harness.stats import estimators as E

    df = to_frame([r for r in records if r.get("kind") in KINDS])
    items = E.per_item(df)
    summary = E.summarize(items) if len(items) else items
    exact = E.exact_table(df)
    return {
        **XR.analyse(df, exact),
        "exact": exact, "items": items, "summary": summary,
        "slopes": E.nfe_slopes(summary) if len(summary) else summary,
        "replay": E.replay_check(df), "spread": E.ratio_spread(df, seed=SEED),
        "decomposition": E.decomposition(df), "gradients": E.gradient_summary(df),
        "coupled": E.coupled_vs_independent(df, seed=SEED),
    }


# -- statements -----------------------------------------------------------------------------------
def _verdict(lo: float, hi: float, below: str, above: str, neither: str, at: float = 0.0) -> str:
    if math.isnan(lo) or math.isnan(hi):
        return "no interval (too few items)"
    return below if hi < at else above if lo > at else neither


def _log_p_bias(a: dict) -> str:
    """The estimators not built for the ELBO (they declare `elbo_target` false: `one_step`, `uni_elbo`,
    SPG's bounds, ...) measured against exact log p, each family at its largest NFE."""
    s = a["summary"]
    other = s[~s["elbo_target"].astype(bool)] if len(s) else s
    if not len(other) or not len(a["exact"]):
        return ("**Bias against exact log p of the estimators not built for the ELBO**: not measured (no such "
                "cells, or no exact_reference cells).")
    lp = float(a["exact"]["exact_log_p"].mean())

    def line(r) -> str:
        verdict = _verdict(r["bias_log_p_lo"], r["bias_log_p_hi"], "below", "above", "not distinguishable from")
        return (f"`{r['study']}` at NFE {r['nfe']:.0f} ({r['n_items']} items x {r['R']} replicates): "
                f"{_ci(r, 'bias_log_p')} nats per sequence, {verdict} the exact log p "
                f"({_f(100 * r['bias_log_p'] / abs(lp), 1)}% of |log p|); against the exact ELBO "
                f"{_ci(r, 'bias_elbo')}")

    top = other.sort_values("nfe").groupby("study", sort=False).tail(1)
    return bullets(top, "", "**Bias against exact log p of the estimators not built for the ELBO** (95% t-interval "
                   f"over items; mean exact log p {_f(lp)}):", line)


def _target(r) -> str:
    """What a cell estimates, as its estimator declares: the ELBO (unbiased by construction), or
    its own metric. An `elbo` metric that does not declare the ELBO as its target approximates it
    (quadrature_elbo: exact on short items for bernoulli masks, biased in general; SPG's block ELBO)."""
    if r["elbo_target"]:
        return "ELBO"
    return "ELBO (approximation)" if r["metric"] == "elbo" else f"`{r['metric']}`, not the ELBO"


def _slopes(a: dict) -> str:
    sl = a["slopes"]
    if not len(sl):
        return "**Variance vs NFE**: no family has two or more NFE points."
    lines = ["**Does variance fall as 1/NFE?** OLS slope of log variance on log NFE per family "
             "(−1 is 1/NFE; 95% t-interval over the NFE points); ELBO estimators first, then the "
             "estimators of other targets:"]
    for _, r in sl.sort_values("elbo_target", ascending=False, kind="stable").iterrows():
        if r["one_over_nfe"] is None:
            word = "too few points for an interval"
        elif r["one_over_nfe"]:
            word = "consistent with 1/NFE"
        elif r["slope_hi"] < -1:
            word = "falls faster than 1/NFE"
        else:
            word = "falls slower than 1/NFE"
        target = _target(r)
        lines.append(f"  - `{r['study']}` (target {target}, NFE {r['nfe_min']:.0f}–{r['nfe_max']:.0f}, "
                     f"{r['points']} points): slope {_f(r['slope'], 2)} [{_f(r['slope_lo'], 2)}, "
                     f"{_f(r['slope_hi'], 2)}]: {word}")
    return "\n".join(lines)


def _shared(a: dict) -> str:
    rep, sp, gr = a["replay"], a["spread"], a["gradients"]
    if rep["n"] == 0:
        return "**Shared vs independent draws**: no replay checks recorded."
    exact = rep["max_abs_diff"] == 0
    head = ("**How much do shared draws cut the ratio variance?** (The shared-draw half is a check: replaying "
            "the same draws must give the same value by construction.) Replaying the recorded draws reproduced ℓ̂ "
            + ("exactly" if exact else f"to within {_f(rep['max_abs_diff'])}")
            + f" in {rep['n']} checks over {rep['cells']} cells, so at θ = θ_old the log-ratio "
              "ℓ̂(θ) − ℓ̂(θ_old) with shared draws is "
            + ("exactly 0 and the ratio exactly 1: the variance cut is unbounded (a division by zero), "
               if exact else f"at most {_f(rep['max_abs_diff'])}, ")
            + "where VRPO reports more than 100x at θ ≠ θ_old. With independent draws:")
    lines = [head]
    for study, g in sp.groupby("study", sort=False):
        lo, hi = g.sort_values("nfe").iloc[0], g.sort_values("nfe").iloc[-1]
        txt = (f"  - `{study}`: std(Δ) {_ci(lo, 'sd_delta')} at NFE {lo['nfe']:.0f}; "
               f"ratios outside [0.8, 1.2]: {_f(100 * lo['clip_frac'], 0)}%")
        if hi["cell_id"] != lo["cell_id"]:
            txt += (f"; at NFE {hi['nfe']:.0f}: std(Δ) {_ci(hi, 'sd_delta')}, "
                    f"outside [0.8, 1.2]: {_f(100 * hi['clip_frac'], 0)}%")
        lines.append(txt)
    if len(gr):
        lines.append("  First-order estimate at θ ≠ θ_old (from the gradient study; an approximation, not a "
                     f"measurement): for a step of norm η = {ADAM_LR:g}·√P (one Adam-like step at d1's lr) "
                     "along the exact ELBO gradient, Var_indep/Var_shared ≈ 1 + 2·Var(ℓ̂)/(η²·Var(ĝ·u)):")
        for _, r in gr.iterrows():
            if not math.isnan(r.get("vrpo_ratio", math.nan)):
                lines.append(f"  - `{r['cell_id']}`: {_f(r['vrpo_ratio'], 1)}x")
    return "\n".join(lines)


def _decomposition(a: dict) -> str:
    L = float(a["exact"]["length"].mean()) if len(a["exact"]) else math.nan
    return bullets(
        a["decomposition"], "**t vs mask variance**: no t_mask_decomposition cells.",
        "**For the ELBO, does variance from sampling t dominate the mask variance?** One-way ANOVA of "
        "one-sample `mc_elbo` values (T values of t x K masks per t; share = between-t / total, "
        f"t-interval over items cut to [0, 1]; completions of {_f(L, 1)} scored tokens on average; GDPO reports "
        "that t dominates):",
        lambda r: f"t-law `{r['t_law']}` (T={r['T']}, K={r['K']}, {r['n_items']} items): between-t "
                  f"{_ci(r, 'between')}, within-t (mask) {_ci(r, 'within')}, share {_ci(r, 'share')}: "
                  f"**{r['verdict']}**")


def _coupled(a: dict) -> str:
    def line(r) -> str:
        word = _verdict(r["lo"], r["hi"], "coupling lowers the variance", "coupling raises the variance",
                        "no significant difference", at=1.0)
        return f"NFE {r['nfe']}, {XR.pair(r)}: {_f(r['ratio'])} [{_f(r['lo'])}, {_f(r['hi'])}]: {word}"

    return bullets(a["coupled"], "**Coupled vs independent masks**: no matching cells at equal NFE.",
                   "**Coupled vs independent masks at equal NFE**: Var(unbiased ELBO estimator with complementary "
                   "masks) / Var(unbiased ELBO estimator with independent masks), as each estimator declares "
                   "(`masks`, `elbo_target`); mean per-item variances, 95% two-level bootstrap interval (items, "
                   "then replicates):", line)


# -- tables ---------------------------------------------------------------------------------------
def _summary_rows(a: dict) -> list[dict]:
    return [{"cell": r["cell_id"],
             "target": _target(r) + (" (x L)" if r["token_scale"] else ""),
             "NFE": _f(r["nfe"], 1), "items x R": f"{r['n_items']} x {r['R']}",
             "bias vs ELBO": _ci(r, "bias_elbo"), "bias vs log p": _ci(r, "bias_log_p"),
             "variance": _ci(r, "var"), "MSE vs ELBO": _ci(r, "mse_elbo"), "MSE vs log p": _ci(r, "mse_log_p"),
             "var x NFE": _ci(r, "var_x_nfe")} for _, r in a["summary"].iterrows()]


def _gradient_rows(a: dict) -> list[dict]:
    return [{"cell": r["cell_id"], "NFE/call": _f(r["nfe"], 1), "items x R_g": f"{r['n_items']} x {r['R_g']}",
             "tr Cov": _ci(r, "trace_cov"), "tr Cov / ‖g*‖²": _ci(r, "rel_trace"),
             "‖mean g − g*‖²": _ci(r, "bias_sq"), "cos(mean g, g*)": _ci(r, "cos_mean"),
             "mean cos(g_r, g*)": _ci(r, "mean_cos"), "cos(mean g, ∇log p)": _ci(r, "cos_mean_log_p"),
             "tr Cov x NFE": _ci(r, "trace_x_nfe"), "‖g*‖": _f(r["g_star_norm"])}
            for _, r in a["gradients"].iterrows()]


def _spread_rows(a: dict) -> list[dict]:
    return [{"cell": r["cell_id"], "NFE": _f(r["nfe"], 1), "pairs": r["pairs"], "std Δ": _ci(r, "sd_delta"),
             "std exp(Δ)": _ci(r, "sd_ratio"), "outside [0.8,1.2]": _ci(r, "clip_frac", 2), "shared draws": "0"}
            for _, r in a["spread"].iterrows()]


def _exact_rows(a: dict) -> list[dict]:
    ex = a["exact"]
    return [{"item": k.split("|")[0], "L": int(r["length"]), "exact ELBO": _f(r["exact_elbo"], 4),
             "exact log p": _f(r["exact_log_p"], 4), "log p − ELBO": _f(r["exact_log_p"] - r["exact_elbo"], 4)}
            for k, r in ex.iterrows()]


def _vrpo_ratio(a: dict, records: list[dict]) -> None:
    """Add the first-order independent/shared log-ratio variance ratio to the gradient summary."""
    g = a["gradients"]
    if not len(g):
        return
    by_cell: dict[str, list] = {}
    for r in records:
        if r.get("kind") == "gradient_variance" and r.get("status") == "ok":
            by_cell.setdefault(r["cell_id"], []).append(r["estimate"])
    ratios = []
    for cell in g["cell_id"]:
        est = by_cell.get(cell, [])
        vals = [1 + 2 * e["value_var"] / ((ADAM_LR ** 2) * e["n_params"] * e["proj_var"])
                for e in est if e.get("proj_var", 0) > 0 and e.get("n_params")]
        ratios.append(float(sum(vals) / len(vals)) if vals else math.nan)
    g["vrpo_ratio"] = ratios


# -- figures --------------------------------------------------------------------------------------
def _figures(a: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    s = a["summary"]
    made = []

    def save(fig, name):
        made.append(save_figure(fig, out_dir, name))

    if len(s):
        fams = list(dict.fromkeys(s["study"]))
        palette = dict(zip(fams, sns.color_palette("husl", len(fams))))
        groups = [("ELBO estimators", s[s["elbo_target"]]), ("other targets", s[~s["elbo_target"]])]
        groups = [(t, g) for t, g in groups if len(g)]
        for name, q, label in (("estimators_variance_vs_nfe", "var", "variance"),
                               ("estimators_mse_vs_nfe", "mse_elbo", "MSE vs exact ELBO")):
            # error bars: the chi-square 95% interval over items (never <= 0, so drawable on a log axis)
            fig, axes = plt.subplots(1, len(groups), figsize=(6.2 * len(groups), 4.8), squeeze=False,
                                     sharey=True)
            for ax, (title, g) in zip(axes[0], groups):
                d = g[g[q] > 0]
                sns.lineplot(data=d, x="nfe", y=q, hue="study", palette=palette, marker="o", ax=ax)
                for fam, f in d.groupby("study"):
                    lo = (f[q] - f[f"{q}_lo"]).where(f[f"{q}_lo"] > 0, 0.0)
                    ax.errorbar(f["nfe"], f[q], yerr=[lo, f[f"{q}_hi"] - f[q]], fmt="none",
                                ecolor=palette[fam], alpha=0.35, capsize=2)
                ax.set(xscale="log", yscale="log", xlabel="measured NFE per sequence", ylabel=label, title=title)
                if len(d):
                    sns.move_legend(ax, "lower left", fontsize=8, title=None)
            save(fig, name)
        top = s.sort_values("nfe").groupby("study", sort=False).tail(1)
        fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(top) + 1.6), sharey=True)
        for ax, (q, label) in zip(axes, (("bias_elbo", "bias vs exact ELBO"), ("bias_log_p", "bias vs exact log p"))):
            y = range(len(top))
            ax.errorbar(top[q], list(y), xerr=[top[q] - top[f"{q}_lo"], top[f"{q}_hi"] - top[q]], fmt="o",
                        color=sns.color_palette()[0], capsize=3)
            ax.axvline(0, color="k", lw=0.8)
            ax.set(yticks=list(y), yticklabels=[f"{c} (NFE {n:.0f})" for c, n in zip(top["study"], top["nfe"])],
                   xlabel=f"{label} (nats per sequence, 95% CI over items)")
        save(fig, "estimators_bias")
    sp = a["spread"]
    if len(sp):
        fig, ax = plt.subplots(figsize=(8, 4.8))
        sns.lineplot(data=sp, x="nfe", y="sd_delta", hue="study", marker="o", ax=ax)
        for fam, f in sp.groupby("study"):  # bootstrap 95% intervals (std is never negative)
            ax.errorbar(f["nfe"], f["sd_delta"], yerr=[(f["sd_delta"] - f["sd_delta_lo"]).clip(lower=0),
                                                       (f["sd_delta_hi"] - f["sd_delta"]).clip(lower=0)],
                        fmt="none", ecolor="0.5", alpha=0.5, capsize=2)
        ax.set(xscale="log", yscale="log", xlabel="measured NFE per sequence",
               ylabel="std of log-ratio Δ at θ = θ_old")
        ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False)
        ax.set_title("importance-ratio spread with independent draws (shared draws: exactly 0, not drawn)")
        save(fig, "estimators_ratio_spread")
    return made


# -- the section ----------------------------------------------------------------------------------
def render_section(records: list[dict], manifest: dict, run_dir: Path, out_dir: Path | None = None) -> str:
    """Markdown of the "Estimator study" section; figures go to out_dir (none when it is None)."""
    a = analyse(records)
    _vrpo_ratio(a, records)
    cmd = (f"`dlm-harness run {manifest.get('suite_path')}{' --quick' if manifest.get('quick') else ''}` "
           f"then `dlm-harness report <run directory>` (this run: `dlm-harness report {run_dir}`)")
    figs = _figures(a, Path(out_dir)) if out_dir is not None else []
    if out_dir is not None and XR.has_exact(a):
        figs += XR.figures(a, Path(out_dir))
    n_items = len(a["exact"])
    out = ["## Estimator study\n",
           f"Ground truth: exact ELBO and exact log p of {n_items} items by enumerating all reveal sets "
           "(docs/architecture.md, Statistics). Bias, variance (ddof=1) and MSE are per item over R "
           "replicates, then averaged over items with a 95% interval over items (Student-t for biases; "
           "Satterthwaite chi-square for variances, MSEs and traces, which cannot be negative); NFE is measured "
           "by the meter. Values that are "
           "per-token means (`uni_elbo`, `trace`) are multiplied by L (marked x L). Reproduce every statement "
           f"below with {cmd}.\n",
           "### Findings\n"]
    if XR.has_exact(a):  # every finding with an exact counterpart is stated from exact values
        sampled = {r["study"]: r for _, r in a["slopes"].iterrows()} if len(a["slopes"]) else {}
        statements = (XR.bias(a), XR.slopes(a, sampled), _shared(a), XR.decomposition(a), XR.coupled(a),
                      XR.tails(a))
    else:
        statements = (_log_p_bias(a), _slopes(a), _shared(a), _decomposition(a), _coupled(a))
    for statement in statements:
        out.append(statement + "\n")
    for name in figs:
        title, caption = {**CAPTIONS, **XR.CAPTIONS}.get(name, (name, ""))
        out.append(figure_md(name, title, caption))
    if XR.has_exact(a):
        out += ["### Exact moments beside sampled ones\n",
                "Exact mean and variance of one estimator call (its n draws), per item by enumerating every reveal "
                "set and integrating its t-law in closed form (harness/estimators/moments), mean over items; "
                "`sampled` is the replicate variance of the matching estimator_variance cell on the same items.\n",
                _md(XR.beside_rows(a)), "#### Every exact cell\n", _md(XR.exact_rows(a))]
        if len(a["x_grad"]):
            out += ["#### Exact gradient moments (tr Cov of the estimator's parameter gradient; bias vs the exact "
                    "∇ELBO)\n", _md(XR.gradient_rows(a))]
        if len(a["slopes"]) or len(a["decomposition"]) or len(a["coupled"]):
            out += ["#### Sampled versions of the findings (replicates; read with the tail warnings)\n",
                    _log_p_bias(a) + "\n", _slopes(a) + "\n", _decomposition(a) + "\n", _coupled(a) + "\n"]
    tables = [
        ("Exact reference", _exact_rows(a)),
        ("Bias, variance, MSE and efficiency per cell", _summary_rows(a)),
        ("Variance vs NFE per family",
         [{"family": r["study"], "target": r["metric"], "points": r["points"],
           "slope [95% CI]": f"{_f(r['slope'], 2)} [{_f(r['slope_lo'], 2)}, {_f(r['slope_hi'], 2)}]",
           "−1 inside": r["one_over_nfe"]} for _, r in a["slopes"].iterrows()]),
        ("Gradients (exact ELBO gradient g* by autograd through the exact sum)", _gradient_rows(a)),
        ("Importance-ratio spread at θ = θ_old (independent draws; pairs of replicates; bootstrap CI)",
         _spread_rows(a)),
        ("t vs mask decomposition",
         [{"cell": r["cell_id"], "t-law": r["t_law"], "T x K": f"{r['T']} x {r['K']}",
           "between t": _ci(r, "between"), "within t (mask)": _ci(r, "within"),
           "total": _ci(r, "total"), "between share": _ci(r, "share"), "verdict": r["verdict"]}
          for _, r in a["decomposition"].iterrows()]),
        ("Coupled vs independent masks (equal NFE)",
         [{"NFE": r["nfe"], "coupled": r["coupled"], "independent": r["independent"],
           "variance ratio [bootstrap 95% CI]": f"{_f(r['ratio'])} [{_f(r['lo'])}, {_f(r['hi'])}]",
           "items": r["n_items"]} for _, r in a["coupled"].iterrows()]),
    ]
    for heading, rows in tables:  # a study the suite did not run gets no empty subsection
        if rows:
            out += [f"### {heading}\n", _md(rows)]
    return "\n".join(out)


def _exact_headline(a: dict) -> list[str]:
    """From exact moments: the ELBO estimators' exact variance of one draw, lowest to highest, and the
    largest exact bias (an estimator that targets something other than the ELBO)."""
    s = a["x_summary"]
    one = s[s["var_x_nfe"].notna()].sort_values("nfe").groupby("study", sort=False).head(1)
    if not len(one):
        return []
    unbiased = one[one["bias_elbo"].abs() < 1e-6].sort_values("var_x_nfe")
    out = []
    if len(unbiased) >= 2:
        lo, hi = unbiased.iloc[0], unbiased.iloc[-1]
        out.append(f"Estimators (exact: every reveal set of {int(lo['n_items'])} items enumerated, no sampling): "
                   "among unbiased ELBO estimators, variance x NFE is "
                   f"{_f(lo['var_x_nfe'])} for `{lo['study']}` and {_f(hi['var_x_nfe'])} for `{hi['study']}` "
                   f"({hi['var_x_nfe'] / lo['var_x_nfe']:.1f}x as many forward passes for the same variance; "
                   "exact values carry no sampling error, so the comparison needs no test).")
    biased = one[one["bias_elbo"].abs() >= 1e-6]
    if len(biased):
        b = biased.iloc[biased["bias_elbo"].abs().argmax()]
        out.append(f"Estimators (exact): `{b['study']}` is biased by {_f(b['bias_elbo'])} nats per sequence "
                   "against the exact ELBO: it targets another quantity, and more draws do not remove it.")
    return out


def _headlines(ctx) -> list[str]:
    """The estimator lines of the report summary: from exact moments when the run has them, else the
    lowest-MSE ELBO estimator at the largest NFE that several families share (sampled, with interval)."""
    a = ctx.memo("estimators", lambda: analyse([r for r in ctx.records if r.get("kind") in KINDS]))
    s = a["summary"]
    out = []
    if len(a["exact"]):
        out.append(f"Estimators: ground truth is exact (every reveal set enumerated) for {len(a['exact'])} item(s).")
    if XR.has_exact(a):
        exact = _exact_headline(a)
        if exact:
            return exact
    if not len(s) or "mse_elbo" not in s:
        return out
    elbo = s[s["elbo_target"]] if "elbo_target" in s else s
    counts = elbo.groupby("nfe")["study"].nunique()
    shared = counts[counts >= 2]
    if not len(shared):
        return out
    nfe = float(shared.index.max())
    at = elbo[elbo["nfe"] == nfe].sort_values("mse_elbo")
    out.append(_lowest_mse(a["items"], at, nfe))
    return out


def _lowest_mse(items, at, nfe: float) -> str:
    """The lowest-MSE ELBO estimator at one NFE, claimed only where a paired test backs it: per-item MSE
    differences against each other estimator on the shared items, sign-flip permutation test, Holm."""
    from harness.stats.intervals import ALPHA
    from harness.stats.paired import holm, paired_permutation_test

    best = at.iloc[0]
    mine = items[items["cell_id"] == best["cell_id"]].set_index("key")["mse_elbo"]
    tests = []
    for i, (_, other) in enumerate(at.iloc[1:].iterrows()):
        theirs = items[items["cell_id"] == other["cell_id"]].set_index("key")["mse_elbo"]
        keys = [k for k in mine.index if k in theirs.index]
        diff = theirs.loc[keys].to_numpy(float) - mine.loc[keys].to_numpy(float)
        tests.append((other["study"], paired_permutation_test(diff, seed=SEED + i) if len(keys) else 1.0, len(keys)))
    adj = holm([p for _, p, _ in tests], ALPHA)[0] if tests else []
    beaten = [t for t, p in zip(tests, adj) if p < ALPHA]
    test = f"sign-flip permutation test on per-item MSE differences, Holm over {len(tests)}, α = {ALPHA:g}"
    head = (f"Estimators: at {nfe:.0f} NFE per sequence, `{best['study']}` has the smallest mean MSE against the "
            f"exact ELBO among {len(at)} ELBO estimators, {_ci(best, 'mse_elbo')} (nats², chi-square 95% CI)")
    if len(beaten) == len(tests):
        return head + f", significantly below every other ({test})."
    close = [f"`{t[0]}` (Holm p {p:.2g})" for t, p in zip(tests, adj) if not p < ALPHA]
    return head + (f"; it is not significantly below {', '.join(close)} ({test}), so no single lowest MSE is "
                   "established.")


SECTION = register_section(
    "estimators", kinds=KINDS, order=20, summary=_headlines,
    render=lambda ctx: render_section(ctx.records, ctx.manifest, ctx.run_dir, ctx.out_dir))
