"""Statistics of the estimator study (docs/architecture.md, "Statistics"): pure functions of records.

Inputs are DataFrames from `records.to_frame` (one row per record). Items are the independent
units: per (cell, item) we reduce the R replicates to a mean, a variance (ddof=1) and squared
errors against the item's exact values (the `exact_reference` records), then aggregate over items:
Student-t intervals for signed quantities (biases), scaled chi-square intervals (Satterthwaite) for
non-negative ones (variances, MSEs, traces), so that no interval leaves what its quantity can be.
Every resampling function takes a `seed` and draws from np.random.default_rng(seed). Cells of one
study form a family (one estimator configuration swept over its sample count),
which is what the 1/NFE regression runs over.

What a value estimates is declared by its estimator (class attributes the records carry, see
`declared`), never looked up by name here: values of an estimator with `token_scale` (a per-token
mean such as `uni_elbo`, `trace`, SPG with scale: token) are multiplied by the item's scored length
L in `per_item`, so every bias, variance and MSE is on the sequence scale of the exact ELBO and
log p; `elbo_target` says whether the estimator is built to be unbiased for the ELBO; `masks`
("independent", "complementary", ...) says how its masks relate, which the coupling comparison
reads. The ratio spread and the variance ratios use the sequence scale too.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy import stats

from harness.stats.intervals import Interval, nonnegative_mean_interval, t_interval, within_support

QUANTITIES = ("bias_elbo", "bias_log_p", "var", "mse_elbo", "mse_log_p", "var_x_nfe")
NONNEGATIVE = ("var", "mse_elbo", "mse_log_p", "var_x_nfe")  # chi-square intervals: never below 0
CLIP_EPS = 0.2  # PPO-style clip range: a ratio outside [1 - ε, 1 + ε] would be clipped


# -- pure numerics --------------------------------------------------------------------------------
def anova_components(group_mean, group_var, K: int) -> dict:
    """One-way random-effects ANOVA of T groups (values of t) of K draws (masks) each.

    group_mean [T], group_var [T] (ddof=1) ->
      within  = mean_t s_t²                         unbiased for E_t[Var(value | t)]
      between = var(group means, ddof=1) − within/K  unbiased for Var_t[E(value | t)]
      total   = within + between                    the variance of one draw (fresh t and mask)
    """
    m = np.asarray(group_mean, dtype=float)
    v = np.asarray(group_var, dtype=float)
    within = float(v.mean())
    between = float(m.var(ddof=1) - within / K)
    return {"within": within, "between": between, "total": within + between}


class GradientMoments:
    """Running sums of R gradient vectors g_r against a reference g* (never stores the g_r).

    result(): trace of the sample covariance (ddof=1), ||mean g − g*||², cos(mean g, g*), the mean
    over r of cos(g_r, g*), ||g*||, the variance of the projection g_r·g*/||g*|| (the first-order
    spread of ℓ̂(θ + δ) − ℓ̂(θ) with shared draws, per unit step along g*), and the same bias and
    cosine against a second reference (the exact ∇ log p) when given.
    """

    def __init__(self, g_star, g_star_log_p=None):
        self.g_star, self.g_log_p = g_star, g_star_log_p
        self.norm_star = float((g_star * g_star).sum()) ** 0.5
        self.R = 0
        self.sum = g_star * 0
        self.sum_sq = self.sum_cos = self.sum_proj = self.sum_proj_sq = 0.0
        self.sum_value = self.sum_value_sq = 0.0

    def add(self, g, value: float = 0.0) -> None:
        norm_sq = float((g * g).sum())
        dot = float((g * self.g_star).sum())
        self.R += 1
        self.sum = self.sum + g
        self.sum_sq += norm_sq
        self.sum_cos += _cos(dot, norm_sq ** 0.5, self.norm_star)
        proj = dot / self.norm_star if self.norm_star > 0 else 0.0
        self.sum_proj += proj
        self.sum_proj_sq += proj * proj
        self.sum_value += value
        self.sum_value_sq += value * value

    def result(self) -> dict:
        R = self.R
        mean = self.sum / R
        mean_sq = float((mean * mean).sum())
        out = {
            "R": R,
            "trace_cov": (self.sum_sq - R * mean_sq) / (R - 1) if R > 1 else math.nan,
            "bias_sq": float(((mean - self.g_star) ** 2).sum()),
            "cos_mean": _cos(float((mean * self.g_star).sum()), mean_sq ** 0.5, self.norm_star),
            "mean_cos": self.sum_cos / R,
            "g_star_norm": self.norm_star,
            "mean_norm": mean_sq ** 0.5,
            "proj_var": (self.sum_proj_sq - self.sum_proj ** 2 / R) / (R - 1) if R > 1 else math.nan,
            "value_mean": self.sum_value / R,
            "value_var": (self.sum_value_sq - self.sum_value ** 2 / R) / (R - 1) if R > 1 else math.nan,
        }
        if self.g_log_p is not None:
            norm_lp = float((self.g_log_p * self.g_log_p).sum()) ** 0.5
            out.update(bias_sq_log_p=float(((mean - self.g_log_p) ** 2).sum()),
                       cos_mean_log_p=_cos(float((mean * self.g_log_p).sum()), mean_sq ** 0.5, norm_lp),
                       g_star_log_p_norm=norm_lp)
        return out


def _cos(dot: float, a: float, b: float) -> float:
    """Cosine from a dot product and two norms; a zero vector (e.g. the gradient of an mc_elbo
    draw that masked nothing) counts as cosine 0: it points nowhere."""
    return dot / (a * b) if a > 0 and b > 0 else 0.0


def ols_slope(x, y, level: float = 0.95) -> dict:
    """OLS slope of y on x with a Student-t interval (n − 2 degrees of freedom; none for n < 3)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 2 or np.ptp(x) == 0:
        return {"slope": math.nan, "lo": math.nan, "hi": math.nan, "n": n}
    fit = stats.linregress(x, y)
    if n < 3:
        return {"slope": float(fit.slope), "lo": math.nan, "hi": math.nan, "n": n}
    half = stats.t.ppf(0.5 + level / 2, n - 2) * fit.stderr
    return {"slope": float(fit.slope), "lo": float(fit.slope - half), "hi": float(fit.slope + half), "n": n}


