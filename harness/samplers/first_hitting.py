"""`first_hitting`: one uniformly random masked position per step, its token drawn from the model
(BD3-LM's default sampler: kuleshov-group/bd3lms `diffusion.py`, `Diffusion._semi_ar_sampler` with
`sampling.first_hitting: true` -> `_ddpm_caching_update`; the first-hitting sampler of Zheng et al.
2025, arXiv 2409.02908, which BD3-LM cites as the faster equivalent of its DDPM update).

Each step runs one forward pass and, in every row, commits exactly one of the current block's masked
positions: the index is `torch.randint(0, n_masked)` among the masked positions in column order, and
its token the Gumbel-max sample of the model's distribution in float64,
`argmax p / (1e-10 − log(u + 1e-10))` with p = exp(log_softmax(logits)) (the reference's
`_sample_categorical`; the mask token has probability 0 under BD3-LM's subs parameterisation, and
is ruled out here for any model). The Gumbel draws cover the whole block [B, n, V] and come before
the index draw, as in the reference, so with a generator seeded as the reference's global RNG the
tokens are the reference's. A block of m masks takes m passes (the reference's NFE), whatever
`num_steps` >= block_size it is given; on a block model the blocks are the model's (the shared loop's
"Block models", harness/samplers/_base.py), elsewhere `block_length` sets them. `temperature` divides
the logits first (1: the reference), 0 takes the argmax; `top_k` / `top_p` filter as in the other
samplers (BD3-LM's `nucleus_p` < 1 keeps a slightly different set and is not reproduced).

Not reproduced: the reference's DDPM update (`first_hitting: false`), its 1024-token sliding context
window, and its stop conditions for sequences beyond 256 tokens (entropy, variable length).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.registry import SAMPLERS
from harness.samplers._base import DecodeLoop, Step, top_k_filter, top_p_filter
from harness.seeding import rand


@SAMPLERS.register("first_hitting")
@dataclass(frozen=True, kw_only=True)
class FirstHitting(DecodeLoop):
    """BD3-LM's first-hitting sampler: one uniformly random masked position per step, Gumbel-max token (float64)."""

    temperature: float = 1.0

    def block_steps(self, L: int, n_blocks: int) -> int:
        return L // n_blocks  # one token per pass: a block of b positions takes at most b passes

    def step_count(self, n0, m, s, steps, schedule):
        return torch.ones_like(m).clamp_max(m)

    def propose(self, logits: torch.Tensor, denoiser, generator, early: torch.Tensor | None, sampling: str):
        logits[..., denoiser.mask_id] = -torch.inf
        if self.logits_eos_inf:
            logits[..., denoiser.eos_id] = -torch.inf
        if early is not None:
            logits[..., denoiser.eos_id] = torch.where(early, -torch.inf, logits[..., denoiser.eos_id])
        scaled = logits / self.temperature if self.temperature not in (0.0, 1.0) else logits
        scaled = top_p_filter(top_k_filter(scaled, self.top_k), self.top_p)
        p = torch.log_softmax(scaled, -1).to(torch.float64).exp()  # [B', n, V] as the reference's p_x0
        if self.temperature == 0:
            return scaled, p, p.argmax(-1)
        u = rand(generator, p.shape[0], *p.shape[1:], dtype=torch.float64, device=p.device)
        return scaled, p, (p / (1e-10 - (u + 1e-10).log())).argmax(-1)

    def choose(self, s: Step) -> torch.Tensor:
        """One masked position per row, uniformly (torch.randint over the row's masked count)."""
        out = torch.zeros_like(s.eligible)
        for r in range(s.eligible.shape[0]):
            cols = s.eligible[r].nonzero().squeeze(1)
            if not cols.numel():
                continue
            g = s.generator[r] if isinstance(s.generator, (list, tuple)) else s.generator
            if g is None:
                raise ValueError("first_hitting draws its positions: it needs an explicit torch.Generator, got None")
            i = int(torch.randint(0, cols.numel(), (1,), generator=g, device=g.device))
            out[r, cols[i]] = True
        return out
