"""The seven findings of the fault and bad-input campaign, one test (or more) each.

1 a NaN model passes; 2 budgets leak on resume and in the rl kind; 3 no lock on a run directory;
4 bad values run; 5 tracebacks instead of errors; 6 `train --out` overwrites a checkpoint; 7 resume
does not check that an RL cell's step records exist. Each test fails on the code before the fix.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.records import read_manifest, read_records
from harness.types import HarnessError
from tests.helpers import ROOT, write_suite
from tests.hostile import bad_input, call, cli, nan_checkpoint, planning_only, strict_json_lines  # noqa: F401

SUITE = """\
suite: s17
models: {tiny: {name: tiny, params: {checkpoint: CKPT}}}
tasks: {add: {name: addition, params: {n_digits: 2, n_test: 6}, n_items: 6}}
metrics: {accuracy: higher, elbo: higher}
studies:
  - {id: gen, kind: generate, model: tiny, task: add, sampler: {name: low_confidence}, batch_size: 3}
  - {id: elbo, kind: likelihood, model: tiny, task: add, estimator: {name: mc_elbo, params: {n_mc: 2}},
     batch_size: 3}
"""


def suite(tmp_path: Path, ckpt, text: str = SUITE, name: str = "suite.yaml") -> Path:
    return write_suite(tmp_path, text.replace("CKPT", str(ckpt)), name)


def run(path: Path, results: Path, *extra) -> tuple[int, Path | None, str]:
    rc, err = cli(["run", path, "--results", results, "--no-progress", *extra])
    line = [x for x in err.splitlines() if x.startswith("run directory: ")]
    return rc, (Path(line[0].split(": ", 1)[1]) if line else None), err


# -- 1. a NaN model -------------------------------------------------------------------------------
def test_nan_checkpoint_through_run_report_compare(tmp_path, tiny_ckpt):
    """Finding 1: every unit of a NaN model is `error: non-finite ...`, the records are strict JSON,
    the report counts them, and `compare` against a healthy run exits 1."""
    bad_ckpt = nan_checkpoint(tiny_ckpt, tmp_path / "nan-ckpt")
    rc, good, _ = run(suite(tmp_path, tiny_ckpt, name="good.yaml"), tmp_path / "res")
    assert rc == 0
    rc, bad, err = run(suite(tmp_path, bad_ckpt, name="bad.yaml"), tmp_path / "res")
    assert rc == 1 and "status: failed" in err
    lines = strict_json_lines(bad / "records.jsonl")
    assert len(lines) == 12 and all(r["status"] == "error" for r in lines)
    assert all(r["error"].startswith("non-finite logits of a full model pass") for r in lines)
    assert read_manifest(bad)["status"] == "failed"
    rc, _ = cli(["report", bad, "--out", tmp_path / "reports"])
    assert rc == 0
    md = next((tmp_path / "reports").rglob("index.md")).read_text()
    assert "**6 unit(s) failed on non-finite values (NaN/inf)**" in md
    assert "| non-finite |" in md
    rc, out = _compare(good, bad)
    assert rc == 1
    assert "gen/failed units" in out and "gen/accuracy" in out and "elbo/elbo" in out


def _compare(base, new, *extra):
    rc, out, err = call(["compare", base, new, *extra])
    return rc, out + err


def test_a_legacy_bare_nan_record_is_a_failed_unit(tmp_path, tiny_ckpt):
    """Finding 1: a record holding a bare NaN (older runs) reads as `error: non-finite`, and compare
    calls the change worse instead of "no significant change"."""
    rc, good, _ = run(suite(tmp_path, tiny_ckpt), tmp_path / "res")
    assert rc == 0
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "manifest.json").write_text((good / "manifest.json").read_text())
    text = (good / "records.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in text]
    for r in recs:
        if r["cell_id"] == "elbo":
            r["outcome"]["value"] = float("nan")
    (legacy / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))  # json writes NaN
    assert "NaN" in (legacy / "records.jsonl").read_text()
    elbo = [r for r in read_records(legacy) if r["cell_id"] == "elbo"]
    assert all(r["status"] == "error" and r["error"].startswith("non-finite outcome.value") for r in elbo)
    rc, out = _compare(good, legacy)
    assert rc == 1 and "elbo/failed units" in out


@pytest.mark.parametrize("flag, value, fragment", [
    ("--alpha", "-0.1", "compare --alpha: expected a finite number in (0, 1), got -0.1"),
    ("--alpha", "1.5", "compare --alpha: expected a finite number in (0, 1), got 1.5"),
    ("--alpha", "nan", "compare --alpha: expected a finite number, got nan"),
    ("--tolerance", "nan", "compare --tolerance: expected a finite number, got nan"),
    ("--tolerance", "-1", "compare --tolerance: expected a finite number >= 0, got -1"),
    ("--tolerance", "inf", "compare --tolerance: expected a finite number, got inf"),
])
def test_compare_refuses_gate_disabling_settings(tmp_path, flag, value, fragment):
    """Finding 1: `--alpha -0.1` or `--tolerance nan` used to disable the gate (exit 0)."""
    bad_input(["compare", tmp_path, tmp_path, flag, value], fragment)


# -- 2. budgets as a ledger -----------------------------------------------------------------------
BUDGET = SUITE.split("studies:")[0] + """studies:
  - {id: elbo, kind: likelihood, model: tiny, task: add, estimator: {name: mc_elbo, params: {n_mc: 2}},
     batch_size: 2, budget: {tokens: 40}}
