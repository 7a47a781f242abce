"""GRPO and the likelihood-swapped family built on it (docs/methods.md §2).

Pure pieces (hand-computable; shapes in comments):
  kl_estimate(logp, ref, kind)     with d = log π_ref − log π_θ:  k1 = −d,  k2 = d²/2,  k3 = e^d − d − 1
                                   (Schulman's estimators of KL(π_θ ‖ π_ref) from samples of π_θ)
  clipped_surrogate(ratio, A)      min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A)   (PPO, DAPO's ε_low/ε_high)
  aggregate(x, mask, norm, ...)    "token":    (1/Σ_i |o_i|) Σ_i Σ_k x_ik   (d1, DiffuCoder, wd1, IGPO: Σ/Σmask)
                                   "sequence": (1/N) Σ_i (1/|o_i|) Σ_k x_ik        (GRPO paper)
                                   "constant": (1/(N·L)) Σ_i Σ_k x_ik              (Dr. GRPO)
                                   "batch_token": (B/N)·Σ_{this batch} x / Σ_{this batch} mask: Σ/Σmask
                                   per micro-batch, averaged over micro-batches as gradient
                                   accumulation does (for counts known only after scoring: UniGRPO)
  token_loss(...)                  ρ_ik = exp(ℓ_θ,ik − ℓ_old,ik); loss_ik = −(surrogate − β·KL_ik)
  gspo_loss(...)                   ρ_i = exp(Σ_k (ℓ_θ,ik − ℓ_old,ik) / s_i) broadcast to the tokens;
                                   per-token surrogate and per-token KL, aggregated like token_loss
                                   (IGPO's reference run: `use_gspo`, s_i = the canvas length T)
  sequence_loss(...)               ρ_i = exp((S_θ,i − S_old,i)/s_i), s_i = 1 or |o_i| (ESPO);
                                   loss = (1/N) Σ_i w_i·−(surrogate_i − β·KL_i), w_i = 1 or 1/|o_i|;
                                   KL_i = k(ΔS/s_i) ("inside") or k(ΔS)/s_i ("outside")
N, Σ|o_i| are totals over the whole rollout buffer (batch["n_seq"], batch["n_tok"]), so the losses
of micro-batches add up to the full-batch loss exactly.

Registered: grpo (generic, any estimator), diffu_grpo (one_step), coupled_grpo (coupled,
leave-one-out), uni_grpo (uni_elbo with the structured t schedule over inner iterations), gdpo
(quadrature_elbo, sequence ratio), espo (complementary_elbo, sequence ratio on ΔELBO/L, k2).
"""
from __future__ import annotations

import dataclasses
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
    if norm == "batch_token":
        return x.sum() / mask.sum().clamp_min(1) * (mask.shape[0] / n_seq)
    raise ValueError(f"unknown loss normalisation {norm!r} (known: token, sequence, constant, batch_token)")


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


def gspo_loss(logp, old, ref, adv, mask, *, scale, eps_low: float, eps_high: float, beta: float, kl: str,
              norm: str, n_seq: int, n_tok: int, length: int):
    """Sequence ratio, token-level loss. logp/old/ref [B, L] (ref None: no KL), adv [B], scale [B],
    mask [B, L] bool. ρ_i sums every position of the terms (an estimator's unscored positions are 0)."""
    ratio = torch.exp((logp - old).sum(1) / scale)  # [B]
    sur, clipped = clipped_surrogate(ratio[:, None], adv[:, None], eps_low, eps_high)  # [B, 1]
    kl_tok = kl_estimate(logp, ref, kl) if ref is not None else torch.zeros_like(logp)  # [B, L]
    loss = aggregate(-(sur - beta * kl_tok), mask, norm, n_seq, n_tok, length)
    m = mask.sum().clamp_min(1)
    metrics = {"clip_frac": float((clipped & mask).sum() / m),
               "kl": float((kl_tok.detach() * mask).sum() / m) if ref is not None else None,
               "ratio": float(ratio.detach().mean())}
    return loss, metrics


