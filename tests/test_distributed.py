"""Sharded runs under torchrun (gloo on CPU): slices, budgets, shard merge, resume of a killed rank."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import distributed
from harness.distributed import Dist, ShardWriter, merge, my_slice, read_all, shard_path, share_budget
from harness.records import dedupe, read_lines, read_manifest, read_records
from harness.runner import Runner
from harness.types import Budget
from tests.helpers import ROOT, write_suite
from tests.test_runner import stable

TORCHRUN = Path(sys.executable).with_name("torchrun")

SUITE = """
suite: dist
models:
  tiny: {{name: tiny, params: {{checkpoint: {ckpt}}}}}
tasks:
  add: {{name: addition, params: {{n_digits: 2}}, split: test, n_items: 7}}
studies:
  - id: gen
    kind: generate
    model: tiny
    task: add
    sampler: {{name: low_confidence, params: {{temperature: 1.0}}}}
    batch_size: 3
    replicates: 2
  - id: ll
    kind: likelihood
    model: tiny
    task: add
    estimator: {{name: mc_elbo, params: {{n_mc: 3}}}}
    batch_size: 4
    sweep: {{estimator.params.t_law: [iid, antithetic]}}
"""


def test_slices_cover_every_unit_once():
    for n in (0, 1, 5, 7, 12):
        for world in (1, 2, 3, 4):
            parts = [list(my_slice(n, Dist(rank=k, world_size=world))) for k in range(world)]
            assert sum(parts, []) == list(range(n))  # contiguous, in order, disjoint
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert [list(my_slice(7, Dist(rank=k, world_size=3))) for k in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]


def test_budget_is_split_so_ranks_never_exceed_it():
    b = share_budget(Budget(nfe=101, tokens=10, flops=9.0, wall_s=None), 4)
    assert (b.nfe, b.tokens, b.flops, b.wall_s) == (25, 2, 2.25, None)
    assert share_budget(Budget(nfe=7), 1) == Budget(nfe=7)


def _rec(cell, item, rep, status="ok", tag=0):
    return {"schema_version": 1, "cell_id": cell, "item_id": item, "replicate": rep, "status": status, "tag": tag}


def test_merge_puts_shards_in_single_process_order(tmp_path):
    order = {("a", None, None): 0, ("a", "i0", 0): 1, ("a", "i1", 0): 2, ("a", "i2", 0): 3, ("b", None, None): 4,
             ("b", "i0", 0): 5}
    with ShardWriter(tmp_path, 1) as w:
        w.write(_rec("a", "i2", 0))
        w.write(_rec("b", "step-0001", 0))  # not a unit (an rl step record): before cell b's units
        w.write(_rec("b", "i0", 0, status="error", tag=1))
        w.write(_rec("b", "i0", 0, tag=2))  # a later attempt of the same unit stays after the first
    with ShardWriter(tmp_path, 0) as w:
        w.write(_rec("a", "i1", 0))
        w.write(_rec("a", "i0", 0))
    shard_path(tmp_path, 0).write_text(shard_path(tmp_path, 0).read_text() + '{"schema_version": 1, "cel')  # torn
    assert merge(tmp_path, order) == 6
    # bare records (no study, cost, ...): read them line by line; read_records checks report fields
    got = [(r["cell_id"], r["item_id"], r.get("tag")) for r in read_lines(tmp_path / "records.jsonl")]
    assert got == [("a", "i0", 0), ("a", "i1", 0), ("a", "i2", 0), ("b", "step-0001", 0), ("b", "i0", 1),
                   ("b", "i0", 2)]
    assert not list(tmp_path.glob("records.rank*")) and read_all(tmp_path) == read_lines(tmp_path / "records.jsonl")
    assert [(r["item_id"], r["status"]) for r in dedupe(read_lines(tmp_path / "records.jsonl"))
            if r["cell_id"] == "b"] == \
        [("step-0001", "ok"), ("i0", "ok")]  # the last attempt of i0 wins


def test_shard_writer_repairs_a_torn_tail(tmp_path):
    shard_path(tmp_path, 2).write_text(json.dumps(_rec("a", "i0", 0)) + "\n" + '{"torn')
    with ShardWriter(tmp_path, 2) as w:
        w.write(_rec("a", "i1", 0))
    assert [r["item_id"] for r in distributed.read_lines(shard_path(tmp_path, 2))] == ["i0", "i1"]
    assert (tmp_path / "records.torn").read_text() == '{"torn\n'


def torchrun(args: list[str], module: str = "harness.cli", env: dict | None = None):
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", module, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.fixture()
def dist_suite(tmp_path, tiny_ckpt):
    path = write_suite(tmp_path, SUITE.format(ckpt=tiny_ckpt), "dist.yaml")
    single = read_records(Runner(path, results=tmp_path / "single", progress=False).run(), latest=False)
    assert len(single) == 7 * 2 + 7 * 2 and all(r["status"] == "ok" for r in single)
    return path, single


def _order(records):
    return [(r["cell_id"], r["item_id"], r["replicate"]) for r in records]


@pytest.mark.slow
def test_two_gloo_ranks_merge_into_the_single_process_records(tmp_path, dist_suite):
    path, single = dist_suite
    out = torchrun(["run", str(path), "--results", str(tmp_path / "two"), "--no-progress"])
    assert out.returncode == 0, out.stderr[:6000]
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    merged = read_records(run_dir, latest=False)
    assert _order(merged) == _order(single)  # the order a single-process run writes
    assert stable(merged) == stable(single)  # equal apart from run ids and timings
    m = read_manifest(run_dir)
    assert m["status"] == "complete" and not list(run_dir.glob("records.rank*"))
    assert m["distributed"]["world_size"] == 2 and m["distributed"]["backend"] == "gloo"
    assert [r["rank"] for r in m["distributed"]["ranks"]] == [0, 1]
    assert all(r["device"] == "cpu" for r in m["distributed"]["ranks"])
    # gen (14 units, batch 3) is split over both ranks; each small likelihood cell (7 units, batch 4) runs
    # whole on its own rank
    assert sorted(m["distributed"]["whole_cells"].values()) == [0, 1] and "gen" not in m["distributed"]["whole_cells"]


@pytest.mark.slow
def test_a_killed_rank_resumes_from_its_shard(tmp_path, dist_suite):
    path, single = dist_suite
    # rank 1 owns gen units 7..13 (7 of 14); it dies writing its 5th record, in its second batch of 3
    killed = torchrun(["run", str(path), "--results", str(tmp_path / "k"), "--no-progress"],
                      module="tests.dist_worker", env={"DLM_TEST_KILL_RANK": "1", "DLM_TEST_KILL_AFTER": "5"})
    assert killed.returncode != 0
    (run_dir,) = (tmp_path / "k" / "dist").iterdir()
    assert len(distributed.read_lines(shard_path(run_dir, 1))) == 4  # 4 whole lines, then the tear
    assert not (run_dir / "records.jsonl").exists()
    out = torchrun(["run", str(path), "--resume", str(run_dir), "--no-progress"])
    assert out.returncode == 0, out.stderr[:6000]
    resumed = read_records(run_dir, latest=False)
    assert stable(resumed) == stable(single)  # none lost, none run twice
    assert (run_dir / "records.torn").exists()
    m = read_manifest(run_dir)
    assert m["status"] == "complete" and len(m["resumed_at"]) == 1 and not list(run_dir.glob("records.rank*"))


RL_SUITE = """
suite: rl-dp
models: {{tiny: {{name: tiny, params: {{checkpoint: tiny-addition}}}}}}
tasks: {{add: {{name: addition, params: {{n_digits: 3, n_train: 500}}, split: test, n_items: 5}}}}
studies:
  - id: rl
    kind: rl
    model: tiny
    task: add
    algorithm: {{name: diffu_grpo}}
    options: {{steps: 2, prompts: {prompts}, group_size: 2, mu: 2, eval_every: 2, eval_items: 4, checkpoint_every: 1}}