def _percentile(boot: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    boot = boot[~np.isnan(boot)]
    if not len(boot):
        return math.nan, math.nan
    a = (1 - level) / 2
    return float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a))


def _boot_variances(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot] variances (ddof=1) of replicates resampled with replacement from `values` [R]."""
    R = len(values)
    idx = rng.integers(0, R, size=(n_boot, R))
    return values[idx].var(1, ddof=1)


def variance_ratio(a: list, b: list, seed: int, n_boot: int = 2000, level: float = 0.95) -> dict:
    """Ratio of mean per-item variances, Σ_i var(a_i) / Σ_i var(b_i), over paired items.

    a, b: lists (one entry per item, same order) of replicate arrays. Interval: a two-level
    bootstrap, items resampled (paired) and, inside each, replicates resampled (both sources of
    error; no normality assumed, which the heavy-tailed 1/t weights would break).
    """
    rng = np.random.default_rng(seed)
    va = np.array([np.var(x, ddof=1) for x in a])
    vb = np.array([np.var(x, ddof=1) for x in b])
    ratio = float(va.mean() / vb.mean())
    ba = np.stack([_boot_variances(np.asarray(x, float), n_boot, rng) for x in a], 1)  # [n_boot, items]
    bb = np.stack([_boot_variances(np.asarray(x, float), n_boot, rng) for x in b], 1)
    items = rng.integers(0, len(a), size=(n_boot, len(a)))
    rows = np.arange(n_boot)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = ba[rows, items].mean(1) / bb[rows, items].mean(1)
    lo, hi = _percentile(boot, level)
    return {"ratio": ratio, "lo": lo, "hi": hi, "n_items": len(a)}


# -- frames ---------------------------------------------------------------------------------------
def _ok(df, kind: str):
    return df[(df["kind"] == kind) & (df["status"] == "ok")]


def _item_key(df):
    """Items are matched across studies by model and item content (the item hash)."""
    cols = sorted(c for c in df.columns if c.startswith("model."))
    key = df["item_hash"].astype(str)
    for c in cols:
        key = key + "|" + df[c].astype(str)
    return key


def exact_table(df):
    """-> DataFrame indexed by item key: exact_elbo, exact_log_p, length."""
    import pandas as pd

    ex = _ok(df, "exact_reference")
    if ex.empty:
        return pd.DataFrame(columns=["exact_elbo", "exact_log_p", "length"])
    out = pd.DataFrame({"key": _item_key(ex), "exact_elbo": ex["estimate.elbo"].astype(float),
                        "exact_log_p": ex["estimate.log_p"].astype(float),
                        "length": ex["estimate.length"].astype(int)})
    return out.drop_duplicates("key", keep="last").set_index("key")


def declared(rows, key: str):
    """What one cell's estimator declares (`token_scale`, `elbo_target` or `masks`): read from its
    records, or, for records written before they carried it, from the estimator class itself
    (built from the recorded name and parameters)."""
    col = f"estimate.{key}"
    if col in rows.columns and not _missing(rows[col].iloc[0]):
        v = rows[col].iloc[0]
        return bool(v) if key != "masks" else str(v)
    return getattr(_estimator(rows), key)


def _estimator(rows):
    first = rows.iloc[0]
    params = {}
    for col in rows.columns:
        if col.startswith("component.params.") and not _missing(first[col]):
            v = first[col]
            v = v.item() if hasattr(v, "item") else v  # numpy scalars from the frame
            params[col.split(".", 2)[2]] = int(v) if isinstance(v, float) and v.is_integer() else v
    return _build(first["component.name"], tuple(sorted(params.items())), str(first["cell_id"]))


@functools.lru_cache(maxsize=256)
def _build(name: str, params: tuple, cell: str):
    """One build per estimator configuration: `declared` runs once per (cell, item) group."""
    from harness.registry import ESTIMATORS

    return ESTIMATORS.build(name, dict(params), where=f"records of cell {cell}")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _values(rows) -> np.ndarray:
    """One item's replicate values in replicate order, on the sequence scale (per-token means × L)."""
    rows = rows.sort_values("replicate")
    v = rows["estimate.value"].to_numpy(float)
    return v * rows["estimate.length"].iloc[0] if declared(rows, "token_scale") else v


