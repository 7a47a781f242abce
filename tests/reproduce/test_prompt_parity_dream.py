"""Prompt parity of the Dream presets (d3LLM's Fast-dLLM-Dream rows, run through Dream's eval_instruct):
lm-eval builds the chat history and hands it to the model's chat template, DreamLM/Dream
`eval_instruct/lm_eval/models/diffllm.py` `DiffLLM.apply_chat_template` renders it
(`tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=True,
continue_final_message=False)`) and `DiffLLM._generate_batch` tokenizes the string with
`self.tokenizer(prompts, ...)`. Run here with lm-eval's own `fewshot_context(..., apply_chat_template=True,
chat_template=...)` on the local GSM8K data and build_dream.py's tokenizer (Dream's special ids and a
Qwen-style template), against the row's harness task (gsm8k `prompt_format: cot-zeroshot`, lm-eval's
gsm8k_cot_zeroshot: "Q: ...\nA: Let's think step by step.") on the Dream model loaded with the row's
protocol options, through the generate study's encoder: token for token."""
from __future__ import annotations

import json

import pytest

from harness import reproduce as R
from harness.cli import component_index
from harness.prompting import prompt_ids
from harness.registry import MODELS, TASKS
from tests.models import _real_code
from tests.reproduce.test_prompt_parity import _lm_eval_task

N_ITEMS = 2


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    """build_dream.py's checkpoint and its transformers tokenizer."""
    ckpt = _real_code.build("dream", tmp_path_factory.mktemp("parity") / "dream")
    from transformers import AutoTokenizer

    return ckpt, AutoTokenizer.from_pretrained(str(ckpt))


def test_dream_eval_instruct_chat_prompt(dream):
    from harness.prompting import PromptEncoder
    from harness.tasks.data import data_dir

    ckpt, tok = dream
    rows = {r.id: r for r in R.find("d3llm-aup", index=component_index()).rows}
    row = rows["fast-dllm-dream-gsm8k-cot"]
    root = data_dir() / "gsm8k"
    test = [json.loads(x) for x in (root / "test.jsonl").read_text().splitlines()[:N_ITEMS]]
    task = _lm_eval_task("gsm8k_cot_zeroshot", {"train": test, "test": test})

    def render(history, add_generation_prompt: bool = True):  # DiffLLM.apply_chat_template
        return tok.apply_chat_template(history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                       continue_final_message=not add_generation_prompt)

    harness_task = TASKS.build(row.harness_task["name"], dict(row.harness_task.get("params") or {}))
    R.check_prefill(row, harness_task)
    assert R.row_model_options(row) == {"chat": True}
    model = MODELS.build(row.family, {"path": str(ckpt), "device": "cpu", "dtype": "float32",
                                      **R.row_model_options(row)}).load()  # as reproduce.suite_for loads it
    items = harness_task.items("test")[:N_ITEMS]
    for doc, item in zip(test, items):
        plain = task.fewshot_context(doc, num_fewshot=0)
        text = task.fewshot_context(doc, num_fewshot=0, apply_chat_template=True, chat_template=render)
        source = tok([text])["input_ids"][0]  # DiffLLM._generate_batch: self.tokenizer(prompts, ...)
        assert item.prompt == plain and plain.endswith("A: Let's think step by step.")  # the task template
        assert PromptEncoder(model, prefill=harness_task.prefill).encode(item.prompt) == source  # token for token
        assert prompt_ids(model, plain, chat=False) != source  # the chat template matters
    assert row.runnable and not any(m.startswith("prompt") for m in row.missing)
