"""The Algorithm interface (docs/architecture.md, "Interfaces"; docs/methods.md §2).

An algorithm is a frozen keyword-only dataclass registered in ALGORITHMS. It names its likelihood
estimator (`estimator` + `estimator_params`, an ESTIMATORS entry), its advantage rule, whether it
needs π_old and π_ref, and one pure loss

    loss(batch, policy_terms, old_terms, ref_terms, advantages) -> (loss, metrics)

where the terms are `Estimate`s of the same rows on the same draws (old/ref: None when not
needed), `advantages` [B] float64, and `batch` a dict with
    mask     [B, L] bool   the tokens the loss counts (`loss_tokens`: scored completion tokens by default)
    completion_mask [B, L] bool  the completion up to and including its first EOS
    group    [B] long      group id of each row inside this micro-batch
    n_seq, n_tok, n_groups  the totals the loss normalises by: over this micro-batch when the
                           algorithm declares its reference micro-batch structure (`micro_batch` > 0:
                           the loop then weights each micro-batch's loss by B_mb/N, the mean over
                           equal micro-batches that gradient accumulation takes), else over the WHOLE
                           buffer, so that the micro-batch losses add up to the full-batch loss
    length   int           the completion canvas length L (the "constant" normalisation)

`micro_batch` (groups of G completions per micro-batch; 0: the whole buffer as one) is part of an
algorithm's declared defaults, equal to its reference configuration's per-device batch over its
number of generations: the reference trainers normalise each micro-batch's loss within it, so a
loss with a batch-dependent normaliser (Σ/Σmask, wd1's softmax over the rows) is that of the
micro-batch, not of the buffer. Where the loss is a plain mean over rows, equal micro-batches give
the same loss as the whole buffer and 0 is declared.
The shared loop (loop.py) only wires these together; the hooks below let a family change what
the loop feeds the loss without branching on names.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from harness.algorithms.advantages import advantages as advantage_rule
from harness.registry import ESTIMATORS


@dataclass(frozen=True, kw_only=True)
class Algorithm(abc.ABC):
    """Shared fields and hooks of every algorithm (not registered)."""

    estimator: str = "one_step"
    estimator_params: dict = field(default_factory=dict)
    advantage: Literal["mean", "zscore", "zscore_pop", "loo"] = "mean"
    micro_batch: float = 0.0  # groups per micro-batch as the reference config runs it; 0: the whole buffer

    uses_commit_steps: ClassVar[bool] = False  # the estimator scores along the rollout's decode order
    # The rollout records its denoising trajectory (`Generation.trajectory`: every step's canvas, full
    # prediction and probabilities), which the loop hands over as the buffer's `trajectory` (MDPO rewards
    # intermediate predictions). Off for every other algorithm: their rollouts and buffers are unchanged.
    uses_trajectory: ClassVar[bool] = False

    def __post_init__(self):
        ESTIMATORS.validate(self.estimator, self.estimator_params, f"algorithm.params.estimator={self.estimator}")
        if self.advantage not in ("mean", "zscore", "zscore_pop", "loo"):
            raise ValueError(f"advantage must be 'mean', 'zscore', 'zscore_pop' or 'loo', got {self.advantage!r}")
        if not self.micro_batch >= 0:
            raise ValueError(f"micro_batch (groups per micro-batch) must be >= 0, got {self.micro_batch!r}")

    # -- what the loop asks ------------------------------------------------------------------------
    @property
    def needs_old(self) -> bool:
        """π_old terms are needed (the loop computes them only on inner iterations >= 1; at
        iteration 0 θ = θ_old and the policy's own terms, detached, are used)."""
        return False

    @property
    def needs_ref(self) -> bool:
        return False

    def advantages(self, rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        return advantage_rule(self.advantage, rewards, group)

    def keep_groups(self, rewards: torch.Tensor) -> torch.Tensor:
        """[n_groups, G] rewards -> [n_groups] bool: groups that enter the update (default: all)."""
        return torch.ones(rewards.shape[0], dtype=torch.bool)

    def loss_tokens(self, rollout: dict) -> torch.Tensor:
        """[N, L] bool: the tokens the loss counts (its normalisers count them over the whole buffer).
        Default: the rollout's loss mask (completion up to the first EOS, minus IGPO's dropped hints)."""
        return rollout["loss_mask"]

    def rollout_sampler(self, sampler: dict, policy=None) -> dict:
        """The rollout sampler spec ({name, params}) from the study's `options.sampler`; default: unchanged.
        An algorithm whose likelihood is exact only for one decoding order (JustGRPO) constrains it here,
        and refuses a `policy` it cannot roll out in that order (HarnessError)."""
        return sampler

    def build_estimator(self, iteration: int, n_iterations: int):
        return ESTIMATORS.build(self.estimator, self.estimator_params)

    def draws_for(self, rollout: dict, first_draws: dict | None, iteration: int) -> dict | None:
        """Draws to pass at an inner iteration (before any are drawn): None = draw fresh ones from
        the (trajectory, iteration) generators. `rollout` holds this micro-batch's rollout tensors
        (commit_step ...), `first_draws` the policy draws of iteration 0 (None at iteration 0)."""
        if self.uses_commit_steps:
            return {"commit_step": rollout["commit_step"]}
        return None

    def terms(self, denoiser, prompt, prompt_mask, completion, completion_mask, *, generator, draws,
              iteration: int, n_iterations: int):
        """The likelihood terms of these rows (an Estimate); old/ref replay the policy's draws."""
        est = self.build_estimator(iteration, n_iterations)
        return est(denoiser, prompt, completion, completion_mask, generator=generator,
                   prompt_mask=prompt_mask, draws=draws)

    def after_rollout(self, loop, rollout: dict, step: int) -> dict:
        """Change the rollout buffer before advantages (IGPO's inpainting); default: unchanged."""
        return rollout

    @abc.abstractmethod
    def loss(self, batch: dict, policy_terms, old_terms, ref_terms, advantages: torch.Tensor):
        """-> (scalar loss tensor, {metric: float})."""
