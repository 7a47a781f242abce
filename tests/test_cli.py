"""The `dlm-harness` command line, run as a subprocess: listing, help, and user errors (exit 2,
'error: ...' on stderr, no traceback).

Every invocation pays the torch import (~2 s), so the commands run concurrently once per module
and each test reads its result.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("models", "estimators", "samplers", "algorithms", "tasks")
SUBCOMMANDS = ("list", "run", "report", "train")
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}

GOOD = """\
suite: good
models:
  tiny: {name: tiny, params: {}}
tasks:
  addition: {name: addition, params: {n_digits: 3}, n_items: 4}
studies:
  - {id: greedy, kind: generate, model: tiny, task: addition, sampler: {name: low_confidence}}
"""

BROKEN = """\
suite: broken
models:
  tiny: {name: tiny, params: {}}
tasks:
  addition: {name: addition, params: {n_digits: 3}, n_items: 4}
studies:
  - {id: elbo, kind: likelihood, model: tiny, task: addition,
     estimator: {name: mc_elbo, params: {n_mcc: 4}}}
"""


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)


# Help texts, the other `list KIND`s and a missing suite file come from one interpreter that calls
# harness.cli.main once per argv (argparse's --help exits through SystemExit), so they cost one
# torch import instead of one each.
DRIVER = """
import contextlib, io, json, sys, traceback
from harness.cli import main
out = {}
for argv in json.loads(sys.argv[1]):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
        except BaseException:
            traceback.print_exc()
            rc = -1
    out[" ".join(argv) or "nothing"] = [rc, o.getvalue(), e.getvalue()]
