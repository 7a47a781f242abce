"""GRPO and the likelihood-swapped family built on it (METHODS.md §2).

Pure pieces (hand-computable; shapes in comments):
  kl_estimate(logp, ref, kind)     with d = log π_ref − log π_θ:  k1 = −d,  k2 = d²/2,  k3 = e^d − d − 1
                                   (Schulman's estimators of KL(π_θ ‖ π_ref) from samples of π_θ)
  clipped_surrogate(ratio, A)      min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A)   (PPO, DAPO's ε_low/ε_high)
  aggregate(x, mask, norm, ...)    "sequence": (1/N) Σ_i (1/|o_i|) Σ_k x_ik        (GRPO)
                                   "token":    (1/Σ_i |o_i|) Σ_i Σ_k x_ik          (DAPO, per token over the group)
                                   "constant": (1/(N·L)) Σ_i Σ_k x_ik              (Dr. GRPO)
  token_loss(...)                  ρ_ik = exp(ℓ_θ,ik − ℓ_old,ik); loss_ik = −(surrogate − β·KL_ik)
  sequence_loss(...)               ρ_i = exp((S_θ,i − S_old,i)/s_i), s_i = 1 or |o_i| (ESPO);
                                   loss = (1/N) Σ_i w_i·−(surrogate_i − β·KL_i), w_i = 1 or 1/|o_i|
N, Σ|o_i| are totals over the whole rollout buffer (batch["n_seq"], batch["n_tok"]), so the losses
of micro-batches add up to the full-batch loss exactly.

Registered: grpo (generic, any estimator), diffu_grpo (one_step), coupled_grpo (coupled,
leave-one-out), uni_grpo (uni_elbo with the structured t schedule over inner iterations), gdpo
(quadrature_elbo, sequence ratio), espo (complementary_elbo, sequence ratio on ΔELBO/L, k2).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from harness.algorithms.base import Algorithm
from harness.registry import ALGORITHMS, ESTIMATORS


def kl_estimate(logp: torch.Tensor, ref: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-element KL(π_θ ‖ π_ref) estimate from log-probs of samples of π_θ (same shape in/out)."""
    d = ref - logp  # log π_ref − log π_θ
    if kind == "k1":
        return -d
    if kind == "k2":
        return d * d / 2
    if kind == "k3":
        return torch.exp(d) - d - 1
    raise ValueError(f"unknown KL estimator {kind!r} (known: k1, k2, k3)")


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float):
    """-> (min(ρA, clip(ρ)A), bool: the clipped branch is the active one). Shapes broadcast."""
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    return torch.minimum(unclipped, clipped), clipped < unclipped


def aggregate(x: torch.Tensor, mask: torch.Tensor, norm: str, n_seq: int, n_tok: int, length: int) -> torch.Tensor:
    """[B, L] per-token losses, [B, L] bool mask -> scalar (see module doc)."""
    x = torch.where(mask, x, torch.zeros_like(x))
    if norm == "sequence":
        return (x.sum(1) / mask.sum(1).clamp_min(1)).sum() / n_seq
    if norm == "token":
        return x.sum() / max(n_tok, 1)
    if norm == "constant":
        return x.sum() / (n_seq * length)
    raise ValueError(f"unknown loss normalisation {norm!r} (known: sequence, token, constant)")


def token_loss(logp, old, ref, adv, mask, *, eps_low: float, eps_high: float, beta: float, kl: str,
               norm: str, n_seq: int, n_tok: int, length: int):
    """Token-level clipped GRPO. logp/old/ref [B, L] (ref None: no KL), adv [B], mask [B, L] bool."""
    ratio = torch.exp(logp - old)  # [B, L]
    sur, clipped = clipped_surrogate(ratio, adv[:, None], eps_low, eps_high)  # [B, L]
    kl_tok = kl_estimate(logp, ref, kl) if ref is not None else torch.zeros_like(logp)  # [B, L]
    loss = aggregate(-(sur - beta * kl_tok), mask, norm, n_seq, n_tok, length)
    m = mask.sum().clamp_min(1)
    metrics = {"clip_frac": float((clipped & mask).sum() / m),
               "kl": float((kl_tok.detach() * mask).sum() / m) if ref is not None else None,
               "ratio": float((ratio.detach() * mask).sum() / m)}
    return loss, metrics


def sequence_loss(seq, old, ref, adv, *, scale, weight, eps_low: float, eps_high: float, beta: float, kl: str,
                  n_seq: int):
    """Sequence-level clipped GRPO. seq/old/ref [B] (ref None: no KL), adv, scale, weight [B]."""
    ratio = torch.exp((seq - old) / scale)  # [B]
    sur, clipped = clipped_surrogate(ratio, adv, eps_low, eps_high)  # [B]
    kl_seq = kl_estimate(seq / scale, ref / scale, kl) if ref is not None else torch.zeros_like(seq)  # [B]
    loss = (weight * -(sur - beta * kl_seq)).sum() / n_seq
    metrics = {"clip_frac": float(clipped.double().mean()),
               "kl": float(kl_seq.detach().mean()) if ref is not None else None,
               "ratio": float(ratio.detach().mean())}
    return loss, metrics


