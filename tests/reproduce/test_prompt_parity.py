"""Prompt parity of the reproduction presets: the first items' prompts as token ids, built the way the
source repository's evaluation code builds them (on the fixture tokenizers of
`../shared/fixtures/real-code`, which carry the real special ids and a LLaDA-style chat template),
against what the harness feeds for the row's harness task. Where the two differ, the row must say so
in `missing` (a row that claims to run the published setting must feed the published prompt), and the
test pins the difference so that it is a stated fact, not an accident.

Sources read (file and function):
- lm-eval 0.4.x (installed here): `ConfigurableTask.fewshot_context` with `tasks/gsm8k/gsm8k.yaml`
  and `tasks/humaneval/humaneval.yaml`, run on CPU with the local GSM8K/HumanEval data through
  `TaskConfig.custom_dataset`; few-shot seed 1234 (`simple_evaluate`'s `fewshot_random_seed`).
- NVlabs/Fast-dLLM `llada/eval_llada.py` `LLaDAEvalHarness.generate_until`: an Instruct checkpoint
  (`'instruct' in model_path.lower()`) wraps lm-eval's context as one user turn
  (`apply_chat_template(..., tokenize=False)`) and tokenizes it with `self.tokenizer(user_input)`
  (special tokens on).
- ML-GSAI/LLaDA `opencompass/opencompass/models/dllm.py` `LLaDAModel.generate` (and `chat.py`):
  `apply_chat_template(..., tokenize=False)` then `batch_encode_plus` with special tokens on.
- dllm-reasoning/d1 `eval/gsm8k.py` `GSM8KDataset.create_prompt` and `collate_fn`: the system prompt,
  a blank line and the question as one user turn, `<reasoning>` appended after the generation prompt,
  tokenized with `tokenizer(prompts)` (special tokens on). `GSM_SYSTEM_PROMPT` below is that file's
  constant (a prompt string, transcribed).
- DreamLM/Dream `eval_instruct/lm_eval/models/diffllm.py` `DiffLLM.apply_chat_template` and
  `_generate_batch`: the chat-templated string tokenized with `self.tokenizer(prompts, ...)`.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from harness import reproduce as R
from harness.cli import component_index
from harness.prompting import prompt_ids
from harness.registry import MODELS, TASKS
from tests.models import _real_code

N_ITEMS = 2
GSM_SYSTEM_PROMPT = ("You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the "
                     "final answer in a \\boxed{}. \nRespond in the following format:\n<reasoning>\nYour reasoning "
                     "here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>")
BOS = 126080

INDEX = component_index()  # the registries' fields: what a row can express


def _find(name: str):
    return R.find(name, index=INDEX)


@pytest.fixture(scope="module")
def llada(tmp_path_factory):
    """The harness's LLaDA model on build_llada.py's checkpoint (its tokenizer adds <|startoftext|>)."""
    ckpt = _real_code.build("llada", tmp_path_factory.mktemp("parity") / "llada")
    model = MODELS.build("llada", {"path": str(ckpt), "device": "cpu", "dtype": "float32"}).load()
    from transformers import AutoTokenizer

    return model, AutoTokenizer.from_pretrained(str(ckpt))


def _rows(table: str) -> dict:
    return {r.id: r for r in _find(table).rows}


def _items(row) -> list:
    task = TASKS.build(row.harness_task["name"], dict(row.harness_task.get("params") or {}))
    return task.items("test")[:N_ITEMS]


def _harness_ids(model, row, item) -> list[int]:
    return prompt_ids(model, item.prompt, chat=row.protocol.get("chat_template"))


def _declares(row, word: str) -> bool:
    return any(m.startswith("prompt:") and word in m for m in row.missing)


_INDEX: dict = {}


def _task_index(manager) -> dict:
    """lm-eval's task index, built once (indexing every task YAML takes seconds)."""
    if "index" not in _INDEX:
        _INDEX["index"] = manager().task_index
    return _INDEX["index"]