print(json.dumps(out))
"""


def _run_many(argvs: list[list[str]]) -> dict[str, subprocess.CompletedProcess]:
    r = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(argvs)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return {k: subprocess.CompletedProcess([], rc, so, se) for k, (rc, so, se) in json.loads(r.stdout).items()}


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    broken = tmp / "broken.yaml"
    broken.write_text(BROKEN)
    results = tmp / "results"
    good = tmp / "good.yaml"
    good.write_text(GOOD)
    commands = {  # each its own `python -m harness.cli` process
        "run good": ["run", str(good), "--results", str(tmp / "good-results")],
        "list": ["list"],
        **{f"list {k}": ["list", k] for k in ("models", "bogus")},
        "run broken": ["run", str(broken), "--results", str(results), "--no-progress"],
        "report missing": ["report", str(tmp / "no-such-run"), "--out", str(tmp / "reports")],
    }
    in_one = [[c, "--help"] for c in SUBCOMMANDS] + [["--help"], []]
    in_one += [["list", k] for k in ("tasks", "estimators", "samplers", "estimator")]
    in_one += [["--version"], ["show", "estimator", "mc_elbo"], ["show", "samplers", "threshold"],
               ["show", "model", "diffusion_gemma"], ["show", "estimators", "nope"]]
    in_one += [["run", str(tmp / "nope.yaml"), "--results", str(results)]]
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        many = pool.submit(_run_many, in_one)
        futures = {name: pool.submit(_run, args) for name, args in commands.items()}
        out = {name: f.result() for name, f in futures.items()}
        out.update(many.result())
    out["run missing"] = out.pop(" ".join(in_one[-1]))
    out["_tmp"] = tmp
    out["_broken"] = broken
    out["_results"] = results
    return out


def first_column(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.splitlines() if line.strip()]


def test_list_shows_the_five_kinds(cli):
    r = cli["list"]
    assert r.returncode == 0, r.stderr
    headers = [line for line in r.stdout.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headers == [f"{k}:" for k in KINDS]
    # Components are indented under their kind: an aligned table of name and summary.
    lines = r.stdout.splitlines()
    mc = next(line for line in lines if line.startswith("  mc_elbo "))
    assert "Monte Carlo ELBO" in mc
    est = lines[lines.index("estimators:") + 1: lines.index("samplers:")]
    col = 2 + max(len(line.split()[0]) for line in est) + 2  # summaries start in one column
    assert all(line[col - 2:col] == "  " and line[col] != " " for line in est), est
    assert "dlm-harness show KIND NAME" in r.stdout


def test_list_models(cli):
    r = cli["list models"]
    assert r.returncode == 0, r.stderr
    names = first_column(r.stdout)
    assert {"tiny", "hf_masked", "hf_causal"} <= set(names)
    assert names == sorted(names)
    assert all(len(line.split()) > 1 for line in r.stdout.splitlines())
    assert "models:" not in r.stdout  # one kind: no header


def test_list_tasks(cli):
    r = cli["list tasks"]
    assert r.returncode == 0, r.stderr
    assert {"addition", "sudoku4", "countdown3"} <= set(first_column(r.stdout))


def test_list_estimators_and_samplers(cli):
    assert cli["list estimators"].returncode == 0
    assert "mc_elbo" in first_column(cli["list estimators"].stdout)
    assert "low_confidence" in first_column(cli["list samplers"].stdout)


def test_singular_kind_is_accepted(cli):
    assert cli["list estimator"].returncode == 0
    assert cli["list estimator"].stdout == cli["list estimators"].stdout


def test_version(cli):
    r = cli["--version"]
    assert r.returncode == 0 and r.stdout.startswith("dlm-harness ") and r.stdout.split()[1][0].isdigit()


def test_show_a_component(cli):
    r = cli["show estimator mc_elbo"]
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("estimator mc_elbo  (harness.estimators.mc_elbo.")
    assert "Monte Carlo ELBO" in r.stdout
    params = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("  ")}
    assert "default 8" in params["n_mc"] and "'count'" in params["t_law"]
    assert "applies to: masked-noise models" in r.stdout and "diffusion_gemma" not in r.stdout
    t = cli["show samplers threshold"]
    assert t.returncode == 0 and "tau" in t.stdout and "default 0.9" in t.stdout
    g = cli["show model diffusion_gemma"]
    assert g.returncode == 0 and "noise: uniform" in g.stdout


def test_show_unknown_name_exits_2(cli):
    r = cli["show estimators nope"]
    assert r.returncode == 2 and "unknown estimator 'nope'" in r.stderr and "mc_elbo" in r.stderr


def test_every_flag_has_help():
    import argparse

    from harness.cli import build_parser

    def walk(parser, where):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{where} {name}")
            elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                yield where, action

    missing = [f"{w}: {a.option_strings or a.dest}" for w, a in walk(build_parser(), "dlm-harness") if not a.help]
    assert not missing, "flags without help text: " + ", ".join(missing)


def test_list_unknown_kind_exits_2(cli):
    r = cli["list bogus"]
    assert r.returncode == 2
    assert r.stderr.startswith("error: unknown kind 'bogus'")
    for kind in KINDS:
        assert kind in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_run_broken_suite_exits_2_without_traceback(cli):
    r = cli["run broken"]
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ")
    assert f"{cli['_broken']}.studies[0].estimator.params.n_mcc" in r.stderr
    assert "did you mean 'n_mc'?" in r.stderr
    assert r.stdout == ""
    assert not cli["_results"].exists()  # planning failed before any run directory was made


def test_run_ends_with_a_results_table_on_stderr(cli):
    r = cli["run good"]
    assert r.returncode == 0, r.stderr
    run_dir = r.stdout.strip().splitlines()[-1]
    assert Path(run_dir).is_dir() and r.stdout.strip() == run_dir  # stdout: only the run directory
    lines = r.stderr.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("cell "))
    assert lines[head].split()[:3] == ["cell", "metric", "value"]
    assert lines[head + 1].split()[:2] == ["greedy", "accuracy"]
    assert "\r" not in r.stderr  # not a terminal: plain progress lines, no redrawn bars
    assert lines[-1].startswith("status: complete")


def test_run_missing_suite_exits_2(cli):
    r = cli["run missing"]
    assert r.returncode == 2
    assert r.stderr.startswith("error: ")
    assert str(cli["_tmp"] / "nope.yaml") in r.stderr
    assert "cannot read suite file" in r.stderr
    assert "Traceback" not in r.stderr


def test_report_on_missing_dir_exits_2(cli):
    r = cli["report missing"]
    assert r.returncode == 2
    assert r.stderr.startswith("error: ")
    assert str(cli["_tmp"] / "no-such-run") in r.stderr
    assert "Traceback" not in r.stderr
    assert not (cli["_tmp"] / "reports").exists()


@pytest.mark.parametrize("command, expected", [
    ("list", ["kind", "models | estimators | samplers | algorithms | tasks"]),
    ("run", ["suite", "--results", "--resume", "--quick", "--no-progress"]),
    ("report", ["RUN_DIR", "--out"]),
    ("train", ["--task", "--task-param", "--out", "--steps", "--lr"]),
])
def test_subcommand_help(cli, command, expected):
    r = cli[f"{command} --help"]
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: dlm-harness {command}")
    for word in expected:
        assert word in r.stdout


def test_top_level_help_lists_subcommands(cli):
    r = cli["--help"]
    assert r.returncode == 0
    for command in SUBCOMMANDS:
        assert command in r.stdout


def test_no_subcommand_is_a_usage_error(cli):
    r = cli["nothing"]
    assert r.returncode == 2
    assert "usage: dlm-harness" in r.stderr
    assert "Traceback" not in r.stderr


def test_score_prints_lm_eval_table_with_both_filters(tmp_path, capsys):
    """`score` of an lm-eval samples file prints lm-eval's table: one row per filter (strict-match and
    flexible-extract), the value with lm-eval's stderr, the 95% interval inside [0, 1], n and protocol;
    stdout's last line stays the run directory."""
    import json as _json

    from harness.cli import main

    rows = []
    for i, (gen, ans) in enumerate([("So 18. #### 18", "... #### 18"), ("The answer is 1,000.", "... #### 1,000"),
                                    ("no idea", "... #### 3")]):
        for f in ("strict-match", "flexible-extract"):
            rows.append({"doc_id": i, "doc": {"question": f"q{i}", "answer": ans}, "target": ans,
                         "resps": [[gen]], "filtered_resps": ["?"], "filter": f})
    src = tmp_path / "samples_gsm8k.jsonl"
    src.write_text("".join(_json.dumps(r) + "\n" for r in rows))
    assert main(["score", str(src), "--task", "gsm8k", "--protocol", "lm-eval", "--results", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert Path(out.strip().splitlines()[-1]).is_dir()
    table = [line for line in err.splitlines() if line.startswith("|")]
    assert table[0].split("|")[1:6] == ["Tasks", "Version", "Filter          ", "n-shot", "Metric     "]
    cells = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")] for line in table[2:]}
    assert set(cells) == {"strict-match", "flexible-extract"}
    strict, flex = cells["strict-match"], cells["flexible-extract"]
    assert strict[5] == flex[5] == "exact_match" and strict[7] == "0.3333" and flex[7] == "0.6667"
    lo, hi = (float(x) for x in flex[10].strip("[]").split(","))
    assert 0.0 <= lo < 0.6667 < hi <= 1.0
    assert flex[11] == "3" and flex[13] == "lm-eval"


FAST = """
import contextlib, io, json, sys
from harness.cli import main
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
print(json.dumps(sorted(m for m in ("torch", "numpy", "transformers") if m in sys.modules)))
"""


def test_help_version_list_show_import_no_torch(tmp_path):
    """`--help` and `--version` never import torch; `list` and `show` read the component index, so once
    it is built (the first call imports every component) they import none of torch, numpy, transformers.
    The speed itself is measured by `time python -m harness.cli --help`, not asserted here."""
    env = {**ENV, "DLM_HARNESS_CACHE": str(tmp_path / "cache")}

    def heavy(argvs):
        r = subprocess.run([sys.executable, "-c", FAST, json.dumps(argvs)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    assert heavy([["--help"], ["--version"], ["list", "--help"]]) == []
    assert "torch" in heavy([["list"]])  # builds the index
    assert list((tmp_path / "cache").glob("components-*.json"))
    assert heavy([["list"], ["list", "samplers"], ["show", "estimator", "mc_elbo"], ["show", "model", "tiny"]]) == []


def test_eval_records_print_one_row_per_filter(tmp_path):
    """`eval` writes one record per (document, lm-eval filter): the table has a row per filter, with
    lm-eval's n-shot, and counts a document lm-eval gave no value as not ok and, unless
    --exclude-errors, as a failure."""
    import json as _json

    from harness.records import RECORDS, make_record
    from harness.report.markdown import lm_eval_table

    cost = {"nfe": 1, "nfe_full": 1, "nfe_cached": 0, "tokens": 1, "flops": 0.0, "wall_s": 0.0, "peak_mem": 0}
    lines = []
    for doc, (strict, flex) in enumerate([(1.0, 1.0), (0.0, 1.0), (0.0, 0.0), (None, None)]):
        for f, v in (("strict-match", strict), ("flexible-extract", flex)):
            lines.append(make_record(
                run_id="r", suite="lm-eval", cell_id=f"gsm8k:{f}", study="lm-eval", kind="lm_eval",
                point={"task": "gsm8k"}, model={"name": "tiny", "params": {}},
                component={"kind": "sampler", "name": "low_confidence", "params": {}},
                task={"name": "gsm8k", "version": "3.0", "split": "test", "params": {}}, item_id=str(doc),
                item_hash="h", replicate=0, seed=doc, cost=cost,
                outcome={"metric": "exact_match", "value": v, "protocol": "lm-eval"},
                generation={"text": "x", "filtered": ["x"], "filter": f}, status="ok" if v is not None else "error",
                error=None if v is not None else "lm-eval reported no value for exact_match"))
    (tmp_path / RECORDS).write_text("".join(_json.dumps(r) + "\n" for r in lines))
    (tmp_path / "lm_eval_results.json").write_text(_json.dumps({"n-shot": {"gsm8k": 5}}))
    rows = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")]
            for line in lm_eval_table(tmp_path).splitlines()[2:]}
    assert set(rows) == {"strict-match", "flexible-extract"}
    flex, strict = rows["flexible-extract"], rows["strict-match"]
    assert flex[1] == "gsm8k" and flex[2] == "3.0" and strict[1] == "" and flex[4] == strict[4] == "5"
    # the document with no value counts as a failure (harness/stats/denominator.py) and is shown as not ok
    assert flex[7] == "0.5000" and strict[7] == "0.2500" and flex[11] == "4" and flex[12] == "1"
    rows = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")]
            for line in lm_eval_table(tmp_path, exclude_errors=True).splitlines()[2:]}
    flex, strict = rows["flexible-extract"], rows["strict-match"]
    assert flex[7] == "0.6667" and strict[7] == "0.3333" and flex[11] == "3" and flex[12] == "1"


def test_show_applicability_is_what_planning_enforces():
    """`show` lists the models a component applies to by the same declaration (`noise`) that planning
    checks: the autoregressive estimator applies to causal LMs only, and a suite pairing it with a
    masked model (or a masked estimator with a causal LM) is refused before any compute."""
    import contextlib
    import io

    from harness.cli import _describe
    from harness.config import parse_suite, plan
    from harness.registry import ESTIMATORS, MODELS
    from harness.types import HarnessError

    ar = _describe("estimators", "autoregressive")["applies"]
    assert ar.startswith("applies to: causal LMs (hf_causal;"), ar
    assert "hf_causal" not in _describe("estimators", "mc_elbo")["applies"]
    for model, est in (("tiny", "autoregressive"), ("hf_causal", "mc_elbo")):
        fits = [m for m in MODELS.names() if getattr(MODELS.get(m), "noise", "masked")
                == getattr(ESTIMATORS.get(est), "noise", "masked")]
        assert model not in fits
        suite = {"suite": "x", "models": {"m": {"name": model, "params": {} if model == "tiny" else {"path": "gpt2"}}},
                 "tasks": {"t": {"name": "addition", "split": "test", "n_items": 2}},
                 "studies": [{"id": "a", "kind": "likelihood", "model": "m", "task": "t", "estimator": {"name": est}}]}
        with pytest.raises(HarnessError, match=f"estimator '{est}' is for .* but model '{model}'"):
            with contextlib.redirect_stderr(io.StringIO()):
                plan(parse_suite(suite, "inline"))
