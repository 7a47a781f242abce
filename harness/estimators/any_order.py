"""`any_order`: d2-AnyOrder's exact likelihood of a completion along its decoding order (d2, kuleshov-group/d2).

Source: kuleshov-group/d2 diffu-grpo-ao/diffu_grpo_trainer_ao.py, class d2AnyOrderTrainer: `generate`
decodes a few tokens per step (two) and moves each decoded group to the front of the undecoded region,
so the completion ends up stored in decoding order with its position ids; `get_logits` scores it in
ONE pass over a 2L layout [prompt ; clean completion in decoding order ; L mask queries]:

- every query attends the prompt (the prompt attends only itself);
- clean token i attends the clean tokens decoded up to and including itself (tril in decoding order);
- mask query j, carrying token j's position id, attends the clean tokens of earlier groups
  (pair index ⌊slot/2⌋ strictly smaller) and itself;

and `_get_per_token_logps` reads log p(o_j) at mask query j. Per token

  per_token[b, k] = log p(o_k | c, the tokens of every group decoded before k's)   (mask query of k)
  sequence        = Σ_k per_token[b, k] over the completion mask

which, for a model trained with the any-order causal objective (SFT_AO/anyorder_sft_trainer.py: the
same layout over random orders), is that model's exact log-likelihood of the completion along the
order: a chain rule over the groups, each group's tokens predicted jointly-independently given the
earlier ones. For any other model it is a number the model was never trained to produce, so the
estimator `requires` the `any_order_causal` capability (harness/config.py): plan time refuses it on a
model that does not declare it.

Layout. Attention is permutation-equivariant given position ids, so the harness keeps the tokens in
their natural columns and derives the pattern from the order: [prompt ; completion ; L masks], mask
column j the query of completion position j. A test transcribes the reference's physically permuted
layout and checks the two give the same log-probabilities.

The order comes from the rollout's recorded commit steps (`Generation.commit_step`, passed as
draws["commit_step"]): groups are the tokens committed at the same step, groups in step order; inside
a group the reference's swaps order the tokens by their current column in the permuted layout,
which `decode_slots` replays (the within-group order changes the clean tokens' causal pattern, so it
changes later groups' scores). A position with commit step −1 (never masked) is given context: it
comes first and every query attends it; it is never scored. Left-padded prompts: pads are attended by
no one and position ids count real tokens (the harness convention; the reference attends its pads).

No exact moments: given the order the estimate is deterministic (variance 0, one pass); its only
randomness is the rollout's own decoding order, which is the sampler's law, not the estimator's.
NFE = 1 pass of P + 2L columns per sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from harness.batching import logits_capped
from harness.models.block_attention import positions
from harness.registry import ESTIMATORS
from harness.types import Estimate, HarnessError


class DecodeOrder:
    """The reference's permuted layout, kept as bookkeeping: for each row, the column every completion
    position occupies. `generate` moves each step's decoded tokens to the front of the undecoded region
    one at a time, the token in the lowest current column first (select_index_1 = min of the chosen
    columns), swapping with whatever sits there; `commit` replays that for one row."""

    def __init__(self, B: int, L: int):
        self.col_of = [list(range(L)) for _ in range(B)]  # position -> column
        self.pos_at = [list(range(L)) for _ in range(B)]  # column -> position
        self.front = [0] * B  # the first undecoded column

    def commit(self, b: int, positions) -> None:
        col_of, pos_at = self.col_of[b], self.pos_at[b]
        for i, col in enumerate(sorted(col_of[k] for k in positions)):
            a = self.front[b] + i  # swap columns a and col
            pa, pc = pos_at[a], pos_at[col]
            pos_at[a], pos_at[col] = pc, pa
            col_of[pc], col_of[pa] = a, col
        self.front[b] += len(positions)

    def columns(self, device=None) -> torch.Tensor:
        """[B, L] each position's column (its rank in decoding order, for the decoded ones)."""
        return torch.tensor(self.col_of, dtype=torch.long, device=device)


def decode_slots(commit_step: torch.Tensor) -> torch.Tensor:
    """[B, L] commit steps (−1: given, never masked) -> [B, L] each position's column in decoding
    order, as the reference's `generate` swaps leave it (`DecodeOrder`): groups in step order, given
    positions (−1) first."""
    B, L = commit_step.shape
    order = DecodeOrder(B, L)
    for b, row in enumerate(commit_step.tolist()):
        for s in sorted(set(row)):
            order.commit(b, [k for k in range(L) if row[k] == s])
    return order.columns(commit_step.device)


