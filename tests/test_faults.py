"""Faults a user or a machine inflicts, each answered by a message and an exit status, never a traceback,
a hang, a file outside the output folder, or a gate that passes what it did not see.

Families: the regression gate on incomplete runs; names from manifests and flags that would become
paths outside the output folder; full disks (RLIMIT_FSIZE in a subprocess: portable, no root
needed) and read-only folders; malformed record lines on resume; signals; plan-time bounds on what
a task or a schedule can produce; and the smaller checks (all -inf logits, rl budgets below the
starting evaluation, symbolic links, conflicting duplicates, train memory, large sweeps).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.records import read_manifest
from tests.helpers import ROOT, write_suite
from tests.hostile import call, cli, planning_only  # noqa: F401

SUITE = """\
suite: faults
models: {tiny: {name: tiny, params: {checkpoint: CKPT}}}
tasks: {add: {name: addition, params: {n_digits: 2, n_test: 6}, n_items: 6}}
metrics: {elbo: higher}
studies:
  - {id: elbo, kind: likelihood, model: tiny, task: add, estimator: {name: mc_elbo, params: {n_mc: 1}},
     batch_size: 6, sweep: {estimator.params.n_mc: [1, 2]}}
"""
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _run(argv, timeout=120, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, argv)], cwd=ROOT, env=ENV, text=True,
                          capture_output=True, timeout=timeout, preexec_fn=preexec)


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory, tiny_ckpt) -> Path:
    return write_suite(tmp_path_factory.mktemp("faults-suite"), SUITE.replace("CKPT", str(tiny_ckpt)))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, suite_file) -> Path:
    rc, out, err = call(["run", suite_file, "--results", tmp_path_factory.mktemp("faults-base"), "--no-progress"])
    assert rc == 0, err
    return Path(out.strip().splitlines()[-1])


def _copy(run_dir: Path, dst: Path, keep=lambda i, rec: True, manifest: dict | None = None) -> Path:
    """A copy of a run directory keeping the records `keep(index, record)` selects."""
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns(".lock"))
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    kept = [line for i, line in enumerate(lines) if keep(i, json.loads(line))]
    (dst / "records.jsonl").write_text("".join(line + "\n" for line in kept))
    if manifest is not None:
        (dst / "manifest.json").write_text(json.dumps({**json.loads((run_dir / "manifest.json").read_text()),
                                                       **manifest}))
    return dst


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- 1. the gate and incomplete runs ---------------------------------------------------------------
def test_gate_fails_a_run_that_lost_units(tmp_path, base_run):
    killed = _copy(base_run, tmp_path / "killed", keep=lambda i, rec: i < 8)  # 8 of 12 records: killed midway
    rc, out, err = call(["compare", base_run, killed])
    assert rc == 1, out + err
    assert "units missing" in out and "**worse**" in out and "--allow-missing" in out
    rc, out, err = call(["compare", base_run, killed, "--allow-missing"])
    assert rc == 0 and "not compared (--allow-missing)" in out, out + err


def test_gate_fails_a_run_missing_a_whole_cell(tmp_path, base_run):
    first = json.loads((base_run / "records.jsonl").read_text().splitlines()[0])["cell_id"]
    lost = _copy(base_run, tmp_path / "lost", keep=lambda i, rec: rec["cell_id"] == first)
    rc, out, err = call(["compare", base_run, lost])
    assert rc == 1, out + err
    assert "cell missing" in out and "only in the base run" not in out
    rc, out, err = call(["report", lost, "--out", tmp_path / "rep"])
    assert rc == 0 and "**1 of 2 planned cells have no record**" in Path(out.strip()).read_text(), err


def test_gate_fails_an_empty_run_marked_complete(tmp_path, base_run):
    empty = _copy(base_run, tmp_path / "empty", keep=lambda i, rec: False, manifest={"status": "complete"})
    for extra in ([], ["--allow-missing"]):
        rc, out, err = call(["compare", base_run, empty, *extra])
        assert rc == 1, out + err
        assert "has no records" in out and "'complete'" in out
    rc, out, err = call(["report", empty, "--out", tmp_path / "rep"])
    assert rc == 0 and "The run has **no records**" in Path(out.strip()).read_text(), err


def test_gate_passes_a_complete_rerun(tmp_path, base_run):
    same = _copy(base_run, tmp_path / "same")
    rc, out, err = call(["compare", base_run, same])
    assert rc == 0 and "missing" not in out, out + err


@pytest.mark.parametrize("seed", ["-1", str(2**32), "1.5"])
def test_compare_seed_out_of_range_exits_2(base_run, seed):
    rc, err = cli(["compare", base_run, base_run, "--seed", seed])
    assert rc == 2, err


# -- 2. names that become paths --------------------------------------------------------------------
UNSAFE = ["../../escaped", "..", "a/b", "a\n", "x" * 300, ".hidden", ""]


@pytest.mark.parametrize("key", ["suite", "run_id"])
@pytest.mark.parametrize("value", [*UNSAFE, "ABSOLUTE"])
def test_report_refuses_unsafe_names_from_the_manifest(tmp_path, base_run, key, value):
    value = str(tmp_path / "abs-target") if value == "ABSOLUTE" else value
    d = _copy(base_run, tmp_path / "work" / "run", manifest={key: value})
    before = _tree(tmp_path)
    rc, err = cli(["report", d, "--out", tmp_path / "work" / "reports" / "r"])
    assert rc == 2 and f"key {key!r}" in err, err
    assert _tree(tmp_path) == before  # nothing written anywhere, inside --out or out of it


@pytest.mark.parametrize("value", ["../../escaped", "ABSOLUTE", "a\n", "a/b", "x" * 300])
def test_score_suite_flag_is_a_name(tmp_path, value):
    value = str(tmp_path / "abs-target") if value == "ABSOLUTE" else value
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"question": "1+1", "generation": "2", "answer": "2", "id": "a"}) + "\n")
    before = _tree(tmp_path)
    rc, err = cli(["score", gen, "--task", "gsm8k", "--suite", value, "--results", tmp_path / "res" / "r"])
    assert rc == 2 and "score --suite" in err, err
    assert _tree(tmp_path) == before


def test_suite_name_ending_in_a_newline_is_refused(tmp_path, suite_file):
    path = write_suite(tmp_path, suite_file.read_text().replace("suite: faults", 'suite: "faults\\n"'))
    rc, err = cli(["run", path, "--results", tmp_path / "res"])
    assert rc == 2 and f"{path}.suite" in err, err
    assert not (tmp_path / "res").exists()


# -- 3. malformed records on resume, and other inputs that raised ----------------------------------
@pytest.mark.parametrize("edit", [
    lambda r: r.pop("cell_id"),  # KeyError before
    lambda r: r.update(cell_id=["a"]),  # TypeError (unhashable) before
    lambda r: r.update(task="addition"),  # AttributeError before
    lambda r: r.update(status=None),
])
def test_resume_on_a_malformed_record_line_exits_2_and_leaves_the_manifest(tmp_path, base_run, suite_file, edit):
    d = _copy(base_run, tmp_path / "run")
    lines = (d / "records.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    edit(rec)
    lines[1] = json.dumps(rec)
    (d / "records.jsonl").write_text("\n".join(lines) + "\n")
    manifest = (d / "manifest.json").read_text()
    rc, err = cli(["run", suite_file, "--resume", d, "--no-progress"])
    assert rc == 2 and f"{d / 'records.jsonl'}:2" in err, err
    assert (d / "manifest.json").read_text() == manifest and read_manifest(d)["status"] == "complete"


def test_report_on_a_manifest_whose_cells_is_a_string(tmp_path, base_run):
    d = _copy(base_run, tmp_path / "run", manifest={"cells": "elbo"})
    rc, err = cli(["report", d, "--out", tmp_path / "rep"])
    assert rc == 2 and "'cells'" in err, err


def test_report_on_an_rl_cell_with_start_records_and_no_steps(tmp_path, base_run):
    def to_rl(i, rec):
        return i < 3

    d = _copy(base_run, tmp_path / "run", keep=to_rl)
    recs = [json.loads(line) for line in (d / "records.jsonl").read_text().splitlines()]
    for r in recs:
        r.update(cell_id="rl[seed=0]", study="rl.start", kind="rl", item_id="start/" + r["item_id"],
                 component={"kind": "algorithm", "name": "grpo", "params": {}}, estimate=None,
                 outcome={"metric": "start_accuracy", "value": 1.0})
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rc, out, err = call(["report", d, "--out", tmp_path / "rep"])
    assert rc == 0, err


def test_score_on_deeply_nested_json_exits_2(tmp_path):
    gen = tmp_path / "deep.jsonl"
    gen.write_text('{"generation": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    rc, err = cli(["score", gen, "--task", "gsm8k", "--results", tmp_path / "res"])
    assert rc == 2 and "nests too deeply" in err, err
    assert not (tmp_path / "res").exists()


def test_records_file_as_a_symbolic_link_is_refused(tmp_path, base_run, suite_file):
    d = _copy(base_run, tmp_path / "run", keep=lambda i, rec: i < 6)
    target = tmp_path / "elsewhere.jsonl"
    shutil.move(d / "records.jsonl", target)
    (d / "records.jsonl").symlink_to(target)
    size = target.stat().st_size
    rc, err = cli(["run", suite_file, "--resume", d, "--no-progress"])
    assert rc == 2 and "symbolic link" in err, err
    assert target.stat().st_size == size


def test_a_conflicting_duplicate_record_is_noted(tmp_path, base_run):
    d = _copy(base_run, tmp_path / "run")
    rec = json.loads((d / "records.jsonl").read_text().splitlines()[0])
    rec["outcome"]["value"] += 1.0
    with open(d / "records.jsonl", "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    rc, out, err = call(["report", d, "--out", tmp_path / "rep"])
    assert rc == 0 and "conflicting duplicate" in err and rec["item_id"] in err, err


# -- 4. full disks, read-only folders, files where folders belong ----------------------------------
@contextlib.contextmanager
def file_size_limit(limit: int):
    """A full disk for this process: RLIMIT_FSIZE's soft limit (a write past it fails with EFBIG;
    Python ignores SIGXFSZ), restored after. The CLI's output goes to StringIO (tests/hostile.py)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _no_tmp(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*.tmp")]


