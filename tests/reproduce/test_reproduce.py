"""`dlm-harness reproduce`: the published tables load and validate, rows the harness cannot express say
so, the plan runs on a CPU with a GPU estimate, a d1 generation file is scored under d1's protocol, and
the published-vs-measured comparison is the interval it claims."""
from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

import pytest

from harness import reproduce as R
from harness.cli import component_index, main
from harness.types import HarnessError

HERE = Path(__file__).resolve().parent
D1_FILE = HERE / "gsm8k_d1-llada_256_128_0_generations.json"

INDEX = component_index()  # the registries' fields: what a row can express


def _find(name: str):
    return R.find(name, index=INDEX)


def test_every_table_loads_with_enough_sourced_rows():
    ts = R.tables(index=INDEX)
    rows = [r for t in ts for r in t.rows]
    assert len(rows) >= 40
    assert len({(r.source.get("paper"), r.source["where"]) for r in rows}) >= 6
    for r in rows:
        assert r.source["where"] and r.published["metric"]
        assert 0 <= r.published["value"] <= 100
    # each named table is present, and each row of a family's table names that family
    assert {"llada-8b-base", "llada-8b-instruct", "llada-1.5", "fast-dllm", "d1", "d3llm-aup"} <= {t.name for t in ts}


def test_published_numbers_transcribed_from_their_sources():
    """Spot checks against the source files (LLaDA EVAL.md, Fast-dLLM README, d3LLM data_llada.yaml)."""
    inst = {r.id: r for r in _find("llada-8b-instruct").rows}
    assert inst["gsm8k-opencompass"].published["value"] == 68.8
    assert inst["gsm8k-opencompass"].decoding == {"sampler": "low_confidence", "gen_length": 512, "steps": 512,
                                                  "block_length": 512, "confidence_eos_eot_inf": True}
    assert inst["humaneval-internal"].decoding["logits_eos_inf"] is True
    assert inst["gsm8k-semiar-internal"].published["value"] == 78.6
    fast = {r.id: r for r in _find("fast-dllm").rows}
    assert fast["gsm8k-512-fast-dllm"].published == {"value": 77.2, "metric": "accuracy", "tokens_per_s": 35.3,
                                                     "speedup": 11.0, "speedup_over": "gsm8k-512-llada"}
    base = {r.id: r for r in _find("llada-8b-base").rows}
    assert base["gsm8k-lm-eval-1024"].published["value"] == 70.3
    assert base["truthfulqa-ppl-cfg"].decoding["cfg"] == 2.0


def test_rows_the_harness_cannot_express_list_what_is_missing():
    base = {r.id: r for r in _find("llada-8b-base").rows}
    bbh = base["bbh-lm-eval-1024"]
    assert not bbh.runnable and any("'bbh' has no harness task" in m for m in bbh.missing)
    ppl = base["arc-c-ppl-cfg"]  # mc_num and cfg are not mc_elbo parameters: said, not dropped
    assert any("decoding mc_num=128" in m for m in ppl.missing) and any("cfg=0.5" in m for m in ppl.missing)
    d1 = {r.id: r for r in _find("d1").rows}["gsm8k-256"]
    assert not d1.runnable and d1.missing == [
        "model: the d1-LLaDA weights are not a hub checkpoint the table can name (give a path to run)"]
    assert d1.source["kind"] == "secondary"
    # their prompt parity is tested (test_prompt_parity.py)
    assert base["humaneval-lm-eval-256"].runnable and base["gsm8k-lm-eval-256"].runnable