@ALGORITHMS.register("grpo")
@dataclass(frozen=True, kw_only=True)
class GRPO(Algorithm):
    """Generic GRPO: PPO clip (ε_low/ε_high) on token or sequence ratios, β·KL (k1/k2/k3) to π_ref or π_old."""

    ratio: Literal["token", "sequence"] = "token"
    eps_low: float = 0.5
    eps_high: float = 0.5
    beta: float = 0.04
    kl: Literal["k1", "k2", "k3"] = "k3"
    kl_to: Literal["ref", "old"] = "ref"
    norm: Literal["sequence", "token", "constant"] = "sequence"
    sequence_scale: Literal["none", "length"] = "none"  # ρ = exp(ΔS / s): s = |o| for ESPO
    sequence_weight: Literal["one", "inverse_length"] = "one"  # GDPO's 1/|o|

    def __post_init__(self):
        super().__post_init__()
        if not (0 <= self.eps_low < 1 and self.eps_high >= 0):
            raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0, got {self.eps_low}, {self.eps_high}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    @property
    def needs_old(self) -> bool:
        return True

    @property
    def needs_ref(self) -> bool:
        return self.beta > 0 and self.kl_to == "ref"

    def loss(self, batch, policy_terms, old_terms, ref_terms, advantages):
        mask = batch["mask"]
        kl_terms = ref_terms if self.kl_to == "ref" else old_terms
        kl_terms = kl_terms if self.beta > 0 else None
        common = dict(eps_low=self.eps_low, eps_high=self.eps_high, beta=self.beta, kl=self.kl)
        if self.ratio == "token":
            return token_loss(policy_terms.per_token, old_terms.per_token.detach(),
                              None if kl_terms is None else kl_terms.per_token.detach(), advantages, mask,
                              norm=self.norm, n_seq=batch["n_seq"], n_tok=batch["n_tok"], length=batch["length"],
                              **common)
        seq = lambda t: (t.per_token * mask).sum(1)  # noqa: E731  [B] over the counted tokens
        n = mask.sum(1).double().clamp_min(1)  # [B] |o_i|
        scale = n if self.sequence_scale == "length" else torch.ones_like(n)
        weight = 1 / n if self.sequence_weight == "inverse_length" else torch.ones_like(n)
        return sequence_loss(seq(policy_terms), seq(old_terms).detach(),
                             None if kl_terms is None else seq(kl_terms).detach(), advantages,
                             scale=scale, weight=weight, n_seq=batch["n_seq"], **common)


@ALGORITHMS.register("diffu_grpo")
@dataclass(frozen=True, kw_only=True)
class DiffuGRPO(GRPO):
    """diffu-GRPO (d1): GRPO on the one-step mean-field likelihood, prompt masked with p=0.15."""

    estimator: str = "one_step"
    estimator_params: dict = field(default_factory=lambda: {"p_prompt": 0.15})


@ALGORITHMS.register("coupled_grpo")
@dataclass(frozen=True, kw_only=True)
class CoupledGRPO(GRPO):
    """coupled-GRPO (DiffuCoder): complementary mask pairs + full pass, ε=0.5, β=0.01, leave-one-out."""

    estimator: str = "coupled"
    advantage: Literal["mean", "zscore", "loo"] = "loo"
    beta: float = 0.01


@ALGORITHMS.register("uni_grpo")
@dataclass(frozen=True, kw_only=True)
class UniGRPO(GRPO):
    """UniGRPO (MMaDA): masked-token mean at ratio t, t spaced from t_1 ~ U(0,1) to 1 over the μ iterations."""

    estimator: str = "uni_elbo"

    def build_estimator(self, iteration: int, n_iterations: int):
        params = {**self.estimator_params, "iteration": iteration, "n_iterations": n_iterations}
        return ESTIMATORS.build(self.estimator, params)

    def draws_for(self, rollout, first_draws, iteration):
        # Iteration 0 draws t_1; later iterations keep the rollout's t_1 and draw a fresh mask at t_i.
        return None if first_draws is None else {"t1": first_draws["t1"]}


@ALGORITHMS.register("gdpo")
@dataclass(frozen=True, kw_only=True)
class GDPO(GRPO):
    """GDPO: sequence ratio exp(ELBO_θ − ELBO_old) of the quadrature ELBO, clip 0.2, weight 1/|o|, β·KL."""

    estimator: str = "quadrature_elbo"
    ratio: Literal["token", "sequence"] = "sequence"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.01
    sequence_weight: Literal["one", "inverse_length"] = "inverse_length"


@ALGORITHMS.register("espo")
@dataclass(frozen=True, kw_only=True)
class ESPO(GRPO):
    """ESPO: sequence ratio exp(ΔELBO/L) of the complementary ELBO, clip 0.2, k2 KL on ΔELBO/L, β=0.01."""

    estimator: str = "complementary_elbo"
    ratio: Literal["token", "sequence"] = "sequence"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.01
    kl: Literal["k1", "k2", "k3"] = "k2"
    sequence_scale: Literal["none", "length"] = "length"
