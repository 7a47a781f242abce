"""Prompt parity of the reproduction presets: the first items' prompts as token ids, built the way the
source repository's evaluation code builds them (on the fixture tokenizers of
`../shared/fixtures/real-code`, which carry the real special ids and a LLaDA-style chat template),
equal what the harness feeds for the row: the row's harness task, its model loaded with the row's
protocol options (`reproduce.row_model_options`: chat template, special tokens) and the task's prefill,
through `PromptEncoder`, the encoder the runner's generate study uses.

Sources read (file and function):
- lm-eval 0.4.x (installed here): `ConfigurableTask.fewshot_context` with `tasks/gsm8k/gsm8k.yaml`,
  `tasks/gsm8k/gsm8k-cot-zeroshot.yaml` and `tasks/humaneval/humaneval.yaml`, run on CPU with the local
  GSM8K/HumanEval data through `TaskConfig.custom_dataset`; few-shot seed 1234 (`simple_evaluate`'s
  `fewshot_random_seed`); documents visited per rank by `Task.doc_iterator` (`utils.create_iterator`),
  as `build_all_requests` visits them, so the seeded sampler (`api/samplers.py` `ContextSampler.sample`)
  draws in lm-eval's own order.
- NVlabs/Fast-dLLM `llada/eval_llada.py` `LLaDAEvalHarness.generate_until`: an Instruct checkpoint
  (`'instruct' in model_path.lower()`) wraps lm-eval's context as one user turn
  (`apply_chat_template(..., tokenize=False)`) and tokenizes it with `self.tokenizer(user_input)`
  (special tokens on: two BOS tokens).
- hao-ai-lab/d3LLM `utils/utils_LLaDA/eval_llada.py` `generate_until`: the chat template only for
  HumanEval/MBPP tasks; GSM8K contexts are tokenized as they are with `self.tokenizer(user_input)`.
- ML-GSAI/LLaDA `opencompass/opencompass/models/dllm.py` `LLaDAModel.generate` (and `chat.py`):
  `apply_chat_template(..., tokenize=False)` then `batch_encode_plus` with special tokens on.
- dllm-reasoning/d1 `eval/gsm8k.py` `GSM8KDataset.create_prompt` and `collate_fn`, `eval/math500.py`
  (`MATH500Dataset`, the same `create_prompt`), `eval/eval.py` (`add_reasoning=True`, "prefill for all
  models"): the system prompt, a blank line and the question as one user turn, `<reasoning>` appended
  after the generation prompt, tokenized with `tokenizer(prompts, padding_side="left", padding="longest")`
  (special tokens on). `GSM_SYSTEM_PROMPT` and `MATH500_SYSTEM_PROMPT` below are those files' constants
  (prompt strings, transcribed with their quirks).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from harness import reproduce as R
from harness.cli import component_index
from harness.prompting import PromptEncoder, prompt_ids
from harness.registry import MODELS, TASKS
from tests.models import _real_code

N_ITEMS = 2
N_TEXT = 12  # items whose prompt text (not token ids) is compared: the few-shot draws of more documents
GSM_SYSTEM_PROMPT = ("You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the "
                     "final answer in a \\boxed{}. \nRespond in the following format:\n<reasoning>\nYour reasoning "
                     "here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>")
MATH500_SYSTEM_PROMPT = ("You are a math expert. You will be given a question to solve. Solve it step by step. Wrap "
                         "the final answer in a \\boxed{}.\nRespond in the following format:\n<reasoning>\n"
                         "Your reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>\" \n")
BOS = 126080

INDEX = component_index()  # the registries' fields: what a row can express


def _find(name: str):
    return R.find(name, index=INDEX)


@pytest.fixture(scope="module")
def llada_ckpt(tmp_path_factory):
    """build_llada.py's checkpoint (its tokenizer adds <|startoftext|>) and its transformers tokenizer."""
    ckpt = _real_code.build("llada", tmp_path_factory.mktemp("parity") / "llada")
    from transformers import AutoTokenizer

    return ckpt, AutoTokenizer.from_pretrained(str(ckpt))


@pytest.fixture(scope="module")
def llada(llada_ckpt):
    """The harness's LLaDA model with its defaults (no protocol options) and the tokenizer."""
    ckpt, tok = llada_ckpt
    return MODELS.build("llada", {"path": str(ckpt), "device": "cpu", "dtype": "float32"}).load(), tok


