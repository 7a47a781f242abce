"""`klass_dream`: KLASS's Dream decoder (Kim, Hong et al., NeurIPS 2025, arXiv 2511.05664;
shkim0116/KLASS `src/model/dream_klass.py`, `DreamGenerationMixin._sample` with alg="klass").

KLASS ships two decoders. Its LLaDA one is `klass` (semi-autoregressive blocks, LLaDA's linear
counts as fallback); its Dream one is a different loop, this sampler. Every pass runs over the whole
canvas (no blocks) and

- commits every masked position that is *ready*: its proposal (the argmax) has probability at least
  `conf_threshold` (>=; the LLaDA decoder's test is strict) and the KL divergence between its
  predictive distribution at this pass and at the previous one stayed below `kl_threshold` at each
  of the last `history_length` passes (`unmask_strategy` "max_conf" / "min_kl": only the most
  confident / lowest-KL of them);
- when none is ready, commits exactly one masked position: the one whose `sample_tokens` score is
  highest. That score is the probability of the token drawn from softmax(top_k(top_p(logits / T)))
  at temperature T > 0 (one draw per masked position, in position order, through the row's
  generator: `torch.multinomial`, the draw `dists.Categorical` makes; GPU probabilities with the
  runner's CPU generators: an inverse-CDF draw of the same law, `multinomial_rows`), and the largest
  probability of softmax(top_k(top_p(logits))) at T = 0. The token written is the proposal (the
  argmax), not the drawn one: in this decoder temperature, top_p and top_k only move which position
  a fallback step commits.

The loop stops when no mask is left (NFE adapts; at most `steps` passes). The KL is
KL(p_t || p_{t-1}) = Σ_v p_t (log(p_t + 1e-12) - log(p_{t-1} + 1e-12)) in float64, with p_{t-1} = 0
before the first pass and a history that starts at zeros and is tested from the first pass on
(unlike the LLaDA decoder, which tests from step history_length - 1): the first pass's KL against the
zero distribution (-log 1e-12 ≈ 27.6 nats minus the entropy, so at least 27.6 - log V) keeps a
position unready until it has left the history, so the first ready commit comes at the
(history_length + 1)-th pass at the earliest unless `kl_threshold` exceeds that KL. p_t is the
softmax of the plain logits (no temperature); the proposal is the argmax of the softmax in the
logits' own dtype, its confidence read from the float64 softmax, as the reference computes them.
The Dream schedule (timesteps linspace(1, eps, steps + 1)) is computed by the reference but not used
by this branch; no step commits a scheduled count.

Defaults are `DreamGenerationConfig`'s (dream_klass.py L102-115): conf_threshold 0.9, kl_threshold
0.01, history_length 2, unmask_strategy all, temperature 0, no top_p / top_k. The authors' scripts
(scripts/dream_*.sh, src/dream_evaluation.py) run 256 tokens in 256 steps with conf/KL 0.9/0.001
(GSM8K, MBPP), 0.9/0.005 (MATH), 0.8/0.001 (HumanEval), at temperature 0.2 and top_p 0.95. Harness
conventions: `gen_length` None is the task's length, `steps` None one pass per token (the scripts'
setting).

Documented differences: the mask token is never proposed and carries no probability (its logit is
-inf before every softmax; the reference keeps it: a trained model gives it ~0, and a drawn or argmax
mask leaves the position masked there); the last allowed pass commits every mask left, where the
reference leaves them masked in its output (possible only with fewer steps than tokens, since every
pass commits at least one); NFE is the passes run (the reference's `used_steps` reads 256 whenever
its loop runs to the end, whatever `steps` is). The reference decodes one sequence at a time (its
KL history and previous distribution have a batch dimension of 1: a batch of two fails at L505);
here each row of a batch keeps its own and leaves the batch when it has no mask left, so a row
decodes as it does alone. A shifted-logit model (Dream) reads column k's prediction at k - 1, as the
reference's shift does. Whole-canvas passes only: no KV cache, no guidance, no blocks (the reference
has none), no block-diffusion models; the "random" strategy (torch's global RNG) and save_steps'
traces are not offered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from harness.models.block_attention import block_size_of
from harness.registry import SAMPLERS
from harness.samplers._base import (
    aligned,
    check_sampling,
    finish,
    masked_canvas,
    multinomial_rows,
    top_k_filter,
    top_p_filter,
)
from harness.samplers.klass import STRATEGIES, kl_divergence, pick_one
from harness.types import HarnessError


def fallback_scores(logits: torch.Tensor, temperature: float, top_p: float, top_k: int, generator) -> torch.Tensor:
    """[n, V] logits of one row's masked positions -> [n] Dream's `sample_tokens` confidence: logits /
    temperature (T > 0), the nucleus filter, then top-k; softmax in the logits' dtype; at T > 0 the
    probability of one token drawn per position with `generator`, else the largest probability."""
    if temperature > 0:
        logits = logits / temperature
    logits = top_k_filter(top_p_filter(logits, top_p), top_k)
    probs = torch.softmax(logits, -1)
    if temperature == 0:
        return probs.max(-1).values
    drawn = multinomial_rows(probs[None], generator)[0]  # [n]
    return probs.gather(-1, drawn[:, None]).squeeze(-1)


@SAMPLERS.register("klass_dream")
@dataclass(frozen=True, kw_only=True)
class KLASSDream:
    """KLASS's Dream decoder: commit every masked token that is confident and stable (low KL between
    passes) over the whole canvas; when none is, the single best-scored one. Adaptive NFE, no blocks."""

    gen_length: int | None = None  # None: the task's length
    steps: int | None = None  # most passes per sequence; None: one per token
    temperature: float = 0.0  # > 0: fallback positions scored by a drawn token's probability (tokens stay argmax)
    top_p: float = 1.0  # nucleus filter of the fallback's scores (1: none; the authors ran 0.95)
    top_k: int = 0  # top-k filter of the fallback's scores (0: none)
    conf_threshold: float = 0.9  # ready: p(x0) >= conf_threshold
    kl_threshold: float = 0.01  # ready: KL < kl_threshold at each of the last history_length passes
    history_length: int = 2  # passes whose KL must all be below kl_threshold
    unmask_strategy: Literal["all", "max_conf", "min_kl"] = "all"  # commit every ready token, or only the best one

    adaptive: ClassVar[bool] = True
    # Looser thresholds and a shorter history commit more per pass; steps caps the passes.
    budget_knobs: ClassVar[tuple[str, ...]] = ("conf_threshold", "kl_threshold", "history_length", "steps")
    # checked against the model's `provides` at plan time (harness/config.py); a block model is refused again
    # at decode time
    requires: ClassVar[tuple[str, ...]] = ("full_attention",)

    def speed_reference(self) -> bool:
        return False

    def __post_init__(self):
        for name in ("gen_length", "steps", "history_length"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        check_sampling(self.temperature, self.top_p, self.top_k)
        if not 0 <= self.conf_threshold <= 1:
            raise ValueError(f"conf_threshold must be in [0, 1], got {self.conf_threshold}")
        if not self.kl_threshold >= 0:
            raise ValueError(f"kl_threshold must be >= 0, got {self.kl_threshold}")
        if self.unmask_strategy not in STRATEGIES:
            raise ValueError(f"unmask_strategy must be one of {', '.join(STRATEGIES)}, got {self.unmask_strategy!r}")

    def max_nfe_per_sequence(self, gen_length: int) -> int:
        L = self.gen_length or gen_length
        return min(self.steps or L, L)  # every pass commits at least one token

    @torch.no_grad()
    def __call__(self, denoiser, prompt: torch.Tensor, *, generator, prompt_mask: torch.Tensor | None = None,
                 gen_length: int = 32):
        if block_size_of(denoiser) is not None:
            raise HarnessError("klass_dream runs whole-canvas passes without blocks, which a block-diffusion model "
                               "never computes; use threshold or low_confidence there")
        L = self.gen_length or gen_length
        steps = self.steps or L
        B, P = prompt.shape
        shift = bool(getattr(denoiser, "shift_logits", False))
        if shift and P == 0:
            raise HarnessError("klass_dream on a shifted-logit model (Dream) needs a non-empty prompt: the first "
                               "completion column is predicted at the prompt's last position")
        if self.temperature > 0 and generator is None:
            raise HarnessError("klass_dream with temperature > 0 draws tokens: pass a torch.Generator (or one per row)")
        mask_id = denoiser.mask_id
        dev = prompt.device
        x, attn = masked_canvas(prompt, prompt_mask, L, mask_id)
        gens = list(generator) if isinstance(generator, (list, tuple)) else None
        if gens is not None and len(gens) != B:
            raise HarnessError(f"klass_dream got {len(gens)} generators for a batch of {B}")
        commit_step = torch.full((B, L), -1, dtype=torch.long, device=dev)
        commit_conf = torch.full((B, L), float("nan"), device=dev)
        row_steps = torch.zeros(B, dtype=torch.long, device=dev)
        H = self.history_length
        history = torch.zeros(B, L, H, dtype=torch.float64, device=dev)  # the reference's zeros, tested at once
        p_prev = None  # [B, L, V] float64, zeros before a row's first pass
        for s in range(steps):
            live = (x[:, P:] == mask_id).any(1).nonzero().squeeze(1)
            if not live.numel():
                break
            ar = None if attn is None else attn[live]
            logits = aligned(denoiser.logits(x[live], ar), P, P + L, shift).clone()  # [B', L, V]
            logits[..., mask_id] = -torch.inf  # never proposed, no probability
            p = F.softmax(logits.double(), -1)  # the reference's p_curr
            if p_prev is None:
                p_prev = torch.zeros(B, L, p.shape[-1], dtype=torch.float64, device=dev)
            x0 = F.softmax(logits, -1).argmax(-1)  # [B', L] argmax of the softmax in the logits' dtype
            conf = torch.gather(p, -1, x0[..., None]).squeeze(-1)  # [B', L] float64
            kl = kl_divergence(p, p_prev[live])  # [B', L]
            history[live] = torch.cat([history[live, :, 1:], kl[..., None]], -1)
            p_prev[live] = p
            masked = x[live, P:] == mask_id
            ready = (history[live] < self.kl_threshold).all(-1) & (conf >= self.conf_threshold) & masked
            if self.unmask_strategy == "max_conf":
                ready = pick_one(ready, conf, largest=True)
            elif self.unmask_strategy == "min_kl":
                ready = pick_one(ready, kl, largest=False)
            commit = ready.clone()
            for i in (~ready.any(1)).nonzero().squeeze(1).tolist():  # rows with nothing ready: one fallback token
                cols = masked[i].nonzero().squeeze(1)
                gen = generator if gens is None else gens[int(live[i])]
                score = fallback_scores(logits[i, cols], self.temperature, self.top_p, self.top_k, gen)
                commit[i, cols[score.argmax()]] = True
            if s == steps - 1:
                commit = masked
            x[live, P:] = torch.where(commit, x0, x[live, P:])
            cs = commit_step[live]
            commit_step[live] = torch.where(commit, row_steps[live, None].expand_as(cs), cs)
            cc = commit_conf[live]
            commit_conf[live] = torch.where(commit, conf.float(), cc)
            row_steps[live] += 1
        return finish(denoiser, x, P, commit_step, int(row_steps.max()) if B else 0, commit_conf=commit_conf)