def _write(tmp_path: Path, text: str, name="t.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = """table: t
title: T
source: {where: "somewhere"}
model: GSAI-ML/LLaDA-8B-Instruct
family: llada
rows:
  - {id: a, task: gsm8k, protocol: {scoring: harness}, harness: {task: {name: gsm8k}},
     decoding: {sampler: low_confidence, gen_length: 64, steps: 64, not_a_knob: 3},
     published: {value: 50, metric: accuracy}}
"""


def test_unknown_sampler_parameter_becomes_missing(tmp_path):

    t = R.load_table(_write(tmp_path, GOOD), INDEX)
    assert t.rows[0].missing == ["decoding not_a_knob=3: sampler low_confidence has no such parameter"]


def test_protocol_model_options_reach_the_model_or_become_missing(tmp_path):
    """`chat_template` and `add_special_tokens` are model options: a family without them is listed as
    missing; the suite passes them to the model; a value other than true/false/null is an error."""
    text = GOOD.replace(", not_a_knob: 3", "").replace("protocol: {scoring: harness}",
                                                       "protocol: {scoring: harness, add_special_tokens: true}")
    row = R.load_table(_write(tmp_path, text), INDEX).rows[0]
    assert row.runnable and R.row_model_options(row) == {"add_special_tokens": True}
    suite = R.suite_for(R.load_table(_write(tmp_path, text), INDEX), [row], {}, n_items=1)
    assert suite["models"]["GSAI-ML_LLaDA-8B-Instruct-add_special_tokens_true"]["params"] == {
        "path": "GSAI-ML/LLaDA-8B-Instruct", "add_special_tokens": True}
    other = R.load_table(_write(tmp_path, text.replace("family: llada", "family: hf_causal")), INDEX).rows[0]
    assert "protocol add_special_tokens=True: model family hf_causal has no option add_special_tokens" in other.missing
    path = _write(tmp_path, text.replace("add_special_tokens: true", "add_special_tokens: 2"))
    with pytest.raises(HarnessError, match=r"protocol.add_special_tokens: expected true, false or null, got 2"):
        R.load_table(path)


def test_a_row_whose_prefill_its_task_does_not_feed_is_refused(tmp_path):
    from harness.registry import TASKS

    text = GOOD.replace(", not_a_knob: 3", "").replace("protocol: {scoring: harness}",
                                                       "protocol: {scoring: harness, prefill: <reasoning>}")
    t = R.load_table(_write(tmp_path, text), INDEX)
    with pytest.raises(HarnessError, match="the protocol's prefill is '<reasoning>' but harness task gsm8k"):
        R.run_rows(t, None, results=tmp_path / "res")
    R.check_prefill(t.rows[0], TASKS.build("gsm8k", {"prompt_format": "d1-eval"}))  # the d1-eval format feeds it


@pytest.mark.parametrize("edit,needle", [
    (("published: {value: 50,", "published: {value: 150,"), "row 'a'.published.value: 150 is outside [0, 100]"),
    (("protocol: {scoring: harness}", "protocol: {scoring: harness, shots: 1, shot: 2}"),
     "row 'a'.protocol: unknown key 'shot'"),
    (("decoding: {sampler: low_confidence,", "decoding: {"), "row 'a'.decoding: expected a mapping with 'sampler'"),
    (("table: t", "table: other"), ".table: expected the file's stem 't'"),
    (("published: {value: 50,", "differs: padding, published: {value: 50,"), "row 'a'.differs: expected a list"),
    (("source: {where: \"somewhere\"}", "source: {paper: x}"), ".source: key 'where' is required"),
])
def test_schema_errors_name_file_row_and_key(tmp_path, edit, needle):
    path = _write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(HarnessError) as exc:
        R.load_table(path)
    assert str(path) in str(exc.value) and needle in str(exc.value)


def test_dry_run_plans_every_row_with_a_gpu_estimate(capsys):
    assert main(["reproduce", "llada-8b-instruct", "--dry-run"]) == 0
    out = capsys.readouterr().out
    t = _find("llada-8b-instruct")
    plan = R.plan_rows(t, t.rows)
    assert len(plan) == len(t.rows) == 22
    for p in plan:
        assert p["per_item_s"] is not None and p["per_item_s"][1] >= p["per_item_s"][0] >= 0
        assert p["row"] in out
    g = next(p for p in plan if p["row"] == "gsm8k-semiar-opencompass")
    assert g["nfe_lo"] == g["nfe_hi"] == 256  # LLaDA: steps passes per sequence
    assert math.isclose(g["per_item_s"][1], 256 * g["canvas"] / 30000)
    assert "ESTIMATE" in out and "30000 tokens/s" in out


def test_adaptive_rows_plan_a_range_of_forward_passes():
    fast = {r.id: r for r in _find("fast-dllm").rows}
    lo, hi, how = R.forward_passes(fast["gsm8k-256-fast-dllm"])
    assert (lo, hi) == (8, 256) and "adaptive" in how  # one pass per block of 32 at best, one per token at worst


def test_list_shows_every_row_with_status_and_source(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    n = sum(len(t.rows) for t in R.tables(index=INDEX))
    assert f"{n} published rows" in out
    assert "ML-GSAI/LLaDA EVAL.md" in out and "NVlabs/Fast-dLLM README.md" in out
    assert "missing: " in out and "runnable" in out
    blocks = {b.split(":", 1)[0]: b for b in out.split("\n\n")}
    for t in R.tables(index=INDEX):  # every row's line names its source
        for r in t.rows:
            line = next(x for x in blocks[t.name].splitlines() if x.startswith(f"  {r.id} "))
            assert r.source["where"] in line and f"{r.published['value']:g}%" in line
    assert main(["reproduce", "no-such-table"]) == 2
    assert "no such table" in capsys.readouterr().err


def test_d1_generations_scored_under_d1_protocol(tmp_path, capsys):
    """The file names its row (d1's `<task>_<model>_<gen_length>_<steps>_<rank>_generations.json` and its
    header): gsm8k at 256 tokens. d1's parser gives 2 of 6 where the harness parser gives 6 of 6."""
    rc = main(["reproduce", "d1", "--generations", str(D1_FILE), "--results", str(tmp_path)])
    assert rc == 0
    report = Path(capsys.readouterr().out.strip().splitlines()[-1])
    data = json.loads(report.with_suffix(".json").read_text())
    assert [d["row"] for d in data] == ["gsm8k-256"]
    d = data[0]
    assert d["n"] == 6 and math.isclose(d["measured"], 2 / 6)
    assert d["published"] == pytest.approx(0.811)
    assert d["significant"] is True  # 33% against 81.1% on 6 items: the interval excludes 0
    text = report.read_text()
    assert "scoring d1" in text and "prefill '<reasoning>'" in text and "| gsm8k-256 |" in text
    recs = [json.loads(x) for x in (report.parent / "records.jsonl").read_text().splitlines()]
    assert {r["outcome"]["protocol"] for r in recs} == {"d1"}


def test_generations_file_of_an_unknown_row_is_refused(tmp_path):
    other = tmp_path / "gsm8k_x_1024_512_0_generations.json"
    other.write_text(D1_FILE.read_text().replace('"gen_length": 256', '"gen_length": 1024'))
    with pytest.raises(HarnessError, match="cannot tell which row"):
        R.score_generations(_find("d1"), None, other, results=tmp_path)


def test_compare_is_newcombes_interval():
    from harness.stats.intervals import wilson_interval

    vals = [1.0] * 70 + [0.0] * 30
    c = R.compare({"value": 60.0, "metric": "accuracy"}, vals, 500)
    m, p = wilson_interval(70, 100), wilson_interval(300, 500)
    assert math.isclose(c["diff"], 0.1)
    assert math.isclose(c["diff_lo"], 0.1 - math.sqrt((0.7 - m.lo) ** 2 + (p.hi - 0.6) ** 2))
    assert math.isclose(c["diff_hi"], 0.1 + math.sqrt((m.hi - 0.7) ** 2 + (0.6 - p.lo) ** 2))
    assert c["significant"] == (c["diff_lo"] > 0)
    same = R.compare({"value": 70.0, "metric": "accuracy"}, vals, 500)
    assert same["significant"] is False and same["diff_lo"] < 0 < same["diff_hi"]


def test_suite_of_runnable_rows_is_a_valid_suite():
    from harness.config import parse_suite

    t = _find("fast-dllm")
    rows = R.select(t, ["gsm8k-256-llada", "gsm8k-256-fast-dllm"])
    suite = R.suite_for(t, rows, {"dtype": "bfloat16"}, n_items=2)
    # eval_llada.py wraps Instruct prompts and encodes them with special tokens on (the protocol's model options)
    model = suite["models"]["GSAI-ML_LLaDA-8B-Instruct-chat_true-add_special_tokens_true"]
    assert model["params"] == {"path": "GSAI-ML/LLaDA-8B-Instruct", "chat": True, "add_special_tokens": True,
                               "dtype": "bfloat16"}
    s = parse_suite(suite, "reproduce")
    assert [st.id for st in s.studies] == ["gsm8k-256-llada", "gsm8k-256-fast-dllm"]
    assert s.studies[1].sampler.name == "threshold" and s.studies[1].sampler.params["cache"] == "prefix"
    assert s.tasks[s.studies[0].task].params == {"fewshot": 5, "fewshot_sampler": "lm-eval", "protocol": "lm-eval"}


TINY = """table: tiny
title: a tiny table
source: {where: "this test"}
model: none
family: llada
throughput: {tokens_per_s: 1000, device: cpu, basis: "a guess for the test"}
rows:
  - {id: add, task: addition, items: 4, protocol: {scoring: harness, chat_template: false},
     harness: {task: {name: addition}}, decoding: {sampler: low_confidence, gen_length: 8, steps: 8},
     published: {value: 50, metric: accuracy}}
"""


def test_runnable_row_runs_through_the_runner_and_reports(tmp_path, capsys):
    """A runnable row becomes a suite run by the ordinary runner; the report sets published beside
    measured with NFE per sequence and tokens per forward pass."""
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "tiny.yaml").write_text(TINY)
    rc = main(["reproduce", "tiny", "--dir", str(tmp_path / "tables"), "--results", str(tmp_path / "res"),
               "--model-param", "path=null", "--model-param", "preset=tiny", "--model-param", "device=cpu",
               "--n-items", "4", "--no-progress"])
    assert rc == 0
    report = Path(capsys.readouterr().out.strip().splitlines()[-1])
    d = json.loads(report.with_suffix(".json").read_text())[0]
    assert d["n"] == 4 and d["published"] == 0.5
    assert d["speed"]["nfe"] == 8 and math.isclose(d["speed"]["tpf"], 1.0)  # 8 steps commit 8 tokens
    assert "| add |" in report.read_text() and "8.0, 1.00" in report.read_text()
    recs = [json.loads(x) for x in (report.parent / "records.jsonl").read_text().splitlines()]
    gens = [r["generation"] for r in recs if r["kind"] == "generate"]
    assert len(gens) == 4 and all(g["nfe"] == 8 and g["tpf"] == g["gen_len"] / 8 for g in gens)  # in every record
    # the same rows and options resume the run (the suite file is rewritten identically): nothing is redone
    assert main(["reproduce", "tiny", "--dir", str(tmp_path / "tables"), "--results", str(tmp_path / "res"),
                 "--model-param", "path=null", "--model-param", "preset=tiny", "--model-param", "device=cpu",
                 "--n-items", "4", "--no-progress", "--resume", str(report.parent)]) == 0
    again = [json.loads(x) for x in (report.parent / "records.jsonl").read_text().splitlines()]
    assert len([r for r in again if r["kind"] == "generate"]) == 4


