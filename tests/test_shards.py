"""Cells across jobs: `run --shard i/N`, `--cells`, `--run-id`, `status` (one process per job, CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness import distributed
from harness.cli import main
from harness.config import load_suite, plan
from harness.lock import RunLock, is_held, running_parts
from harness.records import read_manifest, read_records
from harness.runner import Runner
from harness.studies import STUDIES
from harness.types import HarnessError
from tests.helpers import ROOT, write_suite
from tests.test_distributed import SUITE
from tests.test_runner import stable


@pytest.fixture()
def suite(tmp_path, tiny_ckpt):
    return write_suite(tmp_path, SUITE.format(ckpt=tiny_ckpt), "dist.yaml")


@pytest.fixture()
def single(tmp_path, suite):
    return read_records(Runner(suite, results=tmp_path / "single", progress=False).run(), latest=False)


def _order(records):
    return [(r["cell_id"], r["item_id"], r["replicate"]) for r in records]


def test_parse_shard_and_select_errors(suite):
    assert distributed.parse_shard("1/4") == (1, 4) and distributed.parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("4/4", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(HarnessError, match="--shard"):
            distributed.parse_shard(bad)
    cells = plan(load_suite(suite))
    with pytest.raises(HarnessError, match=r"--cells 'nope\*': matches no cell .*gen"):
        distributed.select(cells, STUDIES, None, "nope*")
    assert [c.id for c in distributed.select(cells, STUDIES, None, "ll*")] == ["ll[t_law=iid]", "ll[t_law=antithetic]"]


def test_balance_is_deterministic_longest_first():
    costs = [5.0, 1.0, 4.0, 3.0, 3.0, 2.0]
    owner = distributed.balance(costs, 2)
    assert owner == distributed.balance(costs, 2)
    loads = [sum(c for c, o in zip(costs, owner) if o == k) for k in range(2)]
    assert sorted(loads) == [9.0, 9.0]  # LPT: 5,4 to different bins, then 3,3,2,1 fill the lighter
    assert distributed.balance([1.0, 1.0, 1.0], 5) == [0, 1, 2]  # ties: plan order, lowest bin


def test_shards_partition_the_cells_by_cost(suite):
    cells = plan(load_suite(suite))
    for n in (1, 2, 3, 5):
        parts = [distributed.select(cells, STUDIES, (i, n), None) for i in range(n)]
        ids = [c.id for p in parts for c in p]
        assert sorted(ids) == sorted(c.id for c in cells) and len(ids) == len(set(ids))
        for p in parts:  # plan order kept inside a shard
            assert [c.id for c in p] == [c.id for c in cells if c in p]
    # generate (14 units x its sampler's passes) outweighs each likelihood cell (7 units x n_mc)
    costs = {c.id: distributed.planned_cost(c, STUDIES[c.kind]) for c in cells}
    assert costs["gen"] > costs["ll[t_law=iid]"] == costs["ll[t_law=antithetic]"]
    assert [c.id for c in distributed.select(cells, STUDIES, (0, 2), None)] == ["gen"]


def test_small_cells_run_whole_on_one_rank(suite):
    cells = plan(load_suite(suite))  # gen: 14 units, batch 3; ll: 7 units, batch 4
    assert distributed.place(cells, STUDIES, 1) == {c.id: None for c in cells}
    placed = distributed.place(cells, STUDIES, 2)
    assert placed["gen"] is None  # 14 units give both ranks full batches: split
    assert sorted([placed["ll[t_law=iid]"], placed["ll[t_law=antithetic]"]]) == [0, 1]  # one small cell per rank
    eight = distributed.place(cells, STUDIES, 8)  # gen: 14 units < 8 ranks x 3: whole too, each on its own rank
    assert all(v is not None for v in eight.values()) and len(set(eight.values())) == 3


def test_two_shards_write_the_single_process_records(tmp_path, suite, single, capsys):
    for i in (1, 0):  # any order
        r = Runner(suite, results=tmp_path / "sh", progress=False, shard=f"{i}/2", run_id="job1")
        run_dir = r.run()
        assert r.part_status == "complete"
        assert r.manifest["status"] == ("incomplete" if i == 1 else "complete")
    merged = read_records(run_dir, latest=False)
    assert _order(merged) == _order(single) and stable(merged) == stable(single)
    m = read_manifest(run_dir)
    assert sorted(m["parts"]) == ["shard-0-of-2", "shard-1-of-2"]
    assert m["parts"]["shard-0-of-2"]["cells"] == ["gen"] and not list(run_dir.glob("records.*.jsonl"))
    assert [s["status"] for s in m["cell_status"]] == ["done"] * 3
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "gen" in out and "3 done, 0 running, 0 failed, 0 missing" in out


def _job(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "tests.dist_worker", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.slow
def test_concurrent_jobs_and_a_dead_one_resumed(tmp_path, suite, single, capsys):
    res = str(tmp_path / "jobs")
    # two jobs at once into one run directory; job 0 dies writing its 5th record (a torn line)
    jobs = [_job(["run", str(suite), "--results", res, "--run-id", "arr", "--shard", f"{i}/2", "--no-progress"],
                 env={"DLM_TEST_KILL_RANK": "0", "DLM_TEST_KILL_AFTER": "5"} if i == 0 else None) for i in (0, 1)]
    outs = [j.communicate(timeout=120) for j in jobs]
    assert jobs[0].returncode == 3 and jobs[1].returncode == 0, outs[1][1][-3000:]
    run_dir = tmp_path / "jobs" / "dist" / "arr"
    # job 1 ended after job 0 died (its flock went with it): job 1 merged job 0's 4 whole records too,
    # or job 0's part is still on disk; either way nothing is lost and status names the missing cell
    m = read_manifest(run_dir)
    assert m["status"] in ("incomplete", "running") and m["parts"]["shard-1-of-2"]["status"] == "complete"
    assert running_parts(run_dir) == [] and not is_held(run_dir)
    assert main(["status", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "gen " in out and "missing" in out.split("gen", 1)[1].splitlines()[0]
    assert "part shard-0-of-2: stopped without finishing" in out and "part shard-1-of-2: complete" in out
    # the dead job, run again, finishes only what is missing
    again = _job(["run", str(suite), "--results", res, "--run-id", "arr", "--shard", "0/2", "--no-progress"])
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err[-3000:]
    merged = read_records(run_dir, latest=False)
    assert _order(merged) == _order(single) and stable(merged) == stable(single)  # none lost, none twice
    assert read_manifest(run_dir)["status"] == "complete" and not list(run_dir.glob("records.*.jsonl"))


def test_one_part_at_a_time_and_no_whole_resume_while_parts_run(tmp_path, suite, capsys):
    r = Runner(suite, results=tmp_path / "p", progress=False, cells="gen", run_id="x")
    run_dir = r.run()
    assert r.part_status == "complete" and r.manifest["status"] == "incomplete"
    part = distributed.part_name(None, "gen")
    with RunLock(run_dir, "test", part=part):  # as if that part were running elsewhere
        assert running_parts(run_dir) == [part]
        with pytest.raises(HarnessError, match=f"part {part} of this run"):
            Runner(suite, results=tmp_path / "p", progress=False, cells="gen", run_id="x")
        with pytest.raises(HarnessError, match="parts of this run are running"):
            Runner(suite, results=tmp_path / "p", progress=False, resume=run_dir)
    # status: a part whose lock is held shows its cells running; cells no part has are missing
    m = read_manifest(run_dir)
    m["parts"]["other"] = {"cells": ["ll[t_law=iid]"], "status": "running"}
    (run_dir / "manifest.json").write_text(json.dumps(m))
    with RunLock(run_dir, "test", part="other"):
        assert main(["status", str(run_dir)]) == 1
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:4]}
    assert rows == {"gen": "done", "ll[t_law=iid]": "running", "ll[t_law=antithetic]": "missing"}
    # the whole run resumed later runs only the cells no part ran
    whole = Runner(suite, results=tmp_path / "p", progress=False, resume=run_dir)
    whole.run()
    assert whole.manifest["status"] == "complete"
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"


def test_run_id_is_a_safe_name(tmp_path, suite):
    with pytest.raises(HarnessError, match="--run-id"):
        Runner(suite, results=tmp_path / "p", progress=False, shard="0/2", run_id="../escape")
