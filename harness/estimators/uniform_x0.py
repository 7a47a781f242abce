"""`uniform_x0`: the clean-token log-likelihood of a uniform-noise diffusion LM (DiffusionGemma).

For models whose noise replaces tokens by uniformly random vocabulary tokens (no mask token), the
masked estimators do not apply. This estimator draws, for each of n copies, a noise level
t ~ U(0, 1) and corrupts each scored completion position independently with probability t by a
token drawn uniformly from the vocabulary (the forward process of uniform-noise diffusion with a
linear schedule, alpha_t = 1 - t), then scores the clean completion:

    value = (1/n) Σ_i Σ_{k scored} log p_θ(o_k | c, o_{<canvas(k)}, x_t^(i)[canvas(k)])

with the model used as its generate uses it: the completion is cut into canvases of the model's
`canvas_length` W; canvas j is denoised with the prompt and the CLEAN canvases before it as the
(KV-cached) context, as generate appends each finished canvas to the context. The last canvas is
always W wide, as in generate: its columns past the completion hold uniformly random tokens (their
clean token is unknown, i.e. fully noised) and are not scored. Positions after the first EOS stay
clean (EOS padding) and are not scored.

Self-conditioning (on by default for a model that has it, as DiffusionGemma's generate always
uses it): each copy takes two passes, a first one without the self-conditioning input and the
scored one with the first pass's logits as that input (at temperature 1, and detached: no
gradient flows through them) -- the second denoising step's view of the model, and the usual
self-conditioning recipe (Chen et al., "Analog Bits", arXiv 2208.04202; transformers ships no
DiffusionGemma training code to compare with). `self_conditioning: false` scores the first pass.

It is the x0-prediction objective these models are trained with, evaluated as a sequence score;
it is NOT a bound on log p(o | c) (the uniform-noise ELBO needs the full posterior algebra that
this estimator does not implement), so compare it across policies, not with masked ELBOs.
Cost per row: canvases × n_mc × (2 with self-conditioning, else 1) passes; the first pass builds
the prompt's cache (full), all others read it (cached). No `nfe_for_batch`: the number of canvases
depends on the completion's length and the model's canvas, known only at run time.
Replay: draws = {"t", "corrupt", "noise"} ([B, n], [B, n, W·canvases] twice); passing them back
reproduces the value exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.estimators._common import uniform
from harness.registry import ESTIMATORS
from harness.types import Estimate, HarnessError


def uniform_corrupt(completion: torch.Tensor, corrupt: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """completion [B, L], corrupt [B, n, L] bool, noise [B, n, L] tokens -> x_t [B, n, L]."""
    return torch.where(corrupt, noise, completion[:, None, :])


def draw(generator, valid: torch.Tensor, n: int, width: int, V: int) -> dict:
    """valid [B, L] scored positions -> draws for n copies over `width` >= L columns: t [B, n],
    corrupt [B, n, width] (scored positions with probability t; columns >= L always), noise."""
    B, L = valid.shape
    dev = valid.device
    t = uniform(generator, B, n, device=dev)  # [B, n]
    u = uniform(generator, B, n, width, device=dev)  # [B, n, width]
    beyond = torch.arange(width, device=dev) >= L  # [width]: past the completion, in its last canvas
    scored = F.pad(valid, (0, width - L))[:, None, :]  # [B, 1, width]
    corrupt = ((u < t[..., None]) & scored) | beyond
    noise = (uniform(generator, B, n, width, device=dev) * V).long().clamp_max(V - 1)  # [B, n, width]
    return {"t": t, "corrupt": corrupt, "noise": noise}


@ESTIMATORS.register("uniform_x0")
@dataclass(frozen=True, kw_only=True)
class UniformX0:
    """Uniform-noise models: clean-token log-likelihood under random-token corruption at t ~ U(0,1), canvas by
    canvas with the clean earlier canvases as context (not an ELBO)."""

    metric: ClassVar[str] = "uniform_x0"

    # What the statistics read (harness/stats/estimators.py, `token_scale` / `elbo_target` / `masks`):
    token_scale: ClassVar[bool] = False
    elbo_target: ClassVar[bool] = False  # the x0-prediction objective, not a bound on log p
    masks: ClassVar[str] = "independent"
    noise: ClassVar[str] = "uniform"  # the models it applies to (plan-time check in config.py)
    n_mc: int = 4
    self_conditioning: bool | None = None  # None: as the model's generate (DiffusionGemma: on)

    def __post_init__(self):
        if self.n_mc < 1:
            raise ValueError(f"n_mc must be >= 1, got {self.n_mc}")

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator,
                 prompt_mask=None, draws=None) -> Estimate:
        if getattr(denoiser, "noise", "masked") != "uniform" or not hasattr(denoiser, "canvas_length"):
            raise HarnessError(f"uniform_x0 applies to uniform-noise models (diffusion_gemma); "
                               f"{type(getattr(denoiser, 'inner', denoiser)).__name__} is not one")
        has_sc = bool(getattr(denoiser, "self_conditioning", False))
        if self.self_conditioning and not has_sc:
            raise HarnessError("uniform_x0: self_conditioning=true, but the model has no self-conditioning input")
        sc_on = has_sc if self.self_conditioning is None else self.self_conditioning
        B, L = completion.shape
        P, n, V, W = prompt.shape[1], self.n_mc, denoiser.vocab_size, int(denoiser.canvas_length)
        n_canvas = math.ceil(L / W)
        valid = completion_mask.bool()  # [B, L]
        if draws is None:
            draws = draw(generator, valid, n, n_canvas * W, V)
        elif draws["corrupt"].shape != (B, n, n_canvas * W):
            raise HarnessError(f"uniform_x0: replayed draws have shape {tuple(draws['corrupt'].shape)}, expected "
                               f"{(B, n, n_canvas * W)} (n_mc x canvases of {W})")
        clean = F.pad(completion, (0, n_canvas * W - L), value=denoiser.eos_id)  # [B, n_canvas·W]
        x_t = uniform_corrupt(clean, draws["corrupt"], draws["noise"])  # [B, n, n_canvas·W]
        pmask = torch.ones_like(prompt, dtype=torch.bool) if prompt_mask is None else prompt_mask.bool()
        logp = torch.zeros(B, n, n_canvas * W, device=completion.device)
        cache = None
        for j in range(n_canvas):
            cols = slice(j * W, (j + 1) * W)
            for i in range(n):
                canvas = x_t[:, i, cols]  # [B, W]
                if cache is None:  # the prompt's cache, built by the first pass
                    am = torch.cat([pmask, torch.ones_like(canvas, dtype=torch.bool)], 1)
                    logits, cache = denoiser.logits_build_cache(torch.cat([prompt, canvas], 1), am, keep=slice(0, P))
                    logits = logits[:, P:]
                elif i == 0:  # the first pass of a later canvas appends the clean canvas before it
                    prev = clean[:, (j - 1) * W:j * W]
                    logits = denoiser.logits_cached(torch.cat([prev, canvas], 1), cache, context=W)[:, W:]
                else:
                    logits = denoiser.logits_cached(canvas, cache)
                if sc_on:  # the self-conditioning input is a stop-gradient estimate, as in its training recipe
                    logits = denoiser.logits_cached(canvas, cache, self_conditioning=logits.detach())
                lp = F.log_softmax(logits.float(), -1)  # [B, W, V]
                logp[:, i, cols] = lp.gather(-1, clean[:, cols, None]).squeeze(-1)
        logp = logp[:, :, :L] * valid[:, None, :]  # [B, n, L]
        per_token = logp.mean(1)  # [B, L]
        return Estimate(per_token=per_token, sequence=per_token.sum(1), draws=draws, n=n)
