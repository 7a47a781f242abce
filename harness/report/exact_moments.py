"""Exact moments in the estimator section: statements, the exact-beside-sampled table,
and two figures, from harness.stats.exact_moments. Every statement here is derived from exact
values (no sampling error); sampled values appear beside them, with a warning where their
replicates are too few for their tails.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from harness.report.format import bullets, num, save_figure

FIGURES = ("estimators_exact_variance_vs_nfe", "estimators_exact_decomposition")
CAPTIONS = {
    "estimators_exact_variance_vs_nfe": (
        "Exact variance against NFE (log-log), with a 1/NFE guide",
        "Exact values, no sampling error: a family parallel to the dashed guide gains exactly what averaging "
        "independent draws gains; stratified or paired draws can only fall faster."),
    "estimators_exact_decomposition": (
        "Exact split of one draw's variance: t part vs mask part",
        "Var = Var_t E[X | t] + E_t Var(X | t), integrated exactly over each estimator's t-law (the count l for "
        "count laws); the number is the total variance of one draw."),
}


def analyse(df, exact_table) -> dict:
    from harness.stats import exact_moments as X

    items = X.exact_items(df)
    if len(items) and len(exact_table):
        items["bias_log_p"] = items["mean"] - items["key"].map(exact_table["exact_log_p"])
    summary = X.exact_summary(items)
    if len(summary) and "bias_log_p" in items:
        summary["bias_log_p"] = summary["cell_id"].map(items.groupby("cell_id")["bias_log_p"].mean())
    return {"x_items": items, "x_summary": summary, "beside": X.beside(df, items),
            "x_slopes": X.exact_slopes(summary), "x_decomp": X.exact_decomposition(summary),
            "x_coupled": X.exact_coupled(summary), "x_grad": X.gradients_beside(df)}


def _f(x, digits: int = 3) -> str:
    return num(x, digits)


def has_exact(a: dict) -> bool:
    return len(a.get("x_summary", [])) > 0


# -- statements -----------------------------------------------------------------------------------
def slopes(a: dict, sampled: dict) -> str:
    """`sampled`: study -> the sampled slope row (stats.estimators.nfe_slopes), to show beside."""
    sl = a["x_slopes"]
    lines = ["**Does variance fall as 1/NFE? (exact)** Exact variance of the n-draw estimator at each NFE of the "
             "sweep (mean over items); slope from the first to the last point, and the range of var x NFE. An "
             "estimator that averages n independent draws has variance exactly 1/n of one draw by construction, so "
             "\"exactly 1/NFE\" is a check of the implementation, not a finding; a finding is a family that departs:"]
    for _, r in sl.iterrows():
        check = str(r["verdict"]).startswith("exactly")  # true by construction: a check, not a finding
        verdict = f"check passed, {r['verdict']}" if check else f"**{r['verdict']}**"
        txt = (f"  - `{r['study']}` (NFE {r['nfe_min']:.0f}–{r['nfe_max']:.0f}, {r['points']} points): slope "
               f"{_f(r['slope'], 4)}, var x NFE {_f(r['vxn_min'])}–{_f(r['vxn_max'])}: {verdict}")
        if r["divergent"]:
            txt += f" (the variance is infinite without the clamp {r['truncation']})"
        s = sampled.get(r["study"].removeprefix("exact-"))
        if s is not None:
            txt += (f"; the sampled slope was {_f(s['slope'], 2)} [{_f(s['slope_lo'], 2)}, {_f(s['slope_hi'], 2)}] "
                    "(not a finding: see the tail warnings)")
        lines.append(txt)
    return "\n".join(lines)


def decomposition(a: dict) -> str:
    return bullets(
        a["x_decomp"], "**t vs mask variance (exact)**: no one-draw exact cells with a t-law.",
        "**For the ELBO, does variance from sampling t dominate the mask variance? (exact)** One draw: "
        "Var = E_t[Var(X | t)] (mask) + Var_t(E[X | t]) (t), integrated exactly over each estimator's "
        "t-law (the count l for count laws), mean over items:",
        lambda r: f"`{r['cell_id']}`: t part {_f(r['between'])}, mask part {_f(r['within'])}, "
                  f"t share {_f(r['share'])}: **{r['verdict']}**")


def pair(r) -> str:
    """A coupling comparison's two cells: `coupled` vs `independent` (its t-law where it has one)."""
    law = f" (t-law `{r['t_law']}`)" if isinstance(r.get("t_law"), str) else ""
    return f"`{r['coupled']}` vs `{r['independent']}`{law}"


def coupled(a: dict) -> str:
    def line(r) -> str:
        word = "coupling lowers the variance" if r["ratio"] < 1 else "coupling raises the variance"
        return f"NFE {r['nfe']}, {pair(r)}: {_f(r['ratio'])}: {word}"

    return bullets(a["x_coupled"], "**Coupled vs independent masks (exact)**: no matching exact cells at equal NFE.",
                   "**Coupled vs independent masks at equal NFE (exact)**: exact Var(unbiased ELBO estimator with "
                   "complementary masks) / exact Var(unbiased ELBO estimator with independent masks), as each "
                   "estimator declares, means over items (exact values: no sampling error, no test needed):", line)


def bias(a: dict) -> str:
    s = a["x_summary"]
    top = s.sort_values("nfe").groupby("study", sort=False).tail(1)
    lines = ["**Bias (exact)**: exact mean minus exact ELBO (and minus exact log p), nats per sequence, mean "
             "over items; an unbiased ELBO estimator shows 0 up to rounding:"]
    for _, r in top.iterrows():
        lp = f", vs log p {_f(r['bias_log_p'])}" if "bias_log_p" in r and not _nan(r["bias_log_p"]) else ""
        lines.append(f"  - `{r['study']}`: vs ELBO {_f(r['bias_elbo'])}{lp}")
    return "\n".join(lines)


