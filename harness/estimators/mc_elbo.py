"""`mc_elbo`: the Monte Carlo ELBO of a masked diffusion LM (LLaDA eval; VRPO, arXiv 2505.19223).

ELBO(o) = E_t E_{mask ~ t} [ (1/t) Σ_{k masked} log p(o_k | c, x_t) ]   (docs/methods.md §1)

t-laws for the n samples of each sequence:
  iid         t_i ~ U(0, 1)
  stratified  t_i = (i + u_i) / n               (one draw per stratum)
  antithetic  pairs (u, 1 - u)
  count       l ~ U{1..L}, exactly l positions masked, weight L / l
  count_stratified
              LLaDA's evaluation (ML-GSAI/LLaDA `eval_llada.py`, `_forward_process`): the counts of
              each group of `group` draws (LLaDA's batch_size, 32) are systematic: k ~ U{1..L},
              l_i = ((round(k + i·L/g) − 1) mod L) + 1 for i < g; exactly l_i masked, weight L / l_i.
              With n_mc = 128 it is the estimator of LLaDA's own lm-eval numbers (mc_num 128).
              BIASED for the ELBO (declares `elbo_target=False`): `round` sends halves to the even
              integer, so when i·L/g is a half-integer the count l_i of draw i is not uniform on
              {1..L} (L = 5, g = 2: l_1 takes the values 1..5 with probabilities 2/5, 0, 1/5, 2/5, 0)
              and the L/l weights no longer average to the ELBO. The bias does not shrink with more
              draws: exactly, on the tiny checkpoint's 3-digit test items with n_mc 128, group 32, it
              is −6.8e-2, −1.1e-2 and +1.7e-3 nats at L = 2, 4, 5 (+2.8e-2 at L = 5 with n_mc 2). Kept
              line for line as LLaDA runs it, so that the harness reproduces LLaDA's numbers.
  count_systematic
              the unbiased systematic variant: one u ~ U(0, 1) per group of `group` draws and
              l_i = ⌊L·frac(u + i/g)⌋ + 1; frac(u + i/g) is uniform for every i, so each l_i is
              uniform on {1..L} and the estimator is unbiased, with the same spread of counts
              across a group as LLaDA's law.
For the t-laws each position is masked independently with probability t (weight 1/t).
Only positions where completion_mask is True are masked and scored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from harness.estimators._common import completion_logprobs
from harness.registry import ESTIMATORS
from harness.seeding import rand
from harness.types import Estimate

T_MIN = 1e-6  # t is clamped to >= T_MIN: the 1/t weight stays finite (exact moments read this)


def draw_t(law: str, B: int, n: int, generator) -> torch.Tensor:
    """[B, n] mask ratios in (0, 1] for the continuous t-laws."""
    u = rand(generator, B, n, dtype=torch.float64)  # [B, n]
    if law == "stratified":
        u = (torch.arange(n, dtype=torch.float64)[None, :] + u) / n
    elif law == "antithetic":
        half = u[:, : (n + 1) // 2]
        u = torch.cat([half, 1 - half], 1)[:, :n]
    return u.clamp_min(T_MIN)


def stratified_counts(t: torch.Tensor, length: torch.Tensor, group: int) -> torch.Tensor:
    """LLaDA eval's systematic counts: t [B, n] uniforms, length [B, 1] -> l [B, n] in 1..L; in each
    group of g draws one k ~ U{1..L} (from the group's first t) and l_i = ((round(k + i·L/g) − 1) mod L) + 1."""
    B, n = t.shape
    out = torch.empty_like(t)
    for lo in range(0, n, group):
        g = min(group, n - lo)
        k = torch.floor(t[:, lo:lo + 1] * length).clamp_max(length - 1) + 1  # [B, 1] k ~ U{1..L}
        x = torch.round(k + torch.arange(g, dtype=t.dtype)[None, :] * (length / g))  # [B, g] (half to even)
        out[:, lo:lo + g] = torch.remainder(x - 1, length) + 1
    return out


def systematic_counts(t: torch.Tensor, length: torch.Tensor, group: int) -> torch.Tensor:
    """Unbiased systematic counts: t [B, n] uniforms, length [B, 1] -> l [B, n] in 1..L; in each group
    of g draws one u (the group's first t) and l_i = ⌊L·frac(u + i/g)⌋ + 1, each l_i uniform on {1..L}."""
    B, n = t.shape
    out = torch.empty_like(t)
    for lo in range(0, n, group):
        g = min(group, n - lo)
        v = torch.remainder(t[:, lo:lo + 1] + torch.arange(g, dtype=t.dtype)[None, :] / g, 1.0)  # [B, g]
        out[:, lo:lo + g] = torch.minimum(torch.floor(v * length) + 1, length)
    return out


COUNT_LAWS = ("count", "count_stratified", "count_systematic")


def draw_masks(law: str, t: torch.Tensor, completion_mask: torch.Tensor, generator, group: int = 32):
    """-> (masks [B, n, L] bool, weight [B, n] = 1/t or L/l)."""
    B, n = t.shape
    L = completion_mask.shape[1]
    u = rand(generator, B, n, L, dtype=torch.float64)  # [B, n, L]
    valid = completion_mask[:, None, :].expand(B, n, L)
    if law in COUNT_LAWS:
        length = completion_mask.sum(1, keepdim=True).double()  # [B, 1]
        if law == "count":
            l = torch.floor(t * length).clamp_min(0) + 1  # l ~ U{1..L}, from t ~ U(0, 1)
        elif law == "count_stratified":
            l = stratified_counts(t, length, group)
        else:
            l = systematic_counts(t, length, group)
        l = torch.minimum(l, length)
        # Exactly l masked: the l valid positions with the smallest uniform keys.
        keys = torch.where(valid, u, torch.full_like(u, 2.0))
        ranks = keys.argsort(-1).argsort(-1)  # [B, n, L]
        masks = ranks < l[..., None]
        return masks & valid, length / l
    return (u < t[..., None]) & valid, 1.0 / t


@ESTIMATORS.register("mc_elbo")
@dataclass(frozen=True, kw_only=True)
class MCElbo:
    """Monte Carlo ELBO: n masked copies, (1/t)-weighted masked log-probs, t-law iid/stratified/antithetic/count.

    Unbiased for the ELBO under every t-law but `count_stratified` (LLaDA eval's law, kept as LLaDA
    runs it: its round-half-to-even counts are not uniform, see the module doc); `count_systematic`
    is its unbiased variant."""

    metric: ClassVar[str] = "elbo"

    # What the statistics read (harness/stats/estimators.py, `token_scale` / `elbo_target` / `masks`):
    token_scale: ClassVar[bool] = False
    masks: ClassVar[str] = "independent"
    n_mc: int = 8
    t_law: Literal["iid", "stratified", "antithetic", "count", "count_stratified", "count_systematic"] = "iid"
    group: int = 32  # count_stratified / count_systematic: draws per systematic group (LLaDA eval's batch_size)
    max_tokens: int = 65536

    def __post_init__(self):
        if self.n_mc < 1:
            raise ValueError(f"n_mc must be >= 1, got {self.n_mc}")
        if self.group < 1:
            raise ValueError(f"group must be >= 1, got {self.group}")

    @property
    def elbo_target(self) -> bool:
        """Unbiased for the ELBO by construction: every t-law but LLaDA eval's `count_stratified`."""
        return self.t_law != "count_stratified"

    def nfe_for_batch(self, batch: int) -> int:
        return self.n_mc * batch

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator,
                 prompt_mask=None, draws=None) -> Estimate:
        B, L = completion.shape
        if draws is None:
            t = draw_t(self.t_law, B, self.n_mc, generator)  # [B, n]
            masks, weight = draw_masks(self.t_law, t, completion_mask, generator, self.group)  # [B, n, L], [B, n]
            draws = {"t": t, "masks": masks, "weight": weight}
        masks, weight = draws["masks"], draws["weight"]
        noised = torch.where(masks, denoiser.mask_id, completion[:, None, :])  # [B, n, L]
        logp = completion_logprobs(denoiser, prompt, prompt_mask, completion, noised, self.max_tokens)
        terms = logp.double() * masks * weight[..., None]  # [B, n, L]
        per_token = terms.mean(1)  # [B, L]
        return Estimate(per_token=per_token, sequence=per_token.sum(1), draws=draws, n=self.n_mc)
