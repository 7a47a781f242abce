"""Turning text into the token tensors that denoisers, samplers and estimators share.

Prompts are left-padded (so every completion starts at the same column); completions are written
as the answer, one EOS, then EOS padding up to a fixed length, the layout LLaDA-style SFT uses
(docs/methods.md notation: positions after the first EOS are padding).
"""
from __future__ import annotations

from typing import Sequence

import torch

from harness.types import HarnessError


def encode_prompts(tokenizer, prompts: Sequence[str], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids [B, P] (left-padded with pad_id), mask [B, P] (True on real tokens)."""
    seqs = [tokenizer.encode(p) for p in prompts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = True
    return ids, mask


def encode_completions(tokenizer, texts: Sequence[str], length: int, eos_id: int) -> torch.Tensor:
    """-> ids [B, length]: answer tokens, then EOS up to `length` (at least one EOS)."""
    out = torch.full((len(texts), length), eos_id, dtype=torch.long)
    for i, t in enumerate(texts):
        s = tokenizer.encode(t)
        if len(s) >= length:
            raise HarnessError(
                f"completion {t!r} needs {len(s) + 1} tokens with its EOS but the canvas holds {length}"
            )
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def upto_first_eos(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, L] -> [B] number of tokens up to and including the first EOS (L if none)."""
    is_eos = tokens == eos_id  # [B, L]
    L = tokens.shape[1]
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full_like(is_eos[:, 0], L, dtype=torch.long))
    return torch.clamp(first + 1, max=L)


def completion_mask(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, L] bool: positions up to and including the first EOS (docs/methods.md: later ones are padding)."""
    n = upto_first_eos(tokens, eos_id)  # [B]
    return torch.arange(tokens.shape[1], device=tokens.device)[None, :] < n[:, None]
