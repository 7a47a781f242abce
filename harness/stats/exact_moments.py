"""Statistics of the exact-moment records and how they sit beside the sampled ones.

Pure functions of the records frame (`records.to_frame`). An `exact_moments` cell is matched to
the `estimator_variance` cell of the same estimator with the same parameters (every parameter but
max_tokens, which never changes a value), and items by content (the item key of
stats.estimators). Findings drawn from exact values carry no sampling error, so they need no
interval: "falls as 1/NFE" is a statement about var × NFE along the sweep, "t dominates" about
the exact between-t share, "coupling lowers variance" about an exact ratio at equal NFE.

Heavy tails: a sampled variance from R replicates has relative standard error about
sqrt((κ − 1)/R) (κ the kurtosis, 3 for a normal), i.e. it is worth n_eff = 2R/(κ − 1) normal
replicates. `tail_check` flags a cell whose sample kurtosis makes that error large; the sample
kurtosis itself understates a tail the replicates never reached, so the flag is a floor.
"""
from __future__ import annotations

import json
import math

import numpy as np

from harness.stats.estimators import _item_key, _ok, _param, _values, declared

TAIL_REL_SE = 0.3  # flag a sampled variance whose relative SE sqrt((κ − 1)/R) exceeds this
EXACT_TOL = 1e-6  # relative: var × NFE constant along a sweep within this is "exactly 1/NFE"


def _params_key(df) -> "list[str]":
    """Estimator name + every parameter but max_tokens, as one JSON string per row."""
    cols = sorted(c for c in df.columns if c.startswith("component.params.") and not c.endswith(".max_tokens"))
    out = []
    for _, r in df[["component.name"] + cols].iterrows():
        params = {c.split(".", 2)[2]: r[c] for c in cols if not _missing(r[c])}
        out.append(json.dumps([r["component.name"], params], sort_keys=True, default=str))
    return out


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def exact_items(df):
    """Per (exact_moments cell, item): mean, var (sequence scale), within / between, bias vs the
    exact ELBO, NFE, divergence; `match` is the estimator+params key of the cell."""
    import pandas as pd

    ex = _ok(df, "exact_moments")
    if "estimate.grad.trace_cov" in ex:  # gradient cells repeat other cells' moments: see gradients_beside
        ex = ex[ex["estimate.grad.trace_cov"].isna()]
    if ex.empty:
        return pd.DataFrame()
    out = pd.DataFrame({
        "cell_id": ex["cell_id"].to_numpy(), "study": ex["study"].to_numpy(),
        "estimator": ex["component.name"].to_numpy(), "match": _params_key(ex), "key": _item_key(ex).to_numpy(),
        "item": ex["item_id"].to_numpy(), "metric": ex["estimate.metric"].to_numpy(),
        "nfe": ex["estimate.nfe"].astype(float).to_numpy(), "mean": ex["estimate.mean"].astype(float).to_numpy(),
        "var": ex["estimate.var"].astype(float).to_numpy(),
        "within": pd.to_numeric(ex["estimate.var_within"], errors="coerce").to_numpy(),
        "between": pd.to_numeric(ex["estimate.var_between"], errors="coerce").to_numpy(),
        "exact_elbo": ex["estimate.exact_elbo"].astype(float).to_numpy(),
        "divergent": ex["estimate.divergent"].astype(bool).to_numpy(),
        "truncation": ex["estimate.truncation"].fillna("").to_numpy(),
        "draws": ex["estimate.draws"].astype(int).to_numpy(),
    })
    out["bias_elbo"] = out["mean"] - out["exact_elbo"]
    out["var_x_nfe"] = out["var"] * out["nfe"]
    cells = dict(tuple(ex.groupby("cell_id", sort=False)))  # per cell: what its estimator declares
    out["elbo_target"] = out["cell_id"].map({c: declared(g, "elbo_target") for c, g in cells.items()})
    out["masks"] = out["cell_id"].map({c: declared(g, "masks") for c, g in cells.items()})
    out["t_law"] = out["cell_id"].map({c: _param(g, "t_law") for c, g in cells.items()})
    return out


