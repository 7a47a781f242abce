"""Aggregation over training seeds, rliable style (Agarwal et al. 2021, "Deep Reinforcement Learning
at the Edge of the Statistical Precipice", NeurIPS).

- :func:`iqm`: interquartile mean, the mean of the middle 50% of scores
  (``scipy.stats.trim_mean(x, 0.25)``): robust to outlier runs, less noisy than the median.
- :func:`seed_aggregate`: mean (of per-task means) and IQM (of all runs pooled, as rliable does on
  its ``[runs, tasks]`` matrix, so scores should be on a common scale) with **stratified bootstrap**
  percentile intervals: in each resample the runs (seeds) are drawn with replacement *within each
  task*, then aggregated across tasks.
- :func:`probability_of_improvement`: ``P(X > Y)`` averaged over tasks, where for a task
  ``P(X > Y) = (#{x_i > y_j} + 0.5 #{x_i = y_j}) / (n m)`` is the Mann-Whitney ``U`` of ``x``
  divided by ``n m``; interval by the same stratified bootstrap (seeds of X and of Y resampled
  independently within each task).

Every result states its number of seeds. Resampling draws only from ``np.random.default_rng(seed)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import stats

from harness.stats.intervals import Interval


def iqm(values, axis=None) -> float | np.ndarray:
    """Interquartile mean: mean of the values left after trimming 25% from each end.

    ``scipy.stats.trim_mean(x, 0.25)``, which trims ``int(0.25 · n)`` values from each end.
    """
    x = np.asarray(values, dtype=float)
    if axis is None:
        x = x.ravel()
        if len(x) == 0:
            return math.nan
        return float(stats.trim_mean(x, 0.25))
    return stats.trim_mean(x, 0.25, axis=axis)


def _task_arrays(scores: Mapping, what: str) -> dict[str, np.ndarray]:
    if not scores:
        raise ValueError(f"{what}: no tasks")
    out = {}
    for task, v in scores.items():
        a = np.asarray(v, dtype=float).ravel()
        if len(a) == 0:
            raise ValueError(f"{what}: task {task!r} has no seeds")
        out[task] = a
    return out


def _percentile(boot: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class SeedAggregate:
    """Mean and IQM over seeds and tasks, each with a stratified bootstrap interval."""

    mean: Interval  # mean over tasks of the per-task mean over seeds
    iqm: Interval  # IQM of all runs pooled
    n_tasks: int
    n_seeds: int  # seeds per task (the smallest count if tasks differ)
    seeds_per_task: dict
    n_resamples: int

    def fmt(self, digits: int = 3) -> str:
        return (f"mean {self.mean.fmt(digits)}, IQM {self.iqm.fmt(digits)} "
                f"({self.n_tasks} task{'s' * (self.n_tasks != 1)} × {self.n_seeds} seeds)")


def seed_aggregate(scores: Mapping, *, seed, n_resamples: int = 2000, level: float = 0.95) -> SeedAggregate:
    """Mean and IQM of per-seed scores ``{task: [score per seed]}`` with stratified bootstrap intervals.

    Each of ``n_resamples`` resamples draws, for every task separately, as many seeds as the task
    has, with replacement; the aggregate is recomputed and the percentile interval taken (rliable's
    ``StratifiedBootstrap``). ``Interval.n`` is the total number of runs. A single seed per task
    gives NaN limits (nothing to resample).
    """
    arrays = _task_arrays(scores, "seed_aggregate")
    counts = {t: len(a) for t, a in arrays.items()}
    total = sum(counts.values())
    mean_est = float(np.mean([a.mean() for a in arrays.values()]))
    iqm_est = iqm(np.concatenate(list(arrays.values())))
    if max(counts.values()) < 2:
        mlo = mhi = ilo = ihi = math.nan
    else:
        rng = np.random.default_rng(seed)
        boot_mean = np.zeros(n_resamples)
        pooled = []
        for a in arrays.values():
            res = a[rng.integers(0, len(a), size=(n_resamples, len(a)))]
            boot_mean += res.mean(1) / len(arrays)
            pooled.append(res)
        boot_iqm = stats.trim_mean(np.concatenate(pooled, axis=1), 0.25, axis=1)
        (mlo, mhi), (ilo, ihi) = _percentile(boot_mean, level), _percentile(boot_iqm, level)
    method = "stratified bootstrap over seeds"
    return SeedAggregate(Interval(mean_est, mlo, mhi, total, method), Interval(iqm_est, ilo, ihi, total, method),
                         len(arrays), min(counts.values()), counts, n_resamples)


@dataclass(frozen=True)
class ProbabilityOfImprovement:
    """Average over tasks of P(X > Y) + 0.5 P(X = Y), with a stratified bootstrap interval."""

    interval: Interval  # .mean is the estimate; .n the total number of runs (X and Y)
    per_task: dict
    n_tasks: int
    n_seeds_x: int  # seeds per task for X (smallest count if tasks differ)
    n_seeds_y: int
    n_resamples: int

    @property
    def estimate(self) -> float:
        return self.interval.mean

    def fmt(self, digits: int = 3) -> str:
        return (f"P(X>Y) {self.interval.fmt(digits)} ({self.n_tasks} tasks; "
                f"{self.n_seeds_x} vs {self.n_seeds_y} seeds)")


def _prob_greater(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + 0.5 P(X = Y) over all pairs along the last axes: x[..., n], y[..., m]."""
    gt = (x[..., :, None] > y[..., None, :]).mean((-2, -1))
    eq = (x[..., :, None] == y[..., None, :]).mean((-2, -1))
    return gt + 0.5 * eq


