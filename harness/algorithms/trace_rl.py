"""`trace_rl`: TraceRL (arXiv 2509.06949; docs/methods.md §2).

Likelihood: the `trace` estimator, which scores each rollout along the commit steps its sampler
recorded (the loop passes `Generation.commit_step` as the draws), steps merged every 8 distinct
steps (`stride=8, merge="ranks"`: the reference's `collapse_k_unique(step_map, shrink)`), the
post-EOS padding hidden by its commit step like the reference (`mask_padding=True`).

Objective (Gen-Verse/dLLM-RL train/rl_llada.py, `forward_process` inside `main`; method TraceRL):
every (sequence, step-group) is one training row r with token set K_r; with ρ_k = exp(ℓ_θ,k − ℓ_old,k),
    loss = (1/R) Σ_r [ −(1/|K_r|) Σ_{k∈K_r} min(ρ_k A, clip(ρ_k, 1±ε) A)  +  β Σ_{k∈K_r} k3_k ]
(`norm="trace_rows"`, default; R rows per micro-batch, micro-batches weighted B_mb/N), k3 to π_old,
ε = 0.2, β = 0.01; advantages z-scored with the population std (`zscore_pop`); groups whose mean
reward lies outside [acc_low, acc_high] are dropped before any likelihood is computed (they cost no
likelihood NFE). Any GRPO `norm` ("token" ...) is the alternative. With μ = 1 and the whole buffer in
one optimizer step, π_old = π_θ: the reference takes several minibatch steps per rollout, which the
shared loop does not (set μ > 1 for a nonzero KL). The optional value model is not implemented.

Block models (a denoiser with `block_size`: SDAR/TraDo, BD3-LM, the tiny block model) take TraceRL's
block-model path, as Gen-Verse/dLLM-RL train/rl_trado.py computes it (method "TraceRL"; byte-identical
to rl_sdar.py), in place of the `trace` estimator:
  * steps: the rollout's commit steps (`step_map`); positions after the completion (outside
    completion_mask) get the row's largest step + 1 and the pad token, as the script pads a
    response and its step map; each response block (blocks of `block_size` from the response
    start) has its steps merged by `collapse_k_unique(·, block_shrink)` (rl_trado.yaml: shrink 1);
  * rounds (`one_round_vectorized`): round r takes, in every block, its r-th smallest distinct step:
    p_mask = those positions, and the noisy copy of the response masks every position of the block
    whose step is >= it (a block with no r-th step stays clean). A round is one training row;
    pad tokens in p_mask beyond the first `post_num` of the row are dropped from it (post_num 0:
    every pad, and the EOS itself when EOS = pad, as SDAR's), and rows left empty are dropped;
  * forward (`make_basic_block_attention`, `process_pad`, `collect_training_data`): one pass over
    [prompt (left-padded) ; clean response ; noisy response] with an explicit pattern: prompt rows
    block-causal with blocks aligned to the prompt's END, clean response rows block-causal from the
    response start, noisy block b sees the prompt, the clean blocks < b and itself; prompt pad keys
    hidden; position ids count non-pad prompt tokens (pads: 1) and the noisy copy repeats the
    response's. log p of each p_mask token is read from the noisy copy at its clean label
    (the denoiser's `logits_pattern`, harness/models/block_attention.py);
  * loss (`forward_process`): with d = where(p_mask, ℓ_θ − ℓ_old, 0),
        ρ = exp(clamp(d, −10, 10)),  surrogate = Σ_{p_mask} min(ρA, clip(ρ, 1±ε)A) / L1,
        loss = −(1/R) Σ_rows surrogate + β (1/R) Σ_rows Σ_{p_mask} (exp(clamp(−d, −10, 10)) − 1 + d) / L1,
    L1 the completion canvas length (not the number of masked tokens), R the rows of the
    micro-batch (micro-batches weighted B_mb/N, as the full-attention rows above). A is the
    rollout's advantage per sequence (`advantage`, zscore_pop: the reward normalisation of
    dLLM-RL's rollouts). `block_shrink` and `post_num` are rl_trado.yaml's shrink (1) and post_num (0);
    ε = eps_low = eps_high, β = beta. Prompt padding is recognised by the pad id, as the script does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from harness.algorithms.grpo import GRPO, clipped_surrogate, kl_estimate
from harness.batching import logits_capped
from harness.models.block_attention import block_size_of
from harness.registry import ALGORITHMS
from harness.types import Estimate, HarnessError


def trace_rows_loss(logp, old, ref, adv, gid, *, eps_low: float, eps_high: float, beta: float, kl: str,
                    n_seq: int):
    """Per-(sequence, step-group) rows. logp/old/ref [B, L] (ref None: no KL), adv [B], gid [B, L]
    group id of each counted token (−1: not counted) -> (loss, metrics); see the module doc."""
    B, L = logp.shape
    counted = gid >= 0  # [B, L]
    G = int(gid.max()) + 1 if bool(counted.any()) else 1
    row = torch.arange(B, device=logp.device)[:, None].expand(B, L)
    key = torch.where(counted, row * G + gid, torch.zeros_like(gid))  # [B, L]
    ratio = torch.exp(logp - old)  # [B, L]
    sur, clipped = clipped_surrogate(ratio, adv[:, None], eps_low, eps_high)  # [B, L]
    kl_tok = kl_estimate(logp, ref, kl) if ref is not None else torch.zeros_like(logp)  # [B, L]
    zero = lambda: torch.zeros(B * G, dtype=logp.dtype, device=logp.device)  # noqa: E731
    c = counted.to(logp.dtype)
    size = zero().index_add(0, key.reshape(-1), c.reshape(-1))  # [BG] tokens per row
    pol = zero().index_add(0, key.reshape(-1), (-sur * c).reshape(-1))  # [BG]
    kls = zero().index_add(0, key.reshape(-1), (kl_tok * c).reshape(-1))  # [BG]
    live = size > 0
    per_row = pol[live] / size[live] + beta * kls[live]  # [R]
    loss = per_row.sum() / max(int(live.sum()), 1) * (B / n_seq)
    m = counted.sum().clamp_min(1)
    metrics = {"clip_frac": float((clipped & counted).sum() / m),
               "kl": float((kl_tok.detach() * counted).sum() / m) if ref is not None else None,
               "ratio": float((ratio.detach() * counted).sum() / m), "trace_rows": float(live.sum())}
    return loss, metrics


# -- TraceRL on block models (rl_trado.py) -------------------------------------------------------------
def collapse_k_unique(values: list[int], k: int) -> list[int]:
    """rl_trado.py `collapse_k_unique`: every k consecutive distinct values map to the last of them."""
    if k <= 0:
        raise ValueError("shrink must be > 0")
    uniq = sorted(set(values))
    rep = {v: uniq[min((i // k + 1) * k - 1, len(uniq) - 1)] for i, v in enumerate(uniq)}
    return [rep[v] for v in values]


def block_rounds(commit_step: torch.Tensor, completion_mask: torch.Tensor, block_size: int,
                 shrink: int) -> torch.Tensor:
    """[B, L] commit steps and completion mask -> [B, L] round of every response position (its step's
    rank among its block's distinct merged steps; −1 for a given token, commit step −1).

    Positions outside the completion get the row's largest step + 1 (the script's step-map padding);
    a given token (−1) takes part in no round: it stays clean and is never scored."""
    B, L = commit_step.shape
    out = torch.full((B, L), -1, dtype=torch.long)
    steps = commit_step.cpu().long()
    cm = completion_mask.cpu().bool()
    for b in range(B):
        real = steps[b][cm[b]]
        top = int(real.max()) + 1 if real.numel() else 0
        row = torch.where(cm[b], steps[b], torch.full_like(steps[b], top)).tolist()
        for lo in range(0, L, block_size):
            idx = [k for k in range(lo, min(lo + block_size, L)) if row[k] >= 0]
            if not idx:
                continue
            merged = collapse_k_unique([row[k] for k in idx], shrink)
            rank = {v: r for r, v in enumerate(sorted(set(merged)))}
            for k, v in zip(idx, merged):
                out[b, k] = rank[v]
    return out


def training_pattern(ids: torch.Tensor, L0: int, L1: int, block_size: int, pad_id: int):
    """rl_trado.py's attention and positions for rows [prompt L0 ; clean L1 ; noisy L1] -> (allowed
    [R, 1, N, N] bool, position ids [R, N]). See the module docstring."""
    R, N = ids.shape
    dev = ids.device
    col = torch.arange(N, device=dev)
    row_end = torch.zeros(N, dtype=torch.long, device=dev)  # keys [0, row_end) of the prefix part
    p = torch.arange(L0, device=dev)
    row_end[:L0] = L0 - ((L0 - 1 - p) // block_size) * block_size  # prompt blocks aligned to its end
    i = torch.arange(L1, device=dev)
    row_end[L0:L0 + L1] = L0 + torch.clamp((i // block_size + 1) * block_size, max=L1)  # clean: blocks <= own
    row_end[L0 + L1:] = L0 + torch.clamp((i // block_size) * block_size, max=L1)  # noisy: clean blocks < own
    allowed = col[None, :] < row_end[:, None]  # [N, N]
    own = torch.zeros(N, N, dtype=torch.bool, device=dev)
    start = L0 + L1 + (i // block_size) * block_size  # the noisy block itself (clipped at N)
    own[L0 + L1:] = (col[None, :] >= start[:, None]) & (col[None, :] < start[:, None] + block_size)
    allowed = (allowed | own)[None].expand(R, N, N).clone()
    pad_key = (col[None, :] < L0) & (ids == pad_id)  # [R, N] prompt pad keys hidden (process_pad)
    allowed &= ~pad_key[:, None, :]
    empty = ~allowed.any(-1) & (col[None, :] < L0)  # prompt rows that see nothing: themselves
    allowed |= empty[:, :, None] & torch.eye(N, dtype=torch.bool, device=dev)[None]
    L = L0 + L1
    valid = (col[None, :L] >= L0) | (ids[:, :L] != pad_id)  # [R, L]
    tok = (valid.long().cumsum(-1) - 1).masked_fill(~valid, 1)
    return allowed[:, None], torch.cat([tok, tok[:, L0:]], 1)


def block_trace_terms(denoiser, prompt, completion, completion_mask, commit_step, *, shrink: int, post_num: int,
                      max_tokens: int, draws: dict | None = None) -> Estimate:
    """TraceRL's block-model log-probs: per_token [B, L] = log p of each p_mask token in its round's row
    (0 elsewhere). draws: `commit_step`, `rank` [B, L] (each position's round before the pad rule: it
    builds the noisy copies) and `round` [B, L] (the row whose p_mask holds the token; −1: none)."""
    B, L1 = completion.shape
    L0 = prompt.shape[1]
    bs, pad, mask_id = int(block_size_of(denoiser)), int(denoiser.pad_id), int(denoiser.mask_id)
    dev = completion.device
    cm = completion_mask.bool()
    resp = torch.where(cm, completion, torch.full_like(completion, pad))  # the script's right-padded response
    if draws is None or "round" not in draws:
        rank = block_rounds(commit_step, cm, bs, shrink)  # [B, L1]
        rounds = rank.clone()
        is_pad = resp.cpu() == pad  # p_mask of each row keeps its first post_num pads only
        for r in range(int(rank.max()) + 1 if rank.numel() else 0):
            pad_in = is_pad & (rank == r)
            rounds[pad_in & (pad_in.long().cumsum(1) > post_num)] = -1
    else:
        rank, rounds = draws["rank"].cpu(), draws["round"].cpu()
    keys = sorted({(int(b), int(rounds[b, k])) for b, k in torch.nonzero(rounds >= 0).tolist()})
    per_token = torch.zeros(B, L1, dtype=torch.float32, device=dev)
    if keys:
        bi = torch.tensor([b for b, _ in keys], device=dev)
        ri = torch.tensor([r for _, r in keys], device=dev)[:, None]  # [R, 1]
        noisy = torch.where(rank.to(dev)[bi] >= ri, mask_id, resp[bi])  # [R, L1] not yet decoded at round r
        ids = torch.cat([prompt[bi], resp[bi], noisy], 1)  # [R, N]
        allowed, pos = training_pattern(ids, L0, L1, bs, pad)
        N = ids.shape[1]
        chunk = max(1, logits_capped(max_tokens, getattr(denoiser, "vocab_size", None)) // N)
        vals = []
        for lo in range(0, len(keys), chunk):
            sl = slice(lo, lo + chunk)
            logits = denoiser.logits_pattern(ids[sl], allowed[sl], pos[sl])[:, L0 + L1:]  # the noisy copy
            logp = torch.log_softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))
            vals.append(logp.gather(-1, resp[bi[sl]][..., None]).squeeze(-1))  # [r, L1] at the clean labels
        lp = torch.cat(vals)  # [R, L1]
        own = rounds.to(dev)[bi] == ri  # [R, L1] each row's p_mask
        where = own.nonzero()  # [n, 2] (row, position)
        per_token = per_token.to(lp.dtype).index_put((bi[where[:, 0]], where[:, 1]), lp[own])
    return Estimate(per_token=per_token, sequence=per_token.sum(1),
                    draws={"commit_step": commit_step, "rank": rank, "round": rounds}, n=1)


def block_rows_loss(logp, old, kl_base, adv, rounds, *, eps_low: float, eps_high: float, beta: float, n_seq: int):
    """rl_trado.py `forward_process` over the rows (sequence, round) of this micro-batch: logp/old [B, L]
    (the ratio's), kl_base [B, L] (the KL's: π_old as the script, or π_ref), adv [B], rounds [B, L] (−1:
    in no p_mask) -> (loss, metrics); see the module docstring."""
    B, length = logp.shape  # L1: the response canvas
    p_mask = rounds >= 0  # [B, L]
    R = len({(int(b), int(rounds[b, k])) for b, k in p_mask.nonzero().tolist()})
    d = torch.where(p_mask, logp - old, torch.zeros_like(logp))
    ratio = torch.exp(d.clamp(-10.0, 10.0))
    a = adv[:, None].to(logp.dtype)
    sur = torch.minimum(ratio * a, ratio.clamp(1 - eps_low, 1 + eps_high) * a) * p_mask  # [B, L]
    dk = torch.where(p_mask, logp - kl_base, torch.zeros_like(logp))
    k3 = (torch.exp((-dk).clamp(-10.0, 10.0)) - 1.0 + dk) * p_mask
    loss = (-sur.sum() / length + beta * k3.sum() / length) / max(R, 1) * (B / n_seq)
    m = p_mask.sum().clamp_min(1)
    clipped = (ratio.detach() - ratio.detach().clamp(1 - eps_low, 1 + eps_high)).abs() > 0
    metrics = {"clip_frac": float((clipped & p_mask).sum() / m), "kl": float(k3.detach().sum() / m),
               "ratio": float((ratio.detach() * p_mask).sum() / m), "trace_rows": float(R)}
    return loss, metrics


def accuracy_filter(rewards: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """[n_groups, G] rewards -> [n_groups] bool: group accuracy (mean reward) in [low, high]."""
    acc = rewards.double().mean(1)
    return (acc >= low) & (acc <= high)


@ALGORITHMS.register("trace_rl")
@dataclass(frozen=True, kw_only=True)
class TraceRL(GRPO):
    """TraceRL: trace likelihood along the commit order, clip 0.2 and k3 KL vs π_old, z-scored, accuracy filter."""

    uses_commit_steps: ClassVar[bool] = True
    estimator: str = "trace"
    estimator_params: dict = field(default_factory=lambda: {"stride": 8, "merge": "ranks", "mask_padding": True})
    advantage: Literal["mean", "zscore", "zscore_pop", "loo"] = "zscore_pop"
    eps_low: float = 0.2
    eps_high: float = 0.2
    beta: float = 0.01
    kl_to: Literal["ref", "old"] = "old"
    norm: Literal["trace_rows", "token", "sequence", "constant", "batch_token"] = "trace_rows"
    acc_low: float = 0.2
    acc_high: float = 0.8
    micro_batch: float = 0.0  # a mean over trace rows: equal micro-batches (batch_size_lm rows) change nothing
    block_shrink: int = 1  # block models: collapse_k_unique's shrink per block (rl_trado.yaml)
    post_num: int = 0  # block models: pad tokens a row's p_mask keeps (rl_trado.yaml)

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.acc_low <= self.acc_high <= 1:
            raise ValueError(f"need 0 <= acc_low <= acc_high <= 1, got {self.acc_low}, {self.acc_high}")
        if self.block_shrink < 1 or self.post_num < 0:
            raise ValueError(f"need block_shrink >= 1 and post_num >= 0, got {self.block_shrink}, {self.post_num}")

    def terms(self, denoiser, prompt, prompt_mask, completion, completion_mask, *, generator, draws,
              iteration: int, n_iterations: int):
        """Block models: TraceRL's rounds over each block's commit steps (`block_trace_terms`); else `trace`."""
        if block_size_of(denoiser) is None:
            return super().terms(denoiser, prompt, prompt_mask, completion, completion_mask, generator=generator,
                                 draws=draws, iteration=iteration, n_iterations=n_iterations)
        if not draws or "commit_step" not in draws:
            raise HarnessError("trace_rl on a block model scores along the rollout's commit steps: draws must "
                               "carry 'commit_step' [B, L]")
        if not hasattr(getattr(denoiser, "inner", denoiser), "logits_pattern"):
            raise HarnessError(f"trace_rl on the block model {type(getattr(denoiser, 'inner', denoiser)).__name__}: "
                               "TraceRL's [prompt ; clean ; noisy] rows need the model's logits_pattern (an explicit "
                               "attention pattern and position ids; harness/models/block_attention.py), which it "
                               "does not implement")
        return block_trace_terms(denoiser, prompt, completion, completion_mask, draws["commit_step"],
                                 shrink=self.block_shrink, post_num=self.post_num,
                                 max_tokens=int(self.estimator_params.get("max_tokens", 65536)), draws=draws)

    def keep_groups(self, rewards):
        return accuracy_filter(rewards, self.acc_low, self.acc_high)

    def loss(self, batch, policy_terms, old_terms, ref_terms, advantages):
        if "round" in policy_terms.draws:  # a block model's rows (block_trace_terms)
            base = ref_terms if self.kl_to == "ref" and ref_terms is not None else old_terms  # the reference: π_old
            return block_rows_loss(policy_terms.per_token, old_terms.per_token.detach(), base.per_token.detach(),
                                   advantages, policy_terms.draws["round"].to(policy_terms.per_token.device),
                                   eps_low=self.eps_low, eps_high=self.eps_high, beta=self.beta, n_seq=batch["n_seq"])
        if self.norm != "trace_rows":
            return super().loss(batch, policy_terms, old_terms, ref_terms, advantages)
        gid = policy_terms.draws["group"]  # [B, L] each scored token's step group (the estimator's merge)
        gid = torch.where(batch["mask"], gid, torch.full_like(gid, -1))
        kl_terms = (ref_terms if self.kl_to == "ref" else old_terms) if self.beta > 0 else None
        return trace_rows_loss(policy_terms.per_token, old_terms.per_token.detach(),
                               None if kl_terms is None else kl_terms.per_token.detach(), advantages, gid,
                               eps_low=self.eps_low, eps_high=self.eps_high, beta=self.beta, kl=self.kl,
                               n_seq=batch["n_seq"])