def exact_summary(items):
    """Per exact cell: means over items of the exact quantities (no interval: nothing sampled)."""
    import pandas as pd

    rows = []
    if not len(items):
        return pd.DataFrame()
    for cell, g in items.groupby("cell_id", sort=False):
        rows.append({"cell_id": cell, "study": g["study"].iloc[0], "estimator": g["estimator"].iloc[0],
                     "match": g["match"].iloc[0], "metric": g["metric"].iloc[0], "nfe": float(g["nfe"].mean()),
                     "n_items": len(g), "mean": float(g["mean"].mean()), "bias_elbo": float(g["bias_elbo"].mean()),
                     "var": float(g["var"].mean()), "var_x_nfe": float(g["var_x_nfe"].mean()),
                     "within": float(g["within"].mean()), "between": float(g["between"].mean()),
                     "divergent": bool(g["divergent"].any()), "truncation": g["truncation"].iloc[0],
                     "draws": int(g["draws"].iloc[0]), "elbo_target": bool(g["elbo_target"].iloc[0]),
                     "masks": g["masks"].iloc[0], "t_law": g["t_law"].iloc[0]})
    return pd.DataFrame(rows)


def kurtosis(v: np.ndarray) -> float:
    """Sample kurtosis m4 / m2² (3 for a normal; nan with fewer than 4 values or no spread)."""
    v = np.asarray(v, float)
    if len(v) < 4:
        return math.nan
    d = v - v.mean()
    m2 = float((d ** 2).mean())
    return float((d ** 4).mean() / m2 ** 2) if m2 > 0 else math.nan


def beside(df, exact_items_df):
    """Per sampled estimator_variance cell with a matching exact cell: sampled and exact variance
    on the same items, their ratio, the sampled bias next to the exact bias, and the tail check
    (mean sample kurtosis over items, n_eff = 2R/(κ − 1), `heavy_tail` flag)."""
    import pandas as pd

    ev = _ok(df, "estimator_variance")
    if ev.empty or not len(exact_items_df):
        return pd.DataFrame()
    ev = ev.assign(match=_params_key(ev), key=_item_key(ev))
    exact = exact_items_df.set_index(["match", "key"])
    rows = []
    for cell, g in ev.groupby("cell_id", sort=False):
        match = g["match"].iloc[0]
        sv, xv, sb, xb, ks, R = [], [], [], [], [], []
        for key, gi in g.groupby("key", sort=False):
            if (match, key) not in exact.index:
                continue
            x = exact.loc[(match, key)]
            x = x.iloc[0] if hasattr(x, "iloc") and x.ndim > 1 else x
            v = _values(gi)
            sv.append(float(v.var(ddof=1)) if len(v) > 1 else math.nan)
            sb.append(float(v.mean() - x["exact_elbo"]))
            xv.append(float(x["var"]))
            xb.append(float(x["bias_elbo"]))
            ks.append(kurtosis(v))
            R.append(len(v))
        if not xv:
            continue
        k = float(np.nanmean(ks)) if not all(math.isnan(q) for q in ks) else math.nan
        r = int(min(R))
        rel_se = math.sqrt(max(k - 1, 0) / r) if not math.isnan(k) else math.nan
        rows.append({"cell_id": cell, "study": g["study"].iloc[0], "estimator": g["component.name"].iloc[0],
                     "nfe": float(g["cost.nfe"].mean()), "n_items": len(xv), "R": r,
                     "sampled_var": float(np.mean(sv)), "exact_var": float(np.mean(xv)),
                     "ratio": float(np.mean(sv) / np.mean(xv)) if np.mean(xv) > 0 else math.nan,
                     "sampled_bias": float(np.mean(sb)), "exact_bias": float(np.mean(xb)),
                     "kurtosis": k, "n_eff": 2 * r / (k - 1) if k > 1 else math.nan, "rel_se": rel_se,
                     "heavy_tail": bool(rel_se > TAIL_REL_SE) if not math.isnan(rel_se) else False})
    return pd.DataFrame(rows)


