"""Prompts as the model's own evaluation writes them: chat template, BOS, stop tokens.

A model family declares its prompting on the denoiser (harness/models/_family.py):
`prompting = {"chat": bool, "add_bos": bool, "bos_id": int | None}` (absent: plain text, no BOS).

- chat: wrap a prompt as one user turn with the tokenizer's chat template (generation prompt
  added). The model option `chat: auto | true | false` sets it for every study, the RL loop and
  eval; `auto` reads the checkpoint (its tokenizer's template and its own name: on for
  LLaDA-8B-Instruct, LLaDA-1.5, Dream-v0-Instruct-7B, DiffuCoder-Instruct, off for Base
  checkpoints; harness/models/_family.py). eval's `--apply-chat-template` overrides it there.
- add_bos: the prompt starts with the tokenizer's BOS, once (LLaDA's evaluation tokenizes with
  <|startoftext|> 126080 first; its chat template writes the BOS itself, which is kept, not
  doubled: LLaDA's example script tokenizes the templated text with special tokens on and so
  feeds two BOS tokens; the harness does not reproduce that).

`prompt_ids` is the one place this happens; the runner's studies and the lm-eval bridge call it.
"""
from __future__ import annotations

from dataclasses import dataclass


def prompting_of(denoiser) -> dict:
    """The model's declared prompting (chat, add_bos, bos_id) with plain defaults, and why chat is
    on or off (`chat_source`, when the model says)."""
    p = getattr(denoiser, "prompting", None) or {}
    out = {"chat": bool(p.get("chat", False)), "add_bos": bool(p.get("add_bos", False)), "bos_id": p.get("bos_id")}
    if p.get("chat_source"):
        out["chat_source"] = p["chat_source"]
    return out


def prompting_record(denoiser) -> dict:
    """What a record states about its prompt layout: chat template applied, BOS id prepended (or None)."""
    p = prompting_of(denoiser)
    return {"chat": p["chat"], "bos": p["bos_id"] if p["add_bos"] else None}


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


def prompt_ids(denoiser, text: str, *, chat: bool | None = None, add_bos: bool | None = None) -> list[int]:
    """Text -> prompt token ids as the model's evaluation lays them out (chat template, BOS)."""
    if resolve_chat(denoiser, chat):
        text = chat_text(denoiser, text)
    return with_bos(list(denoiser.tokenizer.encode(text)), denoiser, add_bos)


@dataclass(frozen=True)
class PromptEncoder:
    """A tokenizer-like `encode` that applies `prompt_ids` (for text.encode_prompts)."""

    denoiser: object
    chat: bool | None = None
    add_bos: bool | None = None

    def encode(self, text: str) -> list[int]:
        return prompt_ids(self.denoiser, text, chat=self.chat, add_bos=self.add_bos)
