"""`quadrature_elbo`: GDPO's semi-deterministic Monte Carlo ELBO (arXiv 2510.08554).

ELBO = ∫_0^1 G(t) dt,   G(t) = E_mask[(1/t) Σ_{k masked} log p(o_k | c, x_t)]
value = Σ_{n=1..N} Σ_{j=1..K} (w_n / (t_n K)) Σ_{k ∈ M_nj} log p(o_k | c, x_{M_nj})   (docs/methods.md §1)

t_n, w_n: the N-point Gauss–Legendre rule mapped from [−1, 1] to (0, 1) (Σ w_n = 1); K mask
draws per node. `mask_law="count"` (default, METHODS): M_nj is a uniform subset of exactly
k_n = max(1, ⌊t_n·L_b⌋) of the row's L_b scored positions. `mask_law="bernoulli"`: each scored
position is masked independently with probability t_n. NFE: N·K per sequence.

This is a deterministic-quadrature approximation in t: only the masks are random. What it targets:
  - count: E[value] = Σ_n w_n·h(k_n)/t_n with h(l) = E_{|M|=l}[Σ_{k∈M} log p(o_k | x_M)], the
    quadrature of the step function h(max(1, ⌊tL⌋))/t. That is not the ELBO (Σ_l h(l)/l) for any
    N, and the bias does not shrink as N grows: the integrand behaves like h(1)/t near t = 0, whose
    integral diverges, so large-N rules (small first node) drift away. Even for a factorised
    denoiser (h(l) = l·Σ_k log p_k / L) the value is Σ_k log p_k · Σ_n w_n k_n/(t_n L), e.g. ×0.817
    for L = 6, N = 2 and ×1.116 for N = 3; it is exact only where every k_n = t_n·L (N = 1, L even).
  - bernoulli: given t, the mask expectation G(t) = Σ_l C(L,l) t^{l−1} (1−t)^{L−l} h(l) is a
    polynomial of degree L − 1 in t, which the N-point rule integrates exactly once 2N − 1 ≥ L − 1.
    So the value is an unbiased ELBO estimate whenever N ≥ L_b/2, and its bias (pure quadrature
    error) vanishes as N grows; for a factorised denoiser G is constant and it is unbiased for any N.
    The weight 1/t_n stays bounded (nodes avoid 0), unlike `mc_elbo` with t ~ U(0, 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from harness.estimators._common import completion_logprobs, subset_masks, uniform
from harness.registry import ESTIMATORS
from harness.types import Estimate


def gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n-point Gauss–Legendre nodes and weights on (0, 1): -> (t [n], w [n]) float64, Σ w = 1."""
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.from_numpy((x + 1) / 2), torch.from_numpy(w / 2)


@ESTIMATORS.register("quadrature_elbo")
@dataclass(frozen=True, kw_only=True)
class QuadratureElbo:
    """GDPO semi-deterministic MC: t on N Gauss-Legendre nodes, K masks per node, weight w_n/(t_n K)."""

    metric: ClassVar[str] = "elbo"

    # What the statistics read (harness/stats/estimators.py, `token_scale` / `elbo_target` / `masks`):
    token_scale: ClassVar[bool] = False
    # A quadrature in t: biased for count masks at every N, unbiased for bernoulli masks only when
    # N >= L/2 (a property of the item, not of the estimator), so never declared unbiased.
    elbo_target: ClassVar[bool] = False
    masks: ClassVar[str] = "independent"
    n_nodes: int = 2
    k_masks: int = 1
    mask_law: Literal["count", "bernoulli"] = "count"
    max_tokens: int = 65536

    def __post_init__(self):
        if self.n_nodes < 1:
            raise ValueError(f"n_nodes must be >= 1, got {self.n_nodes}")
        if self.k_masks < 1:
            raise ValueError(f"k_masks must be >= 1, got {self.k_masks}")
        if self.mask_law not in ("count", "bernoulli"):
            raise ValueError(f"mask_law must be 'count' or 'bernoulli', got {self.mask_law!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def nfe_for_batch(self, batch: int) -> int:
        return self.n_nodes * self.k_masks * batch

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator,
                 prompt_mask=None, draws=None) -> Estimate:
        B, L = completion.shape
        valid = completion_mask.bool()  # [B, L]
        N, K = self.n_nodes, self.k_masks
        if draws is None:
            t, w = (v.to(completion.device) for v in gauss_legendre(N))  # [N], [N]
            t = t.repeat_interleave(K)[None].expand(B, N * K)  # [B, NK]: node n, draws j = 0..K-1
            weight = (w / (t[0, ::K] * K)).repeat_interleave(K)[None].expand(B, N * K)  # [B, NK]
            keys = uniform(generator, B, N * K, L, device=completion.device)  # [B, NK, L]
            if self.mask_law == "count":
                length = valid.sum(1, keepdim=True).double()  # [B, 1] L_b
                count = torch.floor(t * length).clamp_min(1)  # [B, NK] k_n = max(1, ⌊t_n L_b⌋)
                masks = subset_masks(keys, valid, count)
            else:
                masks = (keys < t[..., None]) & valid[:, None, :]
            draws = {"t": t, "masks": masks, "weight": weight}
        masks, weight = draws["masks"], draws["weight"]  # [B, NK, L], [B, NK]
        noised = torch.where(masks, denoiser.mask_id, completion[:, None, :])  # [B, NK, L]
        logp = completion_logprobs(denoiser, prompt, prompt_mask, completion, noised, self.max_tokens)
        per_token = (logp.double() * masks * weight[..., None]).sum(1)  # [B, L]
        return Estimate(per_token=per_token, sequence=per_token.sum(1), draws=draws, n=N * K)
