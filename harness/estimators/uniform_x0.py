"""`uniform_x0`: the clean-token log-likelihood of a uniform-noise diffusion LM (DiffusionGemma).

For models whose noise replaces tokens by uniformly random vocabulary tokens (no mask token), the
masked estimators do not apply. This estimator draws, for each of n copies, a noise level
t ~ U(0, 1) and corrupts each scored completion position independently with probability t by a
token drawn uniformly from the vocabulary (the forward process of uniform-noise diffusion with a
linear schedule, alpha_t = 1 - t), then scores the clean completion:

    value = (1/n) Σ_i Σ_{k scored} log p_θ(o_k | c, x_t^(i))          per_token_k = its k-th term

It is the x0-prediction objective these models are trained with, evaluated as a sequence score;
it is NOT a bound on log p(o | c) (the uniform-noise ELBO needs the full posterior algebra that
this estimator does not implement), so compare it across policies, not with masked ELBOs.
Replay: draws = {"t", "corrupt", "noise"}; passing them back reproduces the value exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harness.estimators._common import completion_logprobs, uniform
from harness.registry import ESTIMATORS
from harness.types import Estimate, HarnessError


def uniform_corrupt(completion: torch.Tensor, corrupt: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """completion [B, L], corrupt [B, n, L] bool, noise [B, n, L] tokens -> x_t [B, n, L]."""
    return torch.where(corrupt, noise, completion[:, None, :])


@ESTIMATORS.register("uniform_x0")
@dataclass(frozen=True, kw_only=True)
class UniformX0:
    """Uniform-noise models: clean-token log-likelihood under random-token corruption at t ~ U(0,1) (not an ELBO)."""

    metric: ClassVar[str] = "uniform_x0"
    noise: ClassVar[str] = "uniform"  # the models it applies to (plan-time check in config.py)
    n_mc: int = 4
    max_tokens: int = 65536

    def __post_init__(self):
        if self.n_mc < 1:
            raise ValueError(f"n_mc must be >= 1, got {self.n_mc}")

    def expected_nfe(self, batch: int) -> int:
        return self.n_mc * batch

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator,
                 prompt_mask=None, draws=None) -> Estimate:
        if getattr(denoiser, "noise", "masked") != "uniform":
            raise HarnessError(f"uniform_x0 applies to uniform-noise models (diffusion_gemma); "
                               f"{type(getattr(denoiser, 'inner', denoiser)).__name__} is not one")
        B, L = completion.shape
        n, V, dev = self.n_mc, denoiser.vocab_size, completion.device
        valid = completion_mask.bool()  # [B, L]
        if draws is None:
            t = uniform(generator, B, n, device=dev)  # [B, n]
            u = uniform(generator, B, n, L, device=dev)  # [B, n, L]
            corrupt = (u < t[..., None]) & valid[:, None, :]
            noise = (uniform(generator, B, n, L, device=dev) * V).long().clamp_max(V - 1)  # [B, n, L]
            draws = {"t": t, "corrupt": corrupt, "noise": noise}
        x_t = uniform_corrupt(completion, draws["corrupt"], draws["noise"])  # [B, n, L]
        with denoiser.canvas(L):
            logp = completion_logprobs(denoiser, prompt, prompt_mask, completion, x_t, self.max_tokens)  # [B, n, L]
        per_token = (logp * valid[:, None, :]).mean(1)  # [B, L]
        return Estimate(per_token=per_token, sequence=per_token.sum(1), draws=draws, n=n)