def probability_of_improvement(x_by_task: Mapping, y_by_task: Mapping, *, seed, n_resamples: int = 2000,
                               level: float = 0.95) -> ProbabilityOfImprovement:
    """Probability that a run of X beats a run of Y, averaged over tasks (Agarwal et al. 2021).

    Per task: Mann-Whitney ``U_x / (n m)`` = ``P(X > Y) + 0.5 P(X = Y)`` over all seed pairs. The
    interval is the percentile interval of a stratified bootstrap that resamples X's seeds and Y's
    seeds independently within each task. Both maps must have the same tasks.
    """
    xs = _task_arrays(x_by_task, "probability_of_improvement (x)")
    ys = _task_arrays(y_by_task, "probability_of_improvement (y)")
    if set(xs) != set(ys):
        raise ValueError(f"tasks differ: only in x {sorted(map(str, set(xs) - set(ys)))}, "
                         f"only in y {sorted(map(str, set(ys) - set(xs)))}")
    tasks = list(xs)
    per_task = {t: float(_prob_greater(xs[t], ys[t])) for t in tasks}
    est = float(np.mean(list(per_task.values())))
    if all(len(xs[t]) < 2 and len(ys[t]) < 2 for t in tasks):
        lo = hi = math.nan
    else:
        rng = np.random.default_rng(seed)
        boot = np.zeros(n_resamples)
        for t in tasks:
            x, y = xs[t], ys[t]
            xr = x[rng.integers(0, len(x), size=(n_resamples, len(x)))]
            yr = y[rng.integers(0, len(y), size=(n_resamples, len(y)))]
            boot += _prob_greater(xr, yr) / len(tasks)
        lo, hi = _percentile(boot, level)
    n_runs = sum(len(xs[t]) + len(ys[t]) for t in tasks)
    iv = Interval(est, lo, hi, n_runs, "stratified bootstrap over seeds")
    return ProbabilityOfImprovement(iv, per_task, len(tasks), min(len(xs[t]) for t in tasks),
                                    min(len(ys[t]) for t in tasks), n_resamples)


# -- the training run as the statistical unit ------------------------------------------------------
# An RL algorithm's result is a training run: its held-out accuracy is the mean over the held-out
# items (items nested in the run). Runs of one algorithm differ by training noise (rollouts, masks),
# so claims about algorithms are over runs: intervals and tests below take one value per run, and
# none is given from fewer than MIN_RUNS runs (the runs are shown instead).
MIN_RUNS = 3


