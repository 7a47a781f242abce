"""`coupled`: DiffuCoder's coupled-sampling log-likelihood (coupled-GRPO, arXiv 2506.20639).

For each of λ = n_mc pairs draw t ~ U(t_low, t_high) and keys u_k ~ U(0, 1); the pair's first
pass masks the scored positions with u_k < t (each independently with probability t), the second
masks exactly the other scored positions (probability 1 − t): every scored token is masked in
exactly one pass of each pair. With an optional full-mask pass (all scored positions masked):

  pair_j,k = (1/t_j)·log p(o_k | x_{t_j})       if k is masked in the first pass of pair j
           = (1/(1−t_j))·log p(o_k | x_{1−t_j})  otherwise (k masked in the complement)
  per_token_k = 1/(λ+1) · [ log p(o_k | c, all masked) + Σ_j s·pair_j,k ]    include_full=True
              = 1/λ     · Σ_j s·pair_j,k                                      include_full=False
  sequence = Σ_k per_token_k                                                 (docs/methods.md §1)

with s = 1 (`scale="paper"`) or s = 1/2 (`scale="elbo"`). λ = 1 with the full pass is the paper's
and the reference code's setting (`selective_log_softmax`: (p_full + where(mask, p1/t, p2/(1−t)))/2).
Unscored completion positions stay clean in every pass and get zero terms.

What it targets. Let G(t) = E_{mask ~ Bernoulli(t)}[(1/t) Σ_{k masked} log p(o_k | x_t)], so that
ELBO = ∫_0^1 G(t) dt. Given t, each pass of a pair is a one-sample estimate of G at t and at 1 − t
respectively, so Σ_k pair_j,k has expectation G(t) + G(1 − t), i.e. 2·ELBO under t ~ U(0, 1):
  - scale="paper" (default; the paper's formula and the reference code): the pair part is
    unbiased for 2·ELBO, not the ELBO. With include_full (λ = 1) the sequence targets
    one_step/2 + ELBO; in general (one_step + 2λ·ELBO)/(λ+1); without the full pass, 2·ELBO.
  - scale="elbo": each pair is the average of its two (individually unbiased) ELBO samples, so the
    pair part is unbiased for the ELBO. Without the full pass the sequence is an unbiased ELBO
    estimate; with it, the sequence targets the mixture (one_step + λ·ELBO)/(λ+1) of the
    mean-field one-step term Σ_k log p(o_k | c, all masked) (a different quantity, not the ELBO)
    and the ELBO.
These statements hold for t ~ U(0, 1) (the paper). With the reference code's t ~ U(0.2, 0.8)
(`t_low=0.2, t_high=0.8`) the ELBO above is replaced by the mean of G over [0.2, 0.8]: biased.
The weights 1/t and 1/(1−t) are unbounded near t = 0 and 1, so like `mc_elbo` with t-law iid the
variance is heavy-tailed under t ~ U(0, 1).

Differences from the reference code: t is drawn per row (the code draws one t per micro-batch
from Python's global RNG), and only completion_mask positions are masked (the code also masks
and scores the padding after EOS). NFE per sequence: 2·n_mc, plus 1 with include_full.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from harness.estimators._common import completion_logprobs, uniform
from harness.registry import ESTIMATORS
from harness.types import Estimate

T_EPS = 1e-6  # t is clamped to [T_EPS, 1 − T_EPS]: 1/t and 1/(1 − t) stay finite (exact moments read this)


@ESTIMATORS.register("coupled")
@dataclass(frozen=True, kw_only=True)
class Coupled:
    """DiffuCoder coupled sampling: complementary mask pairs (t, 1-t) weighted 1/t, plus a full-mask pass."""

    metric: ClassVar[str] = "coupled"
    n_mc: int = 1
    t_low: float = 0.0
    t_high: float = 1.0
    include_full: bool = True
    scale: Literal["paper", "elbo"] = "paper"
    max_tokens: int = 65536

    def __post_init__(self):
        if self.n_mc < 1:
            raise ValueError(f"n_mc must be >= 1, got {self.n_mc}")
        if not 0.0 <= self.t_low < self.t_high <= 1.0:
            raise ValueError(f"need 0 <= t_low < t_high <= 1, got t_low={self.t_low}, t_high={self.t_high}")
        if self.scale not in ("paper", "elbo"):
            raise ValueError(f"scale must be 'paper' or 'elbo', got {self.scale!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    # What the statistics read (harness/stats/estimators.py, `token_scale` / `elbo_target` / `masks`):
    token_scale: ClassVar[bool] = False
    masks: ClassVar[str] = "complementary"

    @property
    def elbo_target(self) -> bool:
        """Unbiased for the ELBO only as the module docstring derives: no full-mask pass, each pair
        averaged (scale "elbo") and t ~ U(0, 1) (a narrower t range integrates G over it alone)."""
        return not self.include_full and self.scale == "elbo" and self.t_low == 0.0 and self.t_high == 1.0

    def nfe_for_batch(self, batch: int) -> int:
        return (2 * self.n_mc + int(self.include_full)) * batch

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator,
                 prompt_mask=None, draws=None) -> Estimate:
        B, L = completion.shape
        valid = completion_mask.bool()  # [B, L]
        if draws is None:
            u = uniform(generator, B, self.n_mc, device=completion.device)  # [B, n]
            t = (self.t_low + (self.t_high - self.t_low) * u).clamp(T_EPS, 1 - T_EPS)  # [B, n]
            keys = uniform(generator, B, self.n_mc, L, device=completion.device)  # [B, n, L]
            draws = {"t": t, "masks": (keys < t[..., None]) & valid[:, None, :]}  # first pass of each pair
        t, first = draws["t"], draws["masks"]  # [B, n], [B, n, L]
        second = valid[:, None, :] & ~first  # [B, n, L] the complement: every scored token once per pair
        n = t.shape[1]
        passes = [first, second]
        if self.include_full:
            passes.insert(0, valid[:, None, :])  # [B, 1, L]
        masks = torch.cat(passes, 1)  # [B, F + 2n, L]
        noised = torch.where(masks, denoiser.mask_id, completion[:, None, :])
        logp = completion_logprobs(denoiser, prompt, prompt_mask, completion, noised,
                                   self.max_tokens).double()  # [B, F + 2n, L]
        f = int(self.include_full)
        lp1, lp2 = logp[:, f:f + n], logp[:, f + n:]  # [B, n, L] each
        pair = lp1 * first / t[..., None] + lp2 * second / (1 - t[..., None])  # [B, n, L]
        if self.scale == "elbo":
            pair = pair / 2  # the average of the pair's two ELBO samples
        total = pair.sum(1)  # [B, L]
        if self.include_full:
            total = total + logp[:, 0] * valid
        per_token = total / (n + f)  # [B, L]
        return Estimate(per_token=per_token, sequence=per_token.sum(1), draws=draws, n=n)
