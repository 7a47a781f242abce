"""`uni_elbo`: UniGRPO's masked-token mean log-likelihood (MMaDA, arXiv 2505.15809).

value = (1/|M|) Σ_{k ∈ M} log p(o_k | c, x_t),   M = the masked scored positions   (docs/methods.md §1)
per_token_k = 1{k ∈ M} · log p(o_k | c, x_t) / |M|,   so that sequence = Σ_k per_token_k = value

Structured mask ratio over the μ = `n_iterations` inner iterations of one rollout: iteration 0
draws t_1 ~ U(0, 1); iteration i uses t_i = t_1 + (1 − t_1)·i/(μ − 1), i.e. t spaced uniformly
from t_1 up to 1 (the last iteration masks everything). Each scored position is masked
independently with probability t_i; if that masks none, the scored position with the smallest
key is masked (at least one token is always scored). One pass, NFE 1 per sequence.

Replay: the draws are {"t1", "t", "masks"}. Passing the full draws back reproduces the value
exactly (π_old / π_ref). Passing only {"t1": ...} with a later `iteration` keeps the rollout's t_1
and draws a fresh mask at that iteration's t_i (the structured schedule across iterations).

What it targets: a per-token average, not the ELBO and not a sequence log-likelihood. Given |M| = l
the masked set is a uniform l-subset, so E[value] = Σ_l P(|M| = l)·h(l)/l with
h(l) = E_{|M|=l}[Σ_{k∈M} log p(o_k | x)]; compare ELBO/L = Σ_l (1/L)·h(l)/l. With t ~ U(0, 1) and
Bernoulli masking, |M| is uniform on {0..L} and the "at least one" rule moves |M| = 0 onto 1, so
P(l) = 2/(L+1) for l = 1 and 1/(L+1) for l = 2..L: close to, but not exactly, ELBO/L. For a
factorised denoiser (h(l) = l·mean_k log p_k) it is unbiased for Σ_k log p(o_k)/L, and at t = 1
it equals one_step/L exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harness.estimators._common import completion_logprobs, uniform
from harness.registry import ESTIMATORS
from harness.types import Estimate


@ESTIMATORS.register("uni_elbo")
@dataclass(frozen=True, kw_only=True)
class UniElbo:
    """UniGRPO: mean log-prob over masked tokens at ratio t, t spaced from t_1 ~ U(0,1) to 1 over iterations."""

    metric: ClassVar[str] = "uni_elbo"

    # What the statistics read (harness/stats/estimators.py, `token_scale` / `elbo_target` / `masks`):
    token_scale: ClassVar[bool] = True  # a mean over masked tokens: x L puts it on the ELBO's scale
    elbo_target: ClassVar[bool] = False  # close to ELBO / L, not equal (module docstring)
    masks: ClassVar[str] = "independent"
    iteration: int = 0
    n_iterations: int = 1
    max_tokens: int = 65536

    def __post_init__(self):
        if self.n_iterations < 1:
            raise ValueError(f"n_iterations must be >= 1, got {self.n_iterations}")
        if not 0 <= self.iteration < self.n_iterations:
            raise ValueError(f"iteration must be in [0, n_iterations={self.n_iterations}), got {self.iteration}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def nfe_for_batch(self, batch: int) -> int:
        return batch

    def ratio(self, t1: torch.Tensor) -> torch.Tensor:
        """This iteration's mask ratio t_i from the rollout's t_1 ([B] -> [B])."""
        if self.n_iterations == 1:
            return t1
        return t1 + (1 - t1) * (self.iteration / (self.n_iterations - 1))

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator,
                 prompt_mask=None, draws=None) -> Estimate:
        B, L = completion.shape
        valid = completion_mask.bool()  # [B, L]
        draws = {} if draws is None else dict(draws)
        if "masks" not in draws:
            if "t1" not in draws:
                draws["t1"] = uniform(generator, B, device=completion.device)  # [B]
            t = self.ratio(draws["t1"])  # [B]
            keys = uniform(generator, B, L, device=completion.device)  # [B, L]
            keys = torch.where(valid, keys, torch.full_like(keys, 2.0))
            masks = (keys < t[:, None]) & valid  # [B, L]
            first = torch.zeros_like(masks).scatter_(1, keys.argmin(1, keepdim=True), True) & valid
            masks = torch.where(masks.any(1, keepdim=True), masks, first)  # at least one masked
            draws.update(t=t, masks=masks[:, None, :])  # [B, 1, L]
        masks = draws["masks"]  # [B, 1, L]
        noised = torch.where(masks, denoiser.mask_id, completion[:, None, :])  # [B, 1, L]
        logp = completion_logprobs(denoiser, prompt, prompt_mask, completion, noised, self.max_tokens)
        count = masks.sum(-1, keepdim=True).clamp_min(1)  # [B, 1, 1]
        per_token = (logp.double() * masks / count)[:, 0]  # [B, L]
        return Estimate(per_token=per_token, sequence=per_token.sum(1), draws=draws, n=1)