def exact_slopes(summary):
    """Per exact family (study) with >= 2 NFE points: the exact log-log slope of variance on NFE
    from the first to the last point, the range of var × NFE, and the verdict."""
    import pandas as pd

    rows = []
    if not len(summary):
        return pd.DataFrame()
    for study, g in summary.groupby("study", sort=False):
        g = g[(g["var"] > 0) & (g["nfe"] > 0)].sort_values("nfe")
        if g["nfe"].nunique() < 2:
            continue
        a, b = g.iloc[0], g.iloc[-1]
        slope = math.log(b["var"] / a["var"]) / math.log(b["nfe"] / a["nfe"])
        vx = g["var_x_nfe"].to_numpy(float)
        spread = float(vx.max() / vx.min() - 1)
        change = float(vx[-1] / vx[0] - 1)  # var x NFE from the first NFE point to the last
        if spread <= EXACT_TOL:
            word = "exactly 1/NFE (var x NFE constant)"
        else:
            word = (f"{'faster' if slope < -1 else 'slower'} than 1/NFE (var x NFE {100 * change:+.2f}% from "
                    f"NFE {a['nfe']:.0f} to {b['nfe']:.0f})")
        rows.append({"study": study, "estimator": g["estimator"].iloc[0], "points": len(g),
                     "nfe_min": a["nfe"], "nfe_max": b["nfe"], "slope": slope,
                     "vxn_min": float(vx.min()), "vxn_max": float(vx.max()), "spread": spread, "change": change,
                     "verdict": word,
                     "divergent": bool(g["divergent"].any()), "truncation": g["truncation"].iloc[0]})
    return pd.DataFrame(rows)


def exact_decomposition(summary):
    """Exact t / mask split of one draw (cells with draws == 1 and a t part): between-t share of
    the mean-over-items variance, and which part dominates."""
    import pandas as pd

    if not len(summary):
        return pd.DataFrame()
    s = summary[(summary["draws"] == 1) & summary["between"].notna()]
    rows = []
    for _, r in s.iterrows():
        total = r["within"] + r["between"]
        share = r["between"] / total if total > 0 else math.nan
        rows.append({"cell_id": r["cell_id"], "study": r["study"], "estimator": r["estimator"], "nfe": r["nfe"],
                     "within": r["within"], "between": r["between"], "share": share,
                     "verdict": "t dominates" if share > 0.5 else "mask dominates"})
    return pd.DataFrame(rows)


def exact_coupled(summary):
    """Exact Var(unbiased ELBO estimator with complementary masks) / Var(unbiased one with
    independent masks) at the same NFE (means over items of the exact variances), as
    stats.estimators.coupled_vs_independent pairs the sampled cells."""
    import pandas as pd

    if not len(summary):
        return pd.DataFrame()
    ok = summary[summary["elbo_target"]]
    rows = []
    for _, c in ok[ok["masks"] == "complementary"].iterrows():
        for _, m in ok[(ok["masks"] == "independent") & (ok["nfe"] == c["nfe"])].iterrows():
            rows.append({"nfe": int(c["nfe"]), "coupled": c["cell_id"], "independent": m["cell_id"],
                         "t_law": m["t_law"], "ratio": c["var"] / m["var"] if m["var"] > 0 else math.nan})
    return pd.DataFrame(rows)


def gradients_beside(df):
    """Exact gradient moments (exact_moments cells with options.gradients) beside the sampled
    gradient_variance cells of the same estimator and parameters, on the same items: tr Cov(∇X),
    and the squared bias of E∇X against the exact ∇ELBO (exact) vs of the sampled mean gradient."""
    import pandas as pd

    ex = _ok(df, "exact_moments")
    if ex.empty or "estimate.grad.trace_cov" not in ex:
        return pd.DataFrame()
    ex = ex[ex["estimate.grad.trace_cov"].notna()]
    ex = ex.assign(match=_params_key(ex), key=_item_key(ex))
    gv = _ok(df, "gradient_variance")
    gv = gv.assign(match=_params_key(gv), key=_item_key(gv)) if len(gv) else gv
    rows = []
    for cell, g in ex.groupby("cell_id", sort=False):
        row = {"cell_id": cell, "study": g["study"].iloc[0], "nfe": float(g["estimate.nfe"].mean()),
               "n_items": len(g), "exact_trace": float(g["estimate.grad.trace_cov"].mean()),
               "exact_bias_sq": float(g["estimate.grad.bias_sq"].mean()),
               "elbo_grad_norm": float(g["estimate.grad.elbo_grad_norm"].mean()),
               "sampled_cell": "", "sampled_trace": math.nan, "R_g": 0}
        if len(gv):
            s = gv[(gv["match"] == g["match"].iloc[0]) & gv["key"].isin(set(g["key"]))]
            if len(s):
                keys = set(s["key"])
                row.update(sampled_cell=s["cell_id"].iloc[0], sampled_trace=float(s["estimate.trace_cov"].mean()),
                           R_g=int(s["estimate.R"].min()),
                           exact_trace=float(g[g["key"].isin(keys)]["estimate.grad.trace_cov"].mean()))
        rows.append(row)
    return pd.DataFrame(rows)