"""
TIMINGS = ("step_wall_s", "forward_s", "backward_s")


def _rl_views(records):
    """(cell, item, outcome, step log without timings, cost without timings) per record, in file order."""
    return [(r["cell_id"], r["item_id"], r["outcome"], {k: v for k, v in (r["estimate"] or {}).items()
                                                        if k not in TIMINGS},
             {k: v for k, v in r["cost"].items() if k not in ("wall_s", "peak_mem")}) for r in records]


@pytest.mark.slow
@pytest.mark.parametrize("prompts", [2, 4])
def test_rl_data_parallel_matches_one_process(tmp_path, prompts):
    """diffu_grpo's micro-batch is one group: prompts=2 gives one micro-batch per rank per pass, so
    the all-reduced gradient is a + b, exactly one process's running sum: bit-identical records.
    prompts=4 gives two per rank: (a + b) + (c + d) instead of ((a + b) + c) + d, equal to rounding:
    the first step's log (computed before any update), every reward and cost still bit-identical."""
    path = write_suite(tmp_path, RL_SUITE.format(prompts=prompts), "rl.yaml")
    one = _rl_views(read_records(Runner(path, results=tmp_path / "one", progress=False).run(), latest=False))
    out = torchrun(["run", str(path), "--results", str(tmp_path / "two"), "--no-progress"])
    assert out.returncode == 0, out.stderr[-6000:]
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    two = _rl_views(read_records(run_dir, latest=False))
    m = read_manifest(run_dir)
    assert m["status"] == "complete" and m["distributed"]["world_size"] == 2
    assert [v[:2] for v in two] == [v[:2] for v in one] and len(one) == 4 + 2 + 5  # start, steps, units
    if prompts == 2:
        assert two == one
        return
    steps = [(a, b) for a, b in zip(one, two) if a[1].startswith("step-")]
    assert steps[0][0] == steps[0][1]
    for a, b in steps:
        assert a[4] == b[4]  # NFE, tokens, FLOPs summed over ranks: the one-process count
        for k in ("reward_mean", "reward_std", "zero_spread_frac", "completion_len", "cum_nfe"):
            assert a[3][k] == b[3][k], k
        for k, v in a[3].items():
            assert b[3][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k


def test_rank_zero_counts_the_other_ranks_units(tmp_path):
    from harness.distributed import PeerProgress

    peers = PeerProgress(tmp_path, None, Dist(rank=0, world_size=3), "c[a=1]")
    assert peers.poll() == 0  # no files yet
    with ShardWriter(tmp_path, 1) as w:
        w.write(_rec("c[a=1]", "i0", 0))
        w.write(_rec("other", "i0", 0))  # another cell's line: not counted
    with ShardWriter(tmp_path, 2) as w:
        w.write(_rec("c[a=1]", "i1", 0))
    assert peers.poll() == 2 and peers.poll() == 0  # counted once
    line = json.dumps(_rec("c[a=1]", "i2", 0), sort_keys=True, separators=(",", ":"))  # as the writer writes
    shard_path(tmp_path, 2).write_text(shard_path(tmp_path, 2).read_text() + line[:60])
    assert peers.poll() == 0  # a torn line waits until it is whole
    with open(shard_path(tmp_path, 2), "a") as fh:
        fh.write(line[60:] + "\n")
    assert peers.poll() == 1


def test_a_torchrun_rank_leaves_with_its_commands_exit_code_and_flushed_output(tmp_path):
    """Under torchrun (WORLD_SIZE > 1) the entry point leaves with os._exit, skipping interpreter
    finalization; the exit code and the buffered error message must still come out."""
    env = {**os.environ, "WORLD_SIZE": "2", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(tmp_path / "absent.yaml")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "absent.yaml" in out.stderr
