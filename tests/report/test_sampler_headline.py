"""The sampler headline answers the study's question: the fastest *other* decoder whose accuracy is
non-inferior to the speed reference within the margin, by Newcombe's paired interval; the reference's
own decoder at a smaller budget is not an answer."""
from __future__ import annotations

from harness.report.samplers import MARGIN, cell_summaries, speedup_headline


def _recs(cell, name, params, correct, wall, nfe):
    return [{"cell_id": cell, "study": cell, "kind": "generate", "status": "ok", "replicate": 0,
             "item_id": f"i{i}", "component": {"kind": "sampler", "name": name, "params": params},
             "outcome": {"metric": "accuracy", "value": float(c), "protocol": "harness"},
             "cost": {"nfe": nfe, "nfe_full": nfe, "nfe_cached": 0.0, "wall_s": wall},
             "generation": {"gen_len": 4, "commit_step": [0, 1, 2, 3]}} for i, c in enumerate(correct)]


def test_fastest_other_decoder_within_the_margin():
    n = 400
    right = [1] * n
    worse = [1 if i % 10 else 0 for i in range(n)]  # 10 points below the reference
    records = (_recs("ref", "low_confidence", {"steps": 16, "temperature": 0.0}, right, 1.0, 16)
               + _recs("lc1", "low_confidence", {"steps": 1, "temperature": 0.0}, right, 0.01, 1)  # same decoder
               + _recs("thr", "threshold", {"tau": 0.5}, worse, 0.02, 2)  # fast but not within the margin
               + _recs("eb", "entropy_bound", {"block_length": 8}, right, 0.1, 3))
    line = speedup_headline(cell_summaries(records))
    assert "speed reference `low_confidence` at steps=16" in line
    assert "`entropy_bound (block_length=8)`" in line and f"non-inferior within {MARGIN:g}" in line
    assert "Newcombe paired" in line and "not tested" in line and "at steps=1," not in line
    none = speedup_headline(cell_summaries([r for r in records if r["cell_id"] != "eb"]))
    assert "no decoder is shown within the margin" in none and "`threshold` at tau=0.5" in none
