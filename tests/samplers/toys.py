"""Hand-built denoisers for the sampler tests: their distributions are known in advance."""
from __future__ import annotations

import torch

from harness.types import ArchInfo

MASK, EOS, PAD = 1, 2, 0


class _Tok:
    @staticmethod
    def decode(ids, stop_at_eos=True):
        out = []
        for i in ids:
            if int(i) == EOS and stop_at_eos:
                break
            out.append(str(int(i)))
        return " ".join(out)


class TableDenoiser:
    """Context-free: completion position k always gets the distribution `table[k]` (a list of
    probabilities over token ids 3, 4, ...; EOS (id 2) gets `eos[k]` if given). Every call's input
    is recorded in `calls`, so tests can replay what the sampler saw."""

    mask_id, eos_id, pad_id, shift_logits = MASK, EOS, PAD, False
    device = torch.device("cpu")
    arch = ArchInfo(n_params=1, n_layers=1, d_model=1)
    tokenizer = _Tok()

    def __init__(self, table, prompt_len: int, eos=None, vocab_size: int = 12):
        self.vocab_size = vocab_size
        self.P = prompt_len
        L = len(table)
        probs = torch.full((L, vocab_size), 1e-9)
        for k, row in enumerate(table):
            probs[k, 3:3 + len(row)] = torch.tensor(row)
            if eos is not None:
                probs[k, EOS] = eos[k]
        self.log_probs = torch.log(probs / probs.sum(-1, keepdim=True))  # [L, V]
        self.calls: list[torch.Tensor] = []

    def logits(self, x, attention_mask=None):
        self.calls.append(x.clone())
        B, T = x.shape
        out = torch.zeros(B, T, self.vocab_size)
        out[:, self.P:] = self.log_probs[: T - self.P]
        return out


def valid_order(commit_step: torch.Tensor) -> bool:
    """Every position committed once, and each row's steps are 0, 1, ..., max (no gaps)."""
    for row in commit_step.tolist():
        if min(row) < 0:
            return False
        if sorted(set(row)) != list(range(max(row) + 1)):
            return False
    return True