def _lm_eval_task(name: str, docs: dict, fewshot_samples: list[dict] | None = None):
    """lm-eval's own task from its installed YAML, on local documents (no hub access)."""
    import datasets
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    # lm-eval's own loader; the metric and filter functions (humaneval's load the code_eval metric) are
    # not part of the prompt and are left unresolved and dropped
    cfg = load_yaml(_task_index(TaskManager)[name].yaml_path, resolve_func=False)
    cfg = {k: v for k, v in cfg.items() if k not in ("metric_list", "filter_list", "tag", "unsafe_code")}
    cfg["custom_dataset"] = lambda **_: {s: datasets.Dataset.from_list(d) for s, d in docs.items()}
    if fewshot_samples is not None:  # a `samples: !function ...` left unresolved above
        cfg["fewshot_config"] = {**cfg["fewshot_config"], "samples": fewshot_samples}
    task = ConfigurableTask(config=cfg)
    task.set_fewshot_seed(1234)
    return task


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_llada_opencompass_chat_prompt_is_the_harness_prompt_with_a_second_bos(llada):
    """LLaDA-8B-Instruct / LLaDA 1.5 rows: the OpenCompass model (and chat.py) encode the templated text
    with special tokens on, so the template's BOS is followed by the tokenizer's: two BOS tokens. The
    harness writes one (harness/prompting.py); every chat row of those tables declares it."""
    model, tok = llada
    row = _rows("llada-8b-instruct")["gsm8k-semiar-opencompass"]
    for item in _items(row):
        text = tok.apply_chat_template([{"role": "user", "content": item.prompt}], add_generation_prompt=True,
                                       tokenize=False)
        source = tok([text])["input_ids"][0]  # batch_encode_plus (gone in transformers 5): the same call
        ours = _harness_ids(model, row, item)
        assert source[:2] == [BOS, BOS] and ours[0] == BOS and ours[1] != BOS
        assert source == [BOS, *ours]
    for table in ("llada-8b-instruct", "llada-1.5"):
        for r in _find(table).rows:
            if r.protocol.get("chat_template") and r.protocol["scoring"] != "internal":
                assert _declares(r, "two BOS"), f"{table}/{r.id}"


def test_d1_eval_prompt_differs_from_the_harness_d1_format_and_the_row_says_so(llada):
    model, tok = llada
    row = _rows("d1")["gsm8k-256"]
    for item in _items(row):
        question = item.meta["question"]
        text = tok.apply_chat_template([{"role": "user", "content": GSM_SYSTEM_PROMPT + "\n\n" + question}],
                                       add_generation_prompt=True, tokenize=False) + "<reasoning>"
        source = tok(text)["input_ids"]
        ours = _harness_ids(model, row, item)
        assert source != ours
        assert tok.decode(source[-len("<reasoning>"):]) == "<reasoning>"  # the prefill is the last thing fed
        ours_text = tok.decode(ours)  # the harness d1 format: the question, then d1's RL-training instruction
        assert "Respond in the following format" in ours_text and "You are a math expert" not in ours_text
        assert ours_text.index("Respond in the following format") > ours_text.index("user<|end_header_id|>")
    for r in _find("d1").rows:
        assert not r.runnable and _declares(r, "prefill")


def _gsm8k_docs(n_test: int) -> dict:
    from harness.tasks.data import data_dir

    root = data_dir() / "gsm8k"
    return {"train": _jsonl(root / "train.jsonl"), "test": _jsonl(root / "test.jsonl")[:n_test]}