def per_item(df):
    """Per (estimator_variance cell, item): R, mean, var, bias/MSE against exact ELBO and log p.

    Columns: cell_id, study, estimator, metric, item, R, nfe (measured mean per unit), mean, var,
    bias_elbo, bias_log_p, mse_elbo, mse_log_p, var_x_nfe, token_scale (value × L, see above),
    exact_elbo, exact_log_p.
    """
    import pandas as pd

    ev = _ok(df, "estimator_variance").copy()
    exact = exact_table(df)
    if ev.empty:
        return pd.DataFrame()
    ev["key"] = _item_key(ev)
    rows = []
    for (cell, key), g in ev.groupby(["cell_id", "key"], sort=False):
        v = _values(g)
        token = declared(g, "token_scale")
        x = exact.loc[key] if key in exact.index else None
        e_elbo = x["exact_elbo"] if x is not None else math.nan
        e_lp = x["exact_log_p"] if x is not None else math.nan
        nfe = float(g["cost.nfe"].mean())
        var = float(v.var(ddof=1)) if len(v) > 1 else math.nan
        rows.append({
            "cell_id": cell, "study": g["study"].iloc[0], "estimator": g["component.name"].iloc[0],
            "metric": g["outcome.metric"].iloc[0], "item": g["item_id"].iloc[0], "key": key, "R": len(v),
            "nfe": nfe, "mean": float(v.mean()), "var": var,
            "bias_elbo": float(v.mean() - e_elbo), "bias_log_p": float(v.mean() - e_lp),
            "mse_elbo": float(((v - e_elbo) ** 2).mean()), "mse_log_p": float(((v - e_lp) ** 2).mean()),
            "var_x_nfe": var * nfe, "token_scale": token, "elbo_target": declared(g, "elbo_target"),
            "exact_elbo": e_elbo, "exact_log_p": e_lp,
        })
    return pd.DataFrame(rows)


