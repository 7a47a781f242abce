"""Leaderboard ranking and ties on hand-made records."""
from __future__ import annotations

import math

from harness.report.leaderboard import leaderboard, render_leaderboard


def recs(cell: str, values, metric: str = "accuracy", replicates: int = 1, study: str | None = None):
    out = []
    for rep in range(replicates):
        for i, v in enumerate(values):
            out.append({"cell_id": cell, "study": study or cell, "kind": "generate", "status": "ok",
                        "component": {"kind": "sampler", "name": f"s_{cell}", "params": {"k": 1}},
                        "item_id": f"i{i}", "replicate": rep, "seed": hash((cell, i, rep)) % 1000,
                        "outcome": {"metric": metric, "value": float(v)}})
    return out


def test_clear_winner_alone_and_identical_cells_tied():
    n = 200
    best = [1] * n
    mid = [1 if i % 2 else 0 for i in range(n)]
    records = recs("mid_a", mid) + recs("best", best) + recs("mid_b", mid)
    rows = leaderboard(records, {"accuracy": "higher"})
    assert [r["cell"] for r in rows] == ["best", "mid_a", "mid_b"]
    assert rows[0]["rank_label"] == "1" and not rows[0]["tied"]
    assert not rows[1]["tied"] and rows[1]["p_holm"] < 0.05 and "McNemar" in rows[1]["test"]
    assert rows[1]["rank_label"] == "=2" and rows[2]["rank_label"] == "=2" and rows[2]["tied"]
    assert rows[2]["p"] == 1.0 and rows[2]["overlap"]
    assert all(r["n"] == n for r in rows)
    assert math.isclose(rows[1]["mean"], 0.5)


def test_lower_is_better_and_replicates_averaged_per_item():
    n = 40
    low = [0.1 + 0.01 * (i % 3) for i in range(n)]
    high = [2.0 + 0.01 * (i % 5) for i in range(n)]
    records = recs("high", high, metric="loss", replicates=3) + recs("low", low, metric="loss", replicates=3)
    rows = leaderboard(records, {"loss": "lower"})
    assert [r["cell"] for r in rows] == ["low", "high"]
    assert [r["rank_label"] for r in rows] == ["1", "2"]
    assert rows[1]["test"] == "sign-flip permutation" and rows[1]["n_pairs"] == n
    assert rows[0]["n"] == n and rows[0]["units"] == 3 * n  # clustered by item


def test_overlapping_intervals_tie_even_when_the_paired_test_rejects():
    # b is a tiny bit below a on every item: the paired test rejects, but the intervals overlap.
    n = 30
    a = [float(i) for i in range(n)]
    b = [x - 0.01 for x in a]
    rows = leaderboard(recs("a", a, metric="score") + recs("b", b, metric="score"), {"score": "higher"})
    assert rows[1]["p_holm"] < 0.05 and rows[1]["overlap"] and rows[1]["tied"]
    assert [r["rank_label"] for r in rows] == ["=1", "=1"]


def test_only_preregistered_metrics_and_the_markdown_table():
    records = recs("x", [1, 0, 1, 1]) + recs("e", [-1.5, -2.0], metric="elbo")
    assert [r["cell"] for r in leaderboard(records, {"accuracy": "higher"})] == ["x"]
    md = render_leaderboard(records, {"accuracy": "higher"})
    assert md.startswith("## Leaderboard")
    assert "| rank | cells | sampler | knobs | accuracy [95% CI] | n | vs the group above (paired test) |" in md
    assert "| 1 | `x` |" in md and "`e`" not in md
    assert render_leaderboard(records, {"bleu": "higher"}) == ""  # no empty section


def test_cells_on_different_tasks_are_ranked_on_separate_boards():
    """Item ids repeat across tasks: a cell on another task is never paired or ranked with these."""
    n = 100
    a16 = {"name": "addition", "params": {"canvas": 16}, "split": "test"}
    a0 = {"name": "addition", "params": {"canvas": 0}, "split": "test"}
    records = [{**r, "task": a16} for r in recs("x16", [1] * n) + recs("y16", [0] * n)]
    records += [{**r, "task": a0} for r in recs("x0", [1 if i % 2 else 0 for i in range(n)])]
    rows = leaderboard(records, {"accuracy": "higher"})
    boards = {r["cell"]: r["board"] for r in rows}
    assert boards["x16"] == boards["y16"] != boards["x0"]
    x0 = next(r for r in rows if r["cell"] == "x0")
    assert x0["rank"] == 1 and x0["n_pairs"] == 0  # alone on its board: compared with nothing
    md = render_leaderboard(records, {"accuracy": "higher"})
    assert "on `addition` (canvas=16)" in md and "on `addition` (canvas=0)" in md


def test_tied_cells_collapse_into_one_group_row_with_a_detectable_effect():
    n = 50
    same = [1 if i % 3 else 0 for i in range(n)]
    records = []
    for c, steps in (("a", 4), ("b", 8), ("c", 16)):
        for r in recs(c, same):
            records.append({**r, "component": {"kind": "sampler", "name": "low_confidence",
                                               "params": {"steps": steps, "temperature": 0.0}}})
    records += recs("worst", [0] * n)
    md = render_leaderboard(records, {"accuracy": "higher"})
    assert "| 1–3 | 3 tied cells | low_confidence | see below |" in md
    assert md.count("`a`") == 1 and "(steps=4)" in md  # the swept knob, not the shared default temperature
    assert "temperature" not in md
    line = next(x for x in md.splitlines() if x.startswith("- Ranks 1–3"))
    assert "indistinguishable at α = 0.05" in line and "with 50 items a difference below about" in line
    assert "| 4 | `worst` |" in md and "McNemar" in md


def test_rl_training_runs_are_not_ranked_as_cells():
    """An rl cell is one training run (one seed): ranking seeds would rank noise, so the leaderboard
    leaves rl records to the RL section, which ranks algorithms over runs."""
    runs = []
    for seed in range(3):
        for r in recs(f"rl[name=a,seed={seed}]", [1, 0, 1, 1]):
            runs.append({**r, "kind": "rl", "study": "rl"})
    rows = leaderboard(recs("gen", [1, 1, 0, 1]) + runs, {"accuracy": "higher"})
    assert [r["cell"] for r in rows] == ["gen"]
    assert "ranks their algorithms over runs" in render_leaderboard(recs("gen", [1, 1, 0, 1]) + runs)
