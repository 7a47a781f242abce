"""Prompts as the model's own evaluation writes them: chat template, BOS, special tokens, prefill.

A model family declares its prompting on the denoiser (harness/models/_family.py):
`prompting = {"chat": bool, "add_bos": bool, "bos_id": int | None, "add_special_tokens": bool}`
(absent: plain text, no BOS, no special tokens).

- chat: wrap a prompt as one user turn with the tokenizer's chat template (generation prompt
  added). The model option `chat: auto | true | false` sets it for every study, the RL loop and
  eval; `auto` reads the checkpoint (its tokenizer's template and its own name: on for
  LLaDA-8B-Instruct, LLaDA-1.5, Dream-v0-Instruct-7B, DiffuCoder-Instruct, off for Base
  checkpoints; harness/models/_family.py). eval's `--apply-chat-template` overrides it there.
- add_bos: the prompt starts with the tokenizer's BOS, once (LLaDA's evaluation tokenizes with
  <|startoftext|> 126080 first; its chat template writes the BOS itself, which is kept, not
  doubled).
- add_special_tokens (the model option of that name, default off): encode the (templated) text the
  way `tokenizer(text)` does, with the tokenizer's own special tokens. Several published evaluations
  do exactly that after writing the chat template to a string, and so feed LLaDA two BOS tokens (the
  template's and the tokenizer's): ML-GSAI/LLaDA `opencompass/opencompass/models/dllm.py`
  `LLaDAModel.generate`, NVlabs/Fast-dLLM `llada/eval_llada.py` `generate_until`, dllm-reasoning/d1
  `eval/gsm8k.py` `GSM8KDataset.collate_fn`. A reproduction row declares it in its protocol. A
  tokenizer that adds no special tokens (Dream's) gives the same ids either way.
- prefill: text the task's prompt format puts after the chat template's generation prompt (the
  start of the answer, e.g. d1's `<reasoning>`; `Task.prefill`). Without a chat template it follows
  the prompt text directly.

`prompt_ids` is the one place this happens; the runner's studies and the RL loop call it (the lm-eval
bridge lays out its contexts itself, with `with_bos`).
"""
from __future__ import annotations

from dataclasses import dataclass


def prompting_of(denoiser) -> dict:
    """The model's declared prompting (chat, add_bos, bos_id) with plain defaults, and why chat is
    on or off (`chat_source`, when the model says)."""
    p = getattr(denoiser, "prompting", None) or {}
    out = {"chat": bool(p.get("chat", False)), "add_bos": bool(p.get("add_bos", False)), "bos_id": p.get("bos_id"),
           "add_special_tokens": bool(p.get("add_special_tokens", False))}
    if p.get("chat_source"):
        out["chat_source"] = p["chat_source"]
    return out


def prompting_record(denoiser, prefill: str = "") -> dict:
    """What a record states about its prompt layout: chat template applied, BOS id prepended (or None),
    and, when used, the tokenizer's special tokens (`special_tokens`) and the answer's prefill."""
    p = prompting_of(denoiser)
    out = {"chat": p["chat"], "bos": p["bos_id"] if p["add_bos"] else None}
    if p["add_special_tokens"]:
        out["special_tokens"] = True
    if prefill:
        out["prefill"] = prefill
    return out


def resolve_chat(denoiser, chat: bool | None) -> bool:
    """None: the model's default; True needs a tokenizer with a chat template."""
    if chat is None:
        return prompting_of(denoiser)["chat"]
    return bool(chat)


def with_bos(ids: list[int], denoiser, add_bos: bool | None = None) -> list[int]:
    """Prepend the BOS when the model wants one and the ids do not start with it already."""
    p = prompting_of(denoiser)
    add = p["add_bos"] if add_bos is None else add_bos
    bos = p["bos_id"]
    if add and bos is not None and (not ids or ids[0] != bos):
        return [int(bos), *ids]
    return ids


def chat_text(denoiser, text: str) -> str:
    """One user turn in the model's chat template, ending with the assistant's generation prompt."""
    from harness.types import HarnessError

    tok = denoiser.tokenizer
    if not getattr(tok, "has_chat_template", False):
        raise HarnessError(f"chat template requested but the tokenizer of {type(denoiser).__name__} has none "
                           "(set chat: false)")
    return tok.apply_chat_template(text)


def encode_text(denoiser, text: str, special_tokens: bool) -> list[int]:
    """The text's ids: without special tokens (the harness tokenizer's `encode`), or with them, as
    `tokenizer(text)` encodes (the transformers tokenizer underneath)."""
    tok = denoiser.tokenizer
    if not special_tokens:
        return list(tok.encode(text))
    hf = getattr(tok, "hf", None)
    if hf is None:
        from harness.types import HarnessError

        raise HarnessError(f"add_special_tokens: the tokenizer of {type(denoiser).__name__} is not a transformers "
                           "tokenizer (it has no special tokens to add); set add_special_tokens: false")
    return list(hf.encode(text, add_special_tokens=True))


def prompt_ids(denoiser, text: str, *, chat: bool | None = None, add_bos: bool | None = None, prefill: str = "",
               add_special_tokens: bool | None = None) -> list[int]:
    """Text -> prompt token ids as the model's evaluation lays them out (chat template, prefill,
    special tokens, BOS). `add_special_tokens` None: the model's declaration."""
    if resolve_chat(denoiser, chat):
        text = chat_text(denoiser, text)
    special = prompting_of(denoiser)["add_special_tokens"] if add_special_tokens is None else add_special_tokens
    return with_bos(encode_text(denoiser, text + prefill, special), denoiser, add_bos)


@dataclass(frozen=True)
class PromptEncoder:
    """A tokenizer-like `encode` that applies `prompt_ids` (for text.encode_prompts); `prefill` is the
    task's (`Task.prefill`)."""

    denoiser: object
    chat: bool | None = None
    add_bos: bool | None = None
    prefill: str = ""

    def encode(self, text: str) -> list[int]:
        return prompt_ids(self.denoiser, text, chat=self.chat, add_bos=self.add_bos, prefill=self.prefill)
