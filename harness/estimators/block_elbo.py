"""`block_elbo`, `eubo`, `mix`: SPG's sandwiched bounds with block-wise masking (SPG, arXiv 2510.09541).

One masking routine (`block_masks`) serves all three; `mix` scores the same m copies once and
combines both bounds, so its two parts always share their draws.

Masks, per row and per sample i = 1..m (docs/methods.md §1, `block_elbo` / `eubo`):
  * the n scored positions (completion_mask True) are cut, in order, into blocks of
    `block_length` (the last one may be shorter; a row shorter than a block is one block);
  * a block k ~ U{0..n_blocks−1}; earlier blocks stay clean, every later block is fully masked;
  * inside block k, a count c ~ U{1..|block k|} and a uniform subset of c positions is masked;
  * each real prompt token (prompt_mask True) is masked i.i.d. with probability `p_prompt`.
  M_i = the masked scored positions (subset of block k plus all later blocks),
  t̂_i = |M_i| / n (the empirical mask ratio).

Values (ℓ_ik = log p(o_k | c_i, x_i), read at the true token; β = `beta`, ω = `omega`):
  ELBO_i   = (1/t̂_i) Σ_{k∈M_i} ℓ_ik = (n/|M_i|) Σ_{k∈M_i} ℓ_ik
  block_elbo = (1/m) Σ_i ELBO_i
  per token:  U_k = (1/β) log[(1/m) Σ_i 1(k∈M_i) · p_ik^β / t̂_i]
              = (1/β) [logsumexp_{i: k∈M_i}(β ℓ_ik − log t̂_i) − log m]     (computed in log space)
  eubo     = (n / |C|) Σ_{k∈C} U_k,  C = {k : k∈M_i for some i} (tokens masked in >= 1 sample)
  mix      = ω · eubo + (1 − ω) · block_elbo
`per_token` holds each token's share of the value (it sums to `sequence`; zero off the mask).

Confirmed against SPG's reference code (spg_trainer.py, forward_type "block_random",
`_get_per_seq_logps`): later blocks are fully masked and *scored*; the in-block count is
randint(max(⌊|b|·min_t⌋, 1), min(⌊|b|·max_t⌋, |b|)) with min_t=0, max_t=1, i.e. U{1..|b|}; the
ELBO per sample is the mean of ℓ over masked completion tokens; the EUBO is
mean_k∈C[(1/β) log mean_i(p^β · 1(masked) / t̂_i)] with t̂_i = masked / completion length;
mix = mix_weight·EUBO + (1−mix_weight)·ELBO; defaults num_t=2, block_length=32, eubo_beta=1.5,
mix_weight=0.5 in the published scripts. The code's per-sequence values are these means per
token; its loss multiplies them by the completion length, which is the scale used here
(`scale="sequence"`, comparable with `mc_elbo` and `exact`); `scale="token"` returns the
code's per-token means unscaled (value / n).

Where this implementation differs from the reference code, on purpose:
  * block k is drawn i.i.d. per sample; the code draws a permutation of all generation blocks
    taken modulo the completion's block count (distinct blocks when they fit, not exactly
    uniform otherwise);
  * positions outside completion_mask (after the first EOS) stay clean, the harness rule; the
    code masks them in every copy (never scoring them): `mask_padding=True` does the same;
  * prompt masking touches prompt tokens only (docs/methods.md, "+ prompt p=0.15"); the code's
    "prompt" mask (`~is_mask & rand < p`) also hits the clean earlier completion blocks, which
    then count as masked and are scored.

Prompt masks are drawn from a per-(row, sample) seed taken from the row's generator, one uniform
per real prompt token counted from the end of the prompt, so a row's draws do not depend on how
much left padding its batch gives it. NFE = m per sequence.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from harness.estimators._common import completion_logprobs, prompt_masks
from harness.registry import ESTIMATORS
from harness.seeding import rand
from harness.types import Estimate


def block_masks(completion_mask: torch.Tensor, m: int, block_length: int, generator) -> dict:
    """SPG's block-wise masks for m samples per row.

    completion_mask [B, L] -> {"block": [B, m] long, "count": [B, m] long, "masks": [B, m, L] bool,
    "t_hat": [B, m] float64}. Draws, in order: block uniforms [B, m], count uniforms [B, m],
    subset keys [B, m, L] (all through `rand`, so per-row generators give per-row draws).
    """
    valid = completion_mask.bool().cpu()  # [B, L]
    B, L = valid.shape
    n = valid.sum(1)  # [B]
    rank = valid.long().cumsum(1) - 1  # [B, L] rank among scored positions
    blk = torch.where(valid, rank // block_length, torch.full_like(rank, -1))  # [B, L]
    n_blocks = (n + block_length - 1) // block_length  # [B]
    u_blk = rand(generator, B, m, dtype=torch.float64)  # [B, m]
    u_cnt = rand(generator, B, m, dtype=torch.float64)  # [B, m]
    keys = rand(generator, B, m, L, dtype=torch.float64)  # [B, m, L]
    k = torch.floor(u_blk * n_blocks[:, None]).long()  # [B, m] in 0..n_blocks−1
    k = torch.minimum(k, (n_blocks[:, None] - 1).clamp_min(0))
    size = torch.minimum(torch.full_like(k, block_length), n[:, None] - k * block_length).clamp_min(0)
    count = torch.minimum(torch.floor(u_cnt * size).long() + 1, size)  # [B, m] in 1..size
    in_block = blk[:, None, :] == k[..., None]  # [B, m, L]
    later = blk[:, None, :] > k[..., None]  # [B, m, L] (blk = −1 off the mask)
    keys = torch.where(in_block, keys, torch.full_like(keys, 2.0))
    ranks = keys.argsort(-1).argsort(-1)  # [B, m, L]
    masks = (in_block & (ranks < count[..., None])) | later  # [B, m, L]
    t_hat = masks.sum(-1).double() / n[:, None].clamp_min(1).double()  # [B, m]
    return {"block": k, "count": count, "masks": masks, "t_hat": t_hat}


@dataclass(frozen=True, kw_only=True)
class _SPGBase(abc.ABC):
    """Shared fields and scoring of the SPG bounds (not registered)."""

    metric: ClassVar[str] = "spg"
    m: int = 2
    block_length: int = 32
    p_prompt: float = 0.15
    scale: Literal["sequence", "token"] = "sequence"
    mask_padding: bool = False
    max_tokens: int = 65536

    # What the statistics read (harness/stats/estimators.py, `token_scale` / `elbo_target` / `masks`).
    # SPG's bounds are built for the block-wise masking (earlier blocks clean, later ones masked) and
    # a partly masked prompt: a bound on log p, not an unbiased estimate of the ELBO.
    elbo_target: ClassVar[bool] = False
    masks: ClassVar[str] = "independent"

    @property
    def token_scale(self) -> bool:
        return self.scale == "token"  # the reference code's per-token means (value / n)

    def __post_init__(self):
        if self.m < 1:
            raise ValueError(f"m must be >= 1, got {self.m}")
        if self.block_length < 1:
            raise ValueError(f"block_length must be >= 1, got {self.block_length}")
        if not 0.0 <= self.p_prompt < 1.0:
            raise ValueError(f"p_prompt must be in [0, 1), got {self.p_prompt}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        beta = getattr(self, "beta", 1.0)
        if not 1.0 <= beta <= 2.0:
            raise ValueError(f"beta must be in [1, 2], got {beta}")
        omega = getattr(self, "omega", 0.0)
        if not 0.0 <= omega <= 1.0:
            raise ValueError(f"omega must be in [0, 1], got {omega}")

    def nfe_for_batch(self, batch: int) -> int:
        return self.m * batch

    def draw(self, prompt, completion_mask, prompt_mask, generator) -> dict:
        draws = block_masks(completion_mask, self.m, self.block_length, generator)
        B, P = prompt.shape
        if self.p_prompt > 0:
            real = torch.ones(B, P, dtype=torch.bool) if prompt_mask is None else prompt_mask
            draws["prompt_masks"] = prompt_masks(real, self.m, self.p_prompt, generator)
        else:
            draws["prompt_masks"] = torch.zeros(B, self.m, P, dtype=torch.bool)
        return draws

    def score(self, denoiser, prompt, completion, completion_mask, prompt_mask, draws):
        """-> (logp [B, m, L] float64, masks [B, m, L], t_hat [B, m], n [B]) for the given draws."""
        dev = completion.device
        masks = draws["masks"].to(dev)  # [B, m, L]
        pmask = draws["prompt_masks"].to(dev)  # [B, m, P]
        t_hat = draws["t_hat"].to(dev)  # [B, m]
        B, m, L = masks.shape
        P = prompt.shape[1]
        valid = completion_mask.bool()  # [B, L]
        hide = masks | (~valid[:, None, :] if self.mask_padding else torch.zeros_like(masks))
        noised = torch.where(hide, denoiser.mask_id, completion[:, None, :])  # [B, m, L]
        prompts = torch.where(pmask, denoiser.mask_id, prompt[:, None, :])  # [B, m, P]
        # Each copy has its own prompt: score the B·m copies as a batch of one-copy rows.
        logp = completion_logprobs(
            denoiser, prompts.reshape(B * m, P),
            None if prompt_mask is None else prompt_mask[:, None, :].expand(B, m, P).reshape(B * m, P),
            completion[:, None, :].expand(B, m, L).reshape(B * m, L),
            noised.reshape(B * m, 1, L), self.max_tokens,
        ).view(B, m, L).double()  # [B, m, L]
        n = valid.sum(1).double()  # [B]
        return logp, masks & valid[:, None, :], t_hat, n

    def norm(self, n: torch.Tensor) -> torch.Tensor:
        """[B] factor that puts the per-token means on the chosen scale."""
        return n if self.scale == "sequence" else torch.ones_like(n)

    def elbo_terms(self, logp, masks, t_hat, n) -> torch.Tensor:
        """[B, L]: (1/m) Σ_i (n/|M_i|) 1(k∈M_i) ℓ_ik (sums to block_elbo), scaled by `scale`."""
        count = masks.sum(-1, keepdim=True).double()  # [B, m, 1]
        w = torch.where(count > 0, 1.0 / count.clamp_min(1), torch.zeros_like(count))  # [B, m, 1]
        terms = torch.where(masks, logp, torch.zeros_like(logp)) * w  # [B, m, L]
        return terms.mean(1) * self.norm(n)[:, None]  # [B, L]

    def eubo_terms(self, logp, masks, t_hat, n, beta: float) -> torch.Tensor:
        """[B, L]: (n/|C|) U_k on covered tokens (sums to eubo), scaled by `scale`."""
        m = masks.shape[1]
        log_t = torch.log(t_hat.clamp_min(1e-300))[..., None]  # [B, m, 1]
        inner = torch.where(masks, beta * logp - log_t, torch.full_like(logp, -math.inf))  # [B, m, L]
        covered = masks.any(1)  # [B, L]
        inner = torch.where(covered[:, None, :], inner, torch.zeros_like(inner))  # no all-−inf columns
        u = (torch.logsumexp(inner, 1) - math.log(m)) / beta  # [B, L]
        n_cov = covered.sum(1, keepdim=True).double()  # [B, 1]
        share = self.norm(n)[:, None] / n_cov.clamp_min(1)  # [B, 1]
        return torch.where(covered, u * share, torch.zeros_like(u))  # [B, L]

    @abc.abstractmethod
    def terms(self, logp, masks, t_hat, n) -> torch.Tensor:
        """[B, m, L] log-probs, masks, [B, m] t_hat, [B] n -> [B, L] per-token terms of the bound."""

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator,
                 prompt_mask=None, draws=None) -> Estimate:
        if draws is None:
            draws = self.draw(prompt, completion_mask, prompt_mask, generator)
        logp, masks, t_hat, n = self.score(denoiser, prompt, completion, completion_mask, prompt_mask, draws)
        per_token = self.terms(logp, masks, t_hat, n)  # [B, L]
        return Estimate(per_token=per_token, sequence=per_token.sum(1), draws=draws, n=self.m)


@ESTIMATORS.register("block_elbo")
@dataclass(frozen=True, kw_only=True)
class BlockElbo(_SPGBase):
    """SPG block-wise ELBO: random block, earlier clean, later masked; (1/t̂)-weighted masked log-probs."""

    metric: ClassVar[str] = "elbo"

    def terms(self, logp, masks, t_hat, n):
        return self.elbo_terms(logp, masks, t_hat, n)


@ESTIMATORS.register("eubo")
@dataclass(frozen=True, kw_only=True)
class Eubo(_SPGBase):
    """SPG Rényi upper bound (EUBO, β in [1, 2]) over block-wise masks, per token in log space."""

    metric: ClassVar[str] = "eubo"
    beta: float = 1.5

    def terms(self, logp, masks, t_hat, n):
        return self.eubo_terms(logp, masks, t_hat, n, self.beta)


@ESTIMATORS.register("mix")
@dataclass(frozen=True, kw_only=True)
class Mix(_SPGBase):
    """SPG mixture ω·EUBO + (1−ω)·ELBO on the same block-wise masks (ω = 0.5)."""

    metric: ClassVar[str] = "spg_mix"
    beta: float = 1.5
    omega: float = 0.5

    def terms(self, logp, masks, t_hat, n):
        return (self.omega * self.eubo_terms(logp, masks, t_hat, n, self.beta)
                + (1 - self.omega) * self.elbo_terms(logp, masks, t_hat, n))