def test_speedups_state_both_kinds():
    t = _find("fast-dllm")
    base, fast = R.select(t, ["gsm8k-256-llada", "gsm8k-256-fast-dllm"])
    res = [(base, {"speed": {"nfe": 256.0, "tpf": 1.0, "tokens_per_s": 10.0}}, Path("a")),
           (fast, {"speed": {"nfe": 32.0, "tpf": 8.0, "tokens_per_s": 50.0}}, Path("a"))]
    (line,) = R.speedup_lines(res)
    assert line == ("- gsm8k-256-fast-dllm over gsm8k-256-llada: 8.1x published; 5.00x tokens/s here; 8.00x fewer "
                    "forward passes per sequence (machine-independent)")


def test_running_a_row_with_something_missing_is_refused(tmp_path):
    with pytest.raises(HarnessError, match="not runnable as published: gsm8k-256"):
        R.run_rows(_find("d1"), ["gsm8k-256"], results=tmp_path)


# -- the RL, Dream and block-diffusion tables -----------------------------------------------------------------------

NEW_TABLES = ("spg", "wd1", "tracerl", "dream-instruct", "dream-base", "d1-reported")


@functools.lru_cache(maxsize=1)
def _all() -> dict:
    """Every table, read once for the tests below (they only read them)."""
    return {t.name: t for t in R.tables(index=INDEX)}


