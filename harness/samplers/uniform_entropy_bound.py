"""`uniform_entropy_bound`: DiffusionGemma's entropy-bound sampler for uniform-noise models.

Block by block (a canvas of the model's `canvas_length`, or the whole completion if shorter):
start from uniformly random tokens; at each step the model predicts every canvas position, a
token is sampled at every position from softmax(logits / τ_s) with τ_s linear from `t_max` at the
first step to `t_min` at the last, the lowest-entropy positions with Σ H − max H ≤ `bound` are
accepted (EB-sampler, arXiv 2505.24857; `entropy_bounded_prefix`) and every other position is
re-noised with a fresh random token. A row's canvas is done when its argmax prediction did not
change since the previous step and its mean entropy is below `confidence` (transformers'
StableAndConfidentStoppingCriteria) or after `max_steps`; the canvas becomes the argmax
prediction. Same algorithm as `DiffusionGemmaForBlockDiffusion.generate`, drawn from the harness's
explicit generators and counted by the meter (one pass = the encoder over the context plus the
denoiser over the canvas). Self-conditioning is not used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.registry import SAMPLERS
from harness.samplers._base import add_gumbel_noise, finish, token_entropy
from harness.samplers.entropy_bound import entropy_bounded_prefix
from harness.seeding import rand
from harness.types import Generation, HarnessError


@SAMPLERS.register("uniform_entropy_bound")
@dataclass(frozen=True, kw_only=True)
class UniformEntropyBound:
    """Uniform-noise models (diffusion_gemma): DiffusionGemma's entropy-bound accept / re-noise loop per canvas."""

    noise: ClassVar[str] = "uniform"  # the models it applies to (plan-time check in config.py)
    gen_length: int | None = None
    max_steps: int = 48
    bound: float = 0.1
    t_min: float = 0.4
    t_max: float = 0.8
    confidence: float = 0.005

    def __post_init__(self):
        if self.max_steps < 1 or self.bound <= 0 or not 0 < self.t_min <= self.t_max:
            raise ValueError("need max_steps >= 1, bound > 0 and 0 < t_min <= t_max")

    def plan(self, denoiser, gen_length: int) -> tuple[int, int]:
        L = self.gen_length or gen_length
        W = min(int(getattr(denoiser, "canvas_length", L)), L)
        if L % W:
            raise ValueError(f"gen_length {L} is not a multiple of the model's canvas length {W}")
        return L, W

    def expected_nfe(self, gen_length: int) -> int:
        """An upper bound known before the model is (the canvas length is the model's): max_steps
        passes per canvas, at most one canvas per token."""
        return (self.gen_length or gen_length) * self.max_steps

    @torch.no_grad()
    def __call__(self, denoiser, prompt: torch.Tensor, *, generator, prompt_mask: torch.Tensor | None = None,
                 gen_length: int = 32) -> Generation:
        if getattr(denoiser, "noise", "masked") != "uniform":
            raise HarnessError("uniform_entropy_bound drives uniform-noise models (diffusion_gemma); use the "
                               "masked samplers (low_confidence, entropy_bound, ...) for masked models")
        L, W = self.plan(denoiser, gen_length)
        B, P = prompt.shape
        V, dev = denoiser.vocab_size, prompt.device
        x = prompt
        attn = prompt_mask
        commit_step = torch.full((B, L), -1, dtype=torch.long, device=dev)
        passes = 0
        for b in range(L // W):
            canvas = (rand(generator, B, W, dtype=torch.float64, device=dev) * V).long().clamp_max(V - 1)
            best = canvas
            done = torch.zeros(B, dtype=torch.bool, device=dev)
            a = None if attn is None else torch.cat([attn, torch.ones(B, W, dtype=torch.bool, device=dev)], 1)
            for s in range(self.max_steps):
                with denoiser.canvas(W):
                    logits = denoiser.logits(torch.cat([x, canvas], 1), a)[:, -W:].float()  # [B, W, V]
                passes += 1
                temp = self.t_min + (self.t_max - self.t_min) * (self.max_steps - s) / self.max_steps
                scaled = logits / temp
                h = token_entropy(F.softmax(scaled, -1))  # [B, W]
                sample = add_gumbel_noise(scaled, 1.0, generator).argmax(-1)  # [B, W] ~ softmax(scaled)
                accept = entropy_bounded_prefix(h, torch.ones_like(h, dtype=torch.bool), self.bound)
                fresh = (rand(generator, B, W, dtype=torch.float64, device=dev) * V).long().clamp_max(V - 1)
                argmax = scaled.argmax(-1)
                stop = (argmax == best).all(1) & (h.mean(1) < self.confidence)
                live = ~done
                canvas = torch.where(live[:, None], torch.where(accept, sample, fresh), canvas)
                best = torch.where(live[:, None], argmax, best)
                commit_step[live, b * W:(b + 1) * W] = passes - 1
                done |= stop
                if done.all():
                    break
            x = torch.cat([x, best], 1)
            attn = a
            if (best == denoiser.eos_id).any(1).all():  # every row ended: later canvases stay EOS
                pad = torch.full((B, L - (b + 1) * W), denoiser.eos_id, dtype=x.dtype, device=dev)
                x = torch.cat([x, pad], 1)
                break
        return finish(denoiser, x, P, commit_step, passes)