def test_disk_full_during_run_marks_the_manifest_failed(tmp_path, suite_file):
    with file_size_limit(5000):
        rc, err = cli(["run", suite_file, "--results", tmp_path / "res", "--no-progress"])
    assert rc == 2 and "error: cannot append a record to" in err, err
    assert "file too large" in err and "records.jsonl" in err
    (run_dir,) = (tmp_path / "res" / "faults").iterdir()
    m = read_manifest(run_dir)
    assert m["status"] == "failed" and "records.jsonl" in m["error"]
    assert _no_tmp(tmp_path) == []


def test_disk_full_during_score_report_and_train(tmp_path, base_run):
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps({"question": "1+1", "generation": "2", "answer": "2", "id": str(i)}) + "\n"
                           for i in range(200)))
    with file_size_limit(20_000):
        rc, err = cli(["score", gen, "--task", "gsm8k", "--results", tmp_path / "res"])
    assert rc == 2 and "file too large" in err, err
    (run_dir,) = (tmp_path / "res").glob("*/*")
    assert read_manifest(run_dir)["status"] == "failed"
    with file_size_limit(3000):
        rc, err = cli(["report", base_run, "--out", tmp_path / "rep"])
    assert rc == 2 and "cannot write" in err, err
    with file_size_limit(20_000):
        rc, err = cli(["train", "--task", "addition", "--task-param", "n_digits=2", "--task-param", "n_train=64",
                       "--steps", "1", "--eval-every", "1", "--eval-items", "2", "--batch-size", "2", "--threads",
                       "1", "--out", tmp_path / "ck", "--no-progress"])
    assert rc == 2 and "cannot write the checkpoint" in err, err
    assert not (tmp_path / "ck").exists()
    assert _no_tmp(tmp_path) == []


