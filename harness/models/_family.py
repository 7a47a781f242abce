"""What a model family declares about decoding and prompting, as data the samplers and the
lm-eval bridge read from the denoiser (never an `if family == ...` branch downstream):

- `decode_defaults`: defaults of the samplers' "auto" options, e.g. {"schedule": "dream"} (Dream's
  `diffusion_generate` step counts; harness/samplers/_schedule.py).
- `stop_ids`: the token ids that end a generation: the EOS plus the family's end-of-turn tokens
  found in the checkpoint's tokenizer (LLaDA-Instruct's <|eot_id|> 126348).
- `prompting`: {"add_bos": prepend the tokenizer's BOS when a prompt does not start with it (LLaDA's
  own evaluation tokenizes with <|startoftext|> 126080 first), "chat": apply the chat template
  by default, "chat_source": why (see `detect_chat`)}.

The model option `chat: auto | true | false` decides "chat" for every study, the RL loop and the
lm-eval bridge alike. `auto` reads the checkpoint, never the folders above it: no chat template in
its tokenizer -> off; else the checkpoint's own name (its directory or hub repository name, and
config.json's `_name_or_path`) saying Instruct/chat/SFT -> on, saying Base -> off; a template and no
name either way -> on (a tokenizer that ships a chat template declares the turns it was tuned on).
A random-init preset is off.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from harness.types import HarnessError

CHAT_NAME = re.compile(r"instruct|chat|sft|llada-1\.5|cpgrpo|(^|[-_])it($|[-_])", re.IGNORECASE)  # tuned on turns
BASE_NAME = re.compile(r"(^|[-_.])base($|[-_.])", re.IGNORECASE)


def checkpoint_names(path: str | None) -> list[str]:
    """The checkpoint's own names: a local directory's name (a hub-cache snapshot's repository name),
    a hub id's repository name, and config.json's `_name_or_path` (its last part). The folders above
    a local directory say nothing about it (`chat-experiments/LLaDA-8B-Base` is a Base model)."""
    if not path:
        return []
    p = Path(str(path)).expanduser()
    names = []
    if p.is_dir():
        snap = p.parent.parent if p.parent.name == "snapshots" else None  # models--org--name/snapshots/<commit>
        names.append(snap.name.split("--")[-1] if snap is not None and snap.name.startswith("models--") else p.name)
        try:
            origin = json.loads((p / "config.json").read_text()).get("_name_or_path")
        except (OSError, ValueError):
            origin = None
        if isinstance(origin, str) and origin.strip("/"):
            names.append(origin.rstrip("/").split("/")[-1])
    else:
        names.append(str(path).rstrip("/").split("/")[-1])
    return names


def detect_chat(path: str | None, hf_tokenizer) -> tuple[bool, str]:
    """(apply the chat template by default, why), read from the checkpoint (module docstring)."""
    if not path:
        return False, "a random-init preset: plain prompts"
    if not getattr(hf_tokenizer, "chat_template", None):
        return False, "the tokenizer has no chat template"
    names = checkpoint_names(path)
    for n in names:
        if CHAT_NAME.search(n):
            return True, f"the tokenizer has a chat template and the checkpoint's name {n!r} says chat-tuned"
    for n in names:
        if BASE_NAME.search(n):
            return False, f"the checkpoint's name {n!r} says Base (its tokenizer's chat template is not used)"
    return True, "the tokenizer has a chat template (no name of the checkpoint says Base)"


def is_chat_checkpoint(path: str | None) -> bool:
    """Whether the checkpoint's own name (not the folders above it) says Instruct-style
    (LLaDA-8B-Instruct, LLaDA-1.5, Dream-v0-Instruct-7B, DiffuCoder-7B-Instruct / -cpGRPO)."""
    return any(CHAT_NAME.search(n) for n in checkpoint_names(path))


def resolve_chat_option(chat, path: str | None, hf_tokenizer) -> tuple[bool, str]:
    """The model option `chat` (auto | true | false) -> (chat on, why)."""
    if chat == "auto":
        return detect_chat(path, hf_tokenizer)
    if chat is True and not getattr(hf_tokenizer, "chat_template", None):
        raise HarnessError(f"model {path or 'preset'!r}: chat: true, but the tokenizer has no chat template "
                           "(use chat: false or auto)")
    return bool(chat), f"chat: {str(bool(chat)).lower()} (the model option)"


def declare(denoiser, hf_tokenizer, *, path: str | None, decode_defaults: dict, stop_tokens: tuple[str, ...],
            add_bos: bool, chat="auto", stop_ids: tuple[int, ...] = (), add_special_tokens: bool = False):
    """Attach the family's declarations to a loaded denoiser; -> the denoiser. `stop_ids`: ids the
    checkpoint itself declares (its generation_config.json `eos_token_id`), added to the named tokens;
    `add_special_tokens`: the model option (harness/prompting.py)."""
    vocab = hf_tokenizer.get_vocab() if hasattr(hf_tokenizer, "get_vocab") else {}
    extra = [int(i) for i in stop_ids] + [vocab[t] for t in stop_tokens if t in vocab]
    denoiser.decode_defaults = dict(decode_defaults)
    denoiser.stop_ids = tuple(dict.fromkeys([int(denoiser.eos_id), *map(int, extra)]))
    on, why = resolve_chat_option(chat, path, hf_tokenizer)
    denoiser.prompting = {"add_bos": add_bos and getattr(hf_tokenizer, "bos_token_id", None) is not None,
                          "bos_id": getattr(hf_tokenizer, "bos_token_id", None), "chat": on, "chat_source": why,
                          "add_special_tokens": bool(add_special_tokens)}
    return denoiser
