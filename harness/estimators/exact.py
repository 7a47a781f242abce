"""`exact`: ground truth for short completions by enumerating every reveal set (docs/methods.md §4).

For the scored positions S of a row (completion_mask True, |S| = n) and every reveal set R ⊊ S,
one forward pass on the input with S∖R masked gives log p(o_j | o_R, c) for every j ∉ R. From
these 2^n − 1 passes (R = S scores nothing, so it is never run) both quantities are exact:

  log p(o)  of the random-order, one-token-at-a-time process (docs/methods.md §4):
      g(∅) = 1,   g(S') = Σ_{j∈S'} g(S'∖{j}) · p(o_j | o_{S'∖{j}}, c),   log p(o) = log g(S) − log n!
  ELBO (the expectation over random orders of the any-order chain rule):
      ELBO = Σ_{R ⊊ S} [1 / (C(n,|R|)·(n−|R|))] Σ_{j∉R} log p(o_j | o_R, c)           ≤ log p(o)

Subsets are bitmasks over the row's scored positions (bit i = the i-th scored position); the DP
runs in order of popcount, all subsets of one size at once, in float64 log space.

Block-diffusion models (an integer `block_size`, harness/models/block_attention.py) factorise. Score
block b of the scored positions, S_b = S ∩ block b, with the clean earlier blocks as context (the
[x_t ; x_0] pass every estimator uses on a block model): log p(o_j | o_R, c) for j ∈ S_b depends on
R only through R_b = R ∩ S_b. Then, with n_b = |S_b|,

  ELBO  = Σ_b ELBO_b,
  ELBO_b = Σ_{R_b ⊊ S_b} [1 / (C(n_b,|R_b|)·(n_b−|R_b|))] Σ_{j∈S_b∖R_b} log p(o_j | o_{R_b}, c, o_{<b})
  log p = Σ_b log p_b  (the DP above on S_b alone)

The first is linearity: a uniform order of S restricted to S_b is a uniform order of S_b. The
second holds because the restrictions of a uniform order of S to disjoint blocks are independent
uniform orders, so E_σ Π_b f_b(σ|S_b) = Π_b E f_b. So the global formulas over all 2^n reveal sets
and the block sums agree exactly (tests/estimators/test_exact_block.py checks both against brute
force), and the block sums need far fewer passes: pass r reveals bitmask r inside every block at
once (blocks with fewer subsets are fully revealed then, which no other block sees), so a row costs
max_b (2^{n_b} − 1) passes instead of 2^n − 1. `max_len` bounds the largest n_b on a block model.

Everything is differentiable: `exact_terms(...)["elbo"].sum().backward()` gives the exact gradient
with respect to the model's parameters. Callers that only need values wrap the call in
`torch.no_grad()` (otherwise autograd keeps the activations of all 2^n passes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Literal

import torch

from harness.estimators._common import completion_logprobs
from harness.models.block_attention import block_ids, block_size_of
from harness.registry import ESTIMATORS
from harness.types import Estimate, HarnessError


@lru_cache(maxsize=None)
def _subset_tables(n: int):
    """Index tables for the DP over subsets of n items (CPU; cached per n).

    -> (levels, level_pos, popcount): levels[k] = LongTensor of the masks with popcount k
    (ascending), level_pos[m] = position of mask m inside its level, popcount [2^n].
    """
    masks = torch.arange(1 << n, dtype=torch.long)  # [2^n]
    bits = (masks[:, None] >> torch.arange(n)) & 1  # [2^n, n]
    popcount = bits.sum(1)  # [2^n]
    levels = [torch.nonzero(popcount == k).squeeze(1) for k in range(n + 1)]
    level_pos = torch.empty(1 << n, dtype=torch.long)
    for lvl in levels:
        level_pos[lvl] = torch.arange(len(lvl))
    return levels, level_pos, popcount


def reveal_bits(n: int, device=None) -> torch.Tensor:
    """[2^n − 1, n] bool: row m says which scored positions the reveal set R = m reveals
    (all proper subsets of the n scored positions, in bitmask order; R = S is left out)."""
    masks = torch.arange((1 << n) - 1, dtype=torch.long, device=device)  # [N]
    return ((masks[:, None] >> torch.arange(n, device=device)) & 1).bool()  # [N, n]


@lru_cache(maxsize=None)
def _dp_steps(n: int):
    """Per level k = 1..n of the DP over subsets of n items (CPU; cached per n):
    (prev [c_k, n], pred [c_k, n], has [c_k, n]) with pred = S'∖{j} (∅ where j ∉ S', unused),
    prev = the position of pred inside level k−1, has = (j ∈ S')."""
    levels, level_pos, _ = _subset_tables(n)
    bit = 1 << torch.arange(n)  # [n]
    steps = []
    for k in range(1, n + 1):
        M = levels[k]  # [c_k] subsets S' with |S'| = k
        has = (M[:, None] & bit) != 0  # [c_k, n]: j ∈ S'
        pred = torch.where(has, M[:, None] ^ bit, 0)  # [c_k, n]: S'∖{j}
        steps.append((level_pos[pred], pred, has))
    return steps


def subset_log_p_rows(lp: torch.Tensor) -> torch.Tensor:
    """`subset_log_p` for R rows with the same number n of scored positions at once:
    lp [R, 2^n − 1, n] float64 -> [R]."""
    R, _, n = lp.shape
    if n == 0:
        return lp.new_zeros(R)
    dev = lp.device
    j = torch.arange(n, device=dev)  # [n]
    log_g = lp.new_zeros(R, 1)  # level 0: log g(∅) = 0
    for prev, pred, has in _dp_steps(n):
        prev, pred, has = prev.to(dev), pred.to(dev), has.to(dev)
        # log g(S'∖{j}) + log p(o_j | o_{S'∖{j}}, c); S'∖{j} ⊊ S so lp has its row.
        cand = log_g[:, prev] + lp[:, pred, j.expand_as(pred)]  # [R, c_k, n]
        cand = torch.where(has, cand, torch.full_like(cand, -math.inf))
        log_g = torch.logsumexp(cand, -1)  # [R, c_k]
    return log_g[:, 0] - math.lgamma(n + 1)


def subset_log_p(lp: torch.Tensor) -> torch.Tensor:
    """log p(o) by the subset DP (docs/methods.md §4) for one row.

    lp [2^n − 1, n] float64: lp[R, i] = log p(o_{S_i} | o_R, c) for every proper reveal set R
    (bitmask order); entries with bit i in R are never read. -> scalar log g(S) − log n!.
    """
    return subset_log_p_rows(lp[None])[0]


@lru_cache(maxsize=None)
def _elbo_weights_cpu(n: int, dtype: torch.dtype) -> torch.Tensor:
    _, _, popcount = _subset_tables(n)
    per_size = torch.tensor([1.0 / (math.comb(n, k) * (n - k)) for k in range(n)], dtype=dtype)  # [n]
    w = per_size[popcount[:-1]]  # [N]: by |R| for every proper R
    return w[:, None] * ~reveal_bits(n)  # [N, n]


def elbo_weights(n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """[2^n − 1, n] weights w[R, i] = 1{i ∉ R} / (C(n,|R|)·(n−|R|)) of the exact ELBO (docs/methods.md §4)."""
    return _elbo_weights_cpu(n, dtype).to(device)


def reveal_logprobs(denoiser, prompt: torch.Tensor, completion: torch.Tensor, completion_mask: torch.Tensor,
                    *, prompt_mask: torch.Tensor | None = None, max_tokens: int = 65536,
                    hide: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The forward passes of docs/methods.md §4: for each row b with n_b scored positions, one pass per
    proper reveal set R (bitmask order over the row's scored positions) with the other scored
    positions masked. -> per row, lp [2^{n_b} − 1, n_b] float64: lp[R, i] = log p(o_{S_i} | o_R, c)
    (also read at revealed i, where no caller uses it). `hide` [B, L] bool: completion positions
    (outside completion_mask) masked in every pass too (e.g. post-EOS padding); None: none.

    All rows' inputs go through `completion_logprobs` together, in as few passes as `max_tokens`
    allows; differentiable (wrap in torch.no_grad() when gradients are not needed).
    """
    completion_mask = completion_mask.bool()
    B, L = completion.shape
    dev = completion.device
    n_b = completion_mask.sum(1).tolist()  # scored length per row
    sizes = [(1 << n) - 1 for n in n_b]  # passes per row
    if not sum(sizes):
        return [torch.zeros(0, n, dtype=torch.float64, device=dev) for n in n_b]
    # Every row's 2^n − 1 inputs, rows in order: input r of row b reveals the scored positions
    # whose rank i (among the row's scored positions) is a bit of r; the others are masked.
    counts = torch.tensor(sizes, device=dev)  # [B]
    idx = torch.repeat_interleave(torch.arange(B, device=dev), counts)  # [N_total] row of each input
    offset = torch.cumsum(counts, 0) - counts  # [B] first input of each row
    r = torch.arange(len(idx), device=dev) - offset[idx]  # [N_total] reveal set, as a bitmask
    rank = (completion_mask.long().cumsum(1) - 1).clamp_min(0)  # [B, L] rank among scored positions
    revealed = ((r[:, None] >> rank[idx]) & 1).bool()  # [N_total, L]
    masked = completion_mask[idx] & ~revealed
    if hide is not None:
        masked = masked | (hide.bool()[idx] & ~completion_mask[idx])
    noised = torch.where(masked, denoiser.mask_id, completion[idx])
    pm = None if prompt_mask is None else prompt_mask[idx]
    # [N_total, 1, L] -> [N_total, L]: log p(o_k | o_R, c) at every completion position.
    lp_all = completion_logprobs(denoiser, prompt[idx], pm, completion[idx],
                                 noised[:, None, :], max_tokens)[:, 0].double()
    out = []
    for b, n in enumerate(n_b):
        S = torch.nonzero(completion_mask[b])[:, 0]  # [n] scored positions
        out.append(lp_all[int(offset[b]):int(offset[b]) + sizes[b]][:, S])  # [2^n − 1, n]
    return out


def scored_blocks(block_size: int, prompt_mask: torch.Tensor | None, completion_mask: torch.Tensor,
                  P: int) -> list[list[torch.Tensor]]:
    """Per row, the scored positions grouped by model block: a list (in block order) of LongTensors
    of ranks among the row's scored positions. Blocks follow block_attention (positions counted
    from the row's first real token; the completion is all real)."""
    B, L = completion_mask.shape
    pm = torch.ones(B, P, dtype=torch.bool, device=completion_mask.device) if prompt_mask is None \
        else prompt_mask.bool()
    am = torch.cat([pm, torch.ones_like(completion_mask, dtype=torch.bool)], 1)
    blk = block_ids(am, B, P + L, block_size, completion_mask.device)[:, P:]  # [B, L]
    out = []
    for b in range(B):
        scored_blk = blk[b][completion_mask[b].bool()]  # [n_b] block of each scored position, ascending
        out.append([torch.nonzero(scored_blk == k)[:, 0] for k in torch.unique(scored_blk).tolist()])
    return out


def block_reveal_logprobs(denoiser, prompt: torch.Tensor, completion: torch.Tensor, completion_mask: torch.Tensor,
                          *, prompt_mask: torch.Tensor | None = None, max_tokens: int = 65536,
                          hide: torch.Tensor | None = None) -> tuple[list[list[tuple]], int]:
    """`reveal_logprobs` for a block model, factorised over its blocks (module docstring).

    -> (per row, per block of scored positions in order: (ranks [n_k] among the row's scored
    positions, lp [2^{n_k} − 1, n_k] float64 with lp[R_k, i] = log p(o | o_{R_k}, c, clean earlier
    blocks)), the number of passes Σ_rows max_k (2^{n_k} − 1)). Pass r of a row reveals bitmask r
    inside every block with more than r proper reveal sets and the whole of every other block."""
    completion_mask = completion_mask.bool()
    B, L = completion.shape
    dev = completion.device
    groups = scored_blocks(block_size_of(denoiser), prompt_mask, completion_mask, prompt.shape[1])
    local = torch.zeros(B, L, dtype=torch.long, device=dev)  # rank inside its block, per scored column
    n_blk = torch.zeros(B, L, dtype=torch.long, device=dev)  # scored size of its block
    for b, gs in enumerate(groups):
        S = torch.nonzero(completion_mask[b])[:, 0]
        for ranks in gs:
            local[b, S[ranks]] = torch.arange(len(ranks), device=dev)
            n_blk[b, S[ranks]] = len(ranks)
    sizes = [max(((1 << len(r)) - 1 for r in gs), default=0) for gs in groups]  # passes per row
    if not sum(sizes):
        return [[] for _ in groups], 0
    counts = torch.tensor(sizes, device=dev)
    idx = torch.repeat_interleave(torch.arange(B, device=dev), counts)  # [N] row of each input
    offset = torch.cumsum(counts, 0) - counts
    r = (torch.arange(len(idx), device=dev) - offset[idx])[:, None]  # [N, 1] pass index = in-block bitmask
    revealed = (r >= (1 << n_blk[idx]) - 1) | ((r >> local[idx]) & 1).bool()  # [N, L]
    masked = completion_mask[idx] & ~revealed
    if hide is not None:
        masked = masked | (hide.bool()[idx] & ~completion_mask[idx])
    noised = torch.where(masked, denoiser.mask_id, completion[idx])
    pm = None if prompt_mask is None else prompt_mask[idx]
    lp_all = completion_logprobs(denoiser, prompt[idx], pm, completion[idx], noised[:, None, :],
                                 max_tokens)[:, 0].double()  # [N, L]
    out = []
    for b, gs in enumerate(groups):
        S = torch.nonzero(completion_mask[b])[:, 0]
        rows = lp_all[int(offset[b]):int(offset[b]) + sizes[b]]
        out.append([(ranks, rows[:(1 << len(ranks)) - 1][:, S[ranks]]) for ranks in gs])
    return out, sum(sizes)


def expand_block_table(n: int, blocks: list[tuple]) -> torch.Tensor:
    """One row's block tables -> the global table [2^n − 1, n] by reveal set R of all n scored
    positions (the format of `reveal_logprobs`): lp[R, i] = lp_k[R ∩ S_k, i] for i in block k;
    0 where i's whole block is revealed (a value no formula reads)."""
    if n == 0:
        return torch.zeros(0, 0, dtype=torch.float64)
    R = torch.arange((1 << n) - 1)[:, None]  # [N, 1]
    out = torch.zeros((1 << n) - 1, n, dtype=torch.float64)
    for ranks, lp in blocks:
        ranks = ranks.cpu()
        local = (((R >> ranks[None, :]) & 1) << torch.arange(len(ranks))[None, :]).sum(1)  # [N] R ∩ S_k
        lp_k = torch.cat([lp.detach().cpu(), torch.zeros(1, len(ranks), dtype=torch.float64)])  # row full: 0
        out[:, ranks] = lp_k[local]
    return out


def exact_terms(denoiser, prompt: torch.Tensor, completion: torch.Tensor, completion_mask: torch.Tensor,
                *, prompt_mask: torch.Tensor | None = None, max_len: int = 16,
                max_tokens: int = 65536, by_block: bool | None = None) -> dict:
    """Exact log p(o) and exact ELBO of each row by enumerating all reveal sets (docs/methods.md §4).

    `by_block` (None: whether the model has a block_size) sums per-block terms over each block's
    own reveal sets (module docstring); False enumerates every reveal set of the whole completion
    (the same values on a block model, at 2^n − 1 passes per row).

    prompt [B, P], completion [B, L], completion_mask [B, L] bool (the scored positions S_b; the
    other completion positions stay clean, as given, in every pass).
    -> {"log_p": [B], "elbo": [B], "elbo_per_token": [B, L] (zero off the mask; sums to elbo),
        "n_passes": Σ_b (2^{n_b} − 1)}, all float64.

    All rows' inputs go through `completion_logprobs` together (row by row, each row's reveal
    sets in bitmask order), in as few passes as `max_tokens` allows; the DP and the ELBO then run
    once per distinct scored length, on all rows of that length together. Differentiable end to
    end; wrap in torch.no_grad() when gradients are not needed.
    """
    completion_mask = completion_mask.bool()
    if by_block is None:
        by_block = block_size_of(denoiser) is not None
    if by_block:
        if block_size_of(denoiser) is None:
            raise HarnessError("exact: by_block needs a block-diffusion model (a denoiser with block_size)")
        return _exact_terms_by_block(denoiser, prompt, completion, completion_mask, prompt_mask=prompt_mask,
                                     max_len=max_len, max_tokens=max_tokens)
    B, L = completion.shape
    dev = completion.device
    n_b = completion_mask.sum(1).tolist()  # scored length per row
    for b, n in enumerate(n_b):
        if n > max_len:
            raise HarnessError(
                f"exact: row {b} has {n} scored completion tokens, more than max_len={max_len}; "
                f"exact enumeration needs 2^{n} = {1 << n} forward passes. Raise the estimator's "
                f"max_len parameter (params: {{max_len: {n}}}) if that is affordable, or use a "
                f"high-budget mc_elbo as the reference"
            )
    lp_rows = reveal_logprobs(denoiser, prompt, completion, completion_mask, prompt_mask=prompt_mask,
                              max_tokens=max_tokens)
    log_p = torch.zeros(B, dtype=torch.float64, device=dev)
    elbo_per_token = torch.zeros(B, L, dtype=torch.float64, device=dev)
    for n in sorted(set(n_b) - {0}):
        rows = torch.tensor([b for b, nb in enumerate(n_b) if nb == n], device=dev)  # [R]
        S = torch.nonzero(completion_mask[rows])[:, 1].view(len(rows), n)  # [R, n] scored positions
        lp = torch.stack([lp_rows[b] for b in rows.tolist()])  # [R, N, n]
        log_p = log_p.index_put((rows,), subset_log_p_rows(lp))
        w = elbo_weights(n, device=dev)  # [N, n]
        # Where i ∈ R the weight is 0, but lp is the (finite) score of a revealed token.
        elbo_per_token = elbo_per_token.index_put((rows[:, None].expand_as(S), S), (w * lp).sum(1))
    return {
        "log_p": log_p,  # [B]
        "elbo": elbo_per_token.sum(1),  # [B]
        "elbo_per_token": elbo_per_token,
        "n_passes": sum((1 << n) - 1 for n in n_b),
    }


def _exact_terms_by_block(denoiser, prompt, completion, completion_mask, *, prompt_mask, max_len: int,
                          max_tokens: int) -> dict:
    """`exact_terms` of a block model as sums of per-block terms (module docstring)."""
    B, L = completion.shape
    dev = completion.device
    groups = scored_blocks(block_size_of(denoiser), prompt_mask, completion_mask, prompt.shape[1])
    for b, gs in enumerate(groups):
        big = max((len(r) for r in gs), default=0)
        if big > max_len:
            raise HarnessError(
                f"exact: row {b} has {big} scored completion tokens in one block of the block model, more "
                f"than max_len={max_len}; exact enumeration needs 2^{big} = {1 << big} forward passes for "
                f"that block. Raise the estimator's max_len parameter (params: {{max_len: {big}}}) if that "
                f"is affordable, or use a high-budget mc_elbo as the reference")
    blocks, n_passes = block_reveal_logprobs(denoiser, prompt, completion, completion_mask, prompt_mask=prompt_mask,
                                             max_tokens=max_tokens)
    log_p, rows, cols, vals = [], [], [], []
    for b, bl in enumerate(blocks):
        S = torch.nonzero(completion_mask[b])[:, 0]
        terms = [subset_log_p(lp) for _, lp in bl]
        log_p.append(torch.stack(terms).sum() if terms else torch.zeros((), dtype=torch.float64, device=dev))
        for ranks, lp in bl:
            w = elbo_weights(len(ranks), device=dev)  # [2^{n_k} − 1, n_k]
            rows.append(torch.full((len(ranks),), b, device=dev))
            cols.append(S[ranks])
            vals.append((w * lp).sum(0))
    elbo_per_token = torch.zeros(B, L, dtype=torch.float64, device=dev)
    if vals:
        elbo_per_token = elbo_per_token.index_put((torch.cat(rows), torch.cat(cols)), torch.cat(vals))
    return {"log_p": torch.stack(log_p), "elbo": elbo_per_token.sum(1), "elbo_per_token": elbo_per_token,
            "n_passes": n_passes}


@ESTIMATORS.register(
    "exact",
    summary="exact ground truth: log p by the subset DP and the exact ELBO, 2^L passes (L ≤ max_len)",
)
@dataclass(frozen=True, kw_only=True)
class Exact:
    """Exact ground truth: log p by the subset DP and the exact ELBO, 2^L passes (L ≤ max_len).

    No nfe_for_batch: the cost 2^{n_b} − 1 per row depends on each completion's scored length,
    which the planner does not know, so the plan-time budget check is skipped for this estimator.
    On a block-diffusion model the enumeration factorises over blocks (module docstring): the same
    values, max_b (2^{n_b} − 1) passes per row, `max_len` bounding the scored tokens of one block.
    """

    target: Literal["elbo", "log_p"] = "elbo"
    max_len: int = 16
    max_tokens: int = 65536

    def __post_init__(self):
        if self.max_len < 0:
            raise ValueError(f"max_len must be >= 0, got {self.max_len}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    # What the statistics read (harness/stats/estimators.py): deterministic, on the sequence scale.
    token_scale: ClassVar[bool] = False
    masks: ClassVar[str] = "none"

    @property
    def elbo_target(self) -> bool:
        return self.target == "elbo"

    @property
    def metric(self) -> str:
        return f"exact_{self.target}"

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator=None,
                 prompt_mask=None, draws=None) -> Estimate:
        terms = exact_terms(denoiser, prompt, completion, completion_mask, prompt_mask=prompt_mask,
                            max_len=self.max_len, max_tokens=self.max_tokens)
        per_token = terms["elbo_per_token"]  # [B, L]
        if self.target == "log_p":
            # log p has no per-token decomposition; spread the gap log p − ELBO evenly over the
            # scored positions, so per_token still sums to the sequence value.
            mask = completion_mask.bool()
            n = mask.sum(1, keepdim=True).clamp_min(1)  # [B, 1]
            gap = (terms["log_p"] - terms["elbo"])[:, None] / n  # [B, 1]
            per_token = per_token + gap * mask
        return Estimate(per_token=per_token, sequence=terms[self.target], draws={}, n=1)