def test_fast_dllm_gsm8k_five_shot_context_through_lm_eval(llada):
    """Fast-dLLM's GSM8K rows: lm-eval draws the five exemplars per document from the train split with
    its seeded sampler (gsm8k.yaml has no `fewshot_config`, so the default sampler); the harness gsm8k
    task takes the first five train rows. Same template and delimiters, other exemplars: the rows
    declare it, and so do the other tables' lm-eval gsm8k 5-shot rows."""
    model, tok = llada
    rows = _rows("fast-dllm")
    row = rows["gsm8k-256-llada"]
    docs = _gsm8k_docs(N_ITEMS)
    task = _lm_eval_task("gsm8k", docs)
    items = _items(row)
    for doc, item in zip(docs["test"], items):
        ctx = task.fewshot_context(doc, num_fewshot=5)
        last = f"\n\nQuestion: {doc['question']}\nAnswer:"
        assert ctx.endswith(last) and item.prompt.endswith(last)  # same template and delimiters
        assert ctx.count("Question: ") == item.prompt.count("Question: ") == 6  # five exemplars + the question
        text = tok.apply_chat_template([{"role": "user", "content": ctx}], add_generation_prompt=True,
                                       tokenize=False)  # eval_llada.py: an Instruct checkpoint is wrapped
        source = tok(text)["input_ids"]
        assert source != _harness_ids(model, row, item)
        assert ctx != item.prompt  # other exemplars
    first_five = "\n\n".join(f"Question: {d['question']}\nAnswer: {d['answer']}" for d in docs["train"][:5])
    assert items[0].prompt.startswith(first_five)
    for table in ("fast-dllm", "llada-8b-base", "d3llm-aup"):
        for r in _find(table).rows:
            if r.harness_task and r.harness_task["name"] == "gsm8k" and r.protocol.get("shots") == 5:
                assert _declares(r, "exemplars"), f"{table}/{r.id}"


def test_lm_eval_humaneval_zero_shot_prompt_is_the_harness_prompt(llada):
    """LLaDA-8B-Base's lm-eval HumanEval rows (no chat template, the tokenizer's BOS): parity holds."""
    model, tok = llada
    row = _rows("llada-8b-base")["humaneval-lm-eval-256"]
    items = _items(row)
    from harness.tasks.data import data_dir

    with gzip.open(data_dir() / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        docs = [json.loads(x) for x in f][:N_ITEMS]
    task = _lm_eval_task("humaneval", {"test": docs})
    for doc, item in zip(docs, items):
        ctx = task.fewshot_context(doc, num_fewshot=0)
        assert ctx == item.prompt  # the text itself (the fixture tokenizer maps \r and non-ASCII to one id)
        source = tok(ctx)["input_ids"]  # LLaDA eval_llada.py generate_until: self.tokenizer(question), no chat
        assert source == prompt_ids(model, item.prompt, chat=False)
    assert row.runnable



def _lm_eval_mbpp_fewshot() -> list[dict]:
    """lm-eval's `tasks/mbpp/utils.py` `list_fewshot_samples()`: its return value is a literal, read with
    `ast` (importing the module loads the code_eval metric, which needs the network)."""
    import ast

    import lm_eval

    src = (Path(lm_eval.__file__).parent / "tasks" / "mbpp" / "utils.py").read_text()
    fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "list_fewshot_samples")
    ret = next(n for n in ast.walk(fn) if isinstance(n, ast.Return))
    return ast.literal_eval(ret.value)


def test_lm_eval_mbpp_three_shot_prompt_is_the_harness_prompt(llada):
    """LLaDA-8B-Base's lm-eval MBPP rows (3-shot, exemplars task ids 2-4 by lm-eval's first_n sampler over
    `list_fewshot_samples`, no chat template, the tokenizer's BOS): parity holds."""
    from harness.tasks.data import data_dir

    model, tok = llada
    row = _rows("llada-8b-base")["mbpp-lm-eval-256"]
    items = _items(row)
    by_id = {int(d["task_id"]): d for d in _jsonl(data_dir() / "mbpp" / "mbpp.jsonl")}
    docs = [by_id[int(it.id.split("/")[1])] for it in items]
    shots = _lm_eval_mbpp_fewshot()
    task = _lm_eval_task("mbpp", {"test": docs}, fewshot_samples=shots)
    assert [s["task_id"] for s in shots] == [2, 3, 4]
    for doc, item in zip(docs, items):
        ctx = task.fewshot_context(doc, num_fewshot=3)
        assert ctx == item.prompt  # the text itself (the fixture tokenizer maps \r and non-ASCII to one id)
        assert tok(ctx)["input_ids"] == prompt_ids(model, item.prompt, chat=False)
    assert row.runnable