"""


def test_a_cell_stopped_by_its_budget_is_done_on_resume(tmp_path, tiny_ckpt):
    """Finding 2: a stopped cell used to be re-run (and re-spent) by every resume."""
    path = suite(tmp_path, tiny_ckpt, BUDGET)
    rc, run_dir, _ = run(path, tmp_path / "res")
    first = (run_dir / "records.jsonl").read_text()
    statuses = [r["status"] for r in strict_json_lines(run_dir / "records.jsonl")]
    assert "budget_exceeded" in statuses and statuses.count("ok") >= 1
    assert read_manifest(run_dir)["cell_status"][0]["status"] == "budget_exceeded"
    for _ in range(2):
        rc, _, err = run(path, tmp_path / "res", "--resume", run_dir)
        assert rc == 0, err
        assert (run_dir / "records.jsonl").read_text() == first  # nothing re-run, nothing re-spent
    assert read_manifest(run_dir)["cell_status"][0]["status"] == "budget_exceeded"


def test_every_record_counts_against_the_budget_on_resume():
    """Finding 2: the ledger sums every record's cost, stopped and failed units included."""
    from harness.budget import Ledger
    from harness.types import Budget

    recs = [{"status": s, "cost": {"nfe": 4, "tokens": 10, "flops": 1.0, "wall_s": 0.1}}
            for s in ("ok", "budget_exceeded", "error")]
    ledger = Ledger(Budget(nfe=10), recs)
    assert ledger.as_cost().nfe == 12 and ledger.as_cost().tokens == 30
    assert ledger.exceeded() is not None and ledger.exceeded().what == "nfe"


RL = """\
suite: rl17
models: {tiny: {name: tiny, params: {checkpoint: tiny-addition}}}
tasks: {add: {name: addition, params: {n_digits: 3, n_train: 200, n_test: 4}, split: test, n_items: 4}}
studies:
  - id: rl
    kind: rl
    model: tiny
    task: add
    algorithm: {name: diffu_grpo}
    options: {steps: 3, prompts: 2, group_size: 2, mu: 1, eval_every: 0, eval_items: 2, checkpoint_every: 1}
"""


