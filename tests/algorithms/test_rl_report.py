"""The RL report over training runs, on synthetic records with known per-run accuracies: every run
shown, intervals and tests over runs (none from fewer than 3 runs), the pooled between-run SD, Holm,
the training-run MDE, the calibration pair, ranks over seeds, and no curve through two points."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness.report import rl
from harness.stats.seeds import pooled_run_sd, ranks_over_seeds, run_contrast, run_mde

N_ITEMS = 20
START = [1.0] * 8 + [0.0] * 12  # the starting checkpoint: 0.40 on the held-out items
# correct items per run (out of 20), by algorithm and seed
CORRECT = {"diffu_grpo": {0: 10, 1: 11, 2: 12}, "grpo": {0: 11, 1: 10, 2: 12}, "uni_grpo": {0: 15, 1: 16, 2: 17}}


def _records(correct=CORRECT, steps=(1, 2, 3), eval_at=(2, 3)):
    recs = []
    for name, by_seed in correct.items():
        for seed, k in by_seed.items():
            base = {"kind": "rl", "status": "ok", "component": {"name": name}, "point": {"seed": seed}}
            for i in range(N_ITEMS):
                acc = 1.0 if i < k else 0.0
                recs.append({**base, "item_id": f"t{i}", "outcome": {"metric": "accuracy", "value": acc}})
                recs.append({**base, "item_id": f"start/t{i}",
                             "outcome": {"metric": "start_accuracy", "value": START[i]}})
            for st in steps:
                log = {"step": st, "reward_mean": 0.1 * st + 0.01 * seed, "cum_nfe": 100 * st, "cum_flops": 1e9 * st,
                       "cum_rollout_nfe": 80 * st, "cum_likelihood_nfe": 20 * st}
                if st in eval_at:
                    log["heldout_accuracy"] = k / N_ITEMS
                recs.append({**base, "item_id": f"step-{st:04d}", "outcome": {"metric": "train_reward",
                                                                              "value": log["reward_mean"]},
                             "estimate": log})
    return recs


MANIFEST = {"cells": [{"kind": "rl", "component": {"name": "diffu_grpo"},
                       "options": {"baseline": "diffu_grpo", "calibration": ["grpo", "diffu_grpo"]}}]}


def test_runs_intervals_and_contrasts_are_over_training_runs():
    text = rl.render_section(_records(), manifest=MANIFEST)
    acc = {n: [k / N_ITEMS for k in by.values()] for n, by in CORRECT.items()}
    # every run shown, and the t interval over the 3 runs
    assert "| uni_grpo | 3 (0, 1, 2) | 0.750, 0.800, 0.850 |" in text
    x = np.array(acc["uni_grpo"])
    half = stats.t.ppf(0.975, 2) * x.std(ddof=1) / math.sqrt(3)
    assert f"{x.mean():.3f} [{x.mean() - half:.3f}, {x.mean() + half:.3f}]" in text
    gain = x - 0.4
    p_gain = stats.ttest_1samp(gain, 0.0).pvalue
    assert f"| {p_gain:.3g} |" in text
    # contrast vs the baseline: pooled SD over the three algorithms, df 6, Holm over two comparisons
    sd, df = pooled_run_sd(acc)
    assert df == 6 and sd == pytest.approx(math.sqrt(sum(((np.array(v) - np.mean(v)) ** 2).sum()
                                                         for v in acc.values()) / 6))
    c = run_contrast(acc["uni_grpo"], acc["diffu_grpo"], sd=sd, df=df)
    se = sd * math.sqrt(2 / 3)
    assert c.p == pytest.approx(2 * stats.t.sf(abs(0.25) / se, 6))
    assert c.mde == pytest.approx((stats.t.ppf(0.975, 6) + stats.t.ppf(0.8, 6)) * se)
    assert f"{c.fmt(3)} | {c.p:.3g} |" in text and "beats diffu_grpo" in text
    assert "with 3 runs per algorithm, the smallest true difference" in text and f"is {c.mde:.3f}" in text
    # the calibration pair: one objective, their difference is training noise
    assert "**Calibration (training noise)**: `grpo` and `diffu_grpo` are one objective" in text
    assert "1/20, 1/20, 0/20 held-out items" in text


def test_fewer_than_three_runs_show_the_runs_and_no_interval():
    two = {n: {s: k for s, k in by.items() if s < 2} for n, by in CORRECT.items()}
    text = rl.render_section(_records(two), manifest=MANIFEST)
    assert "| uni_grpo | 2 (0, 1) | 0.750, 0.800 | 0.775 |" in text
    assert "n/a (< 3 runs)" in text and "not tested" in text and "[" not in text.split("**Against")[1].split("\n")[3]
    heads = rl._headlines(type("Ctx", (), {"memo": lambda self, k, f: f(), "records": _records(two),
                                           "manifest": MANIFEST})())
    assert any("too few runs (< 3) for an interval or a test" in h for h in heads)
    assert any(h.startswith("RL calibration: `grpo` and `diffu_grpo`, one objective") and "no interval" in h
               for h in heads)


def test_headlines_claim_over_training_runs():
    ctx = type("Ctx", (), {"memo": lambda self, k, f: f(), "records": _records(), "manifest": MANIFEST})()
    heads = rl._headlines(ctx)
    assert any(h.startswith("RL: `uni_grpo` moves held-out accuracy 0.400 → 0.800 over 3 training runs") for h in heads)
    last = heads[-1]
    assert last.startswith("RL against `diffu_grpo` over training runs (t-test contrast with the pooled "
                           "between-run SD, Holm): uni_grpo significantly better; none significantly worse; "
                           "with 3 runs each the smallest difference detectable")


def test_ranks_over_seeds():
    r = ranks_over_seeds({"a": {0: 0.5, 1: 0.7}, "b": {0: 0.6, 1: 0.7}, "c": {0: 0.1}})
    assert r == {"a": [2.0, 1.5], "b": [1.0, 1.5], "c": [3.0]}
    assert math.isnan(run_mde(3, 3, 0.1, 0))


def test_no_curve_through_two_points(tmp_path):
    curves = rl._curves(rl.analyse(_records()))
    made = [stem for stem, _ in rl._figures(curves, tmp_path)]
    # reward is logged at 3 steps (3 NFE points); held-out accuracy at 2: not drawn
    assert made == ["rl_reward_vs_nfe"]