def _rows(name: str) -> dict:
    return {r.id: r for r in _all()[name].rows}


def test_list_counts_rows_and_documents_and_every_row_has_a_source(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"^(\d+) published rows in (\d+) tables from (\d+) published tables in (\d+) documents", out, re.M)
    assert m, out[-400:]
    rows, tables, _, docs = map(int, m.groups())
    assert rows >= 40 and docs >= 6
    ts = list(_all().values())
    assert tables == len(ts) and set(NEW_TABLES) <= {t.name for t in ts}
    for t in ts:
        for r in t.rows:
            assert r.source.get("where", "").strip(), r.key
            assert r.source.get("kind", "primary") in ("primary", "secondary")


def test_new_tables_transcribed_from_their_sources():
    """Spot checks against the sources' text: SPG Table 1, wd1 Table 1, TraceRL Table 2, the dllm README's Dream
    table, SPG Table 8's d1 quotes."""
    spg = _rows("spg")
    assert len(spg) == 84  # 7 models x 4 tasks x 3 lengths
    mix = spg["spg-mixture-sudoku-256"]
    assert mix.published == {"value": 94.0, "metric": "cell accuracy"}
    assert mix.protocol["shots"] == 3 and "test_sudoku_split_new.csv" in mix.protocol["test_set"]
    assert mix.variant == "SPG answer split, 3-shot" and any("answer-split" in m for m in mix.missing)
    base = spg["llada-gsm8k-128"]
    assert base.published["value"] == 69.5 and base.model == "GSAI-ML/LLaDA-8B-Instruct"
    assert base.decoding == {"sampler": "low_confidence", "gen_length": 128, "steps": 64, "block_length": 32,
                             "temperature": 0.0}
    assert base.protocol["prefill"] == "<reasoning>" and "checkpoint" not in base.protocol
    assert "checkpoint" in spg["wd1-countdown-256"].protocol and spg["wd1-countdown-256"].published["value"] == 52.3
    wd1 = _rows("wd1")
    assert len(wd1) == 32 and wd1["wd1-sudoku-256"].published["value"] == 76.4
    assert wd1["llada-math500-512"].published["value"] == 36.2
    tr = _rows("tracerl")
    assert len(tr) == 40 and {r.family for r in tr.values()} == {"sdar"}
    dyn = tr["trado-8b-instruct-math500-dynamic"]
    assert dyn.published["value"] == 75.5 and dyn.model == "Gen-Verse/TraDo-8B-Instruct"
    assert dyn.decoding["sampler"] == "threshold" and dyn.decoding["tau"] == 0.9 and dyn.decoding["block_length"] == 4
    assert dyn.protocol["samples"] == 3 and tr["trado-4b-instruct-aime2024-static"].protocol["samples"] == 20
    boxed = {"name": "math500", "params": {"prompt_format": "boxed"}}  # the text TraDo's template wraps
    assert tr["trado-4b-instruct-math500-static"].harness_task == boxed
    dream = _rows("dream-instruct")
    assert dream["gsm8k-official"].published["value"] == 81.0 and dream["gsm8k-official"].source["kind"] == "secondary"
    assert dream["gsm8k-official"].decoding == {"sampler": "entropy", "gen_length": 256, "steps": 256,
                                                "temperature": 0.1, "top_p": 0.9, "alg_temp": 0.0}
    assert dream["humaneval-reproduced"].published["value"] == 57.9
    base = _rows("dream-base")
    assert len(base) == 26 and base["bbh-official"].published["value"] == 57.9
    assert base["gsm8k-reproduced"].decoding["temperature"] == 0.0 and base["mmlu-official"].decoding == {
        "estimator": "mc_elbo", "n_mc": 128}
    d1r = _rows("d1-reported")
    assert d1r["d1-llada-countdown-512"].published["value"] == 42.2 and "d1-llada-gsm8k-256" not in d1r  # in d1.yaml