def test_rl_kind_checks_its_budget_between_steps(tmp_path):
    """Finding 2: the rl kind ignored the cell budget (nfe: 1, thousands spent, status ok)."""
    path = write_suite(tmp_path, RL.replace("checkpoint_every: 1}", "checkpoint_every: 1}\n    budget: {nfe: 40}"))
    rc, run_dir, err = run(path, tmp_path / "res")
    assert rc == 0, err
    recs = strict_json_lines(run_dir / "records.jsonl")
    # 2 start records (the checkpoint on 2 held-out items, 5 NFE each), then 24 rollout + 4 policy NFE per step
    assert [(r["item_id"], r["status"]) for r in recs] == [("start/test-0", "ok"), ("start/test-1", "ok"),
                                                           ("step-0001", "ok"), ("step-0002", "budget_exceeded")]
    assert sum(r["cost"]["nfe"] for r in recs) == 66 and "budget exceeded: nfe 66 > limit 40" in recs[-1]["error"]
    assert read_manifest(run_dir)["cell_status"][0]["status"] == "budget_exceeded"
    rc, _, _ = run(path, tmp_path / "res", "--resume", run_dir)
    assert rc == 0 and len(strict_json_lines(run_dir / "records.jsonl")) == 4  # stopped: done


@pytest.mark.parametrize("budget, fragment", [
    ("{nfe: -5}", "budget.nfe: expected an integer in [1, "),
    ("{nfe: 0}", "budget.nfe: expected an integer in [1, "),
    ("{wall_s: .nan}", "budget.wall_s: expected a finite number, got nan"),
    ("{flops: -1.0}", "budget.flops: expected a finite number in (0, "),
    ("{tokens: .inf}", "budget.tokens: expected "),
])
def test_budgets_must_be_finite_and_positive_at_plan_time(tmp_path, tiny_ckpt, budget, fragment):
    """Finding 2: negative or NaN budgets were accepted, then everything was "budget exceeded"."""
    path = suite(tmp_path, tiny_ckpt, BUDGET.replace("{tokens: 40}", budget))
    bad_input(["run", path, "--results", tmp_path / "res"], str(path), fragment)
    assert not (tmp_path / "res").exists()