def _mount_tmpfs(where: Path, options: str) -> bool:
    """Mount a tmpfs at `where` (root where mounting is permitted); -> whether it was mounted."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount")):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_a_truly_full_disk_still_marks_the_manifest_failed(tmp_path, suite_file):
    """ENOSPC, unlike a file-size limit, also refuses the manifest's new temporary file: the run is then
    marked failed within the manifest's own blocks (records.rewrite_in_place)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk, "size=12k"):  # the lock, the manifest, one page of records
        pytest.skip("no permission to mount a small tmpfs (the RLIMIT_FSIZE tests cover full disks)")
    try:
        rc, err = cli(["run", suite_file, "--results", disk, "--no-progress"])
        assert rc == 2 and "no space left on the device" in err and "Traceback" not in err, err
        (run_dir,) = (disk / "faults").iterdir()
        m = read_manifest(run_dir)
        assert m["status"] == "failed" and "no space left" in m["error"]
        assert _no_tmp(disk) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.fixture
def read_only(tmp_path):
    """A read-only folder: a read-only tmpfs where mounting is allowed, else (not root) mode 0555."""
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        mounted = _mount_tmpfs(ro, "ro,size=64k")
        if not mounted:
            pytest.skip("running as root without permission to mount: no way to make a read-only folder")
    else:
        ro.chmod(0o555)
    yield ro
    if mounted:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)
    else:
        ro.chmod(0o755)