def tails(a: dict) -> str:
    b = a["beside"]
    if not len(b):
        return ""
    flagged = b[b["heavy_tail"]]
    lines = [f"**Sampled variances against exact ones**: {len(b)} sampled cells have exact counterparts; the "
             f"sampled / exact variance ratio ranges {_f(b['ratio'].min())}–{_f(b['ratio'].max())} "
             f"(median {_f(b['ratio'].median())})."]
    if len(flagged):
        lines.append(f"  **Warning, heavy tails**: {len(flagged)} sampled cells have a sample kurtosis that puts "
                     "the relative SE of their sampled variance, sqrt((κ − 1)/R), above 0.3 (n_eff = 2R/(κ − 1) "
                     "normal-equivalent replicates; the sample kurtosis itself understates an unsampled tail):")
        for _, r in flagged.sort_values("kurtosis", ascending=False).iterrows():
            lines.append(f"  - `{r['cell_id']}`: κ {_f(r['kurtosis'], 1)}, R {r['R']}, n_eff {_f(r['n_eff'], 1)}; "
                         f"sampled var {_f(r['sampled_var'])} vs exact {_f(r['exact_var'])} "
                         f"(x{_f(r['ratio'], 2)})")
    return "\n".join(lines)


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


# -- tables ---------------------------------------------------------------------------------------
def beside_rows(a: dict) -> list[dict]:
    b = a["beside"]
    return [{"cell": r["cell_id"], "NFE": _f(r["nfe"], 1), "items x R": f"{r['n_items']} x {r['R']}",
             "exact bias vs ELBO": _f(r["exact_bias"]), "sampled bias": _f(r["sampled_bias"]),
             "exact var": _f(r["exact_var"]), "sampled var": _f(r["sampled_var"]), "sampled/exact": _f(r["ratio"], 2),
             "sample κ": _f(r["kurtosis"], 1), "n_eff": _f(r["n_eff"], 1),
             "tails": "WARNING" if r["heavy_tail"] else "ok"} for _, r in b.iterrows()]


def gradient_rows(a: dict) -> list[dict]:
    g = a["x_grad"]
    return [{"cell": r["cell_id"], "NFE": _f(r["nfe"], 1), "items": r["n_items"],
             "exact tr Cov(∇X)": _f(r["exact_trace"]), "sampled tr Cov": _f(r["sampled_trace"]),
             "sampled cell (R_g)": f"{r['sampled_cell']} ({r['R_g']})" if r["sampled_cell"] else "—",
             "exact ‖E∇X − ∇ELBO‖²": _f(r["exact_bias_sq"]), "‖∇ELBO‖": _f(r["elbo_grad_norm"])}
            for _, r in g.iterrows()]


def exact_rows(a: dict) -> list[dict]:
    rows = []
    for _, r in a["x_summary"].iterrows():
        name, params = json.loads(r["match"])
        rows.append({"cell": r["cell_id"], "NFE": _f(r["nfe"], 1), "items": r["n_items"],
                     "mean − ELBO": _f(r["bias_elbo"]), "var": _f(r["var"]), "var x NFE": _f(r["var_x_nfe"]),
                     "t part": _f(r["between"]), "mask part": _f(r["within"]),
                     "finite only through": r["truncation"] or "—"})
    return rows


# -- figures --------------------------------------------------------------------------------------
def figures(a: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    s = a["x_summary"]
    made = []
    multi = s[s.groupby("study")["nfe"].transform("nunique") > 1] if len(s) else s
    if len(multi):
        fig, ax = plt.subplots(figsize=(8.5, 5.2))
        fams = list(dict.fromkeys(multi["study"]))
        palette = dict(zip(fams, sns.color_palette("husl", len(fams))))
        for fam, g in multi.groupby("study", sort=False):
            g = g[g["var"] > 0].sort_values("nfe")
            ax.plot(g["nfe"], g["var"], marker="o", color=palette[fam], label=fam.removeprefix("exact-"))
        x = np.array([multi["nfe"].min(), multi["nfe"].max()])
        top = float(multi.loc[multi["nfe"] == multi["nfe"].min(), "var"].max())
        ax.plot(x, 2 * top * x[0] / x, "k--", lw=1, label="1/NFE guide (slope −1, offset x2)")
        ax.set(xscale="log", yscale="log", xlabel="NFE per sequence", ylabel="exact variance (mean over items)",
               title="exact variance vs NFE")
        ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False)
        made.append(save_figure(fig, out_dir, "estimators_exact_variance_vs_nfe"))
    d = a["x_decomp"]
    if len(d):
        fig, ax = plt.subplots(figsize=(8, 0.4 * len(d) + 1.6))
        y = np.arange(len(d))
        total = (d["between"] + d["within"]).to_numpy(float)
        ax.barh(y, d["between"] / total, color=sns.color_palette()[0], label="t part: Var_t E[X | t]")
        ax.barh(y, d["within"] / total, left=d["between"] / total, color=sns.color_palette()[1],
                label="mask part: E_t Var(X | t)")
        for yi, tot in zip(y, total):
            ax.text(1.01, yi, f"Var {tot:.3g}", va="center", fontsize=8)
        ax.set(yticks=y, yticklabels=[c.removeprefix("exact-") for c in d["cell_id"]], xlim=(0, 1.2),
               xlabel="share of the exact variance of one draw (mean over items)")
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
        made.append(save_figure(fig, out_dir, "estimators_exact_decomposition"))
    return made
