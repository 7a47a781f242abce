"""`step_merge`: d2-StepMerge's trajectory likelihood (d2, kuleshov-group/d2).

Source: kuleshov-group/d2 diffu-grpo/diffu_grpo_trainer.py, class d2StepMergeTrainer: `generate`
records the decoding state at N − 1 segment boundaries b_n = int(n · S / N) (n = 1..N−1; b_0 = 0; S steps)
and which tokens each segment commits; `_get_per_token_logps` scores segment n on the state at its
start with the prompt masked as d1 does (`forward_process`: each prompt token masked with
p_mask_prompt 0.15, one mask per row and iteration shared by every segment). With c_k the step at
which completion token k was committed (a sampler's `Generation.commit_step`, 0-based) and
seg(k) = #{n >= 1: b_n <= c_k} its segment:

  x^(n)          = completion with every position committed at a step >= b_n masked
  per_token[b,k] = log p(o_k | c̃, x^(seg(k)))        for every scored k (completion_mask, c_k >= 0)
  sequence       = Σ_k per_token[b, k]                 (d1's per-token terms, summed)

Positions after the first EOS are decoded like any other, so a segment's state masks those not yet
decoded (`mask_padding=True`, the reference's trajectory states; False keeps them clean, the
harness rule); they are never scored. The N segment states of every row go through the model,
empty segments included, as the reference scores all N trajectories: NFE = N per sequence. With
N equal to the number of steps this is the rollout's exact likelihood (`trace` at stride 1 with
prompt masking); fewer segments merge steps, scoring a token with the tokens of its own segment
still masked.

No exact moments: the draws are the rollout's own trajectory (the sampler's law) and the prompt
masks; along uniformly random orders with p_prompt 0 it is `trace` with stride steps / N, whose
moments exist (moments/other.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harness.estimators._common import completion_logprobs, prompt_masks
from harness.registry import ESTIMATORS
from harness.types import Estimate, HarnessError


def segment_of(commit_step: torch.Tensor, steps: torch.Tensor, n_segments: int) -> torch.Tensor:
    """[B, L] 0-based commit steps, [B, 1] steps per row -> [B, L] segment index
    #{n >= 1: ⌊n·steps/N⌋ <= step} (the reference's int(n·steps/N)); −1 where step < 0."""
    seg = torch.zeros_like(commit_step)
    for n in range(1, n_segments):
        seg += (commit_step >= torch.div(n * steps, n_segments, rounding_mode="floor")).long()
    return torch.where(commit_step >= 0, seg, torch.full_like(seg, -1))


@ESTIMATORS.register("step_merge", summary="d2-StepMerge: score each decoding segment on its start state")
@dataclass(frozen=True, kw_only=True)
class StepMerge:
    """d2-StepMerge: the rollout's steps cut into N segments, each scored on the state at its start (prompt p=0.15).

    Source: kuleshov-group/d2 diffu-grpo/diffu_grpo_trainer.py d2StepMergeTrainer."""

    metric: ClassVar[str] = "step_merge"

    # What the statistics read (harness/stats/estimators.py, `token_scale` / `elbo_target` / `masks`):
    token_scale: ClassVar[bool] = False
    masks: ClassVar[str] = "order"
    n_segments: int = 8  # N (bash_scripts/gsm8k_d2stepmerge.sh: --N 8)
    # the rollout's decoding steps (the reference: diffusion_steps 128); 0: each row's last commit step + 1,
    # which is the sampler's step count when every step commits a token (fixed-schedule samplers)
    steps: int = 0
    p_prompt: float = 0.15  # train.yaml p_mask_prompt
    mask_padding: bool = True
    max_tokens: int = 65536

    def __post_init__(self):
        if self.n_segments < 1 or self.steps < 0:
            raise ValueError(f"need n_segments >= 1 and steps >= 0, got {self.n_segments}, {self.steps}")
        if not 0 <= self.p_prompt < 1:
            raise ValueError(f"p_prompt must be in [0, 1), got {self.p_prompt}")

    @property
    def elbo_target(self) -> bool:
        """Along uniformly random orders (the estimator study's `commit_order: random`), with no prompt
        masking and every step its own segment (n_segments >= steps > 0), it is the any-order chain
        rule summed, whose mean over orders is the ELBO; merged steps, prompt masks or steps inferred
        per row (steps 0, whose segments depend on the item's length) are not declared unbiased."""
        return self.p_prompt == 0 and 0 < self.steps <= self.n_segments

    def nfe_for_batch(self, batch: int) -> int:
        return self.n_segments * batch

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator=None,
                 prompt_mask=None, draws=None) -> Estimate:
        B, L = completion.shape
        if not draws or "commit_step" not in draws:
            raise HarnessError("step_merge scores a rollout along its decoding trajectory and needs the sampler's "
                               "commit steps: pass draws={'commit_step': Generation.commit_step} (a LongTensor [B, L])")
        commit = torch.as_tensor(draws["commit_step"]).to(completion.device).long()
        if commit.shape != (B, L):
            raise HarnessError(f"step_merge: draws['commit_step'] must have shape {(B, L)}, got {tuple(commit.shape)}")
        if self.steps and int(commit.max()) >= self.steps:
            raise HarnessError(f"step_merge: a token was committed at step {int(commit.max())}, but steps="
                               f"{self.steps}; set estimator_params.steps to the sampler's number of steps (or 0)")
        steps = (torch.full((B, 1), self.steps, device=commit.device) if self.steps
                 else commit.max(1, keepdim=True).values.clamp_min(0) + 1)  # [B, 1]
        pmask = torch.ones_like(prompt, dtype=torch.bool) if prompt_mask is None else prompt_mask.bool()
        if "prompt_masks" in draws:
            pm = draws["prompt_masks"]
        else:
            pm = prompt_masks(pmask, 1, self.p_prompt, generator)[:, 0].to(prompt.device)  # [B, P]
        valid = completion_mask.bool()
        scored = valid & (commit >= 0)  # [B, L]
        ordered = (commit >= 0) & (valid | torch.as_tensor(self.mask_padding))  # positions that get masked
        seg = segment_of(commit, steps, self.n_segments)  # [B, L]
        n = torch.arange(self.n_segments, device=completion.device)[None, :, None]  # [1, N, 1]
        hidden = ordered[:, None, :] & (seg[:, None, :] >= n)  # [B, N, L] committed at or after segment n
        noised = torch.where(hidden, denoiser.mask_id, completion[:, None, :])  # [B, N, L]
        prompts = torch.where(pm, denoiser.mask_id, prompt)[:, None, :].expand(B, self.n_segments, -1)
        logp = completion_logprobs(denoiser, prompts, prompt_mask, completion, noised, self.max_tokens)  # [B, N, L]
        read = logp.gather(1, seg.clamp_min(0)[:, None, :]).squeeze(1).double()  # [B, L] each token's own segment
        per_token = torch.where(scored, read, torch.zeros_like(read))
        return Estimate(per_token=per_token, sequence=per_token.sum(1),
                        draws={"commit_step": commit, "prompt_masks": pm}, n=1)