def test_read_only_folders_exit_2_naming_the_path(read_only, base_run, suite_file, tmp_path):
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"question": "1+1", "generation": "2", "answer": "2", "id": "a"}) + "\n")
    for argv in (["run", suite_file, "--results", read_only / "r", "--no-progress"],
                 ["report", base_run, "--out", read_only / "rep"],
                 ["score", gen, "--task", "gsm8k", "--results", read_only / "s"],
                 ["train", "--task", "addition", "--steps", "1", "--out", read_only / "ck"]):
        rc, err = cli(argv)
        assert rc == 2 and str(read_only) in err and ("read-only" in err or "permission" in err), (argv[0], err)
    assert list(read_only.iterdir()) == []


def test_a_file_where_a_folder_belongs_and_an_overlong_name(tmp_path, base_run):
    f = tmp_path / "file"
    f.write_text("x")
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"question": "1+1", "generation": "2", "answer": "2", "id": "a"}) + "\n")
    for argv, why in ((["score", gen, "--task", "gsm8k", "--results", f / "sub"], "a file is where a folder"),
                      (["report", base_run, "--out", f / "sub"], "a file is where a folder"),
                      (["score", gen, "--task", "gsm8k", "--results", tmp_path / ("n" * 300)], "too long"),
                      (["report", base_run, "--out", tmp_path / ("n" * 300)], "too long")):
        rc, err = cli(argv)
        assert rc == 2 and why in err, (argv[0], err)


# -- 5. signals ------------------------------------------------------------------------------------
SIGNAL_SCRIPT = """
import os, signal, sys, time
from harness import runner
from harness.cli import main

sig = []

def stop(self, *a, **k):
    os.kill(os.getpid(), sig[0])
    time.sleep(30)  # the handler raises before this ends

runner.Runner._run_cell = stop
for name in ("SIGTERM", "SIGHUP"):
    sig[:] = [getattr(signal, name)]
    print(name, main(["run", {suite!r}, "--results", {res!r} + "/" + name, "--no-progress"]), flush=True)
"""


def test_sigterm_and_sighup_exit_like_sigint(tmp_path, suite_file):
    script = SIGNAL_SCRIPT.format(suite=str(suite_file), res=str(tmp_path / "res"))
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV, text=True, capture_output=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr  # a signal not handled would have killed it (-15, -1)
    for sig in ("SIGTERM", "SIGHUP"):
        assert f"{sig} {128 + getattr(signal, sig)}" in p.stdout, (p.stdout, p.stderr)
        (run_dir,) = (tmp_path / "res" / sig / "faults").iterdir()
        assert f"interrupted ({sig}); resume with dlm-harness run {suite_file} --resume {run_dir}" in p.stderr
        m = read_manifest(run_dir)
        assert m["status"] == "interrupted" and sig in m["error"]
    assert _no_tmp(tmp_path) == []