def interval_of(q: str, values) -> Interval:
    """The interval a per-item quantity gets: chi-square when it cannot be negative, else Student-t."""
    return nonnegative_mean_interval(values) if q in NONNEGATIVE else t_interval(values)


def summarize(items):
    """Per cell: each of QUANTITIES as mean over items with an interval over items (q, q_lo, q_hi):
    chi-square for the non-negative ones (NONNEGATIVE), Student-t for the biases."""
    import pandas as pd

    rows = []
    for cell, g in items.groupby("cell_id", sort=False):
        row = {"cell_id": cell, "study": g["study"].iloc[0], "estimator": g["estimator"].iloc[0],
               "metric": g["metric"].iloc[0], "token_scale": bool(g["token_scale"].iloc[0]),
               "elbo_target": bool(g["elbo_target"].iloc[0]),
               "nfe": float(g["nfe"].mean()), "n_items": len(g), "R": int(g["R"].min())}
        for q in QUANTITIES:
            iv = interval_of(q, g[q].dropna().to_numpy(float))
            row.update({q: iv.mean, f"{q}_lo": iv.lo, f"{q}_hi": iv.hi})
        rows.append(row)
    return pd.DataFrame(rows)


def nfe_slopes(summary):
    """Per family (study) with >= 2 NFE points: OLS slope of log(variance) on log(NFE) with a 95%
    interval. Slope −1 is variance ∝ 1/NFE; `one_over_nfe` says whether −1 is inside the interval."""
    import pandas as pd

    rows = []
    for study, g in summary.groupby("study", sort=False):
        g = g[(g["var"] > 0) & (g["nfe"] > 0)]
        if g["nfe"].nunique() < 2:
            continue
        fit = ols_slope(np.log(g["nfe"]), np.log(g["var"]))
        inside = fit["lo"] <= -1 <= fit["hi"] if not math.isnan(fit["lo"]) else None
        rows.append({"study": study, "estimator": g["estimator"].iloc[0], "metric": g["metric"].iloc[0],
                     "elbo_target": bool(g["elbo_target"].iloc[0]),
                     "points": fit["n"], "nfe_min": g["nfe"].min(), "nfe_max": g["nfe"].max(),
                     "slope": fit["slope"], "slope_lo": fit["lo"], "slope_hi": fit["hi"],
                     "one_over_nfe": inside})
    return pd.DataFrame(rows)


def replay_check(df) -> dict:
    """Replays of recorded draws (replicate 0 of every item): how many, and the largest |Δ|."""
    ev = _ok(df, "estimator_variance")
    col = "estimate.replay_abs_diff"
    if ev.empty or col not in ev:
        return {"n": 0, "max_abs_diff": math.nan, "cells": 0}
    d = ev[col].dropna().astype(float)
    return {"n": int(len(d)), "max_abs_diff": float(d.max()) if len(d) else math.nan,
            "cells": int(ev.loc[d.index, "cell_id"].nunique())}


