"""`trace_rl`: TraceRL (arXiv 2509.06949; docs/methods.md §2).

Likelihood: the `trace` estimator, which scores each rollout along the commit steps its sampler
recorded (the loop passes `Generation.commit_step` as the draws), steps merged every 8 distinct
steps (`stride=8, merge="ranks"`: the reference's `collapse_k_unique(step_map, shrink)`), the
post-EOS padding hidden by its commit step like the reference (`mask_padding=True`).

Objective (Gen-Verse/dLLM-RL train/rl_llada.py, `forward_process` inside `main`; method TraceRL):
every (sequence, step-group) is one training row r with token set K_r; with ρ_k = exp(ℓ_θ,k − ℓ_old,k),
    loss = (1/R) Σ_r [ −(1/|K_r|) Σ_{k∈K_r} min(ρ_k A, clip(ρ_k, 1±ε) A)  +  β Σ_{k∈K_r} k3_k ]
(`norm="trace_rows"`, default; R rows per micro-batch, micro-batches weighted B_mb/N), k3 to π_old,
ε = 0.2, β = 0.01; advantages z-scored with the population std (`zscore_pop`); groups whose mean
reward lies outside [acc_low, acc_high] are dropped before any likelihood is computed (they cost no
likelihood NFE). Any GRPO `norm` ("token" ...) is the alternative. With μ = 1 and the whole buffer in
one optimizer step, π_old = π_θ: the reference takes several minibatch steps per rollout, which the
shared loop does not (set μ > 1 for a nonzero KL). The optional value model is not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from harness.algorithms.grpo import GRPO, clipped_surrogate, kl_estimate
from harness.registry import ALGORITHMS


def trace_rows_loss(logp, old, ref, adv, gid, *, eps_low: float, eps_high: float, beta: float, kl: str,
                    n_seq: int):
    """Per-(sequence, step-group) rows. logp/old/ref [B, L] (ref None: no KL), adv [B], gid [B, L]
    group id of each counted token (−1: not counted) -> (loss, metrics); see the module doc."""
    B, L = logp.shape
    counted = gid >= 0  # [B, L]
    G = int(gid.max()) + 1 if bool(counted.any()) else 1
    row = torch.arange(B, device=logp.device)[:, None].expand(B, L)
    key = torch.where(counted, row * G + gid, torch.zeros_like(gid))  # [B, L]
    ratio = torch.exp(logp - old)  # [B, L]
    sur, clipped = clipped_surrogate(ratio, adv[:, None], eps_low, eps_high)  # [B, L]
    kl_tok = kl_estimate(logp, ref, kl) if ref is not None else torch.zeros_like(logp)  # [B, L]
    zero = lambda: torch.zeros(B * G, dtype=logp.dtype, device=logp.device)  # noqa: E731
    c = counted.to(logp.dtype)
    size = zero().index_add(0, key.reshape(-1), c.reshape(-1))  # [BG] tokens per row
    pol = zero().index_add(0, key.reshape(-1), (-sur * c).reshape(-1))  # [BG]
    kls = zero().index_add(0, key.reshape(-1), (kl_tok * c).reshape(-1))  # [BG]
    live = size > 0
    per_row = pol[live] / size[live] + beta * kls[live]  # [R]
    loss = per_row.sum() / max(int(live.sum()), 1) * (B / n_seq)
    m = counted.sum().clamp_min(1)
    metrics = {"clip_frac": float((clipped & counted).sum() / m),
               "kl": float((kl_tok.detach() * counted).sum() / m) if ref is not None else None,
               "ratio": float((ratio.detach() * counted).sum() / m), "trace_rows": float(live.sum())}
    return loss, metrics


def accuracy_filter(rewards: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """[n_groups, G] rewards -> [n_groups] bool: group accuracy (mean reward) in [low, high]."""
    acc = rewards.double().mean(1)
    return (acc >= low) & (acc <= high)


@ALGORITHMS.register("trace_rl")
@dataclass(frozen=True, kw_only=True)
class TraceRL(GRPO):
    """TraceRL: trace likelihood along the commit order, clip 0.2 and k3 KL vs π_old, z-scored, accuracy filter."""

    uses_commit_steps: ClassVar[bool] = True
    estimator: str = "trace"
    estimator_params: dict = field(default_factory=lambda: {"stride": 8, "merge": "ranks", "mask_padding": True})
    advantage: Literal["mean", "zscore", "zscore_pop", "loo"] = "zscore_pop"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.01
    kl_to: Literal["ref", "old"] = "old"
    norm: Literal["trace_rows", "token", "sequence", "constant", "batch_token"] = "trace_rows"
    acc_low: float = 0.2
    acc_high: float = 0.8

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.acc_low <= self.acc_high <= 1:
            raise ValueError(f"need 0 <= acc_low <= acc_high <= 1, got {self.acc_low}, {self.acc_high}")

    def keep_groups(self, rewards):
        return accuracy_filter(rewards, self.acc_low, self.acc_high)

    def loss(self, batch, policy_terms, old_terms, ref_terms, advantages):
        if self.norm != "trace_rows":
            return super().loss(batch, policy_terms, old_terms, ref_terms, advantages)
        gid = policy_terms.draws["group"]  # [B, L] each scored token's step group (the estimator's merge)
        gid = torch.where(batch["mask"], gid, torch.full_like(gid, -1))
        kl_terms = (ref_terms if self.kl_to == "ref" else old_terms) if self.beta > 0 else None
        return trace_rows_loss(policy_terms.per_token, old_terms.per_token.detach(),
                               None if kl_terms is None else kl_terms.per_token.detach(), advantages, gid,
                               eps_low=self.eps_low, eps_high=self.eps_high, beta=self.beta, kl=self.kl,
                               n_seq=batch["n_seq"])
