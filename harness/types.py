"""Shared vocabulary of the harness (docs/architecture.md, "Interfaces").

Everything that crosses a module boundary is one of these types: a model is a `Denoiser`, an
estimator returns an `Estimate`, a sampler returns a `Generation`, a task yields `Item`s, and the
meter reports a `Cost` against a `Budget`. Keep this module free of heavy imports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: `dlm-harness --help` and `list` must not pay for importing torch
    import torch


class HarnessError(Exception):
    """An error caused by the user's input (a suite, a name, a parameter, a file).

    The CLI prints the message without a traceback and exits with status 2.
    """


class BudgetExceeded(Exception):
    """Raised by the meter when a cell spends more than its budget allows."""

    def __init__(self, what: str, spent: float, limit: float):
        super().__init__(f"budget exceeded: {what} {spent:g} > limit {limit:g}")
        self.what, self.spent, self.limit = what, spent, limit


@runtime_checkable
class Denoiser(Protocol):
    """A model that returns logits for every position of a partially masked sequence.

    `shift_logits` is True for models that predict position k from position k-1 (Dream, causal
    LMs): estimators then read the logits of position k-1 for the token at k.

    A block-diffusion model also has an integer `block_size` and `logits_denoise(xt, x0,
    attention_mask)` (block-causal attention; see harness/models/block_attention.py); a model
    without `block_size` (or with None) attends bidirectionally over the whole canvas.
    """

    mask_id: int | None
    vocab_size: int
    eos_id: int
    pad_id: int
    shift_logits: bool
    tokenizer: Any

    def logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: LongTensor [B, T] -> FloatTensor [B, T, V]."""
        ...


@dataclass(frozen=True)
class ArchInfo:
    """What the meter needs to estimate FLOPs: parameters outside embeddings, layers, width."""

    n_params: int
    n_layers: int
    d_model: int


@dataclass(frozen=True, kw_only=True)
class Item:
    """One evaluation unit of a task: a prompt, an exact reference answer, and metadata."""

    id: str
    prompt: str
    reference: str
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """What a likelihood estimator returns (docs/methods.md §1).

    per_token: [B, L] per-token terms (zero outside the completion mask)
    sequence:  [B] the sequence value
    draws:     the random draws used, replayable for pi_old / pi_ref
    n:         the number of Monte Carlo samples (1 for deterministic estimators)
    """

    per_token: torch.Tensor
    sequence: torch.Tensor
    draws: dict[str, Any]
    n: int = 1


@dataclass(frozen=True, kw_only=True)
class Generation:
    """What a sampler returns (docs/methods.md §3).

    tokens:      [B, L] generated completion tokens (after the first EOS: EOS padding)
    text:        decoded completion up to the first EOS, one string per row
    commit_step: [B, L] step at which each token was committed (-1 if never masked)
    commit_conf: [B, L] float, the probability the committing step gave the committed token (NaN where
                 no step committed it); None where the sampler does not hand it out
    gen_len:     [B] generated tokens up to and including the first EOS
    steps:       number of denoising steps taken (the batch's)
    row_steps:   [B] each row's own steps, where rows stop at different steps (None: `steps` for all)
    trajectory:  the denoising trajectory, where the caller asked the sampler to record it (`record_steps`;
                 None otherwise): {"states": [B, T, L] the completion canvas before each of the T steps
                 (mask id where still masked), "preds": [B, T, L] that step's full prediction (its
                 proposal at every masked position, the canvas elsewhere), "conf": [B, T, L] float, the
                 probability the step gave each proposal (NaN where it proposed none)}
    """

    tokens: torch.Tensor
    text: list[str]
    commit_step: torch.Tensor
    gen_len: torch.Tensor
    steps: int
    row_steps: torch.Tensor | None = None
    commit_conf: torch.Tensor | None = None
    trajectory: dict | None = None

    def steps_of(self, i: int) -> int:
        """Row i's steps: its own where the sampler counts them, else the batch's."""
        return int(self.row_steps[i]) if self.row_steps is not None else int(self.steps)


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Limits on what one cell may spend; None means unlimited."""

    nfe: int | None = None
    tokens: int | None = None
    flops: float | None = None
    wall_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class Cost:
    """What the meter measured. NFE = sequences x forward passes (docs/methods.md notation)."""

    nfe: int = 0
    nfe_full: int = 0
    nfe_cached: int = 0
    tokens: int = 0
    flops: float = 0.0
    wall_s: float = 0.0
    peak_mem: int = 0

    def minus(self, other: "Cost") -> "Cost":
        """The cost spent between two readings (peak memory is not subtracted)."""
        return Cost(
            nfe=self.nfe - other.nfe,
            nfe_full=self.nfe_full - other.nfe_full,
            nfe_cached=self.nfe_cached - other.nfe_cached,
            tokens=self.tokens - other.tokens,
            flops=self.flops - other.flops,
            wall_s=self.wall_s - other.wall_s,
            peak_mem=self.peak_mem,
        )

    def as_dict(self) -> dict:
        return {
            "nfe": self.nfe,
            "nfe_full": self.nfe_full,
            "nfe_cached": self.nfe_cached,
            "tokens": self.tokens,
            "flops": self.flops,
            "wall_s": round(self.wall_s, 6),
            "peak_mem": self.peak_mem,
        }