# -- 3. one writer per run directory --------------------------------------------------------------
HOLD = """
import sys, time
from harness.lock import RunLock
lock = RunLock(sys.argv[1], "holder").acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, tiny_ckpt):
    """Finding 3: two resumes of one run directory used to duplicate units and train twice."""
    path = suite(tmp_path, tiny_ckpt)
    rc, run_dir, _ = run(path, tmp_path / "res")
    assert rc == 0
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (run_dir / "records.jsonl").read_text()
        err = bad_input(["run", path, "--resume", run_dir, "--no-progress"],
                        f"pid {holder.pid} on host {socket.gethostname()}", "another process is writing")
        assert "holder" in err
        assert (run_dir / "records.jsonl").read_text() == before
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lock is stale, and the next writer takes over.
    rc, _, err = run(path, tmp_path / "res", "--resume", run_dir)
    assert rc == 0 and f"took over the lock of pid {holder.pid}" in err


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    from harness.lock import RunLock

    with RunLock(tmp_path, "first"):
        with pytest.raises(HarnessError, match=f"pid {os.getpid()} on host"):
            RunLock(tmp_path, "second").acquire()
    with RunLock(tmp_path) as again:  # released: free again, and not stale
        assert again.held and again.stale is None


# -- 4. bad values ------------------------------------------------------------------------------
@pytest.mark.parametrize("old, new, fragment", [
    ("{name: low_confidence}", "{name: low_confidence, params: {temperature: .nan}}",
     "studies[0].sampler.params.temperature: expected "),
    ("{name: low_confidence}", "{name: low_confidence, params: {temperature: .inf}}",
     "studies[0].sampler.params.temperature: expected "),
    ("{name: low_confidence}", "{name: threshold, params: {tau: 1.5}}",
     "studies[0].sampler.params.tau: expected a finite number in [0, 1], got 1.5"),
    ("{name: low_confidence}", "{name: threshold, params: {tau: .nan}}", "studies[0].sampler.params.tau: expected"),
    ("{n_mc: 2}", "{n_mc: 2, max_tokens: 0}",
     "studies[1].estimator.params.max_tokens: expected an integer in [1, "),
    ("n_items: 6}", "n_items: 1000000000000}", "tasks.add.n_items: expected an integer in [1, 10000000]"),
    ("n_test: 6}, n_items: 6}", "n_test: 6}, n_items: 7}",
     "tasks.add.n_items: 7 items asked for, but the 'test' split of 'addition' has 6 (use n_items: all"),
    ("batch_size: 3}", "batch_size: 3, replicates: 1000000000}", "studies[0].replicates: expected an integer in [1, "),
    ("n_test: 6}, n_items: 6}|batch_size: 3}\n  - {id: elbo",
     "n_test: 20}, n_items: 20}|batch_size: 3, replicates: 1000000}\n  - {id: elbo",
     "studies[0]: 20000000 units (items x replicates) in one cell; at most 10000000"),
])
def test_bad_values_are_errors_naming_file_and_key(tmp_path, tiny_ckpt, old, new, fragment):
    """Finding 4: NaN/inf/out-of-range values ran to "complete"; n_items beyond the split was cut."""
    text = SUITE
    for o, n in zip(old.split("|"), new.split("|")):
        assert o in text
        text = text.replace(o, n, 1)
    path = suite(tmp_path, tiny_ckpt, text)
    t0 = time.perf_counter()
    bad_input(["run", path, "--results", tmp_path / "res"], str(path), fragment)
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "res").exists()


@pytest.mark.parametrize("key, value, fragment", [
    ("grad_clip", ".nan", "options.grad_clip: expected a finite number"),
    ("lr", ".nan", "options.lr: expected a finite number"),
    ("lr", "-1.0", "options.lr: expected a finite number in (0, 10], got -1.0"),
])
def test_bad_rl_options(tmp_path, key, value, fragment):
    path = write_suite(tmp_path, RL.replace("mu: 1,", f"mu: 1, {key}: {value},"))
    bad_input(["run", path, "--results", tmp_path / "res"], fragment)


def test_n_items_all_is_every_item(tmp_path, tiny_ckpt):
    from harness.config import load_suite, plan

    cells = plan(load_suite(suite(tmp_path, tiny_ckpt, SUITE.replace("n_items: 6}", "n_items: all}"))))
    assert cells[0].task.n_items is None


def test_a_yaml_alias_bomb_is_an_error_not_a_hang(tmp_path):
    """Finding 4: a 1 KB alias bomb hung (and an error message called repr() on the expansion)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = write_suite(tmp_path, "\n".join(lines) + "\nsuite: *a9\n")
    assert path.stat().st_size < 1024
    t0 = time.perf_counter()
    err = bad_input(["run", path], str(path), "expands to more than")
    assert time.perf_counter() - t0 < 5 and len(err) < 1000


# -- 5. exit 2, file and key named, no traceback ----------------------------------------------------
def test_report_on_malformed_runs_exits_2(tmp_path, tiny_ckpt):
    """Finding 5: `report` raised tracebacks on 11 of 22 malformed runs."""
    rc, good, _ = run(suite(tmp_path, tiny_ckpt), tmp_path / "res")
    records = (good / "records.jsonl").read_text().splitlines()
    manifest = (good / "manifest.json").read_text()
    first = json.loads(records[0])
    cases = {
        "non-object line": ("records.jsonl", "[1, 2]\n" + "\n".join(records) + "\n", "schema_version"),
        "missing cell_id": ("records.jsonl", json.dumps({k: v for k, v in first.items() if k != "cell_id"}) + "\n",
                            "key 'cell_id' must be a str"),
        "wrong types": ("records.jsonl", json.dumps({**first, "replicate": "zero"}) + "\n",
                        "key 'replicate' must be a int"),
        "wrong outcome": ("records.jsonl", json.dumps({**first, "outcome": {"metric": 3}}) + "\n", "key 'outcome'"),
        "binary records": ("records.jsonl", b"\xff\xfe\x00garbage\n" * 3, "records.jsonl"),
        "manifest {}": ("manifest.json", "{}", "key 'run_id' must be a str"),
        "manifest list": ("manifest.json", "[]", "expected a JSON object, got list"),
        "binary manifest": ("manifest.json", b"\x80\x81\x82", "not a readable JSON manifest"),
    }
    for name, (file, content, fragment) in cases.items():
        d = tmp_path / name.replace(" ", "_")
        d.mkdir()
        (d / "records.jsonl").write_text("\n".join(records) + "\n")
        (d / "manifest.json").write_text(manifest)
        (d / file).write_bytes(content if isinstance(content, bytes) else content.encode())
        bad_input(["report", d, "--out", tmp_path / "out"], str(d / file), fragment)
    d = tmp_path / "dir_instead_of_file"
    d.mkdir()
    (d / "manifest.json").write_text(manifest)
    (d / "records.jsonl").mkdir()
    bad_input(["report", d, "--out", tmp_path / "out"], "records.jsonl")
    (tmp_path / "a-file").write_text("x")
    bad_input(["report", good, "--out", tmp_path / "a-file"], "report --out", "is not a directory")


