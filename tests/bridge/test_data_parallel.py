"""lm-eval's own data parallelism through the bridge: 2 torchrun ranks on CPU (gloo) give the same
per-sample results as one process, each document evaluated once, by the rank lm-eval assigned it;
`dlm-harness eval` under torchrun writes one harness run (rank 0) holding every document."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"
LIMIT = 5  # odd: rank 1 gets 2 documents to rank 0's 3, so lm-eval pads rank 1 with a copy
# Sampling at temperature 1, so every generation depends on its request's seed.
LM_EVAL = ["--model", "dlm-harness", "--include_path", "harness/tasks/lm_eval", "--tasks", "dlmh_countdown3",
           "--limit", str(LIMIT), "--gen_kwargs", "do_sample=true,temperature=1.0", "--log_samples"]


def _need() -> None:
    from harness.tasks.data import data_dir

    if not (data_dir() / "countdown" / "cd3_test.jsonl").is_file():
        pytest.skip(f"offline data file countdown/cd3_test.jsonl absent under {data_dir()} (set DLM_HARNESS_DATA)")
    if not TORCHRUN.is_file():
        pytest.skip(f"{TORCHRUN} missing (torch's launcher is needed for the 2-rank run)")


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _torchrun(*args: str) -> list[str]:
    return [str(TORCHRUN), "--standalone", "--nproc_per_node=2", *args]


def _lm_eval(tmp: Path, name: str, ranks: int) -> tuple[dict, list[dict]]:
    side = tmp / f"{name}_side.jsonl"
    args = ["-m", "harness.bridge", *LM_EVAL, "--model_args", f"model=tiny,sampler=low_confidence,records={side}",
            "--output_path", str(tmp / name)]
    _run(_torchrun(*args) if ranks > 1 else [sys.executable, *args])
    files = list((tmp / name).rglob("samples_dlmh_countdown3_*.jsonl"))
    assert len(files) == 1, f"expected one samples file from rank 0, got {files}"
    rows = [json.loads(line) for line in files[0].read_text().splitlines() if line]
    ids = [r["doc_id"] for r in rows]
    assert sorted(ids) == list(range(LIMIT)), f"each document exactly once, got doc_ids {ids}"
    return {r["doc_id"]: r for r in rows}, [json.loads(line) for line in side.read_text().splitlines() if line]


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    _need()
    one, _ = _lm_eval(tmp_path, "single", 1)
    two, side = _lm_eval(tmp_path, "dp2", 2)
    assert len({r["resps"][0][0] for r in one.values()}) > 1, "generations should differ between documents"
    for doc_id, ref in one.items():
        got = two[doc_id]
        assert got["filtered_resps"] == ref["filtered_resps"], doc_id
        assert got["accuracy"] == ref["accuracy"], doc_id
        assert got["doc_hash"] == ref["doc_hash"] and got["prompt_hash"] == ref["prompt_hash"], doc_id
        # lm-eval's padding copy (on the shorter rank) is answered with the request's own generation
        # and appended to its resps; the first answer is the single-process one.
        for got_r, ref_r in zip(got["resps"], ref["resps"], strict=True):
            assert got_r[:len(ref_r)] == ref_r and set(got_r) == set(ref_r), (doc_id, got_r, ref_r)
    # The bridge ran each document once (padding not recomputed), on the rank lm-eval sharded it to.
    gens = [r for r in side if r["type"] == "generate_until"]
    assert sorted((r["doc_id"], r["rank"]) for r in gens) == [(d, d % 2) for d in range(LIMIT)]
    assert sum(r["type"] == "settings" for r in side) == 2, "one settings record per rank"


def _eval_run(results: Path, ranks: int) -> tuple[dict, dict, list[dict]]:
    args = ["-m", "harness.cli", "eval", "--tasks", "countdown3", "--limit", str(LIMIT), "--results", str(results)]
    _run(_torchrun(*args) if ranks > 1 else [sys.executable, *args])
    runs = [p for p in (results / "lm-eval").iterdir() if p.is_dir()]
    assert len(runs) == 1, f"expected one harness run, got {runs}"
    run = runs[0]
    assert not list(run.glob("side_records.rank*.jsonl")), "rank side records are merged into rank 0's file"
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines() if line]
    ids = sorted(int(r["item_id"]) for r in records)
    assert ids == list(range(LIMIT)), f"each document exactly once, got {ids}"
    side = [json.loads(line) for line in (run / "side_records.jsonl").read_text().splitlines() if line]
    return json.loads((run / "manifest.json").read_text()), {r["item_id"]: r for r in records}, side


@pytest.mark.slow
def test_dlm_harness_eval_under_torchrun_writes_one_run(tmp_path):
    _need()
    _, one, _ = _eval_run(tmp_path / "single", 1)
    manifest, two, side = _eval_run(tmp_path / "dp2", 2)
    assert (manifest["status"], manifest["world_size"], manifest["n_records"]) == ("complete", 2, LIMIT)
    for item, ref in one.items():
        got = two[item]
        assert (got["generation"], got["outcome"], got["seed"]) == (ref["generation"], ref["outcome"], ref["seed"])
        assert got["cost"]["nfe"] == ref["cost"]["nfe"] > 0, "rank 1's costs are gathered to rank 0"
    gens = sorted((r["doc_id"], r["rank"]) for r in side if r["type"] == "generate_until")
    assert gens == [(d, d % 2) for d in range(LIMIT)]
    assert sum(r["type"] == "settings" for r in side) == 1, "rank 1's duplicate settings record is dropped"


@pytest.mark.parametrize("world", [1, 2])
def test_padding_copies_are_answered_not_recomputed(monkeypatch, world):
    """lm-eval pads a shorter rank by repeating its last request past its `repeats`: with 2 ranks the
    copy gets the original's answer without a second model call; one process serves every request."""
    from lm_eval.api.instance import Instance

    from harness.bridge.lm_eval import DLMHarnessLM

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world))
    lm = DLMHarnessLM(model="tiny", n_mc=2, batch_size=4)
    a, b = (Instance(request_type="loglikelihood", doc={}, arguments=("12", c), idx=0, metadata=("t", d, 1))
            for d, c in ((0, "3"), (1, "45")))
    served = []
    score = lm.engine.score
    monkeypatch.setattr(lm.engine, "score", lambda items, **kw: served.extend(items) or score(items, **kw))
    out = lm.loglikelihood([a, b, b])
    assert len(out) == 3 and out[0] != out[1]
    if world == 2:
        assert out[2] == out[1] and [r.doc_id for *_, r in served] == [0, 1]
    else:  # a second occurrence is repeat 1 of the request: its own seed
        assert [(r.doc_id, r.repeat) for *_, r in served] == [(0, 0), (1, 0), (1, 1)]