def ratio_spread(df, seed: int, n_boot: int = 1000, level: float = 0.95):
    """Importance-ratio spread at θ = θ_old with independent draws, per estimator_variance cell.

    Replicates of an item are paired (0, 1), (2, 3), ...: Δ = ℓ̂_a − ℓ̂_b is the log-ratio of two
    independent draws of the same policy (sequence scale: per-token means × L). Reports std(Δ),
    std(exp Δ) and the fraction of ratios outside the clip range [1 − ε, 1 + ε], each with a
    bootstrap interval (pairs resampled within items). With shared draws Δ = 0 exactly (see replay_check).
    """
    import pandas as pd

    ev = _ok(df, "estimator_variance")
    rng = np.random.default_rng(seed)
    rows = []
    for cell, g in ev.groupby("cell_id", sort=False):
        deltas = []
        for _, gi in g.groupby("item_id", sort=False):
            v = _values(gi)
            k = len(v) // 2
            if k:
                deltas.append(v[0:2 * k:2] - v[1:2 * k:2])
        if not deltas or sum(len(d) for d in deltas) < 2:
            continue
        point = _spread(np.concatenate(deltas)[None, :])
        resampled = np.concatenate([d[rng.integers(0, len(d), (n_boot, len(d)))] for d in deltas], 1)
        boots = _spread(resampled)  # [n_boot] each: pairs resampled within items
        row = {"cell_id": cell, "study": g["study"].iloc[0], "estimator": g["component.name"].iloc[0],
               "nfe": float(g["cost.nfe"].mean()), "pairs": int(sum(len(d) for d in deltas))}
        for name, value in point.items():
            lo, hi = _percentile(boots[name], level)
            row.update({name: float(value[0]), f"{name}_lo": lo, f"{name}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def _spread(delta: np.ndarray) -> dict:
    """delta [B, N] (B samples of N log-ratios) -> {std(Δ), std(exp Δ), clipped fraction}: [B] each.
    std(exp Δ) is inf when some exp(Δ) overflows float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        ratio = np.exp(delta)
        sd_ratio = np.where(np.isfinite(ratio).all(1), ratio.std(1, ddof=1), math.inf)
    clipped = (ratio < 1 - CLIP_EPS) | (ratio > 1 + CLIP_EPS)
    return {"sd_delta": delta.std(1, ddof=1), "sd_ratio": sd_ratio, "clip_frac": clipped.mean(1)}


def decomposition(df):
    """Per t_mask_decomposition cell: within-t, between-t and total variance and the between share,
    each as a mean over items with a t-interval, and the verdict on which part dominates."""
    import pandas as pd

    tm = _ok(df, "t_mask_decomposition")
    rows = []
    for cell, g in tm.groupby("cell_id", sort=False):
        comps = [anova_components(m, v, k) for m, v, k in
                 zip(g["estimate.group_mean"], g["estimate.group_var"], g["estimate.K"])]
        row = {"cell_id": cell, "study": g["study"].iloc[0], "t_law": g["estimate.t_law"].iloc[0],
               "n_items": len(g), "T": int(g["estimate.T"].min()), "K": int(g["estimate.K"].min())}
        for q in ("within", "between", "total"):
            # the within part is a mean of variances (>= 0); the ANOVA between part is unbiased but
            # can be estimated below 0, so its t-interval is cut at 0, where its true value lies
            iv = (nonnegative_mean_interval([c[q] for c in comps]) if q == "within" else
                  within_support(t_interval([c[q] for c in comps]), 0.0, math.inf, "[0, ∞)"))
            row.update({q: iv.mean, f"{q}_lo": iv.lo, f"{q}_hi": iv.hi})
        iv = within_support(t_interval([c["between"] / c["total"] for c in comps if c["total"] > 0]), 0.0, 1.0)
        row.update(share=iv.mean, share_lo=iv.lo, share_hi=iv.hi)
        row["verdict"] = ("t dominates" if iv.lo > 0.5 else "mask dominates" if iv.hi < 0.5 else "inconclusive")
        rows.append(row)
    return pd.DataFrame(rows)


def gradient_summary(df):
    """Per gradient_variance cell: trace of the gradient covariance, squared bias, cosines to the
    exact ELBO gradient (and bias/cosine to the exact ∇ log p), intervals over items (chi-square for
    traces and squared biases, Student-t cut to [-1, 1] for cosines); the
    measured NFE per estimator call (the unit's NFE minus the 2^L − 1 exact passes, over R_g)."""
    import pandas as pd

    gv = _ok(df, "gradient_variance")
    rows = []
    for cell, g in gv.groupby("cell_id", sort=False):
        R = g["estimate.R"].astype(int)
        exact_passes = (2 ** g["estimate.length"].astype(int) - 1)
        nfe_call = float((g["cost.nfe"].sum() - exact_passes.sum()) / R.sum())
        row = {"cell_id": cell, "study": g["study"].iloc[0], "estimator": g["component.name"].iloc[0],
               "n_items": len(g), "R_g": int(R.min()), "nfe": nfe_call}
        rel = g["estimate.trace_cov"].astype(float) / g["estimate.g_star_norm"].astype(float) ** 2
        for q, values in (("trace_cov", g["estimate.trace_cov"]), ("rel_trace", rel),
                          ("bias_sq", g["estimate.bias_sq"]), ("cos_mean", g["estimate.cos_mean"]),
                          ("mean_cos", g["estimate.mean_cos"]),
                          ("cos_mean_log_p", g.get("estimate.cos_mean_log_p", g["estimate.cos_mean"] * math.nan)),
                          ("trace_x_nfe", g["estimate.trace_cov"].astype(float) * nfe_call)):
            x = np.asarray(values, float)
            iv = (within_support(t_interval(x), -1.0, 1.0) if q.startswith(("cos", "mean_cos")) else
                  nonnegative_mean_interval(x[~np.isnan(x)]))
            row.update({q: iv.mean, f"{q}_lo": iv.lo, f"{q}_hi": iv.hi})
        row["g_star_norm"] = float(g["estimate.g_star_norm"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def coupled_vs_independent(df, seed: int, n_boot: int = 2000):
    """Every unbiased ELBO estimator with complementary masks (declared `masks: complementary`,
    `elbo_target`: e.g. `coupled` without the full-mask pass at scale elbo, `complementary_elbo`)
    against every unbiased one with independent masks (e.g. `mc_elbo` under each t-law) at the
    same measured NFE: the ratio of mean per-item variances with a two-level bootstrap interval.
    Ratio < 1: coupling lowers the variance at equal cost. `t_law` is the independent cell's
    t-law parameter where it has one."""
    import pandas as pd

    ev = _ok(df, "estimator_variance")
    if ev.empty:
        return pd.DataFrame()
    nfe = ev.groupby("cell_id")["cost.nfe"].mean().round().astype(int)
    groups = dict(tuple(ev.groupby("cell_id", sort=False)))
    kind = {c: declared(g, "masks") if declared(g, "elbo_target") else None for c, g in groups.items()}
    rows = []
    for c in (c for c in groups if kind[c] == "complementary"):
        for m in (m for m in groups if kind[m] == "independent" and nfe[m] == nfe[c]):
            a, b = _paired_values(ev, c, m)
            if len(a) < 2:
                continue
            res = variance_ratio(a, b, seed=seed, n_boot=n_boot)
            rows.append({"nfe": int(nfe[c]), "coupled": c, "independent": m,
                         "t_law": _param(groups[m], "t_law"), **res})
    return pd.DataFrame(rows)


def _param(rows, name: str):
    """A cell's parameter `name` (None where its estimator has none)."""
    col = f"component.params.{name}"
    v = rows[col].iloc[0] if col in rows.columns else None
    return None if _missing(v) else v


def _paired_values(ev, cell_a: str, cell_b: str):
    """Replicate arrays of two cells on their shared items (same order)."""
    A = {i: _values(g) for i, g in ev[ev["cell_id"] == cell_a].groupby("item_hash")}
    B = {i: _values(g) for i, g in ev[ev["cell_id"] == cell_b].groupby("item_hash")}
    shared = [i for i in A if i in B and len(A[i]) > 1 and len(B[i]) > 1]
    return [A[i] for i in shared], [B[i] for i in shared]
