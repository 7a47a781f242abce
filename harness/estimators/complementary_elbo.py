"""`complementary_elbo`: ESPO's stratified-count ELBO with complementary masks (arXiv 2512.03759).

Count-law ELBO (docs/methods.md §1, §4): with l ~ U{1..L} and M a uniform l-subset of the L scored
positions,  ELBO = E_l E_M[(L/l) Σ_{k∈M} log p(o_k | c, x_M)] = Σ_{l=1..L} h(l)/l,
h(l) = E_{|M|=l}[Σ_{k∈M} log p(o_k | x_M)].

Sample i of n (stratified): s_i = (i + u_i)/n, l_i = ⌊s_i·L_b⌋ + 1 ∈ {1..L_b}; the first pass masks
a uniform l_i-subset M_i of the row's scored positions, the second its complement M_i^c (L_b − l_i
positions, itself a uniform subset of that size). Per sample

  l < L:  value_i = ½·(L/l)·Σ_{k∈M} log p(o_k | x_M) + ½·(L/(L−l))·Σ_{k∈M^c} log p(o_k | x_{M^c})
  l = L:  value_i = (L/L)·Σ_{k∈M} log p(o_k | x_M)        (the complement is empty)
  sequence = (1/n) Σ_i value_i,  per_token its per-position terms.

Unbiased for the ELBO, and why the l = L case is special: the complement count L − l is uniform
on {0..L−1}, never L, so the complement pass alone is biased (it misses the l = L term h(L)/L)
and the plain average ½(first + second), with the empty complement counted as 0, has bias
−h(L)/(2L). Matching coefficients of h(m): for m < L the first pass (l = m) and the complement
(l = L − m) each contribute ½·(1/m), summing to 1/m; for m = L only the first pass can supply
h(L)/L, so when l = L it keeps its full weight. The averaged pair is then unbiased for every row.
Stratification keeps this: the n strata of s cover U(0, 1) exactly once, so the mean over the n
samples has the count law's expectation. For a denoiser whose token log-probs are all equal
(log p_k = c) every sample is exactly L·c. Post-EOS positions (completion_mask False) stay clean.

The l = L pass still runs its (clean) complement: NFE is exactly 2·n_mc per sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harness.estimators._common import completion_logprobs, subset_masks, uniform
from harness.registry import ESTIMATORS
from harness.types import Estimate


@ESTIMATORS.register("complementary_elbo")
@dataclass(frozen=True, kw_only=True)
class ComplementaryElbo:
    """ESPO: stratified-count ELBO, each mask paired with its complement; unbiased for the ELBO."""

    metric: ClassVar[str] = "elbo"

    # What the statistics read (harness/stats/estimators.py, `token_scale` / `elbo_target` / `masks`):
    token_scale: ClassVar[bool] = False
    elbo_target: ClassVar[bool] = True  # the l = L case keeps its full weight (module docstring)
    masks: ClassVar[str] = "complementary"
    n_mc: int = 1
    max_tokens: int = 65536

    def __post_init__(self):
        if self.n_mc < 1:
            raise ValueError(f"n_mc must be >= 1, got {self.n_mc}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def nfe_for_batch(self, batch: int) -> int:
        return 2 * self.n_mc * batch

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator,
                 prompt_mask=None, draws=None) -> Estimate:
        B, L = completion.shape
        valid = completion_mask.bool()  # [B, L]
        length = valid.sum(1, keepdim=True).double()  # [B, 1] L_b
        if draws is None:
            n = self.n_mc
            u = uniform(generator, B, n, device=completion.device)  # [B, n]
            s = (torch.arange(n, dtype=torch.float64, device=completion.device)[None, :] + u) / n
            count = torch.minimum(torch.floor(s * length) + 1, length)  # [B, n] l ~ U{1..L_b}, stratified
            keys = uniform(generator, B, n, L, device=completion.device)  # [B, n, L]
            draws = {"count": count, "masks": subset_masks(keys, valid, count)}
        count, first = draws["count"], draws["masks"]  # [B, n], [B, n, L]
        second = valid[:, None, :] & ~first  # [B, n, L] the complement
        n = count.shape[1]
        rest = length - count  # [B, n] L_b − l
        full = rest == 0
        w1 = torch.where(full, 1.0, 0.5) * length / count.clamp_min(1)  # [B, n]
        w2 = torch.where(full, 0.0, 0.5 * length / rest.clamp_min(1))  # [B, n]
        noised = torch.where(torch.cat([first, second], 1), denoiser.mask_id, completion[:, None, :])  # [B, 2n, L]
        logp = completion_logprobs(denoiser, prompt, prompt_mask, completion, noised,
                                   self.max_tokens).double()  # [B, 2n, L]
        terms = logp[:, :n] * first * w1[..., None] + logp[:, n:] * second * w2[..., None]  # [B, n, L]
        per_token = terms.mean(1)  # [B, L]
        return Estimate(per_token=per_token, sequence=per_token.sum(1), draws=draws, n=n)