@pytest.mark.parametrize("args, fragment", [
    (["--steps", "0"], "train --steps: expected an integer in [1, "),
    (["--steps", "-5"], "train --steps: expected an integer in [1, "),
    (["--lr", "nan"], "train --lr: expected a finite number, got nan"),
    (["--batch-size", "0"], "train --batch-size: expected an integer in [1, "),
    (["--d-model", "30", "--n-heads", "4"], "train --n-heads: must divide --d-model (30), got 4"),
    (["--threads", "0"], "train --threads: expected an integer in [1, "),
    (["--device", "tpu"], "train --device: expected a device cpu, cuda, cuda:N or auto, got 'tpu'"),
    (["--device", "cuda:7"], "train --device: 'cuda:7' asked for"),
    (["--task", "nope"], "unknown task 'nope'"),
])
def test_train_bad_arguments_exit_2(tmp_path, args, fragment):
    """Finding 5: `train` raised tracebacks on 9 of 17 bad inputs."""
    argv = ["train", "--task", "addition", "--out", tmp_path / "ck", "--no-progress", *args]
    bad_input(argv, fragment)
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--tasks", "countdown3", "--limit", "0"], "eval.limit: expected an integer in [1, "),
    (["--tasks", "countdown3", "--limit", "-1"], "eval.limit: expected an integer in [1, "),
    (["--tasks", ","], "eval --tasks: expected one or more task names"),
    (["--tasks", "countdown3", "--batch-size", "0"], "eval.batch_size: expected an integer in [1, "),
    (["--tasks", "countdown3", "--task-source", "harness", "--tasks", "no_such_task"], "no harness YAML for it"),
])
def test_eval_bad_arguments_exit_2_without_a_run_directory(tmp_path, args, fragment):
    """Finding 5: every failed eval left a run directory marked "running"."""
    bad_input(["eval", "--results", tmp_path / "res", *args], fragment)
    assert not (tmp_path / "res").exists()


def test_eval_failing_after_start_is_marked_failed(tmp_path, monkeypatch):
    """Finding 5: an eval that fails once running is `failed` in its manifest, not "running"."""
    from harness import evaluate
    from harness.bridge import lm_eval as bridge

    def boom(**kw):  # a failure once running (a refusal, a HarnessError, leaves no run directory: test_faults.py)
        raise RuntimeError("model args: no such model")

    monkeypatch.setattr(bridge, "DLMHarnessLM", boom)
    from harness.cli import main as cli_main

    with pytest.raises(RuntimeError, match="no such model"):
        cli_main(["eval", "--results", str(tmp_path / "res"), "--tasks", "countdown3", "--task-source", "harness"])
    (run_dir,) = (tmp_path / "res").glob("*/*")
    assert read_manifest(run_dir)["status"] == "failed" and "no such model" in read_manifest(run_dir)["error"]
    assert evaluate  # the module under test