@pytest.fixture(scope="module")
def row_model(llada_ckpt):
    """row -> the harness's model for that row: the checkpoint loaded with the row's protocol options, as
    `reproduce.suite_for` passes them (one load per distinct set of options)."""
    ckpt, _ = llada_ckpt
    cache: dict = {}

    def load(row):
        opts = R.row_model_options(row)
        key = tuple(sorted(opts.items()))
        if key not in cache:
            params = {"path": str(ckpt), "device": "cpu", "dtype": "float32", **opts}
            cache[key] = MODELS.build(row.family, params).load()
        return cache[key]

    return load


def _rows(table: str) -> dict:
    return {r.id: r for r in _find(table).rows}


def _task(row):
    return TASKS.build(row.harness_task["name"], dict(row.harness_task.get("params") or {}))


def _items(row, n: int = N_ITEMS) -> list:
    return _task(row).items("test")[:n]


def _ours(model, row, item) -> list[int]:
    """The ids the runner's generate study feeds for the item (studies._prompts: PromptEncoder with the
    task's prefill, on the model loaded with the row's options)."""
    task = _task(row)
    R.check_prefill(row, task)  # what reproduce checks before a run: the row's prefill is the task's
    return PromptEncoder(model, prefill=task.prefill).encode(item.prompt)


def _declares(row, word: str) -> bool:
    return any(m.startswith("prompt:") and word in m for m in row.missing)


# lm-eval's task YAMLs used here, under its installed `tasks/` folder (indexing every task YAML with
# TaskManager takes seconds; the index is the fallback for any other name)
LM_EVAL_YAML = {"gsm8k": "gsm8k/gsm8k.yaml", "gsm8k_cot_zeroshot": "gsm8k/gsm8k-cot-zeroshot.yaml",
                "humaneval": "humaneval/humaneval.yaml", "mbpp": "mbpp/mbpp.yaml"}


def _lm_eval_yaml(name: str) -> Path:
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / LM_EVAL_YAML.get(name, "")
    if name in LM_EVAL_YAML and path.is_file():
        return path
    from lm_eval.tasks import TaskManager

    return Path(TaskManager().task_index[name].yaml_path)


def _lm_eval_task(name: str, docs: dict, fewshot_samples: list[dict] | None = None):
    """lm-eval's own task from its installed YAML, on local documents (no hub access)."""
    import datasets
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    # lm-eval's own loader; the metric and filter functions (humaneval's load the code_eval metric) are
    # not part of the prompt and are left unresolved and dropped
    cfg = load_yaml(_lm_eval_yaml(name), resolve_func=False)
    cfg = {k: v for k, v in cfg.items() if k not in ("metric_list", "filter_list", "tag", "unsafe_code")}
    assert cfg["task"] == name
    cfg["custom_dataset"] = lambda **_: {s: datasets.Dataset.from_list(d) for s, d in docs.items()}
    if fewshot_samples is not None:  # a `samples: !function ...` left unresolved above
        cfg["fewshot_config"] = {**cfg["fewshot_config"], "samples": fewshot_samples}
    task = ConfigurableTask(config=cfg)
    task.set_fewshot_seed(1234)
    return task


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _chat(tok, text: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)


def test_llada_chat_prompts_encoded_with_special_tokens_start_with_two_bos(llada, row_model):
    """LLaDA-8B-Instruct / LLaDA 1.5 OpenCompass rows and Fast-dLLM's rows: the source encodes the templated
    text with special tokens on, so the template's BOS follows the tokenizer's: two BOS tokens. The rows
    declare `add_special_tokens: true`; the model loaded with it feeds the same ids, and without it one BOS."""
    plain_model, tok = llada
    row = _rows("llada-8b-instruct")["gsm8k-semiar-opencompass"]
    assert R.row_model_options(row) == {"chat": True, "add_special_tokens": True}
    model = row_model(row)
    items = _items(row)
    texts = [_chat(tok, item.prompt) for item in items]
    source = tok(texts)["input_ids"]  # batch_encode_plus (gone in transformers 5): the same call
    for item, src in zip(items, source):
        assert src[:2] == [BOS, BOS] and src[2] != BOS
        assert _ours(model, row, item) == src
        one = prompt_ids(plain_model, item.prompt, chat=True)  # the model's default: one BOS
        assert one[0] == BOS and one[1] != BOS and src == [BOS, *one]
    for table in ("llada-8b-instruct", "llada-1.5", "fast-dllm"):
        for r in _find(table).rows:
            assert not _declares(r, "two BOS"), f"{table}/{r.id}"
            if r.protocol.get("chat_template") and r.protocol["scoring"] != "internal":
                assert r.protocol.get("add_special_tokens") is True, f"{table}/{r.id}"


