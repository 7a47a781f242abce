"""`dlm-harness score` (harness/score.py): generations made elsewhere become a normal harness run;
`report --protocol` re-scores stored generations; the generate study cuts at stop strings."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.records import read_manifest, read_records
from harness.score import parse_fields, rescore, score_file
from harness.types import HarnessError

ROOT = Path(__file__).resolve().parents[1]

ROWS = [
    {"id": "q1", "question": "2+2?", "generation": "It is 4. The answer is 4.", "answer": "#### 4"},
    {"id": "q2", "question": "x?", "generation": "<answer>\\boxed{43,500}</answer>", "answer": "43500"},
    {"id": "q3", "question": "y?", "generation": "The answer is 42.\n\nQuestion: next? The answer is 7.", "answer": 42},
    {"id": "q4", "question": "z?", "answer": 5},  # no generation: a bad row
    {"id": "q5", "question": "w?", "generation": "5", "answer": "five"},  # unreadable answer: a bad row
]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _outcomes(run_dir) -> dict:
    return {r["item_id"]: (r["status"], r["outcome"] and r["outcome"]["value"]) for r in read_records(run_dir)}


def test_score_jsonl_counts_bad_rows_and_names_the_protocol(tmp_path):
    run_dir, counts = score_file(_jsonl(tmp_path / "a.jsonl", ROWS), "gsm8k", results=tmp_path / "results")
    assert counts == {"rows": 5, "scored": 3, "bad": 2, "duplicates": 0}
    assert _outcomes(run_dir) == {"q1": ("ok", 1.0), "q2": ("ok", 1.0), "q3": ("ok", 1.0),
                                  "q4": ("error", None), "q5": ("error", None)}
    m = read_manifest(run_dir)
    assert m["kind"] == "score" and m["protocol"] == "harness" and m["status"] == "complete"
    assert [(b["line"], b["item_id"]) for b in m["bad_rows"]] == [(4, "q4"), (5, "q5")]
    assert "not a number" in m["bad_rows"][1]["reason"]
    recs = read_records(run_dir)
    assert {r["cell_id"] for r in recs} == {"gsm8k[protocol=harness]"}
    assert all(r["task"]["params"]["protocol"] == "harness" for r in recs)
    assert recs[2]["generation"]["text"] == ROWS[2]["generation"]  # stored raw; the cut happens in grading


def test_score_under_d1_and_report_rescores(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", ROWS)
    run_dir, _ = score_file(src, "gsm8k", protocol="d1", results=tmp_path / "results")
    assert {k: v for k, v in _outcomes(run_dir).items() if v[0] == "ok"} == {
        "q1": ("ok", 0.0), "q2": ("ok", 0.0), "q3": ("ok", 0.0)}  # no box / tag; '43,500' reads 43
    again, metrics = rescore(read_records(run_dir), "harness")
    assert [r["outcome"]["value"] for r in again if r["status"] == "ok"] == [1.0, 1.0, 1.0]
    assert {r["cell_id"] for r in again} == {"gsm8k[protocol=harness]"} and metrics == {"accuracy": "higher"}

    from harness.report.markdown import write_report

    path = write_report(run_dir, tmp_path / "reports", protocol="strict")
    text = Path(path).read_text()
    assert path.parent.name.endswith("-strict") and "(strict)" in text and "2 unit(s) not ok" in text


def test_lm_eval_samples_file(tmp_path):
    rows = []
    for i, (gen, ans) in enumerate([("So 18. #### 18", "... #### 18"), ("The answer is 1,000.", "... #### 1,000")]):
        for f in ("strict-match", "flexible-extract"):  # lm-eval writes one row per filter
            rows.append({"doc_id": i, "doc": {"question": f"q{i}", "answer": ans}, "target": ans,
                         "resps": [[gen]], "filtered_resps": ["?"], "filter": f})
    run_dir, counts = score_file(_jsonl(tmp_path / "samples_gsm8k.jsonl", rows), "gsm8k", protocol="lm-eval",
                                 results=tmp_path / "results")
    assert counts == {"rows": 4, "scored": 2, "bad": 0, "duplicates": 2}
    recs = read_records(run_dir)
    assert read_manifest(run_dir)["source"]["format"] == "lm-eval-samples"
    assert [(r["outcome"]["value"], r["outcome"]["extra"]["flexible-extract"]) for r in recs] == [(1.0, 1.0),
                                                                                                  (0.0, 1.0)]


def test_d1_generations_json_sudoku_cell_accuracy(tmp_path):
    d1 = {"generations": [
        {"question": "3024400313022400", "generations": "<answer>\n3124\n4213\n1342\n2431\n</answer><|eot_id|>",
         "ground_truth": "3124421313422431"},
        {"question": "3024400313022400", "generations": "<answer>31244213</answer>",
         "ground_truth": "3124421313422431"},
    ]}
    src = tmp_path / "sudoku_0_generations.json"
    src.write_text(json.dumps(d1))
    run_dir, counts = score_file(src, "sudoku4", protocol="d1", results=tmp_path / "results")
    recs = read_records(run_dir)
    assert [(r["outcome"]["metric"], r["outcome"]["value"]) for r in recs] == [("cell_accuracy", 1.0),
                                                                               ("cell_accuracy", 0.5)]
    assert read_manifest(run_dir)["metrics"] == {"cell_accuracy": "higher"}


def test_fields_mapping_and_errors(tmp_path):
    assert parse_fields("question=q, generation=out") == {"question": "q", "generation": "out"}
    with pytest.raises(HarnessError, match="unknown role 'prompt'"):
        parse_fields("prompt=q")
    src = _jsonl(tmp_path / "m.jsonl", [{"q": "?", "out": "#### 3", "gold": "3"}])
    run_dir, counts = score_file(src, "gsm8k", fields=parse_fields("question=q,generation=out,answer=gold"),
                                 results=tmp_path / "results")
    assert counts["scored"] == 1 and _outcomes(run_dir) == {"1": ("ok", 1.0)}
    with pytest.raises(HarnessError, match="no 'lm-eval' protocol"):
        score_file(src, "sudoku4", protocol="lm-eval", results=tmp_path / "results")


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_cli_score_prints_run_dir_last_and_compare_pairs_two_systems(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", ROWS[:3])
    b = _jsonl(tmp_path / "b.jsonl", [{**r, "generation": "no idea"} for r in ROWS[:3]])
    runs = []
    for src in (a, b):
        p = _cli("score", str(src), "--task", "gsm8k", "--results", str(tmp_path / "results"))
        assert p.returncode == 0, p.stderr
        runs.append(p.stdout.strip().splitlines()[-1])
        assert (Path(runs[-1]) / "manifest.json").is_file()
    p = _cli("compare", *runs, "--metric", "accuracy")
    assert re.search(r"\| gsm8k\[protocol=harness\] \| accuracy \| 3 \| 1\.0+ \| 0\.0+ \|", p.stdout), p.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"generation": "1"}\n{broken\n')
    p = _cli("score", str(bad), "--task", "gsm8k", "--results", str(tmp_path / "results"))
    assert p.returncode == 2 and f"{bad}:2: not a JSON line" in p.stderr and "Traceback" not in p.stderr


def test_suite_protocol_key_becomes_the_task_param():
    from harness.config import parse_suite

    data = {"suite": "p", "models": {"tiny": {"name": "tiny"}},
            "tasks": {"g": {"name": "gsm8k", "protocol": "d1"}, "h": {"name": "humaneval", "protocol": "harness"}},
            "studies": [{"id": "s", "kind": "generate", "model": "tiny", "task": "g",
                         "sampler": {"name": "low_confidence"}}]}
    suite = parse_suite(data, "suite.yaml")
    assert suite.tasks["g"].params == {"protocol": "d1"} and suite.tasks["h"].params == {}
    data["tasks"]["h"]["protocol"] = "strict"
    with pytest.raises(HarnessError, match=r"suite.yaml.tasks.h.protocol: task 'humaneval' has no 'strict'"):
        parse_suite(data, "suite.yaml")


def test_generate_study_cuts_at_stop_strings(monkeypatch):
    """The native path scores what the task's stop strings leave: an invented next question is
    not read, and the record names the protocol (the RL rewards call the same Task.grade)."""
    from harness import studies
    from harness.registry import TASKS
    from harness.studies import Batch
    from harness.types import Generation

    task = TASKS.build("gsm8k", {})
    item = task.item_from_answer("x", "q", "42")
    text = "She has 42 left. The answer is 42.\n\nQuestion: Bob has 3 and gets 4. The answer is 7."
    monkeypatch.setattr(studies, "_prompts", lambda denoiser, items, prefill="": (torch.zeros(1, 1), torch.ones(1, 1)))

    def sampler(denoiser, ids, **kw):
        return Generation(tokens=torch.zeros(1, 2, dtype=torch.long), text=[text],
                          commit_step=torch.zeros(1, 2, dtype=torch.long), gen_len=torch.tensor([2]), steps=1)

    out = studies.generate(None, task, sampler, Batch(items=[item], replicates=[0], generators=[None]))
    assert out[0]["outcome"]["value"] == 1.0 and out[0]["outcome"]["protocol"] == "harness"
    assert out[0]["generation"]["text"] == text
    assert task.grade(item, text.replace("42", "41", 2)).value == 0.0  # the 7 after the cut is never read


def test_no_path_scores_around_grade():
    """Rewards and the generate study call Task.grade (stop strings + protocol), never task.score."""
    for path in [ROOT / "harness" / "studies.py", *sorted((ROOT / "harness" / "algorithms").glob("*.py"))]:
        assert "task.score(" not in path.read_text(), path


def test_eval_protocol_applies_to_harness_yaml_tasks_only():
    from harness.evaluate import _check_protocol, _protocol_of

    harness_yaml = {"gsm8k": {"task": "dlmh_gsm8k", "source": "harness-yaml"}}
    builtin = {"gsm8k": {"task": "gsm8k", "source": "lm-eval-builtin"}}
    _check_protocol("d1", harness_yaml)
    _check_protocol("lm-eval", builtin)
    with pytest.raises(HarnessError, match="built-in task 'gsm8k' scores with its own metrics"):
        _check_protocol("d1", builtin)
    with pytest.raises(HarnessError, match="task 'humaneval' has no 'd1'"):
        _check_protocol("d1", {"humaneval": {"task": "dlmh_humaneval", "source": "harness-yaml"}})
    assert _protocol_of("gsm8k", {"doc": {"question": "q"}}) == "lm-eval"
    assert _protocol_of("dlmh_gsm8k", {"doc": {"task_params": '{"protocol": "d1"}'}}) == "d1"
    assert _protocol_of("dlmh_gsm8k", {"doc": {"task_params": "{}"}}) == "harness"


def test_bridge_accuracy_stays_whole_answer_accuracy_under_d1_sudoku():
    from harness.tasks.lm_eval.utils import process_results

    doc = {"id": "x", "prompt": "3024400313022400=", "reference": "3124421313422431", "task": "sudoku4",
           "task_params": '{"protocol": "d1"}',
           "meta": json.dumps({"puzzle": "3024400313022400", "solution": "3124421313422431"})}
    assert process_results(doc, ["<answer>31244213</answer>"]) == {"accuracy": 0.0}  # cells: 0.5
    assert process_results(doc, ["<answer>3124421313422431</answer>"]) == {"accuracy": 1.0}