def row_mean_loss(logp, old, ref, adv, mask, *, eps_low: float, eps_high: float, beta: float, kl: str, n_seq: int):
    """Per-row mean of the clipped surrogate, per-row SUM of the KL (Gen-Verse/dLLM-RL
    train/rl_llada.py `forward_process`, the loss of its "random_masking" and "TraceRL" methods):
    loss = (1/N) Σ_i [ −(1/|M_i|) Σ_{k∈M_i} min(ρ_ik A_i, clip(ρ_ik) A_i) + β Σ_{k∈M_i} KL_ik ].
    logp/old/ref [B, L] (ref None: no KL), adv [B], mask [B, L] bool (M_i: row i's counted tokens)."""
    ratio = torch.exp(logp - old)  # [B, L]
    sur, clipped = clipped_surrogate(ratio, adv[:, None], eps_low, eps_high)  # [B, L]
    kl_tok = kl_estimate(logp, ref, kl) if ref is not None else torch.zeros_like(logp)  # [B, L]
    m = mask.to(logp.dtype)
    per_row = -(sur * m).sum(1) / m.sum(1).clamp_min(1) + beta * (kl_tok * m).sum(1)  # [B]
    loss = per_row.sum() / n_seq
    c = mask.sum().clamp_min(1)
    metrics = {"clip_frac": float((clipped & mask).sum() / c),
               "kl": float((kl_tok.detach() * mask).sum() / c) if ref is not None else None,
               "ratio": float((ratio.detach() * mask).sum() / c)}
    return loss, metrics


def sequence_loss(seq, old, ref, adv, *, scale, weight, eps_low: float, eps_high: float, beta: float, kl: str,
                  n_seq: int, kl_scale: str = "inside"):
    """Sequence-level clipped GRPO. seq/old/ref [B] (ref None: no KL), adv, scale, weight [B]."""
    ratio = torch.exp((seq - old) / scale)  # [B]
    sur, clipped = clipped_surrogate(ratio, adv, eps_low, eps_high)  # [B]
    if ref is None:
        kl_seq = torch.zeros_like(seq)
    elif kl_scale == "inside":
        kl_seq = kl_estimate(seq / scale, ref / scale, kl)  # [B] k(ΔS/s)
    elif kl_scale == "outside":
        kl_seq = kl_estimate(seq, ref, kl) / scale  # [B] k(ΔS)/s
    else:
        raise ValueError(f"unknown kl_scale {kl_scale!r} (known: inside, outside)")
    loss = (weight * -(sur - beta * kl_seq)).sum() / n_seq
    metrics = {"clip_frac": float(clipped.double().mean()),
               "kl": float(kl_seq.detach().mean()) if ref is not None else None,
               "ratio": float(ratio.detach().mean())}
    return loss, metrics


@ALGORITHMS.register("grpo")
@dataclass(frozen=True, kw_only=True)
class GRPO(Algorithm):
    """Generic GRPO: PPO clip (ε_low/ε_high) on token, sequence or GSPO ratios, β·KL (k1/k2/k3) to π_ref or π_old."""

    ratio: Literal["token", "sequence", "gspo"] = "token"
    eps_low: float = 0.5
    eps_high: float = 0.5
    beta: float = 0.04
    kl: Literal["k1", "k2", "k3"] = "k3"
    kl_to: Literal["ref", "old"] = "ref"
    norm: Literal["token", "sequence", "constant", "batch_token"] = "token"
    sequence_scale: Literal["none", "length", "canvas"] = "none"  # ρ = exp(ΔS / s): s = |o| (ESPO), T (IGPO)
    sequence_weight: Literal["one", "inverse_length"] = "one"  # GDPO's 1/|o|
    kl_scale: Literal["inside", "outside"] = "inside"  # sequence KL: k(ΔS/s) or k(ΔS)/s
    # d1's structure (diffu-grpo/slurm_scripts/train.yaml: per_device_train_batch_size 6 = num_generations
    # 6; DiffuGRPOTrainer.compute_loss normalises Σ/Σmask within each micro-batch): one group
    micro_batch: float = 1.0

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
        tokens = dict(norm=self.norm, n_seq=batch["n_seq"], n_tok=batch["n_tok"], length=batch["length"])
        n = mask.sum(1).double().clamp_min(1)  # [B] |o_i|
        scale = {"length": n, "canvas": torch.full_like(n, float(batch["length"]))}.get(
            self.sequence_scale, torch.ones_like(n))  # [B]
        kl_tok = None if kl_terms is None else kl_terms.per_token.detach()
        if self.ratio == "token":
            return token_loss(policy_terms.per_token, old_terms.per_token.detach(), kl_tok, advantages, mask,
                              **tokens, **common)
        if self.ratio == "gspo":
            return gspo_loss(policy_terms.per_token, old_terms.per_token.detach(), kl_tok, advantages, mask,
                             scale=scale, **tokens, **common)
        seq = lambda t: (t.per_token * mask).sum(1)  # noqa: E731  [B] over the counted tokens
        weight = 1 / n if self.sequence_weight == "inverse_length" else torch.ones_like(n)
        return sequence_loss(seq(policy_terms), seq(old_terms).detach(),
                             None if kl_terms is None else seq(kl_terms).detach(), advantages,
                             scale=scale, weight=weight, n_seq=batch["n_seq"], kl_scale=self.kl_scale, **common)