def _d1_docs(task: str) -> list[dict]:
    from harness.tasks.data import data_dir

    name = {"gsm8k": "gsm8k/test.jsonl", "math500": "math500/test.jsonl"}[task]
    return _jsonl(data_dir() / name)[:N_ITEMS]


def test_d1_eval_prompt_is_the_harness_d1_eval_format(llada, row_model):
    """d1's rows (GSM8K and MATH500): eval.py's prompt (system prompt + blank line + question as one user
    turn, `<reasoning>` prefilled, special tokens on) is what the harness feeds for the row, batch and all."""
    _, tok = llada
    from harness.studies import _prompts

    for row in _find("d1").rows:
        task = _task(row)
        assert task.prefill == row.protocol["prefill"] == "<reasoning>"
        system, key = ((GSM_SYSTEM_PROMPT, "question") if row.harness_task["name"] == "gsm8k"
                       else (MATH500_SYSTEM_PROMPT, "problem"))
        docs = _d1_docs(row.harness_task["name"])
        prompts = [_chat(tok, system + "\n\n" + d[key]) + "<reasoning>" for d in docs]  # create_prompt
        enc = tok(prompts, padding_side="left", padding="longest")  # collate_fn
        model = row_model(row)
        items = task.items("test")[:N_ITEMS]
        ids, mask = _prompts(model, items, task.prefill)  # the generate study's left-padded batch
        assert mask.tolist() == [[bool(m) for m in row_mask] for row_mask in enc["attention_mask"]]
        for i, item in enumerate(items):
            source = [t for t, m in zip(enc["input_ids"][i], enc["attention_mask"][i]) if m]
            assert source[:2] == [BOS, BOS] and tok.decode(source[-len("<reasoning>"):]) == "<reasoning>"
            assert _ours(model, row, item) == source == ids[i][mask[i]].tolist()
        # nothing about the prompt is missing any more; the d1-LLaDA weights still are
        assert [m for m in row.missing if m.startswith("prompt")] == [] and not row.runnable


CTD_SYSTEM_PROMPT = (  # d1 eval/countdown.py (transcribed)
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the provided target "
    "number. You may use the operations +, -, *, and / as needed, but each number must be used exactly once. Think "
    "step-by-step. After reasoning, provide only your final expression inside \\boxed{} tags without including an "
    "equals sign or the target number. For example: \\boxed{a + b * c}Respond in the following format:\n<reasoning>\n"
    "Your reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>")
SUDOKU_SYSTEM_PROMPT = (  # d1 eval/sudoku.py (transcribed)
    "\nPlease solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading "
    "left-to-right, top-to-bottom, where '0' represents empty cells.\n\nRules:\n- Fill empty cells with digits 1-4\n"
    "- Each row must contain digits 1-4 exactly once\n- Each column must contain digits 1-4 exactly once\n"
    "- Each 2x2 box must contain digits 1-4 exactly once\n\nImportant: Your solution must be a COMPLETE 16-character "
    "string with only the digits 1-4, representing your final solved grid.\n\nRespond in this exact format:\n"
    "<reasoning>\nYour step-by-step solving process\n</reasoning>\n<answer>\n[16-character solution string with no "
    "spaces or separators]\n</answer>\n")