# -- 6. plan-time bounds ---------------------------------------------------------------------------
def test_addition_with_more_test_items_than_distinct_problems_is_refused(tmp_path, suite_file):
    path = write_suite(tmp_path, suite_file.read_text().replace("n_test: 6}, n_items: 6",
                                                                "n_digits: 1, n_test: 101}, n_items: 6")
                       .replace("n_digits: 2, ", ""))
    def hung(signum, frame):
        raise TimeoutError("planning did not finish in 60 s")

    old = signal.signal(signal.SIGALRM, hung)  # it looped forever while planning
    signal.alarm(60)
    try:
        rc, err = cli(["run", path, "--results", tmp_path / "res"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert rc == 2 and "n_test 101 exceeds the 100 distinct problems" in err, err


def test_fixed_schedule_steps_beyond_the_tokens_are_refused(tmp_path, planning_only, tiny_ckpt):  # noqa: F811
    path = write_suite(tmp_path, textwrap.dedent(f"""\
        suite: steps
        models: {{tiny: {{name: tiny, params: {{checkpoint: {tiny_ckpt}}}}}}}
        tasks: {{add: {{name: addition, params: {{n_digits: 3, n_test: 4}}, n_items: 4}}}}
        studies:
          - {{id: g, kind: generate, model: tiny, task: add, sampler: {{name: low_confidence}},
             sweep: {{sampler.params.steps: [5, 10000000]}}}}
        """))
    rc, err = cli(["run", path, "--results", tmp_path / "res"])
    assert rc == 2 and "asks for 10000000 steps but has 5 tokens to commit" in err and "steps <= 5" in err, err
    ok = write_suite(tmp_path, path.read_text().replace("10000000", "1"), "ok.yaml")
    assert cli(["run", ok, "--results", tmp_path / "res"])[0] == "planned"


def test_rl_budget_below_the_starting_evaluation_is_refused(tmp_path, planning_only):  # noqa: F811
    path = write_suite(tmp_path, textwrap.dedent("""\
        suite: rlb
        models: {tiny: {name: tiny, params: {checkpoint: tiny-addition}}}
        tasks: {add: {name: addition, params: {n_digits: 3, n_train: 200, n_test: 4}, n_items: 4}}
        studies:
          - {id: rl, kind: rl, model: tiny, task: add, algorithm: {name: diffu_grpo}, budget: {nfe: 1},
             options: {steps: 3, prompts: 2, group_size: 2, mu: 1, eval_every: 0, eval_items: 2}}
        """))
    rc, err = cli(["run", path, "--results", tmp_path / "res"])
    assert rc == 2 and "starting checkpoint alone takes 10 (2 held-out items x 5" in err, err
    ok = write_suite(tmp_path, path.read_text().replace("nfe: 1}", "nfe: 40}"), "ok.yaml")
    assert cli(["run", ok, "--results", tmp_path / "res"])[0] == "planned"


def test_a_large_sweep_reports_planning_progress(tmp_path, planning_only, tiny_ckpt):  # noqa: F811
    temps = [round(0.001 * i, 3) for i in range(2000)]
    path = write_suite(tmp_path, textwrap.dedent(f"""\
        suite: big
        models: {{tiny: {{name: tiny, params: {{checkpoint: {tiny_ckpt}}}}}}}
        tasks: {{add: {{name: addition, params: {{n_digits: 3, n_test: 4}}, n_items: 4}}}}
        studies:
          - {{id: g, kind: generate, model: tiny, task: add, sampler: {{name: low_confidence}},
             sweep: {{sampler.params.temperature: {temps}}}}}
        """))
    rc, err = cli(["run", path, "--results", tmp_path / "res"])
    assert rc == "planned" and "planning g: 2000/2000" in err, err


def test_train_refuses_a_model_that_cannot_fit(tmp_path):
    p = _run(["train", "--task", "addition", "--d-model", "65536", "--n-layers", "1024", "--n-heads", "1",
              "--out", tmp_path / "ck"], timeout=120)
    assert p.returncode == 2 and "GiB for its weights, gradients and AdamW state" in p.stderr, p.stderr
    assert not (tmp_path / "ck").exists()


# -- 7. smaller ------------------------------------------------------------------------------------
def test_all_minus_inf_logits_are_non_finite():
    from harness.budget import NonFiniteError, check_finite

    logits = torch.zeros(2, 3, 5)
    logits[1, 2] = -torch.inf  # one position with no distribution at all
    with pytest.raises(NonFiniteError, match="every value -inf"):
        check_finite(logits, "logits")
    logits[1, 2, 0] = 0.0  # -inf beside a finite value: a suppressed token, fine
    check_finite(logits, "logits")


def test_eval_refused_after_start_leaves_no_run_directory(tmp_path, monkeypatch):
    from harness.bridge import lm_eval as bridge
    from harness.types import HarnessError

    def refuse(**kw):
        raise HarnessError("model args: no such model")

    monkeypatch.setattr(bridge, "DLMHarnessLM", refuse)
    rc, err = cli(["eval", "--results", tmp_path / "res", "--tasks", "countdown3", "--task-source", "harness"])
    assert rc == 2 and "no such model" in err, err
    assert list((tmp_path / "res").rglob("manifest.json")) == []


RL = """\
suite: rlsave
models: {tiny: {name: tiny, params: {checkpoint: tiny-addition}}}
tasks: {add: {name: addition, params: {n_digits: 3, n_train: 200, n_test: 4}, split: test, n_items: 2}}
studies:
  - id: rl
    kind: rl
    model: tiny
    task: add
    algorithm: {name: diffu_grpo}
    options: {steps: 3, prompts: 2, group_size: 2, mu: 1, eval_every: 0, eval_items: 2, checkpoint_every: 2}
"""


def test_a_failed_rl_checkpoint_save_stops_the_run_and_resume_records_each_step_once(tmp_path, monkeypatch):
    import errno

    from harness.algorithms.loop import RLLoop

    real_save = RLLoop.save
    calls = {"n": 0}

    def full_disk_once(self, path, step):
        calls["n"] += 1
        if calls["n"] == 1:  # the save after step 2: torch.save raises, as on a full disk
            def no_space(*a, **k):
                raise OSError(errno.ENOSPC, "No space left on device", str(path / "checkpoint.pt.tmp"))
            monkeypatch.setattr(torch, "save", no_space)
            try:
                return real_save(self, path, step)
            finally:
                monkeypatch.undo()
        return real_save(self, path, step)

    monkeypatch.setattr(RLLoop, "save", full_disk_once)
    path = write_suite(tmp_path, RL)
    rc, err = cli(["run", path, "--results", tmp_path / "res", "--no-progress"])
    assert rc == 2 and "cannot write the RL checkpoint" in err and "disk full" in err, err
    (run_dir,) = (tmp_path / "res" / "rlsave").iterdir()
    assert read_manifest(run_dir)["status"] == "failed"
    assert not list(run_dir.rglob("*.tmp"))
    monkeypatch.setattr(RLLoop, "save", real_save)
    rc, err = cli(["run", path, "--resume", run_dir, "--no-progress"])
    assert rc == 0, err
    recs = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    items = [r["item_id"] for r in recs]
    assert len(items) == len(set(items)), items  # each start record, step and unit once
    assert [i for i in items if i.startswith("step-")] == ["step-0001", "step-0002", "step-0003"]
    assert all(r["status"] == "ok" for r in recs)


def test_a_parameter_the_sweep_replaces_is_still_checked(tmp_path, planning_only, tiny_ckpt):  # noqa: F811
    path = write_suite(tmp_path, textwrap.dedent(f"""\
        suite: swept
        models: {{tiny: {{name: tiny, params: {{checkpoint: {tiny_ckpt}}}}}}}
        tasks: {{add: {{name: addition, params: {{n_digits: 3, n_test: 4}}, n_items: 4}}}}
        studies:
          - {{id: g, kind: generate, model: tiny, task: add, sampler: {{name: low_confidence, params: {{steps: -5}}}},
             sweep: {{sampler.params.steps: [1, 5]}}}}
        """))
    rc, err = cli(["run", path, "--results", tmp_path / "res"])
    assert rc == 2 and "sampler.params.steps (the value the sweep replaces)" in err and "-5" in err, err
    ok = write_suite(tmp_path, path.read_text().replace("steps: -5", "steps: 2"), "ok.yaml")
    assert cli(["run", ok, "--results", tmp_path / "res"])[0] == "planned"


def test_a_lock_file_planted_as_a_symbolic_link_is_not_followed(tmp_path, base_run, suite_file):
    d = _copy(base_run, tmp_path / "run", keep=lambda i, rec: i < 6)
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (d / ".lock").symlink_to(target)
    rc, err = cli(["run", suite_file, "--resume", d, "--no-progress"])
    assert rc == 2 and "lock file" in err, err
    assert target.read_text() == "keep me\n"


def test_score_refused_after_start_leaves_no_run_directory(tmp_path, monkeypatch):
    from harness.registry import TASKS
    from harness.types import HarnessError

    def refuse(self, item, generation, protocol=None):
        raise HarnessError("gsm8k: the reference cannot be graded here")

    monkeypatch.setattr(TASKS.get("gsm8k"), "grade", refuse)
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"question": "1+1", "generation": "2", "answer": "2", "id": "a"}) + "\n")
    rc, err = cli(["score", gen, "--task", "gsm8k", "--results", tmp_path / "res"])
    assert rc == 2 and "cannot be graded" in err, err
    assert list((tmp_path / "res").rglob("*")) == []