def run_interval(values, level: float = 0.95) -> Interval | None:
    """Student-t interval of the mean over training runs; None with fewer than MIN_RUNS runs."""
    x = np.asarray(values, dtype=float)
    if len(x) < MIN_RUNS:
        return None
    m, s = float(x.mean()), float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * s / math.sqrt(len(x))
    return Interval(m, m - half, m + half, len(x), "t over training runs")


def run_mean_test(values) -> float:
    """Two-sided p of a one-sample t-test of mean 0 over runs (e.g. per-run gains); nan below MIN_RUNS."""
    x = np.asarray(values, dtype=float)
    if len(x) < MIN_RUNS:
        return math.nan
    s = float(x.std(ddof=1))
    if s == 0:
        return 0.0 if x.mean() != 0 else 1.0
    t = float(x.mean()) / (s / math.sqrt(len(x)))
    return float(2 * stats.t.sf(abs(t), len(x) - 1))


def pooled_run_sd(groups: Mapping) -> tuple[float, int]:
    """Between-run SD pooled over algorithms, sqrt(Σ_k Σ_s (x_ks − x̄_k)² / Σ_k (n_k − 1)), and its
    degrees of freedom Σ_k (n_k − 1): training noise, assumed common to the algorithms."""
    ss, df = 0.0, 0
    for v in groups.values():
        x = np.asarray(v, dtype=float)
        if len(x) >= 2:
            ss += float(((x - x.mean()) ** 2).sum())
            df += len(x) - 1
    return (math.sqrt(ss / df) if df else math.nan), df


@dataclass(frozen=True)
class RunContrast:
    """mean(a) − mean(b) over training runs, with the pooled between-run SD (t with df of the pool)."""

    diff: float
    lo: float
    hi: float
    p: float
    n_a: int
    n_b: int
    sd: float
    df: int
    mde: float  # smallest true difference detected with probability `power` at level `alpha`

    def fmt(self, digits: int = 3) -> str:
        return f"{self.diff:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"


def run_mde(n_a: int, n_b: int, sd: float, df: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """MDE of a two-sided pooled-SD t contrast between two algorithms' mean over runs:
    (t_{1−α/2, df} + t_{power, df}) · sd · sqrt(1/n_a + 1/n_b)."""
    if df < 1 or not n_a or not n_b or not math.isfinite(sd):
        return math.nan
    q = float(stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df))
    return q * sd * math.sqrt(1 / n_a + 1 / n_b)


def run_contrast(a, b, *, sd: float, df: int, alpha: float = 0.05, power: float = 0.8,
                 level: float = 0.95) -> RunContrast | None:
    """Compare two algorithms over their training runs (a, b: one value per run); None when either
    has fewer than MIN_RUNS runs or the pool has no degrees of freedom."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < MIN_RUNS or len(y) < MIN_RUNS or df < 1 or not math.isfinite(sd):
        return None
    diff = float(x.mean() - y.mean())
    se = sd * math.sqrt(1 / len(x) + 1 / len(y))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df)) if se > 0 else (0.0 if diff else 1.0)
    return RunContrast(diff, diff - half, diff + half, p, len(x), len(y), sd, df,
                       run_mde(len(x), len(y), sd, df, alpha, power))


def ranks_over_seeds(per_seed: Mapping) -> dict:
    """{algorithm: {seed: value}} -> {algorithm: [rank on each seed it ran]}: on every seed run by two
    or more algorithms, rank 1 = highest value (ties share the mean rank)."""
    seeds = sorted({s for v in per_seed.values() for s in v})
    out: dict = {name: [] for name in per_seed}
    for s in seeds:
        names = [n for n in per_seed if s in per_seed[n]]
        if len(names) < 2:
            continue
        r = stats.rankdata([-per_seed[n][s] for n in names])
        for n, k in zip(names, r):
            out[n].append(float(k))
    return out