def test_d1_eval_countdown_and_sudoku_prompts(llada, row_model):
    """d1's Countdown and Sudoku prompts (eval/countdown.py `CTDDataset.__getitem__`, eval/sudoku.py
    `SudokuDataset.__getitem__`, both through `create_prompt` and `collate_fn`) on d1's own test files:
    the harness countdown3 / sudoku4 `prompt_format: d1-eval` on the model with d1's protocol options."""
    import csv

    from harness.tasks.data import data_dir

    _, tok = llada
    model = row_model(_rows("d1")["gsm8k-256"])  # eval.py's layout: chat template, special tokens on
    rows = _jsonl(data_dir() / "countdown" / "cd3_test.jsonl")[:N_ITEMS]
    with open(data_dir() / "sudoku" / "4x4_test.csv", newline="") as f:
        grids = list(csv.DictReader(f))[:N_ITEMS]
    questions = {
        "countdown3": [f"Numbers: {[int(n) for n in r['input'].split(',')]}\nTarget: {int(r['output'])}" for r in rows],
        "sudoku4": [f"Solve the following Sudoku puzzle: {g['Puzzle']}\n" for g in grids],
    }
    systems = {"countdown3": CTD_SYSTEM_PROMPT, "sudoku4": SUDOKU_SYSTEM_PROMPT}
    for name, qs in questions.items():
        task = TASKS.build(name, {"dataset": "d1", "prompt_format": "d1-eval", "protocol": "d1"})
        assert task.prefill == "<reasoning>"
        for q, item in zip(qs, task.items("test")[:N_ITEMS]):
            source = tok(_chat(tok, systems[name] + "\n\n" + q) + "<reasoning>")["input_ids"]
            assert source[:2] == [BOS, BOS]
            assert PromptEncoder(model, prefill=task.prefill).encode(item.prompt) == source, name


def test_the_generate_study_feeds_the_task_prefill_and_records_it(llada, row_model):
    """The runner's generate study (harness/studies.py generate) hands the sampler d1's ids for a d1 row
    (prefill included) and its record states the layout; no forward pass (the sampler is a stand-in)."""
    import torch

    from harness import studies
    from harness.types import Generation

    _, tok = llada
    row = _rows("d1")["gsm8k-256"]
    task = _task(row)
    items = task.items("test")[:1]
    seen = []

    def sampler(denoiser, ids, prompt_mask=None, **kw):
        seen.append(ids[0][prompt_mask[0]].tolist())
        return Generation(tokens=torch.zeros(1, 2, dtype=torch.long), text=["<answer>18</answer>"],
                          commit_step=torch.zeros(1, 2, dtype=torch.long), gen_len=torch.tensor([2]), steps=1)

    out = studies.generate(row_model(row), task, sampler, studies.Batch(items=items, replicates=[0], generators=[None]))
    doc = _d1_docs("gsm8k")[0]
    assert seen == [tok(_chat(tok, GSM_SYSTEM_PROMPT + "\n\n" + doc["question"]) + "<reasoning>")["input_ids"]]
    assert out[0]["generation"]["prompting"] == {"chat": True, "bos": BOS, "special_tokens": True,
                                                 "prefill": "<reasoning>"}


def _gsm8k_docs(n_test: int) -> dict:
    from harness.tasks.data import data_dir

    root = data_dir() / "gsm8k"
    return {"train": _jsonl(root / "train.jsonl"), "test": _jsonl(root / "test.jsonl")[:n_test]}


def _lm_eval_contexts(docs: dict, processes: int) -> dict[int, str]:
    """lm-eval's gsm8k 5-shot context of every test document as `processes` data-parallel ranks build them:
    each rank's task seeded alike, visiting its own documents (`doc_iterator(rank, world_size)`)."""
    out = {}
    for rank in range(processes):
        task = _lm_eval_task("gsm8k", docs)  # each rank builds its task and seeds its sampler
        for i, doc in task.doc_iterator(rank=rank, world_size=processes):
            out[i] = task.fewshot_context(doc, num_fewshot=5)
    return out


def _gsm8k_docs(n_test: int) -> dict:
    from harness.tasks.data import data_dir

    root = data_dir() / "gsm8k"
    return {"train": _jsonl(root / "train.jsonl"), "test": _jsonl(root / "test.jsonl")[:n_test]}


