"""How the runner cuts a cell's units into batches: a max-tokens budget and out-of-memory back-off.

Values never depend on how units are batched (one generator per unit, docs/architecture.md, convention 9), so both
mechanisms only change speed and memory, never a number:

- max-tokens: a cell's `max_tokens` caps units x padded sequence length per batch, where a
  unit's length is the token count of its prompt as fed (after the chat template and BOS) plus
  the task's `gen_length` (the canvas every study kind pushes through the model). Batches stay
  consecutive runs of the planned unit order and never exceed `batch_size` units. Components that
  multiply rows inside a unit (an estimator's n_mc copies) chunk those themselves with their own
  `max_tokens` parameter.
- logits: a pass over N tokens also writes N x V logits (V = 126,464 for LLaDA, 152,064 for
  Dream: 65,536 tokens are 33 GB in float32), so every token cap is lowered to what
  LOGITS_BYTES of float32 logits hold (`logits_capped`): 16,980 tokens for LLaDA, 14,122 for
  Dream, no change for small vocabularies.
- back-off: when a batch raises an out-of-memory error (torch.OutOfMemoryError, which
  torch.cuda.OutOfMemoryError is), the runner halves it and runs the halves, then keeps the
  halved size as the cell's cap for its remaining batches. A single unit that still does not fit
  is recorded as an error. Every back-off is recorded (records and manifest).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

LOGITS_BYTES = 8 * 2**30  # float32 logits of one forward pass at most (8 GiB)


def logits_capped(max_tokens: int, vocab_size: int | None, budget: int = LOGITS_BYTES) -> int:
    """The token cap of one pass, lowered so its [tokens, V] float32 logits fit `budget` bytes."""
    if not vocab_size:
        return max_tokens
    return max(1, min(max_tokens, budget // (4 * int(vocab_size))))


def unit_length(model, prompt: str, gen_length: int, prefill: str = "") -> int:
    """Tokens one unit puts through the model per row: its prompt as the studies feed it (the
    model's chat template, BOS and the task's prefill: harness/prompting.py) plus the generation
    canvas. A bare tokenizer (no `.tokenizer`) counts the raw prompt."""
    if hasattr(model, "tokenizer"):
        from harness.prompting import prompt_ids

        return len(prompt_ids(model, prompt, prefill=prefill)) + gen_length
    return len(model.encode(prompt)) + gen_length


def plan_batches(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> list[range]:
    """Consecutive index ranges over units of the given lengths: each range has at most `batch_size`
    units and, when `max_tokens` is set, len(range) x max(length in range) <= max_tokens (a unit
    longer than max_tokens on its own still runs, alone)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    out, lo, longest = [], 0, 0
    for i, n in enumerate(lengths):
        width = max(longest, n)
        size = i - lo + 1
        if i > lo and (size > batch_size or (max_tokens is not None and size * width > max_tokens)):
            out.append(range(lo, i))
            lo, width = i, n
        longest = width
    if lo < len(lengths):
        out.append(range(lo, len(lengths)))
    return out


def split(batch: list, cap: int) -> list[list]:
    """Consecutive pieces of `batch` of at most `cap` units."""
    return [batch[i:i + cap] for i in range(0, len(batch), cap)]


def halves(batch: list) -> list[list]:
    """The first ceil(n/2) units, then the rest."""
    mid = (len(batch) + 1) // 2
    return [batch[:mid], batch[mid:]]


def is_oom(exc: BaseException) -> bool:
    """An allocator out-of-memory error (CUDA raises torch.OutOfMemoryError; some backends only
    say so in a RuntimeError's message)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_memory(device: torch.device) -> None:
    """Hand cached blocks back after an OOM, so the halved batch starts from a clean allocator."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    """Start a fresh CUDA peak-memory window (each batch's records carry their own batch's peak).
    On CPU the peak is the process's RSS high-water mark, which cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


@dataclass
class Backoff:
    """A cell's out-of-memory back-off state: the current cap on units per batch, and the events."""

    cap: int
    events: list = field(default_factory=list)

    def shrink(self, cell_id: str, batch: list, wasted: dict, error: str) -> list[list]:
        """Record an OOM of `batch` and return its halves (the cap drops to the first half's size)."""
        parts = halves(batch)
        self.cap = min(self.cap, len(parts[0]))
        self.events.append({"cell": cell_id, "batch_size": len(batch), "retry_batch_size": len(parts[0]),
                            "first_item": batch[0][1].id, "wasted_cost": wasted, "error": error[-300:]})
        return parts


class InjectedOOM:
    """A denoiser that raises torch.OutOfMemoryError on any forward pass with more than `max_rows`
    rows: a CPU-testable stand-in for a GPU running out of memory."""

    def __init__(self, inner, max_rows: int):
        self.inner, self.max_rows = inner, max_rows
        self.raised = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[0] > self.max_rows:
            self.raised += 1
            raise torch.OutOfMemoryError(f"injected: {x.shape[0]} rows > {self.max_rows} (CUDA out of memory)")

    def logits(self, x, attention_mask=None):
        self._check(x)
        return self.inner.logits(x, attention_mask)

    def logits_denoise(self, xt, x0, attention_mask=None):
        self._check(xt)
        return self.inner.logits_denoise(xt, x0, attention_mask)

    def logits_build_cache(self, x, attention_mask=None, *, keep):
        self._check(x)
        return self.inner.logits_build_cache(x, attention_mask, keep=keep)

    def logits_cached(self, x, cache, **kwargs):
        self._check(x)
        return self.inner.logits_cached(x, cache, **kwargs)
