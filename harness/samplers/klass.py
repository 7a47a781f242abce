"""`klass`: KL-Adaptive Stability Sampling (Kim, Hong et al., NeurIPS 2025, arXiv 2511.05664;
shkim0116/KLASS `src/model/llada_klass.py`, `stable_confident_decode` with alg="klass").

A masked position is *ready* when its prediction is both confident and stable: its proposal's
probability exceeds `conf_threshold` (strictly) and the KL divergence between its predictive
distribution at this pass and at the previous pass stayed below `kl_threshold` (strictly) at each of
the last `history_length` passes. Each step of a semi-autoregressive block runs one full pass and

- commits every ready masked position of the block (`unmask_strategy` "all"; "max_conf": only the
  most confident of them, "min_kl": only the one with the lowest current KL), or, when none is
  ready,
- falls back to LLaDA's low-confidence rule: the k most probable proposals, k from LLaDA's linear
  schedule of the block over its `steps` share;

and the block ends as soon as it has no mask left, so NFE adapts to the model's stability (at most
`steps` per sequence). KL(p_t || p_{t-1}) = Σ_v p_t (log(p_t + 1e-12) - log(p_{t-1} + 1e-12)) in
float64; before a row's first pass p_{t-1} is 0 (a KL far above any threshold), and a position's
previous pass at a block's first step is the previous block's last pass, which computed it too. The
stability test applies from the block's step `history_length - 1` on (the reference indexes the
history by the block's step), so every KL it reads was computed inside the block.

At `temperature` > 0 the reference adds LLaDA's Gumbel noise to the logits (exp(l) / (-log u)^T)
and takes the softmax of those noised scores as the distribution whose confidence and KL it tests;
so does the harness (float64, through the row's generator).

Defaults are the reference function's and its command line's: conf_threshold 0.9, kl_threshold 0.01,
history_length 2, unmask_strategy all (its LLaDA GSM8K script uses 0.6 / 0.015 with blocks of 64 and
one step per token). The harness's conventions: `gen_length` None is the task's length,
`block_length` None one block, `steps` None one pass per token (the reference's scripts).

Documented differences: the mask token is never proposed (its score is -inf; the reference keeps it);
a fallback step commits at most the masks left (the reference's top-k then overwrites committed or
prompt tokens with fresh predictions); and the block's last allowed step commits every mask left,
where the reference, when a ready step had committed fewer tokens than the schedule's count, leaves
them masked in its output (possible only with fewer steps than tokens per block). The reference
decodes one sequence at a time; here rows of a batch leave it when their block is done, each keeping
its own history. Whole-canvas passes only (the previous pass must cover the next block): no KV cache,
no guidance (the reference has none), no block-diffusion models; its "random" strategy (torch's global
RNG) is not offered. KLASS's Dream decoder is another loop (no blocks, a one-token fallback): `klass_dream`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from harness.models.block_attention import block_size_of
from harness.registry import SAMPLERS
from harness.samplers._base import (
    add_gumbel_noise,
    aligned,
    check_sampling,
    finish,
    masked_canvas,
    rows_of,
    select_topk,
    steps_plan,
    transfer_schedule,
)
from harness.types import HarnessError

STRATEGIES = ("all", "max_conf", "min_kl")


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[..., V] -> [...] KL(p || q) with the reference's 1e-12 inside both logarithms."""
    return (p * (torch.log(p + 1e-12) - torch.log(q + 1e-12))).sum(-1)


def pick_one(ready: torch.Tensor, value: torch.Tensor, largest: bool) -> torch.Tensor:
    """[B, n] ready mask, [B, n] values -> [B, n] the single ready position with the largest (smallest)
    value in each row that has one (the first on ties, as torch.argmax / argmin)."""
    fill = -torch.inf if largest else torch.inf
    v = torch.where(ready, value, torch.full_like(value, fill))
    idx = v.argmax(1) if largest else v.argmin(1)
    one = torch.zeros_like(ready)
    one[torch.arange(ready.shape[0], device=ready.device), idx] = True
    return one & ready.any(1, keepdim=True)