def test_a_rows_own_source_replaces_the_tables_kind():
    """A row-level source merges over the table's: dllm's re-run rows say kind primary in a table whose default
    source (the Dream paper, quoted) is secondary, and must not inherit its quote."""
    dream = _rows("dream-instruct")
    rep = dream["gsm8k-reproduced"]
    assert rep.source["kind"] == "primary" and "Reproduced" in rep.source["where"]
    assert "quote" not in rep.source and "(secondary)" not in R._src(rep.source)


def test_rows_without_public_weights_or_with_other_test_sets_say_so():
    spg = _rows("spg")
    assert any(m.startswith("model: ") for m in spg["spg-eubo-gsm8k-512"].missing)
    assert not any(m.startswith("model: ") for m in spg["llada-1.5-gsm8k-512"].missing)
    wd1 = _rows("wd1")
    assert any("256 puzzles drawn from d1's 500" in m for m in wd1["llada-sudoku-256"].missing)
    tr = _rows("tracerl")
    assert "task 'aime2024' has no harness task" in tr["sdar-8b-chat-aime2024-static"].missing
    # runnable only where the checkpoint is public and the prompt, test set and reading are the source's: SPG's
    # LLaDA / LLaDA-1.5 MATH500 and Countdown rows (its GSM8K reading and Sudoku differ) and wd1's LLaDA rows but Sudoku
    runnable = {r.key for t in NEW_TABLES for r in _all()[t].rows if r.runnable}
    spg_ok = {f"spg/{m}-{task}-{n}" for m in ("llada", "llada-1.5") for task in ("math500", "countdown")
              for n in (128, 256, 512)}
    wd1_ok = {f"wd1/llada-{task}-{n}" for task in ("gsm8k", "math500", "countdown") for n in (256, 512)}
    assert runnable == spg_ok | wd1_ok


