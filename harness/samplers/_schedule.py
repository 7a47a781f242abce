"""Step schedules of the fixed-schedule block samplers: how many tokens a step commits.

A schedule is a pure function `(n0 [B], m [B], s, steps) -> k [B]`: `n0` the block's masked count
at its first step, `m` the count still masked before step `s` (0-based) of `steps`. The last step
commits whatever is left under both schedules. Which schedule a sampler uses is its `schedule`
field; "auto" takes the model family's default, which the denoiser declares as data
(`denoiser.decode_defaults["schedule"]`, e.g. Dream's adapter says "dream"), else "linear".

- linear (LLaDA `generate.py`, `get_num_transfer_tokens`): n0 spread evenly over the steps,
  earlier steps taking the remainder; fixed at the block's start.
- dream (Dream `generation_utils.py`, `DreamGenerationMixin._sample`, algs maskgit_plus / entropy /
  topk_margin): with t_i = linspace(1, eps, steps + 1), step i commits int(m · (1 − t_{i+1}/t_i))
  of the m tokens still masked, recomputed every step (so a step may commit 0); eps = 1e-3.
  The reference computes this in float32 from the batch-mean masked count; every row of an
  unpadded batch has the same count there, so the per-row count here is the same number. The
  arithmetic is done in float32 on the CPU (the reference runs it on the model's device: a GPU's
  linspace may round differently in the last bit, which can move a count by one).
"""
from __future__ import annotations

from typing import Callable

import torch

from harness.types import HarnessError

DREAM_EPS = 1e-3  # DreamGenerationConfig.eps default


def linear_schedule(n0: torch.Tensor, m: torch.Tensor, s: int, steps: int) -> torch.Tensor:
    """LLaDA: [B] block counts -> [B] count at step s (base + 1 for the first n0 % steps steps;
    the counts sum to n0, so the last step takes what is left)."""
    return n0 // steps + (s < n0 % steps).long()


def dream_schedule(n0: torch.Tensor, m: torch.Tensor, s: int, steps: int, eps: float = DREAM_EPS) -> torch.Tensor:
    """Dream: [B] still-masked counts -> [B] int(m · (1 − t_{s+1}/t_s)), all of m at the last step."""
    if s == steps - 1:
        return m
    t = torch.linspace(1, eps, steps + 1, dtype=torch.float32)  # [steps + 1], as the reference
    frac = 1 - t[s + 1] / t[s]  # float32 scalar
    k = (m.to("cpu", torch.float32) * frac).to(torch.long)  # truncation toward zero, as int()
    return k.to(m.device)


SCHEDULES: dict[str, Callable] = {"linear": linear_schedule, "dream": dream_schedule}


def resolve_schedule(name: str, denoiser) -> Callable:
    """The schedule function a sampler's `schedule` field names ("auto": the model family's)."""
    if name == "auto":
        name = (getattr(denoiser, "decode_defaults", None) or {}).get("schedule", "linear")
    if name not in SCHEDULES:
        raise HarnessError(f"schedule {name!r} is not known (known: auto, {', '.join(SCHEDULES)})")
    return SCHEDULES[name]