@SAMPLERS.register("klass")
@dataclass(frozen=True, kw_only=True)
class KLASS:
    """KLASS: commit masked tokens that are confident and whose predictive distribution is stable (low KL
    between passes); otherwise LLaDA's low-confidence step. Adaptive NFE."""

    gen_length: int | None = None  # None: the task's length
    block_length: int | None = None  # None: one block
    steps: int | None = None  # most passes per sequence; None: one per token
    temperature: float = 0.0  # > 0: the reference's Gumbel-noised scores (exp(l) / (-log u)^T) replace the logits
    conf_threshold: float = 0.9  # ready: p(x0) > conf_threshold
    kl_threshold: float = 0.01  # ready: KL < kl_threshold at each of the last history_length passes
    history_length: int = 2  # passes whose KL must all be below kl_threshold (tested from the block's step H - 1)
    unmask_strategy: Literal["all", "max_conf", "min_kl"] = "all"  # commit every ready token, or only the best one

    adaptive: ClassVar[bool] = True
    # Looser thresholds and a shorter history commit more per pass; steps caps the passes.
    budget_knobs: ClassVar[tuple[str, ...]] = ("conf_threshold", "kl_threshold", "history_length", "steps")

    def speed_reference(self) -> bool:
        return False

    def __post_init__(self):
        for name in ("gen_length", "block_length", "steps", "history_length"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        check_sampling(self.temperature)
        if not 0 <= self.conf_threshold <= 1:
            raise ValueError(f"conf_threshold must be in [0, 1], got {self.conf_threshold}")
        if not self.kl_threshold >= 0:
            raise ValueError(f"kl_threshold must be >= 0, got {self.kl_threshold}")
        if self.unmask_strategy not in STRATEGIES:
            raise ValueError(f"unmask_strategy must be one of {', '.join(STRATEGIES)}, got {self.unmask_strategy!r}")

    def plan(self, gen_length: int) -> tuple[int, int, int]:
        """(L, block, most steps per block)."""
        return steps_plan(self.gen_length or gen_length, self.block_length, self.steps)

    def max_nfe_per_sequence(self, gen_length: int) -> int:
        L, block, per_block = self.plan(gen_length)
        return (L // block) * per_block

    def distribution(self, logits: torch.Tensor, mask_id: int, generator) -> torch.Tensor:
        """[B, n, V] logits -> [B, n, V] float64 softmax of the (Gumbel-noised at temperature > 0) scores."""
        scores = add_gumbel_noise(logits, self.temperature, generator).double()
        scores[..., mask_id] = -torch.inf
        return F.softmax(scores, -1)

    @torch.no_grad()
    def __call__(self, denoiser, prompt: torch.Tensor, *, generator, prompt_mask: torch.Tensor | None = None,
                 gen_length: int = 32):
        if block_size_of(denoiser) is not None:
            raise HarnessError("klass compares each pass with the previous one over the next block's columns, which "
                               "a block-diffusion model never computes early; use threshold or low_confidence there")
        L, block, per_block = self.plan(gen_length)
        B, P = prompt.shape
        mask_id = denoiser.mask_id
        dev = prompt.device
        x, attn = masked_canvas(prompt, prompt_mask, L, mask_id)
        commit_step = torch.full((B, L), -1, dtype=torch.long, device=dev)
        commit_conf = torch.full((B, L), float("nan"), device=dev)
        row_steps = torch.zeros(B, dtype=torch.long, device=dev)
        shift = bool(getattr(denoiser, "shift_logits", False))
        H = self.history_length
        p_prev = p_next = None  # [B, block, V] each row's last distribution at this block's / the next block's columns
        for b in range(L // block):
            lo, hi = P + b * block, P + (b + 1) * block
            top = min(hi + block, P + L)  # the pass's distributions are kept up to the next block's end
            blk = x[:, lo:hi]
            counts = transfer_schedule((blk == mask_id).sum(1), per_block)  # [B, S] LLaDA's linear counts
            if p_next is not None:  # each row's last pass in the previous block, at this block's columns
                p_prev, p_next = p_next, torch.zeros_like(p_next)
            history = torch.zeros(B, block, H, dtype=torch.float64, device=dev)  # read only once filled in-block
            for s in range(per_block):
                live = (x[:, lo:hi] == mask_id).any(1).nonzero().squeeze(1)
                if not live.numel():
                    break
                ar = None if attn is None else attn[live]
                logits = aligned(denoiser.logits(x[live], ar), lo, top, shift)  # [B', top - lo, V]
                p = self.distribution(logits.clone(), mask_id, rows_of(generator, live))
                if p_prev is None:  # before any pass: the reference's zero distribution
                    p_prev = torch.zeros(B, block, p.shape[-1], dtype=torch.float64, device=dev)
                    p_next = torch.zeros_like(p_prev)
                pb = p[:, :block]
                x0 = pb.argmax(-1)  # [B', block]
                conf = torch.gather(pb, -1, x0[..., None]).squeeze(-1)
                kl = kl_divergence(pb, p_prev[live])  # [B', block]
                history[live] = torch.cat([history[live, :, 1:], kl[..., None]], -1)
                p_prev[live] = pb
                if top > hi:
                    p_next[live, :top - hi] = p[:, block:]
                masked = x[live, lo:hi] == mask_id
                stable = (history[live] < self.kl_threshold).all(-1) if s >= H - 1 else torch.zeros_like(masked)
                ready = stable & (conf > self.conf_threshold) & masked
                if self.unmask_strategy == "max_conf":
                    ready = pick_one(ready, conf, largest=True)
                elif self.unmask_strategy == "min_kl":
                    ready = pick_one(ready, kl, largest=False)
                k = torch.minimum(counts[live, s], masked.sum(1))
                fallback = select_topk(torch.where(masked, conf, torch.full_like(conf, -torch.inf)), k)
                commit = torch.where(ready.any(1, keepdim=True), ready, fallback)
                if s == per_block - 1:
                    commit = masked
                x[live, lo:hi] = torch.where(commit, x0, x[live, lo:hi])
                cs = commit_step[live, lo - P:hi - P]
                commit_step[live, lo - P:hi - P] = torch.where(commit, row_steps[live, None].expand_as(cs), cs)
                cc = commit_conf[live, lo - P:hi - P]
                commit_conf[live, lo - P:hi - P] = torch.where(commit, conf.float(), cc)
                row_steps[live] += 1
        return finish(denoiser, x, P, commit_step, int(row_steps.max()) if B else 0, commit_conf=commit_conf)