def test_fast_dllm_gsm8k_five_shot_context_through_lm_eval(llada, row_model):
    """Fast-dLLM's GSM8K rows: lm-eval draws the five exemplars per document from the train split with its
    seeded sampler (gsm8k.yaml has no `fewshot_config`: the default sampler); the harness gsm8k task with
    `fewshot_sampler: lm-eval` makes the same draws, in lm-eval's order, and the Instruct wrapping with
    special tokens gives eval_llada.py's ids. Every lm-eval gsm8k 5-shot row of the tables declares it."""
    _, tok = llada
    row = _rows("fast-dllm")["gsm8k-256-llada"]
    docs = _gsm8k_docs(N_TEXT)
    contexts = _lm_eval_contexts(docs, 1)
    items = _items(row, N_TEXT)
    assert [it.prompt for it in items] == [contexts[i] for i in range(N_TEXT)]
    assert len({it.prompt.split("\n\n")[0] for it in items}) > 1  # exemplars differ from item to item
    model = row_model(row)
    for i, item in enumerate(items[:N_ITEMS]):
        source = tok(_chat(tok, contexts[i]))["input_ids"]  # eval_llada.py: an Instruct checkpoint is wrapped
        assert source[:2] == [BOS, BOS] and _ours(model, row, item) == source
    for table in ("fast-dllm", "llada-8b-base", "d3llm-aup"):
        for r in _find(table).rows:
            if r.harness_task and r.harness_task["name"] == "gsm8k" and r.protocol.get("shots") == 5:
                assert r.harness_task["params"]["fewshot_sampler"] == "lm-eval", f"{table}/{r.id}"
                assert not _declares(r, "exemplars") and r.runnable, f"{table}/{r.id}"


def test_lm_eval_few_shot_draws_under_data_parallel_ranks():
    """Under `accelerate launch` with W processes every rank replays the seeded sampler over its own
    documents: document i gets draw i // W. `fewshot_processes` reproduces lm-eval's own rank iteration."""
    docs = _gsm8k_docs(N_TEXT)
    contexts = _lm_eval_contexts(docs, 3)
    task = TASKS.build("gsm8k", {"fewshot": 5, "fewshot_sampler": "lm-eval", "fewshot_processes": 3})
    assert [it.prompt for it in task.items("test")[:N_TEXT]] == [contexts[i] for i in range(N_TEXT)]
    one = TASKS.build("gsm8k", {"fewshot": 5, "fewshot_sampler": "lm-eval"}).items("test")[:N_TEXT]
    assert [it.prompt for it in one] != [contexts[i] for i in range(N_TEXT)]  # the world size matters


def test_d3llm_llada_gsm8k_cot_zeroshot_prompt(llada, row_model):
    """d3LLM's LLaDA GSM8K-CoT rows: lm-eval's gsm8k_cot_zeroshot context, no chat template (d3LLM's
    eval_llada.py wraps HumanEval/MBPP only), the tokenizer's BOS: the harness cot-zeroshot format."""
    _, tok = llada
    docs = _gsm8k_docs(N_ITEMS)
    task = _lm_eval_task("gsm8k_cot_zeroshot", {"train": docs["test"], "test": docs["test"]})
    rows = _rows("d3llm-aup")
    for rid in ("llada-gsm8k-cot", "fast-dllm-llada-gsm8k-cot"):
        row = rows[rid]
        model = row_model(row)
        for doc, item in zip(docs["test"], _items(row)):
            ctx = task.fewshot_context(doc, num_fewshot=0)
            assert item.prompt == ctx and ctx.endswith("A: Let's think step by step.")
            assert _ours(model, row, item) == tok(ctx)["input_ids"]
        assert _task(row).stop_strings == ("Q:", "</s>", "<|im_end|>")  # gsm8k-cot-zeroshot.yaml until
        assert row.runnable


def test_fast_dllm_humaneval_instruct_prompt(llada, row_model):
    """Fast-dLLM's HumanEval rows: lm-eval's humaneval context as one user turn, special tokens on."""
    from harness.tasks.data import data_dir

    _, tok = llada
    row = _rows("fast-dllm")["humaneval-256-llada"]
    with gzip.open(data_dir() / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        docs = [json.loads(x) for x in f][:N_ITEMS]
    task = _lm_eval_task("humaneval", {"test": docs})
    model = row_model(row)
    for doc, item in zip(docs, _items(row)):
        ctx = task.fewshot_context(doc, num_fewshot=0)
        assert ctx == item.prompt
        source = tok(_chat(tok, ctx))["input_ids"]  # eval_llada.py generate_until (is_instruct)
        assert source[:2] == [BOS, BOS] and _ours(model, row, item) == source
    assert row.runnable


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
