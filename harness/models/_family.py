"""What a model family declares about decoding and prompting, as data the samplers and the
lm-eval bridge read from the denoiser (never an `if family == ...` branch downstream):

- `decode_defaults`: defaults of the samplers' "auto" options, e.g. {"schedule": "dream"} (Dream's
  `diffusion_generate` step counts; harness/samplers/_schedule.py).
- `stop_ids`: the token ids that end a generation: the EOS plus the family's end-of-turn tokens
  found in the checkpoint's tokenizer (LLaDA-Instruct's <|eot_id|> 126348).
- `prompting`: {"add_bos": prepend the tokenizer's BOS when a prompt does not start with it (LLaDA's
  own evaluation tokenizes with <|startoftext|> 126080 first), "chat": apply the chat template
  by default (on for Instruct checkpoints that ship a template)}.
"""
from __future__ import annotations

import re

CHAT_NAME = re.compile(r"instruct|chat|llada-1\.5|cpgrpo", re.IGNORECASE)  # checkpoints tuned on chat turns


def is_chat_checkpoint(path: str | None) -> bool:
    """Whether a path / hub id names an Instruct-style checkpoint (LLaDA-8B-Instruct, LLaDA-1.5,
    Dream-v0-Instruct-7B, DiffuCoder-7B-Instruct / -cpGRPO)."""
    return bool(path) and bool(CHAT_NAME.search(str(path)))


def declare(denoiser, hf_tokenizer, *, path: str | None, decode_defaults: dict, stop_tokens: tuple[str, ...],
            add_bos: bool, stop_ids: tuple[int, ...] = ()):
    """Attach the family's declarations to a loaded denoiser; -> the denoiser. `stop_ids`: ids the
    checkpoint itself declares (its generation_config.json `eos_token_id`), added to the named tokens."""
    vocab = hf_tokenizer.get_vocab() if hasattr(hf_tokenizer, "get_vocab") else {}
    extra = [int(i) for i in stop_ids] + [vocab[t] for t in stop_tokens if t in vocab]
    denoiser.decode_defaults = dict(decode_defaults)
    denoiser.stop_ids = tuple(dict.fromkeys([int(denoiser.eos_id), *map(int, extra)]))
    has_template = bool(getattr(hf_tokenizer, "chat_template", None))
    denoiser.prompting = {"add_bos": add_bos and getattr(hf_tokenizer, "bos_token_id", None) is not None,
                          "bos_id": getattr(hf_tokenizer, "bos_token_id", None),
                          "chat": has_template and is_chat_checkpoint(path)}
    return denoiser