@ALGORITHMS.register("diffu_grpo")
@dataclass(frozen=True, kw_only=True)
class DiffuGRPO(GRPO):
    """diffu-GRPO (d1): token-ratio GRPO on the one-step likelihood (whole canvas masked, prompt p=0.15), Σ/Σmask."""

    estimator: str = "one_step"
    estimator_params: dict = field(default_factory=lambda: {"p_prompt": 0.15})


@ALGORITHMS.register("coupled_grpo")
@dataclass(frozen=True, kw_only=True)
class CoupledGRPO(GRPO):
    """coupled-GRPO (DiffuCoder): complementary pairs with t ~ U(0.2, 0.8) + full pass, ε=0.5, β=0.01, LOO.

    Micro-batches of half a group (apple/ml-diffucoder recipes/config_coupled_code.yaml:
    per_device_train_batch_size 5 of num_generations 10; src/open_r1/coupled_grpo.py
    DiffuGRPOTrainer.compute_loss normalises Σ/Σmask within each micro-batch)."""

    estimator: str = "coupled"
    estimator_params: dict = field(default_factory=lambda: {"t_low": 0.2, "t_high": 0.8})
    advantage: Literal["mean", "zscore", "zscore_pop", "loo"] = "loo"
    beta: float = 0.01
    micro_batch: float = 0.5


@ALGORITHMS.register("uni_grpo")
@dataclass(frozen=True, kw_only=True)
class UniGRPO(GRPO):
    """UniGRPO (MMaDA): token ratio exp(Δℓ) over the masked tokens at ratio t, t spaced from t_1 to 1 over μ.

    Loss (default, `norm="row"`): the authors' implementation, which the MMaDA repository points to:
    Gen-Verse/dLLM-RL train/rl_mmada.py `forward_process` with training.method "random_masking"
    (configs/rl_mmada_v.yaml: eps 0.2, beta 0.01, use_kl_estimator_k3): each masked token's raw
    log-prob ℓ_k = |M|·per_token_k enters ρ_k = exp(ℓ_θ,k − ℓ_old,k); per row, the clipped surrogate is
    averaged over the row's masked tokens and β·k3(π_old ‖ π_θ) summed over them; rows are averaged.
    A mean over rows, so equal micro-batches (the reference's batch_size_lm rows) give the same
    loss as the whole buffer: `micro_batch` 0. Kept difference: the reference masks at t ~ U(0.1, 0.9)
    per masked copy; the harness keeps MMaDA's structured schedule (t_1, then spaced to 1 over μ).
    `norm="batch_token"` is the IGPO repository's MMaDA-style trainer (facebookresearch/igpo
    trainer_igpo.py IGPOTrainer.compute_loss without use_gspo: Σ/Σ over each micro-batch's masked
    tokens, k3 to π_ref); `ratio_terms="scaled"`: the estimator's ℓ_k/|M| feed the ratio and every
    scored token counts (a clip band |M| times wider).
    """

    estimator: str = "uni_elbo"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.01
    kl_to: Literal["ref", "old"] = "old"
    norm: Literal["row", "token", "sequence", "constant", "batch_token"] = "row"
    ratio_terms: Literal["token", "scaled"] = "token"
    micro_batch: float = 0.0

    def build_estimator(self, iteration: int, n_iterations: int):
        params = {**self.estimator_params, "iteration": iteration, "n_iterations": n_iterations}
        return ESTIMATORS.build(self.estimator, params)

    def draws_for(self, rollout, first_draws, iteration):
        # Iteration 0 draws t_1; later iterations keep the rollout's t_1 and draw a fresh mask at t_i.
        return None if first_draws is None else {"t1": first_draws["t1"]}

    def loss(self, batch, policy_terms, old_terms, ref_terms, advantages):
        if self.ratio_terms == "token":
            masked = policy_terms.draws["masks"][:, 0]  # [B, L] the tokens this pass masked
            count = masked.sum(1, keepdim=True).clamp_min(1)  # [B, 1] |M|
            raw = lambda t: None if t is None else dataclasses.replace(t, per_token=t.per_token * count)  # noqa: E731
            batch = {**batch, "mask": batch["mask"] & masked}
            policy_terms, old_terms, ref_terms = raw(policy_terms), raw(old_terms), raw(ref_terms)
        if self.norm != "row":
            return super().loss(batch, policy_terms, old_terms, ref_terms, advantages)
        kl_terms = (ref_terms if self.kl_to == "ref" else old_terms) if self.beta > 0 else None
        return row_mean_loss(policy_terms.per_token, old_terms.per_token.detach(),
                             None if kl_terms is None else kl_terms.per_token.detach(), advantages, batch["mask"],
                             eps_low=self.eps_low, eps_high=self.eps_high, beta=self.beta, kl=self.kl,
                             n_seq=batch["n_seq"])


