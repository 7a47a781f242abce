"""AUP as d3LLM defines it (harness/stats/aup.py), and the sampler section's TPF column and AUP line."""
from __future__ import annotations

import math

import pytest

from harness.report.samplers import cell_summaries, render_samplers_section
from harness.stats.aup import aup, weight


def test_aup_by_hand():
    # d3LLM's Fast-dLLM-LLaDA pair on GSM8K-CoT (data_llada.yaml), y_max 74.98 (that task's best)
    pts = [(2.77, 74.68), (1.0, 74.79)]
    w0, w1 = math.exp(-3 * (1 - 74.79 / 74.98)), math.exp(-3 * (1 - 74.68 / 74.98))
    want = 1.0 * 74.79 + 0.5 * (2.77 - 1.0) * (74.68 * w1 + 74.79 * w0)
    got, dropped = aup(pts, 74.98)
    assert math.isclose(got, want) and dropped == 0
    assert weight(80.0, 75.0) == 1.0  # above y_max: no penalty
    # a point more than 5 accuracy points below the lowest-TPF accuracy is left out
    got2, dropped2 = aup([(1.0, 74.79), (2.77, 74.68), (6.0, 60.0)], 74.98)
    assert dropped2 == 1 and math.isclose(got2, want)
    with pytest.raises(ValueError):
        aup([(0.0, 50.0)], 50.0)


def _recs(cell, name, params, correct, nfe, gen_len=8):
    return [{"cell_id": cell, "study": cell, "kind": "generate", "status": "ok", "replicate": 0, "item_id": f"i{i}",
             "task": {"name": "addition"}, "model": {"name": "tiny", "params": {}},
             "component": {"kind": "sampler", "name": name, "params": params},
             "outcome": {"metric": "accuracy", "value": float(c), "protocol": "harness"},
             "cost": {"nfe": nfe, "nfe_full": nfe, "nfe_cached": 0.0, "wall_s": 0.1},
             "generation": {"gen_len": gen_len, "commit_step": list(range(gen_len))}} for i, c in enumerate(correct)]


def test_sampler_section_reports_tpf_and_aup():
    records = (_recs("lc8", "low_confidence", {"steps": 8}, [1, 1, 1, 0], 8)
               + _recs("lc4", "low_confidence", {"steps": 4}, [1, 1, 0, 0], 4))
    rows = {r["cell"]: r for r in cell_summaries(records)}
    assert rows["lc8"]["tpf"] == 1.0 and rows["lc4"]["tpf"] == 2.0  # 8 generated tokens over 8 and 4 passes
    md = render_samplers_section(None, None, records=records)
    assert "| TPF |" in md and "| 2.00 |" in md
    score, _ = aup([(1.0, 75.0), (2.0, 50.0)], 75.0)
    assert "AUP on addition (tiny)" in md and f"`low_confidence` {score:.1f} (2 points" in md
