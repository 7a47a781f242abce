"""`trace`: TraceRL's trajectory-aware per-token log-probs (TraceRL, arXiv 2509.06949).

A sampler records the step at which it committed each completion token (`Generation.commit_step`,
−1 where a token was never masked). TraceRL scores a rollout along that same order: steps are
merged into groups of `stride` (the paper's shrink parameter s), and for each group g, in order,

  input_g   = completion with every scored token committed at a step >= start(g) masked
  per_token[b, j] = log p(o_j | c, input_{g(j)})       for every scored j (its own group g(j))
  sequence  = Σ_j per_token[b, j] / n_scored              ("mean over scored tokens", docs/methods.md §1)

Scored tokens are those with completion_mask True and commit_step >= 0; tokens with commit_step −1
(given, never masked) are always clean and never scored, and positions outside completion_mask
stay clean (the harness rule; `mask_padding=True` orders them by their commit step with the scored
tokens and masks them like the reference, never scoring them). Here `per_token` is the raw log-prob
of each scored token (what a token-level clipped objective needs), not a share of `sequence`.

Grouping (`merge`):
  steps  group = ⌊commit_step / stride⌋: steps k..k+s−1 (k a multiple of s) form one group;
  ranks  the reference code's `collapse_k_unique` (train/rl_*.py of Gen-Verse/dLLM-RL): the
         distinct steps the row actually used are sorted and every s consecutive ones merged
         (here: the distinct steps of the row's scored tokens; the reference also counts
         post-EOS positions). With stride 1 both are the same.
A group with no scored token costs nothing. Aggregation (`aggregate`): "token" is the mean over
scored tokens above; "group" averages each group's mean, as the reference loss does (it divides
each group row by its own number of scored tokens).

Confirmed against the reference (rl_llada.py, method "TraceRL"): one input per distinct (merged)
step, masking positions with order >= that step and scoring the positions with order == that
step; empty groups are skipped.

The returned draws also carry `group` [B, L] (each scored token's group, −1 elsewhere; TraceRL's
loss forms its per-(sequence, group) rows from it). Commit steps travel in `draws`:
`draws={"commit_step": LongTensor [B, L]}` is required (the RL
loop passes the rollout's `Generation.commit_step`; replays for π_old / π_ref pass the returned
draws). There is no `nfe_for_batch`: the number of passes, one per non-empty group per sequence
(⌈steps/stride⌉ when every step commits a scored token), is only known from the commit steps, so
the planner skips its plan-time NFE check; the meter still counts every pass. All groups of all
rows go through the model together, in as few passes as `max_tokens` allows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from harness.estimators._common import completion_logprobs
from harness.registry import ESTIMATORS
from harness.types import Estimate, HarnessError


def group_ids(commit_step: torch.Tensor, scored: torch.Tensor, stride: int, merge: str) -> torch.Tensor:
    """[B, L] commit steps, [B, L] scored -> [B, L] long group id per scored token (−1 elsewhere)."""
    if merge == "steps":
        gid = torch.div(commit_step, stride, rounding_mode="floor")
    else:
        # Rank of each scored token's step among its row's distinct scored steps, all rows at once:
        # key = row·S + step sorts by row, then step.
        gid = torch.full_like(commit_step, -1)
        B = commit_step.shape[0]
        if bool(scored.any()):
            S = int(commit_step[scored].max()) + 1
            row = torch.arange(B, device=commit_step.device)[:, None].expand_as(commit_step)
            key = (row * S + commit_step)[scored]  # [K] row-major
            uniq = torch.unique(key, sorted=True)  # [U] distinct (row, step)
            first = torch.searchsorted(uniq, torch.arange(B, device=key.device) * S)  # [B] row starts
            rank = torch.searchsorted(uniq, key) - first[row[scored]]  # [K]
            gid[scored] = torch.div(rank, stride, rounding_mode="floor")
    return torch.where(scored, gid, torch.full_like(gid, -1))


@ESTIMATORS.register("trace")
@dataclass(frozen=True, kw_only=True)
class Trace:
    """TraceRL: score each rollout along its recorded commit order, steps merged every `stride`."""

    metric: ClassVar[str] = "trace"
    stride: int = 1
    merge: Literal["steps", "ranks"] = "steps"
    aggregate: Literal["token", "group"] = "token"
    mask_padding: bool = False
    max_tokens: int = 65536

    def __post_init__(self):
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    # What the statistics read (harness/stats/estimators.py, `token_scale` / `elbo_target` / `masks`):
    token_scale: ClassVar[bool] = True  # a mean over scored tokens: x L puts it on the ELBO's scale
    masks: ClassVar[str] = "order"  # one reveal order per row (the sampler's, or random in the estimator study)

    @property
    def elbo_target(self) -> bool:
        """Along a uniformly random order (the estimator study's `commit_order: random`), stride 1
        scores the any-order chain rule, whose mean over orders is ELBO / L; merged steps are not."""
        return self.stride == 1

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator=None,
                 prompt_mask=None, draws=None) -> Estimate:
        B, L = completion.shape
        if not draws or "commit_step" not in draws:
            raise HarnessError(
                "the trace estimator scores a rollout along its decoding order and needs the "
                "sampler's commit steps: pass draws={'commit_step': Generation.commit_step} "
                "(a LongTensor [B, L]); it cannot score a completion that no sampler produced"
            )
        commit = torch.as_tensor(draws["commit_step"]).to(completion.device)
        if commit.shape != (B, L) or commit.is_floating_point():
            raise HarnessError(f"trace: draws['commit_step'] must be an integer tensor of shape "
                               f"{(B, L)}, got {tuple(commit.shape)} {commit.dtype}")
        commit = commit.long()
        valid = completion_mask.bool()  # [B, L]
        scored = valid & (commit >= 0)  # [B, L]
        # With mask_padding the unscored padding is ordered with the scored tokens (the reference
        # collapses the steps of the whole canvas) and hidden in its own group and every earlier one.
        pad = ~valid & (commit >= 0) if self.mask_padding else torch.zeros_like(valid)
        ordered = scored | pad  # [B, L] positions with a place in the decoding order
        gid_all = group_ids(commit, ordered, self.stride, self.merge)  # [B, L]
        gid = torch.where(scored, gid_all, torch.full_like(gid_all, -1))  # [B, L]
        sequence_den = scored.sum(1).double().clamp_min(1)  # [B]
        if not bool(scored.any()):
            zeros = torch.zeros(B, L, dtype=torch.float64, device=completion.device)
            return Estimate(per_token=zeros, sequence=zeros.sum(1), draws={"commit_step": commit, "group": gid}, n=1)
        # The non-empty groups of every row, ordered by row then group: key = row·G + group.
        G = int(gid.max()) + 1
        rows_all = torch.arange(B, device=completion.device)[:, None].expand(B, L)
        key = (rows_all * G + gid)[scored]  # [K] one per scored token, row-major
        uniq = torch.unique(key, sorted=True)  # [N]
        row = torch.div(uniq, G, rounding_mode="floor")  # [N]
        grp = (uniq - row * G)[:, None]  # [N, 1]
        hide = ordered[row] & (gid_all[row] >= grp)  # [N, L] this group and every later one
        target = scored[row] & (gid[row] == grp)  # [N, L] this group's tokens
        noised = torch.where(hide, denoiser.mask_id, completion[row])  # [N, L]
        logp = completion_logprobs(denoiser, prompt[row], None if prompt_mask is None else prompt_mask[row],
                                   completion[row], noised[:, None, :], self.max_tokens)[:, 0].double()  # [N, L]
        contrib = torch.where(target, logp, torch.zeros_like(logp))  # [N, L]
        per_token = torch.zeros(B, L, dtype=torch.float64, device=completion.device).index_add(0, row, contrib)
        if self.aggregate == "token":
            sequence = per_token.sum(1) / sequence_den  # [B]
        else:
            group_mean = contrib.sum(1) / target.sum(1).double()  # [N]
            n_groups = torch.zeros(B, dtype=torch.float64, device=completion.device).index_add(
                0, row, torch.ones_like(group_mean))
            sequence = torch.zeros_like(n_groups).index_add(0, row, group_mean) / n_groups.clamp_min(1)
        return Estimate(per_token=per_token, sequence=sequence, draws={"commit_step": commit, "group": gid}, n=1)