@ALGORITHMS.register("gdpo")
@dataclass(frozen=True, kw_only=True)
class GDPO(GRPO):
    """GDPO: sequence ratio exp(ELBO_θ − ELBO_old) of the quadrature ELBO (Bernoulli masks), clip 0.2, 1/|o|, β·KL.

    The quadrature masks each completion token independently at rate t_n (the paper's masking,
    unbiased once N >= L/2); `estimator_params={"mask_law": "count"}` is the fixed-count variant.

    Checked against its paper only (Rojas et al., arXiv 2510.08554): no code of the authors could be
    read (their repository's README, which names gdpo/likelihood_estimators.py on top of d1, is
    public, but none of its code files is in the searchable index), so this objective and its
    conformance test restate the harness's reading of the paper's equations, not a released trainer."""

    estimator: str = "quadrature_elbo"
    estimator_params: dict = field(default_factory=lambda: {"mask_law": "bernoulli"})
    ratio: Literal["token", "sequence", "gspo"] = "sequence"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.01
    sequence_weight: Literal["one", "inverse_length"] = "inverse_length"
    micro_batch: float = 0.0  # no reference config to follow; a mean over rows: the same for equal micro-batches


@ALGORITHMS.register("espo")
@dataclass(frozen=True, kw_only=True)
class ESPO(GRPO):
    """ESPO: sequence ratio exp(ΔELBO/T) of the complementary ELBO over the canvas, clip 0.2, k2 KL Δ²/(2T), LOO.

    The reference (ML-GSAI/ESPO espo/espo_trainer.py ESPOTrainer.compute_loss): the ELBO covers the
    whole completion canvas of T positions (post-EOS padding included, `score_over="canvas"`), the
    ratio is exp((ELBO_θ − ELBO_old)/T), loss = −(1/N) Σ_i min(ρ_i A_i, clip(ρ_i) A_i) + β·mean_i
    k2(ΔELBO_ref)/T (`kl_scale="outside"`), advantages leave-one-out. Options: `score_over="completion"`
    with `sequence_scale="length"` normalises by |o| over the completion up to its EOS;
    `kl_scale="inside"` is k2(Δ/T) = (Δ/T)²/2. Kept difference: the harness's complementary_elbo draws
    its mask count l ~ U{1..L} per row (weights L/l, L/(L−l)); the reference spreads the count over
    the batch (linspace) on {0..T} with weights (T+1)/x and 1/(T/(T+1) − x/(T+1))."""

    estimator: str = "complementary_elbo"
    advantage: Literal["mean", "zscore", "zscore_pop", "loo"] = "loo"
    ratio: Literal["token", "sequence", "gspo"] = "sequence"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.01
    kl: Literal["k1", "k2", "k3"] = "k2"
    sequence_scale: Literal["none", "length", "canvas"] = "canvas"
    kl_scale: Literal["inside", "outside"] = "outside"
    score_over: Literal["canvas", "completion"] = "canvas"
    # recipes/run_*_llada.sh: 1 to 3 rows per device of 6 to 10 generations; the loss is a mean over rows,
    # which equal micro-batches leave unchanged
    micro_batch: float = 0.0

    def loss_tokens(self, rollout):
        if self.score_over == "completion":
            return rollout["loss_mask"]
        return torch.ones_like(rollout["loss_mask"])  # the ELBO of the whole canvas

    def terms(self, denoiser, prompt, prompt_mask, completion, completion_mask, *, generator, draws,
              iteration, n_iterations):
        scored = torch.ones_like(completion_mask) if self.score_over == "canvas" else completion_mask
        return super().terms(denoiser, prompt, prompt_mask, completion, scored, generator=generator, draws=draws,
                             iteration=iteration, n_iterations=n_iterations)
