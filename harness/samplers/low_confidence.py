"""`low_confidence`: LLaDA's remasking sampler (LLaDA `generate.py`, METHODS.md §3).

At each step, every masked position in the current semi-autoregressive block gets a proposal
(argmax of the logits, with Gumbel noise at `temperature` > 0); the k proposals with the highest
model probability are committed. k follows LLaDA's schedule: the block's masked count spread as
evenly as possible over its steps, earlier steps taking the remainder. Classifier-free guidance
runs an extra pass with the prompt masked: logits = u + (s + 1)(c - u).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.registry import SAMPLERS
from harness.seeding import rand
from harness.text import upto_first_eos
from harness.types import Generation


def transfer_schedule(n_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """[B] masked counts -> [B, steps] tokens to commit per step (LLaDA get_num_transfer_tokens)."""
    base = n_masked // steps  # [B]
    rem = n_masked % steps  # [B]
    k = base[:, None].repeat(1, steps)  # [B, steps]
    k += torch.arange(steps, device=n_masked.device)[None, :] < rem[:, None]
    return k


def add_gumbel_noise(logits: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    """LLaDA's sampling trick: argmax(exp(l) / (-log u)^T) samples from softmax(l / T)-like law.

    Computed in float64 as in the reference (low precision degrades the sample quality)."""
    if temperature <= 0:
        return logits
    u = rand(generator, logits.shape[0], *logits.shape[1:], dtype=torch.float64, device=logits.device)
    return logits.double().exp() / (-torch.log(u)) ** temperature


def guided_logits(denoiser, x, attention_mask, prompt_len: int, cfg_scale: float) -> torch.Tensor:
    """Logits with classifier-free guidance (unconditional pass masks the prompt)."""
    if cfg_scale <= 0:
        return denoiser.logits(x, attention_mask)
    un = x.clone()
    un[:, :prompt_len] = denoiser.mask_id
    both = denoiser.logits(torch.cat([x, un]), None if attention_mask is None else torch.cat([attention_mask] * 2))
    cond, uncond = both.chunk(2)
    return uncond + (cfg_scale + 1) * (cond - uncond)


def finish(denoiser, x: torch.Tensor, prompt_len: int, commit_step: torch.Tensor, steps: int) -> Generation:
    """Cut the canvas at the first EOS (later tokens become EOS padding) and decode."""
    tokens = x[:, prompt_len:].clone()  # [B, L]
    gen_len = upto_first_eos(tokens, denoiser.eos_id)  # [B]
    pos = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
    tokens[pos >= gen_len[:, None]] = denoiser.eos_id
    text = [denoiser.tokenizer.decode(row.tolist()) for row in tokens]
    return Generation(tokens=tokens, text=text, commit_step=commit_step, gen_len=gen_len, steps=steps)


@dataclass(frozen=True, kw_only=True)
class BlockSampler:
    """Shared knobs and loop of the confidence-ordered block samplers (LLaDA's generate loop)."""

    gen_length: int | None = None  # None: the task's length
    steps: int | None = None  # None: one token per step
    block_length: int | None = None  # None: a single block
    temperature: float = 0.0
    cfg_scale: float = 0.0

    def __post_init__(self):
        for name in ("gen_length", "steps", "block_length"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.temperature < 0 or self.cfg_scale < 0:
            raise ValueError("temperature and cfg_scale must be >= 0")

    def confidence(self, probs: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """[B, L, V], [B, L] -> [B, L] score; higher is committed first."""
        return torch.gather(probs, -1, x0[..., None]).squeeze(-1)

    def expected_nfe(self, gen_length: int) -> int:
        """Forward passes per sequence, known before running (plan-time budget checks)."""
        L, block, per_block = self.plan(gen_length)
        return (L // block) * per_block * (2 if self.cfg_scale > 0 else 1)

    def plan(self, gen_length: int) -> tuple[int, int, int]:
        L = self.gen_length or gen_length
        block = min(self.block_length or L, L)
        if L % block:
            raise ValueError(f"gen_length {L} is not a multiple of block_length {block}")
        n_blocks = L // block
        steps = self.steps or L
        if steps % n_blocks:
            raise ValueError(f"steps {steps} is not a multiple of the number of blocks {n_blocks}")
        return L, block, steps // n_blocks

    @torch.no_grad()
    def __call__(self, denoiser, prompt: torch.Tensor, *, generator: torch.Generator | None,
                 prompt_mask: torch.Tensor | None = None, gen_length: int = 32) -> Generation:
        L, block, steps_per_block = self.plan(gen_length)
        B, P = prompt.shape
        x = torch.cat([prompt, torch.full((B, L), denoiser.mask_id, dtype=prompt.dtype, device=prompt.device)], 1)
        attn = None if prompt_mask is None else torch.cat([prompt_mask, torch.ones_like(x[:, P:], dtype=torch.bool)], 1)
        commit_step = torch.full((B, L), -1, dtype=torch.long, device=prompt.device)
        step = 0
        for b in range(L // block):
            lo, hi = P + b * block, P + (b + 1) * block
            k_sched = transfer_schedule((x[:, lo:hi] == denoiser.mask_id).sum(1), steps_per_block)
            for s in range(steps_per_block):
                masked = x == denoiser.mask_id  # [B, T]
                logits = guided_logits(denoiser, x, attn, P, self.cfg_scale)  # [B, T, V]
                logits[..., denoiser.mask_id] = -torch.inf  # never propose the mask token itself
                x0 = add_gumbel_noise(logits, self.temperature, generator).argmax(-1)  # [B, T]
                probs = F.softmax(logits.float(), -1)
                conf = self.confidence(probs, x0)  # [B, T]
                eligible = masked.clone()
                eligible[:, hi:] = False  # semi-AR: nothing past the current block
                conf = torch.where(eligible, conf, torch.full_like(conf, -torch.inf))
                commit = select_topk(conf, k_sched[:, s])  # [B, T]
                x = torch.where(commit, x0, x)
                commit_step[commit[:, P:]] = step
                step += 1
        return finish(denoiser, x, P, commit_step, step)


def select_topk(conf: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[B, T] scores, [B] counts -> [B, T] bool marking each row's k highest scores.

    Ties break toward the lower position (a stable sort), so results are reproducible."""
    order = torch.sort(conf, dim=1, descending=True, stable=True).indices  # [B, T]
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(conf.shape[1], device=conf.device).expand_as(order))
    return (ranks < k[:, None]) & torch.isfinite(conf)


@SAMPLERS.register("low_confidence")
@dataclass(frozen=True, kw_only=True)
class LowConfidence(BlockSampler):
    """LLaDA low-confidence remasking: commit the k most probable proposals per step, semi-AR blocks."""