def any_order_pattern(commit_step: torch.Tensor, prompt_real: torch.Tensor) -> torch.Tensor:
    """[B, L] commit steps, [B, P] real prompt tokens -> [B, 1, P + 2L, P + 2L] bool (True: attend) of
    [prompt ; completion ; L mask queries] in natural columns (module docstring)."""
    B, L = commit_step.shape
    P = prompt_real.shape[1]
    dev = commit_step.device
    S = P + 2 * L
    rank = decode_slots(commit_step)  # [B, L]
    allowed = torch.zeros(B, 1, S, S, dtype=torch.bool, device=dev)
    allowed[:, 0, :, :P] = prompt_real.bool()[:, None, :]  # everyone sees the real prompt; the prompt only that
    allowed[:, 0, P:P + L, P:P + L] = rank[:, None, :] <= rank[:, :, None]  # clean: causal in decoding order
    allowed[:, 0, P + L:, P:P + L] = commit_step[:, None, :] < commit_step[:, :, None]  # mask: earlier groups
    idx = torch.arange(L, device=dev)
    allowed[:, 0, P + L + idx, P + L + idx] = True  # and itself
    return allowed


def any_order_logprobs(denoiser, prompt: torch.Tensor, prompt_mask: torch.Tensor | None, completion: torch.Tensor,
                       commit_step: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """[B, L] log p(o_k | prompt, earlier groups) read at each mask query of the 2L layout, in as few
    `logits_pattern` passes as `max_tokens` allows."""
    B, P = prompt.shape
    L = completion.shape[1]
    dev = completion.device
    real = torch.ones(B, P, dtype=torch.bool, device=dev) if prompt_mask is None else prompt_mask.bool().to(dev)
    canvas_real = torch.cat([real, torch.ones(B, L, dtype=torch.bool, device=dev)], 1)
    pos = positions(None if prompt_mask is None else canvas_real, B, P + L, dev)  # [B, P + L]
    pos2 = torch.cat([pos, pos[:, P:]], 1)  # the mask queries repeat the completion's positions
    x = torch.cat([prompt, completion, torch.full_like(completion, denoiser.mask_id)], 1)  # [B, P + 2L]
    allowed = any_order_pattern(commit_step, real)
    S = P + 2 * L
    rows = max(1, logits_capped(max_tokens, getattr(denoiser, "vocab_size", None)) // S)
    out = []
    for lo in range(0, B, rows):
        sl = slice(lo, min(lo + rows, B))
        logits = denoiser.logits_pattern(x[sl], allowed[sl], pos2[sl])[:, P + L:]  # [r, L, V] the mask queries
        logp = F.log_softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))
        out.append(logp.gather(-1, completion[sl, :, None]).squeeze(-1))
    return torch.cat(out)


@ESTIMATORS.register("any_order", summary="d2-AnyOrder: exact likelihood along the decoding order")
@dataclass(frozen=True, kw_only=True)
class AnyOrder:
    """d2-AnyOrder: each token scored given the prompt and the earlier-decoded groups (any-order causal models).

    Source: kuleshov-group/d2 diffu-grpo-ao/diffu_grpo_trainer_ao.py d2AnyOrderTrainer.get_logits."""

    metric: ClassVar[str] = "any_order"

    # What the statistics read (harness/stats/estimators.py, `token_scale` / `elbo_target` / `masks`): the
    # log-probabilities of the tokens themselves, deterministic given the rollout's order (no moments: see
    # the module docstring); not an ELBO (the model's any-order causal likelihood, a different quantity).
    token_scale: ClassVar[bool] = False
    elbo_target: ClassVar[bool] = False
    masks: ClassVar[str] = "order"
    # an explicit attention pattern, and a model trained for it (checked against the model at plan time)
    requires: ClassVar[tuple[str, ...]] = ("logits_pattern", "any_order_causal")
    max_tokens: int = 65536

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def nfe_for_batch(self, batch: int) -> int:
        return batch

    def __call__(self, denoiser, prompt, completion, completion_mask, *, generator=None,
                 prompt_mask=None, draws=None) -> Estimate:
        B, L = completion.shape
        if not draws or "commit_step" not in draws:
            raise HarnessError("any_order scores a rollout along its decoding order and needs the sampler's commit "
                               "steps: pass draws={'commit_step': Generation.commit_step} (a LongTensor [B, L])")
        commit = torch.as_tensor(draws["commit_step"]).to(completion.device).long()
        if commit.shape != (B, L):
            raise HarnessError(f"any_order: draws['commit_step'] must have shape {(B, L)}, got {tuple(commit.shape)}")
        if not callable(getattr(getattr(denoiser, "inner", denoiser), "logits_pattern", None)):
            raise HarnessError("any_order needs a model with logits_pattern (an explicit attention pattern and "
                               "position ids, harness/models/block_attention.py); this model has none")
        if getattr(denoiser, "shift_logits", False):
            raise HarnessError("any_order reads each mask query's own column; a shifted-logit model (Dream) "
                               "predicts column k at k - 1")
        read = any_order_logprobs(denoiser, prompt, prompt_mask, completion, commit, self.max_tokens).double()
        scored = completion_mask.bool() & (commit >= 0)
        per_token = torch.where(scored, read, torch.zeros_like(read))
        return Estimate(per_token=per_token, sequence=per_token.sum(1), draws={"commit_step": commit}, n=1)