def test_run_bad_device_long_name_and_checkpoint_typo(tmp_path, tiny_ckpt):
    """Finding 5: `device: cuda:7` and a 5,000-character suite name raised; a checkpoint typo named
    neither file nor key and left an empty run directory."""
    path = suite(tmp_path, tiny_ckpt, SUITE.replace("{checkpoint: CKPT}", "{checkpoint: CKPT, device: 'cuda:7'}"))
    bad_input(["run", path, "--results", tmp_path / "res"], f"{path}.models.tiny.params.device", "cuda:7")
    path = suite(tmp_path, tiny_ckpt, SUITE.replace("suite: s17", "suite: " + "x" * 5000))
    bad_input(["run", path, "--results", tmp_path / "res"], f"{path}.suite: expected a name of at most 100")
    path = suite(tmp_path, str(tiny_ckpt) + "-typo")
    bad_input(["run", path, "--results", tmp_path / "res"], f"{path}.models.tiny", "-typo")
    assert not (tmp_path / "res").exists()


def test_a_run_that_fails_is_marked_failed(tmp_path, tiny_ckpt, monkeypatch):
    from harness import runner

    def boom(*a, **k):
        raise HarnessError("disk full (simulated)")

    path = suite(tmp_path, tiny_ckpt)
    monkeypatch.setattr(runner.Runner, "_run_cell", boom)
    rc, run_dir, err = run(path, tmp_path / "res")
    assert rc == 2 and "disk full" in err
    assert read_manifest(run_dir)["status"] == "failed"


# -- 6. train --out -----------------------------------------------------------------------------
TRAIN = ["train", "--task", "addition", "--task-param", "n_train=8", "--task-param", "n_test=2", "--steps", "1",
         "--batch-size", "2", "--d-model", "8", "--n-layers", "1", "--n-heads", "1", "--d-ff", "8",
         "--eval-every", "1", "--eval-items", "1", "--threads", "1", "--no-progress"]


def test_train_refuses_an_existing_checkpoint_unless_overwrite(tmp_path):
    """Finding 6: `train --out` onto an existing checkpoint overwrote model.pt, config.json, CARD.md."""
    out = tmp_path / "ck"
    rc, _ = cli([*TRAIN, "--out", out])
    assert rc == 0 and (out / "model.pt").is_file()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad_input([*TRAIN, "--seed", "1", "--out", out], f"train --out {out}: the directory exists", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    rc, _ = cli([*TRAIN, "--seed", "1", "--out", out, "--overwrite"])
    assert rc == 0 and (out / "model.pt").read_bytes() != before["model.pt"]
    (tmp_path / "f").write_text("x")
    bad_input([*TRAIN, "--out", tmp_path / "f", "--overwrite"], "exists and is not a directory")


# -- 7. RL step records on resume -------------------------------------------------------------------
def test_resume_verifies_the_rl_step_records_exist(tmp_path):
    """Finding 7: with step records lost after the final checkpoint, resume said "complete"."""
    path = write_suite(tmp_path, RL.replace("steps: 3", "steps: 2"))
    rc, run_dir, _ = run(path, tmp_path / "res")
    assert rc == 0
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    kept = [x for x in lines if '"item_id":"step-0001"' not in x]
    assert len(kept) == len(lines) - 1
    (run_dir / "records.jsonl").write_text("\n".join(kept) + "\n")
    bad_input(["run", path, "--resume", run_dir, "--no-progress"], "lacks the step records step-0001",
              "the file lost lines")
    assert read_manifest(run_dir)["status"] == "failed"


def test_the_meter_names_the_first_non_finite_logit():
    """Finding 1 at its boundary: NaN or +inf logits raise, naming shape, counts and first index;
    -inf is a legal logit (a token ruled out), and the pass is still counted as spent."""
    import torch

    from harness.budget import Meter, NonFiniteError, check_finite
    from tests.helpers import make_tiny

    t = torch.zeros(2, 3, 4)
    t[0, 1, 2] = -float("inf")
    check_finite(t, "logits")
    t[1, 2, 3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"non-finite logits \[2, 3, 4\]: 1 NaN, 0 inf of 24 values; "
                                             r"first at index \[1, 2, 3\]"):
        check_finite(t, "logits")
    den = make_tiny()
    with torch.no_grad():
        next(den.module.parameters()).view(-1)[0] = float("nan")
    meter = Meter(den)
    with pytest.raises(NonFiniteError, match="non-finite logits of a full model pass"):
        meter.logits(torch.zeros(2, 5, dtype=torch.long))
    assert meter.cost.nfe == 2
