"""`remdm`: low-confidence unmasking with re-masking of committed tokens (ReMDM, arXiv 2503.00307).

The time grid runs t = 1 -> 0 over `steps` passes with the linear schedule α_t = 1 - t (LLaDA's).
At the step from t to s = t - 1/steps, every committed token is re-masked with probability σ_t,
and enough masked positions are committed (the most probable proposals, LLaDA's low-confidence
rule) that ceil(α_s·L) tokens are committed after the step (at most L - 1 while s > 0): the
committed fraction follows the schedule, as ReMDM's posterior keeps it in expectation
(α_t(1-σ) + unmasking = α_s), with deterministic counts as in LLaDA's loop. Re-masking is capped
so that the step can still reach its count (at most L - target tokens re-masked per step).
Schedules of σ_t (reference code `_ddpm_caching_update`):

    cap      σ = min(η, (1-α_s)/α_t)
    rescale  σ = η · min(1, (1-α_s)/α_t)
    conf     σ_i = min(1, (1-α_s)/α_t) · softmax_i(-ψ_i) over committed tokens, ψ_i = the
             probability token i had when it was (last) committed: unsure tokens go first
    loop     α rises to `alpha_on` by t_on, stays there with σ = η until t_off (re-mask and
             re-decide at a constant masked fraction), then rises to 1 with no re-masking

`t_on`/`t_off` bound the window t_off < t <= t_on in which re-masking happens (cap/rescale/conf
default: always; loop default 0.55/0.05 as in the ReMDM scripts). A re-masked token can be
re-decided only if there are steps left, so steps > gen_length (default 2 x gen_length).
`commit_step` records the LAST commit of each position. No semi-AR blocks and no KV cache:
re-masking may touch any committed position.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from harness.models.block_attention import block_size_of
from harness.registry import SAMPLERS
from harness.samplers._base import add_gumbel_noise, aligned, finish, masked_canvas, select_topk
from harness.seeding import rand
from harness.types import HarnessError


@SAMPLERS.register("remdm")
@dataclass(frozen=True, kw_only=True)
class ReMDM:
    """ReMDM: low-confidence unmasking plus re-masking of committed tokens (cap/rescale/conf/loop schedules)."""

    gen_length: int | None = None  # None: the task's length
    steps: int | None = None  # None: 2 x gen_length
    temperature: float = 0.0
    min_length: int = 0
    schedule: Literal["cap", "rescale", "conf", "loop"] = "cap"
    eta: float = 0.04
    t_on: float | None = None  # None: 1.0 (loop: 0.55)
    t_off: float | None = None  # None: 0.0 (loop: 0.05)
    alpha_on: float = 0.9  # loop only

    budget_knobs: ClassVar[tuple[str, ...]] = ("steps",)  # read by the report (harness/report/samplers.py)

    def speed_reference(self) -> bool:
        return False

    def __post_init__(self):
        for name in ("gen_length", "steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if self.temperature < 0 or self.min_length < 0:
            raise ValueError("temperature and min_length must be >= 0")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if not 0 < self.alpha_on < 1:
            raise ValueError(f"alpha_on must be in (0, 1), got {self.alpha_on}")
        t_on, t_off = self.window
        if not 0 <= t_off < t_on <= 1:
            raise ValueError(f"need 0 <= t_off < t_on <= 1, got t_off={t_off}, t_on={t_on}")

    @property
    def window(self) -> tuple[float, float]:
        loop = self.schedule == "loop"
        t_on = self.t_on if self.t_on is not None else (0.55 if loop else 1.0)
        t_off = self.t_off if self.t_off is not None else (0.05 if loop else 0.0)
        return t_on, t_off

    def n_steps(self, gen_length: int) -> tuple[int, int]:
        L = self.gen_length or gen_length
        return L, self.steps or 2 * L

    def max_nfe_per_sequence(self, gen_length: int) -> int:
        return self.n_steps(gen_length)[1]

    # -- the schedule (pure functions of t) ------------------------------------------------------
    def alpha(self, t: float) -> float:
        """Fraction of committed tokens at time t (ReMDM-loop's piecewise schedule for `loop`)."""
        if self.schedule != "loop":
            return 1.0 - t
        t_on, t_off = self.window
        if t > t_on:
            return (1 - t) * self.alpha_on / (1 - t_on)
        if t > t_off:
            return self.alpha_on
        return 1 - t * (1 - self.alpha_on) / t_off

    def target(self, s: float, L: int) -> int:
        """Committed tokens after the step that reaches time s: ceil(α_s·L), but while s > 0 at
        least one position stays masked (so a re-masked token has a slot to be re-decided in)."""
        if s <= 0:
            return L
        return max(0, min(L - 1, math.ceil(self.alpha(s) * L - 1e-9)))

    def sigma(self, t: float, s: float) -> float:
        """Re-mask probability of a committed token at the step t -> s (scale of conf's weights)."""
        t_on, t_off = self.window
        if not t_off < t <= t_on:
            return 0.0
        if self.schedule == "loop":
            return self.eta
        a_t, a_s = self.alpha(t), self.alpha(s)
        ratio = (1 - a_s) / a_t if a_t > 0 else math.inf
        if self.schedule == "cap":
            return min(self.eta, ratio)
        if self.schedule == "rescale":
            return self.eta * min(1.0, ratio)
        return min(1.0, ratio)  # conf: sigma_max, spread over tokens by confidence

    @torch.no_grad()
    def __call__(self, denoiser, prompt: torch.Tensor, *, generator, prompt_mask: torch.Tensor | None = None,
                 gen_length: int = 32):
        if block_size_of(denoiser) is not None:
            raise HarnessError("remdm remasks over the whole canvas at once; a block-diffusion model decodes block "
                               "by block (use low_confidence, threshold, entropy_bound: harness/samplers/_base.py, "
                               "\"Block models\")")
        L, N = self.n_steps(gen_length)
        B, P = prompt.shape
        mask_id = denoiser.mask_id
        x, attn = masked_canvas(prompt, prompt_mask, L, mask_id)
        commit_step = torch.full((B, L), -1, dtype=torch.long, device=prompt.device)
        psi = torch.zeros(B, L, device=prompt.device)  # probability at the last commit
        commit_conf = torch.full((B, L), float("nan"), device=prompt.device)  # the same, NaN while masked
        early = torch.arange(L, device=prompt.device) < self.min_length
        for i in range(N):
            t, s = 1 - i / N, 1 - (i + 1) / N
            target = self.target(s, L)
            logits = aligned(denoiser.logits(x, attn), P, P + L, denoiser.shift_logits).clone()  # [B, L, V]
            logits[..., mask_id] = -torch.inf
            logits[:, early, denoiser.eos_id] = -torch.inf
            x0 = add_gumbel_noise(logits, self.temperature, generator).argmax(-1)  # [B, L]
            conf = torch.gather(F.softmax(logits.float(), -1), -1, x0[..., None]).squeeze(-1)  # [B, L]
            canvas = x[:, P:]
            masked = canvas == mask_id
            remask = self._remask(~masked, psi, self.sigma(t, s), L - target, generator)  # [B, L]
            k = target - (~masked).sum(1) + remask.sum(1)  # [B] keeps ceil(α_s L) committed
            commit = select_topk(torch.where(masked, conf, torch.full_like(conf, -torch.inf)), k)
            canvas = torch.where(commit, x0, canvas)
            canvas = torch.where(remask, torch.full_like(canvas, mask_id), canvas)
            x[:, P:] = canvas
            commit_step = torch.where(commit, torch.full_like(commit_step, i), commit_step)
            commit_step = torch.where(remask, torch.full_like(commit_step, -1), commit_step)
            psi = torch.where(commit, conf, psi)
            commit_conf = torch.where(commit, conf.float(), torch.where(remask, float("nan"), commit_conf))
        return finish(denoiser, x, P, commit_step, N, commit_conf=commit_conf)

    def _remask(self, committed, psi, sigma: float, r_max: int, generator) -> torch.Tensor:
        """[B, L] bool: committed tokens to re-mask, each with its probability σ_i, at most r_max
        per row (the canvas must still reach its target count); the draws go through seeding.rand."""
        B, L = committed.shape
        u = rand(generator, B, L, device=committed.device)  # drawn every step: streams stay aligned
        if self.schedule == "conf":
            w = torch.where(committed, -psi, torch.full_like(psi, -torch.inf))
            p = torch.nan_to_num(torch.softmax(w, 1), nan=0.0) * sigma  # [B, L]
        else:
            p = torch.where(committed, torch.full_like(psi, sigma), torch.zeros_like(psi))
        remask = committed & (u < p)
        if r_max <= 0:
            return torch.zeros_like(remask)
        priority = torch.where(remask, -u / p.clamp_min(1e-12), torch.full_like(u, -torch.inf))
        return remask & select_topk(priority, torch.full((B,), r_max, device=committed.device))
