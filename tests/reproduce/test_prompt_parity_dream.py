"""Prompt parity of the Dream presets (d3LLM's Fast-dLLM-Dream rows, run through Dream's eval_instruct):
lm-eval builds the chat history and hands it to the model's chat template, DreamLM/Dream
`eval_instruct/lm_eval/models/diffllm.py` `DiffLLM.apply_chat_template` renders it
(`tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=True,
continue_final_message=False)`) and `DiffLLM._generate_batch` tokenizes the string with
`self.tokenizer(prompts, ...)`. Run here with lm-eval's own `fewshot_context(..., apply_chat_template=True,
chat_template=...)` on the local GSM8K data and build_dream.py's tokenizer (Dream's special ids and a
Qwen-style template). The chat layer of the harness reproduces it token for token; the task template
(lm-eval's gsm8k_cot_zeroshot, "A: Let's think step by step.") is not a harness gsm8k format, which the
rows declare."""
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
    ckpt = _real_code.build("dream", tmp_path_factory.mktemp("parity") / "dream")
    model = MODELS.build("dream", {"path": str(ckpt), "device": "cpu", "dtype": "float32"}).load()
    from transformers import AutoTokenizer

    return model, AutoTokenizer.from_pretrained(str(ckpt))


def test_dream_eval_instruct_chat_prompt(dream):
    from harness.tasks.data import data_dir

    model, tok = dream
    rows = {r.id: r for r in R.find("d3llm-aup", index=component_index()).rows}
    row = rows["fast-dllm-dream-gsm8k-cot"]
    root = data_dir() / "gsm8k"
    test = [json.loads(x) for x in (root / "test.jsonl").read_text().splitlines()[:N_ITEMS]]
    task = _lm_eval_task("gsm8k_cot_zeroshot", {"train": test, "test": test})

    def render(history, add_generation_prompt: bool = True):  # DiffLLM.apply_chat_template
        return tok.apply_chat_template(history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                       continue_final_message=not add_generation_prompt)

    harness_task = TASKS.build(row.harness_task["name"], dict(row.harness_task.get("params") or {}))
    items = harness_task.items("test")[:N_ITEMS]
    for doc, item in zip(test, items):
        plain = task.fewshot_context(doc, num_fewshot=0)
        text = task.fewshot_context(doc, num_fewshot=0, apply_chat_template=True, chat_template=render)
        source = tok([text])["input_ids"][0]  # DiffLLM._generate_batch: self.tokenizer(prompts, ...)
        assert source == prompt_ids(model, plain, chat=True)  # the harness chat layer: token for token
        assert plain.endswith("A: Let's think step by step.") and item.prompt != plain  # the task template
    assert not row.runnable and any("gsm8k_cot_zeroshot template" in m for m in row.missing)
