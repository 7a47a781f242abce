"""`any_order`: d2-AnyOrder's any-order causal decoding (d2, kuleshov-group/d2).

Source: kuleshov-group/d2 diffu-grpo-ao/diffu_grpo_trainer_ao.py, class d2AnyOrderTrainer, `generate`.
Semi-autoregressive blocks of `block_length` (train.yaml block_length 32), each decoded in
block_length / k steps of exactly k tokens (the reference's k = 2). Every step is one forward pass
with an explicit attention pattern and position ids:

- the prompt attends the prompt;
- a decoded token attends the prompt and the tokens decoded up to and including itself, in decoding
  order (causal: it never sees a token decoded after it, so its keys and values never change);
- a masked position of the current block attends the prompt, every decoded token and itself;

later blocks are not in the pass (the reference appends each block's masks when it starts). The
step proposes a token at each masked position of the block (argmax of the logits, with LLaDA's
Gumbel form exp(l) / (−log u)^temperature at temperature > 0) and commits the k with the highest
confidence: the proposal's probability (`remasking: low_confidence`) or a uniform draw (`random`).

The reference moves each decoded pair to the front of the undecoded region, so the canvas ends up
in decoding order; the harness keeps tokens in their natural columns and derives the pattern from
the order (the same pass: attention is permutation-equivariant given position ids). The order inside
a step is the reference's (the token in the lower current column of its permuted layout first),
replayed by `DecodeOrder` (harness/estimators/any_order.py), and the step each token was committed
at is recorded (`Generation.commit_step`), from which the `any_order` estimator rebuilds the order.
tests/samplers/test_any_order.py checks token parity with a line-cited transcription of `generate`.

The model must be trained for this layout (d2's any-order causal fine-tuning, SFT_AO); on another
model the decoder runs but its passes are out of distribution. Needs `logits_pattern`.

Equal confidences (a trained model gives many, ~1 on the padding) resolve as the reference's
torch.topk over its permuted canvas does (`tie_break: topk`, the default; this depends on the row's
columns, so a left-padded row can resolve them differently than alone) or toward the lower natural
position (`position`, as the harness's other samplers). Documented differences: the mask token is never
proposed (the reference can; a trained model gives it ~0) but keeps its mass in the confidence softmax,
as in the reference, which is computed in float32 at least (the reference: the model's dtype under
autocast); draws come from the row's generator; left-padded prompts: pads are attended by no one and
position ids count real tokens (the reference attends its pads). The reference's `steps` argument
is unused (its step count is always gen_length / 2); here it is gen_length / k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.estimators.any_order import DecodeOrder
from harness.models.block_attention import positions
from harness.registry import SAMPLERS
from harness.samplers._base import add_gumbel_noise, check_sampling, finish, masked_canvas, select_topk
from harness.seeding import rand
from harness.types import HarnessError


def decode_pattern(real: torch.Tensor, P: int, columns: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """[B, P + n] real canvas columns, prompt length P, [B, n] decoding-order columns and decoded flags of
    the completion columns in the pass -> [B, 1, P + n, P + n] bool (True: attend) (module docstring)."""
    B, T = real.shape
    n = T - P
    allowed = torch.zeros(B, 1, T, T, dtype=torch.bool, device=real.device)
    allowed[:, 0, :, :P] = real[:, None, :P]  # everyone sees the real prompt; the prompt only that
    seen = decoded[:, None, :] & (~decoded[:, :, None] | (columns[:, None, :] <= columns[:, :, None]))
    allowed[:, 0, P:, P:] = seen  # masks: every decoded token; decoded: those up to itself in decoding order
    idx = torch.arange(n, device=real.device)
    allowed[:, 0, P + idx, P + idx] = True  # and itself
    return allowed


@SAMPLERS.register("any_order")
@dataclass(frozen=True, kw_only=True)
class AnyOrder:
    """d2-AnyOrder: k tokens per step by confidence, each decoded token attending only what was decoded before it."""

    gen_length: int | None = None  # None: the task's length
    block_length: int = 32  # train.yaml block_length (capped at gen_length); a multiple of tokens_per_step
    tokens_per_step: int = 2  # `generate`: num_tokens = 2
    temperature: float = 0.0  # Gumbel noise on the proposals (0: argmax)
    remasking: str = "low_confidence"  # train.yaml remasking; or "random"
    # equal confidences: "topk", torch.topk over the reference's permuted canvas (its choice, on the same
    # device); "position", the lower natural position first (the harness's other samplers)
    tie_break: str = "topk"

    budget_knobs: ClassVar[tuple[str, ...]] = ("tokens_per_step",)  # passes = gen_length / tokens_per_step
    requires: ClassVar[tuple[str, ...]] = ("logits_pattern",)  # checked against the model at plan time

    def speed_reference(self) -> bool:
        return False

    def __post_init__(self):
        if self.gen_length is not None and self.gen_length < 1:
            raise ValueError(f"gen_length must be >= 1, got {self.gen_length}")
        if self.block_length < 1 or self.tokens_per_step < 1:
            raise ValueError(f"block_length and tokens_per_step must be >= 1, got {self.block_length}, "
                             f"{self.tokens_per_step}")
        check_sampling(self.temperature)
        if self.tie_break not in ("topk", "position"):
            raise ValueError(f"tie_break must be 'topk' or 'position', got {self.tie_break!r}")
        if self.remasking not in ("low_confidence", "random"):
            raise ValueError(f"remasking must be 'low_confidence' or 'random', got {self.remasking!r}")

    def plan(self, gen_length: int) -> tuple[int, int, int]:
        """(L, block, steps per block)."""
        L = self.gen_length or gen_length
        block = min(self.block_length, L)
        if L % block:
            raise ValueError(f"gen_length {L} is not a multiple of block_length {block}")
        if block % self.tokens_per_step:
            raise ValueError(f"block_length {block} is not a multiple of tokens_per_step {self.tokens_per_step}")
        return L, block, block // self.tokens_per_step

    def max_nfe_per_sequence(self, gen_length: int) -> int:
        L, block, per_block = self.plan(gen_length)
        return L // block * per_block

    @torch.no_grad()
    def __call__(self, denoiser, prompt: torch.Tensor, *, generator, prompt_mask: torch.Tensor | None = None,
                 gen_length: int = 32):
        if not callable(getattr(getattr(denoiser, "inner", denoiser), "logits_pattern", None)):
            raise HarnessError("any_order needs a model with logits_pattern (an explicit attention pattern and "
                               "position ids, harness/models/block_attention.py); this model has none")
        if getattr(denoiser, "shift_logits", False):
            raise HarnessError("any_order reads each masked column's own prediction; a shifted-logit model (Dream) "
                               "predicts column k at k - 1")
        L, n, per_block = self.plan(gen_length)
        B, P = prompt.shape
        dev = prompt.device
        mask_id, k = denoiser.mask_id, self.tokens_per_step
        x, _ = masked_canvas(prompt, None, L, mask_id)
        real = torch.ones(B, P + L, dtype=torch.bool, device=dev)
        if prompt_mask is not None:
            real[:, :P] = prompt_mask.bool().to(dev)
        pos = positions(None if prompt_mask is None else real, B, P + L, dev)  # [B, T] counting real tokens
        commit_step = torch.full((B, L), -1, dtype=torch.long, device=dev)
        commit_conf = torch.full((B, L), float("nan"), device=dev)
        order = DecodeOrder(B, L)
        step = 0
        for b in range(L // n):
            lo, hi = P + b * n, P + (b + 1) * n
            for _ in range(per_block):
                decoded = commit_step[:, :hi - P] >= 0
                allowed = decode_pattern(real[:, :hi], P, order.columns(dev)[:, :hi - P], decoded)
                logits = denoiser.logits_pattern(x[:, :hi], allowed, pos[:, :hi])[:, lo:hi].clone()  # [B, n, V]
                # the confidence softmax keeps the mask token's mass, as the reference's does (bit for bit:
                # equal confidences then resolve as there); the mask token itself is never proposed
                probs = F.softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))
                logits[..., mask_id] = -torch.inf
                x0 = add_gumbel_noise(logits, self.temperature, generator).argmax(-1)  # [B, n]
                p_x0 = probs.gather(-1, x0[..., None]).squeeze(-1)
                conf = p_x0 if self.remasking == "low_confidence" else rand(
                    generator, B, n, dtype=torch.float64, device=dev)
                masked = x[:, lo:hi] == mask_id
                conf = torch.where(masked, conf, torch.full_like(conf, -torch.inf))
                if self.tie_break == "topk":
                    chosen = self._reference_topk(conf, order, lo - P, hi)
                else:
                    chosen = select_topk(conf, torch.full((B,), k, device=dev))  # [B, n]
                x[:, lo:hi] = torch.where(chosen, x0, x[:, lo:hi])
                commit_step[:, lo - P:hi - P][chosen] = step
                commit_conf[:, lo - P:hi - P][chosen] = p_x0[chosen].float()
                for r, cols in enumerate(chosen.tolist()):
                    order.commit(r, [lo - P + j for j, c in enumerate(cols) if c])
                step += 1
        if (x[:, P:] == mask_id).any():  # cannot happen (k per step, block a multiple of k)
            raise RuntimeError("any_order: masks left after the last step")
        return finish(denoiser, x, P, commit_step, step, commit_conf=commit_conf)

    def _reference_topk(self, conf: torch.Tensor, order: DecodeOrder, lo: int, hi: int) -> torch.Tensor:
        """[B, n] confidences of the block's natural columns [lo, lo + n) of the completion -> [B, n] the k
        positions `torch.topk` picks over the reference's whole permuted canvas of `hi` columns (−inf off
        the block's masks), so equal confidences resolve as they do in the reference."""
        B, n = conf.shape
        P = hi - lo - n
        chosen = torch.zeros(B, n, dtype=torch.bool, device=conf.device)
        for r in range(B):
            full = torch.full((hi,), -torch.inf, dtype=conf.dtype, device=conf.device)
            cols = torch.tensor([P + order.col_of[r][lo + j] for j in range(n)], device=conf.device)
            full[cols] = conf[r]
            picked = torch.topk(full, self.tokens_per_step).indices
            chosen[r] = torch.isin(cols, picked)
        return chosen