@pytest.mark.parametrize("name", NEW_TABLES)
def test_new_tables_plan_on_cpu(name, capsys):
    assert main(["reproduce", name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    t = _all()[name]
    assert f"plan of {len(t.rows)} rows" in out
    for p in R.plan_rows(t, t.rows):
        assert p["row"] in out
        if "estimator" not in next(r for r in t.rows if r.id == p["row"]).decoding:
            assert p["per_item_s"] is not None and p["per_item_s"][1] >= p["per_item_s"][0] > 0


@pytest.mark.parametrize("edit,needle", [
    ("samples: 0", "protocol.samples: expected an integer >= 1"),
    ("samples: 2.5", "protocol.samples: expected an integer >= 1"),
    ("checkpoint: 3", "protocol.checkpoint: expected a sentence"),
    ("test_set: \"\"", "protocol.test_set: expected a sentence"),
])
def test_protocol_samples_checkpoint_and_test_set_are_checked(tmp_path, edit, needle):
    path = _write(tmp_path, GOOD.replace("protocol: {scoring: harness}", "protocol: {scoring: harness, " + edit + "}"))
    with pytest.raises(HarnessError) as exc:
        R.load_table(path)
    assert str(path) in str(exc.value) and needle in str(exc.value)


def test_protocol_text_states_samples_checkpoint_and_test_set(tmp_path):
    good = GOOD.replace("protocol: {scoring: harness}", "protocol: {scoring: harness, samples: 3, checkpoint: "
                        "\"best of 5\", test_set: \"first 100\"}")
    r = R.load_table(_write(tmp_path, good)).rows[0]
    text = R.protocol_text(r)
    assert "mean of 3 responses per item" in text and "checkpoint best of 5" in text and "test set first 100" in text


def test_a_declared_difference_keeps_a_row_runnable_and_is_printed_with_its_status_and_result(tmp_path):
    text = GOOD.replace("not_a_knob: 3}", "block_length: 64}").replace(
        "published: {value: 50,", "differs: [\"padding: attended in the source\"], published: {value: 50,")
    (row,) = R.load_table(_write(tmp_path, text), INDEX).rows
    assert row.runnable and row.status().endswith("differs from the source: padding: attended in the source")
    table = R.load_table(_write(tmp_path, text), INDEX)
    result = R.compare(row.published, [1.0, 0.0, 1.0, 1.0], row.items)
    assert "- a: differs from the source: padding: attended in the source" in R.report_text(
        table, [(row, result, tmp_path)])
