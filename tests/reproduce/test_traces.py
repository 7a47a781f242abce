"""`dlm-harness show-sample RUN ITEM`: an item's decoding order, from the commit steps every generate
record stores."""
from __future__ import annotations

import json
from pathlib import Path

from harness.cli import main
from harness.traces import order
from tests.reproduce.test_reproduce import TINY


def test_order_groups_positions_by_step_and_stops_at_gen_len():
    assert order([2, 0, 0, 1, 3], 4) == [(0, [1, 2]), (1, [3]), (2, [0])]


def test_show_sample_prints_the_decoding_order(tmp_path, capsys):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "tiny.yaml").write_text(TINY.replace("steps: 8", "steps: 4"))  # two tokens a step
    assert main(["reproduce", "tiny", "--dir", str(tmp_path / "t"), "--results", str(tmp_path / "r"),
                 "--model-param", "path=null", "--model-param", "preset=tiny", "--model-param", "device=cpu",
                 "--n-items", "2", "--no-progress"]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1]).parent
    rec = next(json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()
               if json.loads(x).get("kind") == "generate")
    assert main(["show-sample", str(run_dir), rec["item_id"]]) == 0
    out = capsys.readouterr().out
    steps = order(rec["generation"]["commit_step"], rec["generation"]["gen_len"])
    assert len(steps) <= 4 and "decoding order" in out
    for s, ps in steps:
        assert f"{s:>4}: {', '.join(map(str, ps))}" in out
    conf = rec["generation"]["commit_conf"]
    committed = [c for c, s in zip(conf, rec["generation"]["commit_step"]) if s >= 0]
    assert committed and all(0 < c <= 1 for c in committed) and "confidence at commit per position" in out
    assert main(["show-sample", str(run_dir), "no-such-item"]) == 2

