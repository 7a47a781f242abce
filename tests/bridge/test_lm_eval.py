"""The lm-eval side of the bridge: the registered LM, the offline dlmh_* YAMLs through
simple_evaluate, `dlm-harness eval` writing a harness run, and the plain `lm_eval` CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.registry import TASKS

REPO = Path(__file__).resolve().parents[2]
STANDARD = ("gsm8k", "math500", "humaneval", "mbpp")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


# The offline copies the dlmh_* YAMLs read (../shared/data or $DLM_HARNESS_DATA).
DATA_FILES = ("gsm8k/test.jsonl", "math500/test.jsonl", "humaneval/HumanEval.jsonl.gz", "mbpp/mbpp.jsonl",
              "countdown/cd3_test.jsonl", "sudoku/4x4_test.csv")


def _need_data(*files: str) -> None:
    from harness.tasks.data import data_dir

    missing = [f for f in files or DATA_FILES if not (data_dir() / f).is_file()]
    if missing:
        pytest.skip(f"offline data files absent under {data_dir()}: {missing} (set DLM_HARNESS_DATA)")


def _need_real_tasks():
    missing = [t for t in STANDARD if t not in TASKS]
    if missing:
        pytest.skip(f"harness tasks not available yet: {missing}")
    _need_data()


def test_model_is_registered_and_rolling_sums_disjoint_windows(tmp_path):
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from harness.bridge.engine import Request
    from harness.bridge.lm_eval import DLMHarnessLM

    assert get_model("dlm-harness") is DLMHarnessLM
    lm = DLMHarnessLM(model="tiny", n_mc=4, batch_size=2, records=str(tmp_path / "side.jsonl"))
    text = "1234567890123456789"  # 19 tokens: the 13-position model scores it in two windows
    inst = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0, metadata=("t", 5, 1))
    (total,) = lm.loglikelihood_rolling([inst])
    t = lm.engine.denoiser.tokenizer.encode(text)
    eos = lm.engine.denoiser.eos_id
    windows = [([eos], t[0:12], Request("t", 5, 0)), (t[6:12], t[12:19], Request("t", 5, 1))]
    by_hand = lm.engine.score(windows, greedy=False)
    assert total == pytest.approx(sum(v for v, _ in by_hand), abs=1e-9)
    assert lm.rank == 0 and lm.world_size == 1


def test_rank_and_world_size_come_from_torchrun_env(monkeypatch):
    from harness.bridge.lm_eval import DLMHarnessLM

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    lm = DLMHarnessLM(model="tiny")
    assert (lm.rank, lm.world_size) == (1, 2)


def test_offline_task_mapping_and_suite_file():
    from harness.evaluate import load_eval_suite, resolve_tasks

    m = resolve_tasks(["gsm8k", "math500", "humaneval", "mbpp", "dlmh_sudoku4", "hellaswag"], "auto")
    assert {k: v["task"] for k, v in m.items()} == {
        "gsm8k": "dlmh_gsm8k", "math500": "dlmh_minerva_math500", "humaneval": "dlmh_humaneval",
        "mbpp": "dlmh_mbpp", "dlmh_sudoku4": "dlmh_sudoku4", "hellaswag": "hellaswag"}
    assert m["hellaswag"]["source"] == "lm-eval-builtin" and m["gsm8k"]["source"] == "harness-yaml"
    assert resolve_tasks(["gsm8k"], "lm-eval")["gsm8k"]["task"] == "gsm8k"
    suite, spec, metrics, _ = load_eval_suite(REPO / "suites" / "lm-eval.yaml")
    assert suite == "lm-eval" and spec.tasks == ("gsm8k", "minerva_math500", "humaneval", "mbpp")
    assert metrics == {"accuracy": "higher", "pass@1": "higher"}


@pytest.mark.slow
def test_simple_evaluate_three_items_per_task(tmp_path):
    _need_real_tasks()
    from harness.bridge.lm_eval import DLMHarnessLM, simple_evaluate
    from harness.evaluate import INCLUDE_PATH
    from harness.tasks.lm_eval import utils  # noqa: F401  (loaded by lm-eval from its path too)

    tasks = ["dlmh_gsm8k", "dlmh_minerva_math500", "dlmh_humaneval", "dlmh_mbpp", "dlmh_countdown3", "dlmh_sudoku4"]
    lm = DLMHarnessLM(model="tiny", batch_size=4, records=str(tmp_path))
    out = simple_evaluate(lm, tasks, include_path=str(INCLUDE_PATH), metadata={}, limit=3, num_fewshot=None,
                          seed=0, bootstrap_iters=0)
    harness_name = {"dlmh_gsm8k": "gsm8k", "dlmh_minerva_math500": "math500", "dlmh_humaneval": "humaneval",
                    "dlmh_mbpp": "mbpp", "dlmh_countdown3": "countdown3", "dlmh_sudoku4": "sudoku4"}
    for task in tasks:
        res = out["results"][task]
        metric = "pass@1,all-completions" if task in ("dlmh_humaneval", "dlmh_mbpp") else "accuracy,none"
        assert res["sample_len"] == 3 and 0.0 <= res[metric] <= 1.0
        samples = out["samples"][task]
        assert [s["doc_id"] for s in samples] == [0, 1, 2]
        params = json.loads(samples[0]["doc"]["task_params"])
        built = TASKS.build(harness_name[task], params)
        expected = [r["prompt"] for r in utils.rows(harness_name[task], "test", params)[:3]]
        assert [s["arguments"][0][0] for s in samples] == expected  # the harness task's prompts
        assert samples[0]["doc"]["source"] == str(built.source())
    side = [json.loads(x) for x in (tmp_path / "side_records.jsonl").read_text().splitlines()]
    gens = [r for r in side if r["type"] == "generate_until"]
    assert len(gens) == 3 * len(tasks) and all(r["cost"]["nfe"] > 0 for r in gens)
    assert all(r["gen_length"] <= 12 and r["gen_length_capped"] for r in gens)  # the 13-position context


@pytest.mark.slow
def test_dlm_harness_eval_offline_writes_a_harness_run(tmp_path):
    _need_real_tasks()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [str(REPO / ".venv" / "bin" / "dlm-harness"), "eval", "--model", "tiny",
           "--tasks", "gsm8k,minerva_math500,humaneval,mbpp", "--limit", "5", "--results", str(tmp_path)]
    if not Path(cmd[0]).exists():
        cmd[:1] = [sys.executable, "-m", "harness.cli"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    names = {p.name for p in run_dir.iterdir()}
    assert {"manifest.json", "records.jsonl", "lm_eval_results.json", "side_records.jsonl"} <= names
    for t in ("dlmh_gsm8k", "dlmh_minerva_math500", "dlmh_humaneval", "dlmh_mbpp"):
        assert f"samples_{t}.jsonl" in names
    from harness.records import read_manifest, read_records

    manifest = read_manifest(run_dir)
    assert manifest["status"] == "complete"
    assert {v["via"] for v in manifest["data_sources"].values()} == {"harness-yaml"}
    recs = read_records(run_dir)
    assert len(recs) == 20 and all(r["status"] == "ok" for r in recs)
    assert {r["outcome"]["metric"] for r in recs} == {"accuracy", "pass@1"}
    assert all(r["cost"]["nfe"] > 0 for r in recs)
    from harness.tasks.sandbox import level_name  # where the completions of the code tasks ran

    code = {"dlmh_humaneval", "dlmh_mbpp"}
    assert manifest["sandbox"] == {t: level_name() for t in code}
    assert [r.get("sandbox") for r in recs if r["task"]["name"] in code] == [level_name()] * 10
    assert all("sandbox" not in r for r in recs if r["task"]["name"] not in code)
    from harness.report.markdown import write_report
    from harness.stats.gate import gate

    assert write_report(run_dir, tmp_path / "reports").exists()
    rows, _ = gate(run_dir, run_dir)  # `compare` reads it: a run against itself is never worse
    assert rows and all(c.verdict != "worse" for _, c, _, _ in rows)


@pytest.mark.slow
def test_plain_lm_eval_cli_with_include_path(tmp_path):
    _need_data("countdown/cd3_test.jsonl")
    lm_eval_bin = REPO / ".venv" / "bin" / "lm_eval"
    if not lm_eval_bin.exists():
        pytest.skip("no lm_eval console script in .venv")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    inc = REPO / "harness" / "tasks" / "lm_eval"
    proc = subprocess.run(
        [str(lm_eval_bin), "--model", "dlm-harness", "--model_args", "model=tiny,sampler=low_confidence,batch_size=2",
         "--include_path", str(inc), "--tasks", str(inc / "dlmh_countdown3.yaml"), "--limit", "2",
         "--output_path", str(tmp_path / "out"), "--log_samples"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dlmh_countdown3" in proc.stdout and "accuracy" in proc.stdout
    assert list((tmp_path / "out").rglob("results_*.json"))


def test_yaml_stop_strings_and_lengths_match_the_harness_tasks():
    _need_real_tasks()
    import yaml

    inc = REPO / "harness" / "tasks" / "lm_eval"

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    for name, harness_task in (("dlmh_gsm8k", "gsm8k"), ("dlmh_gsm8k_cot", "gsm8k"),
                               ("dlmh_minerva_math500", "math500"), ("dlmh_humaneval", "humaneval"),
                               ("dlmh_mbpp", "mbpp")):
        cfg = yaml.load((inc / f"{name}.yaml").read_text(), Loader=Loader)
        assert cfg["task"] == name and cfg["dataset_kwargs"]["harness_task"] == harness_task
        task = TASKS.build(harness_task, cfg["dataset_kwargs"].get("task_params") or {})
        assert tuple(cfg["generation_kwargs"]["until"]) == tuple(task.stop_strings), name
        assert cfg["generation_kwargs"]["max_gen_toks"] == task.gen_length, name


def test_code_scoring_reports_unbiased_pass_at_k():
    from harness.tasks.lm_eval import utils

    assert utils.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert utils.pass_at_k(10, 3, 1) == pytest.approx(0.3) and utils.pass_at_k(4, 0, 1) == 0.0
    doc = utils.rows("addition", "test", {"n_test": 2})[0]  # any harness task's scorer works the same way
    right, wrong = doc["reference"], str(int(doc["reference"]) + 1)
    out = utils.process_code(doc, [[right] * 3 + [wrong] * 7])
    assert out == {"pass@1": pytest.approx(0.3), "pass@10": 1.0}
    assert utils.process_code(doc, [[wrong]]) == {"pass@1": 0.0}
    assert utils.process_results(doc, [right]) == {"accuracy": 1.0}


def test_apply_chat_template_as_lm_evals_flag_passes_it(tmp_path):
    """lm-eval's --apply_chat_template calls the LM's apply_chat_template: the contexts the model
    sees are the tokenizer's chat turns (llada preset tiny: 'user: ...\\nassistant: ')."""
    _need_data("countdown/cd3_test.jsonl")
    from harness.bridge.lm_eval import DLMHarnessLM, simple_evaluate
    from harness.evaluate import INCLUDE_PATH

    lm = DLMHarnessLM(model="llada", preset="tiny", device="cpu", steps=4, max_gen_toks=4, batch_size=2,
                      records=str(tmp_path))
    assert lm.chat_template(True) and lm.chat_template(False) is None
    assert lm.apply_chat_template([{"role": "user", "content": "hi"}]) == "user: hi\nassistant: "
    out = simple_evaluate(lm, ["dlmh_countdown3"], include_path=str(INCLUDE_PATH), metadata={}, limit=2,
                          num_fewshot=None, seed=0, bootstrap_iters=0, apply_chat_template=True)
    contexts = [s["arguments"][0][0] for s in out["samples"]["dlmh_countdown3"]]
    assert len(contexts) == 2
    assert all(c.startswith("user: ") and c.endswith("assistant: ") for c in contexts), contexts
    with pytest.raises(Exception, match="chat template"):
        DLMHarnessLM(model="tiny").apply_chat_template([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("path", sorted((REPO / "suites").glob("lm-eval*.yaml")), ids=lambda p: p.name)
def test_every_shipped_eval_suite_loads_and_its_model_args_validate(path):
    """lm-eval suite files (their own schema): every EvalSpec key known, every model_args key owned by
    the model, sampler or estimator (checked against the registries without loading a checkpoint)."""
    from harness.bridge.engine import split_model_args
    from harness.evaluate import load_eval_suite

    suite, spec, metrics, _ = load_eval_suite(path)
    parts = split_model_args({"model": spec.model, "sampler": spec.sampler, "estimator": spec.estimator,
                              **spec.model_args})
    assert suite and spec.tasks and parts["bridge"]["model"] == spec.model
    if spec.fewshot_as_multiturn:
        assert spec.apply_chat_template is not False
