"""`bd3_elbo`: the block-diffusion ELBO as BD3-LM trains and evaluates it (Arriola et al. 2025,
arXiv 2503.09573; kuleshov-group/bd3lms `diffusion.py`, `Diffusion._loss` -> `_forward_pass_diffusion`,
`_sample_t`, `q_xt`, loglinear noise).

For a completion o split into the model's attention blocks (positions counted from the row's first
real token, blocks = position // block_size: harness/models/block_attention.py) and each of the n
copies i:

    t_ib ~ U(eps_min, eps_max) per block b    (antithetic: stratified over the copies x blocks)
    x_t: each completion token of block b masked independently with probability t_ib (loglinear)
    ELBO_i = Σ_b Σ_{k ∈ b, masked} (1/t_ib) log p(o_k | c, x_t block b, clean blocks < b)
    value  = (1/n) Σ_i ELBO_i

Every block of a copy is scored given the *clean* earlier blocks in one vectorised pass over
[x_t ; x_0] (`logits_denoise`; BD3-LM's `cross_attn` training forward); a full-attention model has
one block (the whole row), which is `mc_elbo` with the iid t-law. The denoiser's log-probabilities
are BD3-LM's `subs` parameterisation when the model declares it (the `bd3lm` adapter: mask logit
−1e6). BD3-LM's `_loss` returns −Σ (per-token terms) / (number of scored tokens) over the batch:
`per_token` here is the negated nll of each token (so `sequence` = −loss · L for one row).

Draws, through `seeding.rand` in this order: block uniforms [B, n, nb] (nb = the most blocks L
completion tokens can touch), then one uniform per completion token [B, n, L]. Antithetic (as
`_sample_t`, whose strata run over batch x blocks): u ← (u / (n·nb) + s / (n·nb)) mod 1, s = 0..n·nb−1
over each row's copies x blocks, so one row's draws do not depend on the others. Only completion
tokens (completion_mask True) are masked and scored; the prompt is clean context (BD3-LM keeps
x_t[0] = BOS clean and unscored under `ignore_bos`: a one-token prompt [BOS] is exactly that case).

Bias: for a token k of block b, the expectation of its term is ∫ (1/t)·t·E[log p(o_k | ...) | t] over
the law of t_ib; the block ELBO integrates over U(0, 1). With BD3-LM's defaults (eps_min 1e-3, eps_max
1) the interval misses [0, 1e-3), so the estimator is not exactly unbiased for the ELBO:
`elbo_target` is True only for eps_min <= mc_elbo.T_MIN (1e-6, where t is clamped anyway) and
eps_max = 1. Per-block t leaves each token's expectation what one t per copy gives (a token's
logits see only its own block's noise), so with eps (0, 1) the mean equals `mc_elbo`'s (iid t-law)
on the same model; the blocks' terms are then independent, where one t per copy couples them.
NFE = n per sequence (one [x_t ; x_0] pass of 2T columns per copy for a block model).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harness.estimators._common import completion_logprobs
from harness.estimators.mc_elbo import T_MIN
from harness.models.block_attention import block_size_of
from harness.registry import ESTIMATORS
from harness.seeding import rand
from harness.types import Estimate, HarnessError


def completion_blocks(prompt_mask: torch.Tensor | None, P: int, L: int, B: int, block_size: int | None):
    """[B, L] index of each completion token's block, counted from the block of the first completion
    token (0, 1, ...), and nb, the most blocks L tokens can touch. A full-attention model (block_size
    None) has one block."""
    if block_size is None:
        return torch.zeros(B, L, dtype=torch.long), 1
    start = torch.full((B,), P, dtype=torch.long) if prompt_mask is None else prompt_mask.bool().sum(1).cpu()
    pos = start[:, None] + torch.arange(L)[None, :]  # [B, L] positions from the row's first real token
    return pos // block_size - (start // block_size)[:, None], (L - 1) // block_size + 2


def draw_t(B: int, n: int, nb: int, eps_min: float, eps_max: float, antithetic: bool, generator) -> torch.Tensor:
    """[B, n, nb] per-block noise levels (BD3-LM `_sample_t`, strata over each row's copies x blocks)."""
    u = rand(generator, B, n, nb, dtype=torch.float64)  # [B, n, nb]
    if antithetic:
        k = n * nb
        offset = (torch.arange(k, dtype=torch.float64) / k).view(n, nb)
        u = (u / k + offset) % 1
    return u * (eps_max - eps_min) + eps_min


@ESTIMATORS.register("bd3_elbo")
@dataclass(frozen=True, kw_only=True)
class BD3Elbo:
    """BD3-LM's loss: per-block t, tokens masked w.p. t, (1/t)-weighted log-probs given clean earlier blocks."""

    metric: ClassVar[str] = "elbo"

    # What the statistics read (harness/stats/estimators.py): a sum over tokens (not a mean), masks
    # drawn independently per copy, unbiased for the ELBO only when t covers (0, 1] (see the docstring).
    token_scale: ClassVar[bool] = False
    masks: ClassVar[str] = "independent"
    n_mc: int = 1
    eps_min: float = 1e-3  # BD3-LM's training.sampling_eps_min
    eps_max: float = 1.0  # training.sampling_eps_max
    antithetic: bool = True  # training.antithetic_sampling
    max_tokens: int = 65536

    def __post_init__(self):
        if self.n_mc < 1:
            raise ValueError(f"n_mc must be >= 1, got {self.n_mc}")
        if not 0.0 <= self.eps_min < self.eps_max <= 1.0:
            raise ValueError(f"need 0 <= eps_min < eps_max <= 1, got eps_min {self.eps_min}, eps_max {self.eps_max}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    @property
    def elbo_target(self) -> bool:
        return self.eps_min <= T_MIN and self.eps_max == 1.0

    def nfe_for_batch(self, batch: int) -> int:
        return self.n_mc * batch

    def draw(self, B: int, L: int, nb: int, generator) -> dict:
        t = draw_t(B, self.n_mc, nb, max(self.eps_min, T_MIN), self.eps_max, self.antithetic, generator)
        u = rand(generator, B, self.n_mc, L, dtype=torch.float64)  # [B, n, L]
        return {"t": t, "u": u}

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator,
                 prompt_mask=None, draws=None) -> Estimate:
        B, L = completion.shape
        blk, nb = completion_blocks(prompt_mask, prompt.shape[1], L, B, block_size_of(denoiser))  # [B, L]
        valid = completion_mask.bool().cpu()
        if draws is None:
            draws = self.draw(B, L, nb, generator)
            t_tok = draws["t"].gather(2, blk[:, None, :].expand(B, self.n_mc, L))  # [B, n, L]
            draws["masks"] = (draws["u"] < t_tok) & valid[:, None, :]
        t = draws["t"].cpu()
        masks = draws["masks"].cpu().bool() & valid[:, None, :]  # [B, n, L]
        n, last = masks.shape[1], int(blk.max()) if blk.numel() else 0
        if t.dim() != 3 or t.shape[:2] != (B, n) or t.shape[2] <= last:
            raise HarnessError(f"bd3_elbo: draws['t'] has shape {tuple(t.shape)}; expected [B={B}, n={n}, nb] "
                               f"with nb > {last} (one noise level per completion block)")
        weight = 1.0 / t.gather(2, blk[:, None, :].expand(B, n, L))  # [B, n, L] 1/t of each token's block
        dev = completion.device
        noised = torch.where(masks.to(dev), denoiser.mask_id, completion[:, None, :])  # [B, n, L]
        logp = completion_logprobs(denoiser, prompt, prompt_mask, completion, noised, self.max_tokens)
        terms = torch.where(masks, logp.double().cpu() * weight, torch.zeros((), dtype=torch.float64))
        per_token = terms.mean(1).to(dev)  # [B, L]
        return Estimate(per_token=per_token, sequence=per_token.sum(1), draws=draws, n=n)
