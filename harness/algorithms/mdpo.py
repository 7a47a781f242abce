"""`mdpo`: Masked Diffusion Policy Optimization (He et al. 2025, arXiv 2508.13148; docs/methods.md §2).

Source: autonomousvision/mdpo src/open_r1/mdpo/mdpo_trainer.py, `MDPOTrainer` methods
`_generate_and_score_completions` (per-step rewards and advantages), `split_into_micro_batches`
(which steps are trained) and `compute_loss` (the loss); the rollout is src/mdlm_generation_utils.py
`diffusion_generate`; defaults from recipes/LLaDA-Instruct/mdpo/config_demo.yaml and MDPOConfig
(src/open_r1/mdpo/mdpo_config.py).

MDPO rewards the intermediate steps of a rollout. The rollout of T steps records, at every step t,
the canvas x_t before the step, the step's full prediction x̂_t (its proposal at every masked position,
the canvas elsewhere) and the probability c_t the step gave each proposal (`Generation.trajectory`:
the loop asks the sampler to record it because this algorithm declares `uses_trajectory`). Then:

  r_{i,t}  = reward of the text of x̂_{i,t}                      (the verifier on every step's prediction)
  a_{i,t}  = (r_{i,0} if t = 0 else r_{i,t} − r_{i,t−1}) + 1    (adv-v3: the step's reward gain)
           + (mean_{s>t} r_{i,s} if t < T−1 else r_{i,T−1})     (adv-v4: + the mean reward after it)
  A_{i,t}  = (a_{i,t} − mean_g a_{·,t}) / (std_g a_{·,t} + 1e-4)  per step over the group (unbiased std:
                                                                  the harness's "zscore" rule)
  S_i      = the K = `sample_train_steps` steps of largest |A_{i,t}| (K = min(16, T))
  λ_{i,t}  = L / (|M_{i,t}| + 1e-4),  M_{i,t} the masked positions of x_{i,t}, L the canvas length
  ℓ_{i,t,k} = log softmax(logits_θ(c, x_{i,t}) / (τ + eps_dtype))[x̂_{i,t,k}]  (τ: the rollout temperature)
  ρ        = exp(ℓ_θ − ℓ_old)
  loss_{i,t} = Σ_{k∈M} c_{i,t,k} · [ −min(ρA, clip(ρ, 1±ε)A) · λ_{i,t} + β (ℓ_ref − ℓ_θ)²/2 ] / (|M_{i,t}| + 1e-4)
  loss     = (1/N) Σ_i Σ_{t∈S_i} loss_{i,t}

with ε = 0.2 and β = 0 (config_demo.yaml; the k2 KL to π_ref when β > 0). (The + 1 of adv-v3 is the
reference's; the per-step group centring removes it.) The reference trains one
(row, step) per micro-batch (per_device_train_batch_size 1: `split_into_micro_batches` yields each
selected step of the device's one row) and the Trainer divides each micro-batch loss by the
gradient-accumulation steps, so the steps of a row add up and the rows are averaged: a plain mean
over rows (`micro_batch` 0). With μ = 1 (the reference's only working setting: its `compute_loss`
reads `old_per_token_logps` for μ > 1, which nothing sets) ρ = 1; with μ > 1 the harness takes π_old's
log-probs on the same states and targets.

Kept differences: the reference normalises each device's row by the statistics of every group gathered,
broadcasting [1, T] against [groups, T], which is well-formed only when the devices hold one group
between them (config_demo.yaml: per_device_train_batch_size 1, num_generations 4); the harness
normalises each row by its own group's statistics, what that setting computes. It selects S by the |A|
summed over the device's local rows (one row in config_demo.yaml, so per row, as here), and with
torch.topk's order among equal |A|; the harness breaks ties toward the earlier step. K > T is an error
there and min(K, T) here. Step predictions are decoded to text as the rollout's own (cut at the first
stop token), where the reference decodes the whole canvas with special tokens skipped. The probabilities
c_t are the rollout sampler's confidence in its proposals: the reference's softmax(logits / τ) of its
categorical draw, which the harness's `sampling: multinomial` reproduces (the default Gumbel rule scores
the untempered softmax). Only single-block, fixed-schedule samplers on full-attention models record a
trajectory (the reference config decodes one block of 512); Running Confidence Remasking's running
confidences (the reference's `rcr` option, off in config_demo.yaml) are not offered.

Not part of the loss: the reference's optional "incremental training" (`incremental_training`,
`od_path`; off in config_demo.yaml) is a data curriculum. Before each epoch it decodes every
training prompt greedily, verifies every intermediate prediction, and keeps for that epoch only the
prompts whose answer was right at some step but wrong at the end ("over-denoising", `_incremental_data_selection`).
That selects which prompts a study trains on, a property of the training data rather than of the
objective, and is not implemented here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from harness.algorithms.base import Algorithm
from harness.batching import logits_capped
from harness.models.block_attention import block_size_of
from harness.registry import ALGORITHMS, SAMPLERS
from harness.samplers._base import DecodeLoop, stop_ids, upto_first_stop
from harness.tasks.base import reward
from harness.types import Estimate, HarnessError

LAMBDA_EPS = 1e-4  # compute_loss: lambda_t = L / (|M| + 1e-4) and the loss's / (|M| + 1e-4)


def step_advantages(step_rewards: torch.Tensor, group: torch.Tensor, normalise) -> torch.Tensor:
    """[N, T] per-step rewards, [N] group ids -> [N, T] MDPO advantages: the reward gain of each step
    plus 1 plus the mean reward of the later steps (the last step: its own reward), then `normalise`
    ([N] values, [N] groups -> [N]; the "zscore" rule) applied step by step over each group."""
    r = step_rewards.double()
    N, T = r.shape
    gain = torch.cat([r[:, :1], r[:, 1:] - r[:, :-1]], 1) + 1  # adv-v3
    after = r[:, 1:].flip(-1).cumsum(-1) / torch.arange(1, T, dtype=r.dtype)[None]  # mean of r[t+1:], reversed
    a = gain + torch.cat([after.flip(-1), r[:, -1:]], 1)  # adv-v4
    return torch.stack([normalise(a[:, t], group) for t in range(T)], 1) if N else a


def select_steps(adv: torch.Tensor, k: int) -> torch.Tensor:
    """[N, T] advantages -> [N, min(k, T)] the steps of each row with the largest |A| (ties: earlier step)."""
    order = torch.sort(adv.abs(), dim=1, descending=True, stable=True).indices
    return order[:, :min(k, adv.shape[1])]


def step_texts(denoiser, preds: torch.Tensor) -> list[list[str]]:
    """[N, T, L] step predictions -> their texts, decoded as the rollout's completion: cut at the first
    stop token, EOS padding after it."""
    N, T, L = preds.shape
    flat = preds.reshape(N * T, L).clone()
    n = upto_first_stop(flat, stop_ids(denoiser))  # [NT]
    flat[torch.arange(L, device=flat.device)[None, :] >= n[:, None]] = denoiser.eos_id
    text = [denoiser.tokenizer.decode(row.tolist()) for row in flat]
    return [text[i * T:(i + 1) * T] for i in range(N)]


def mdpo_logprobs(denoiser, prompt: torch.Tensor, prompt_mask: torch.Tensor | None, states: torch.Tensor,
                  targets: torch.Tensor, temperature: float, max_tokens: int) -> torch.Tensor:
    """log p_τ(x̂ | c, x_t) at every position: prompt [B, P], states / targets [B, K, L] -> [B, K, L], the
    logits divided by τ + eps of their dtype (`_get_per_token_logps`). Shifted-logit models read
    position k from the logits at k − 1 (the reference's Dream shift)."""
    B, K, L = states.shape
    P = prompt.shape[1]
    x = torch.cat([prompt[:, None].expand(B, K, P), states], 2).reshape(B * K, P + L)
    attn = None
    if prompt_mask is not None:
        attn = torch.cat([prompt_mask.bool()[:, None].expand(B, K, P), torch.ones_like(states, dtype=torch.bool)], 2)
        attn = attn.reshape(B * K, P + L)
    tgt = targets.reshape(B * K, L)
    rows = max(1, logits_capped(max_tokens, getattr(denoiser, "vocab_size", None)) // (P + L))
    out = []
    for lo in range(0, B * K, rows):
        hi = min(lo + rows, B * K)
        logits = denoiser.logits(x[lo:hi], None if attn is None else attn[lo:hi])
        logits = logits[:, P - 1:P + L - 1] if denoiser.shift_logits else logits[:, P:]
        logits = logits / (temperature + torch.finfo(logits.dtype).eps)
        logp = F.log_softmax(logits, -1, dtype=torch.promote_types(logits.dtype, torch.float32))
        out.append(logp.gather(-1, tgt[lo:hi, :, None]).squeeze(-1))
    return torch.cat(out).view(B, K, L)


def mdpo_loss(logp, old, ref, adv, masked, conf, *, eps: float, beta: float, length: int, n_seq: int):
    """logp / old / ref [B, K, L] (ref None: no KL), adv [B, K], masked [B, K] L bool, conf [B, K, L] -> (loss,
    metrics): (1/n_seq) Σ over (row, step) of `compute_loss` on that state (see the module doc)."""
    m = masked.to(logp.dtype)
    n_masked = m.sum(-1)  # [B, K]
    lam = length / (n_masked + LAMBDA_EPS)  # [B, K]
    ratio = torch.exp(logp - old)
    a = adv.to(logp.dtype)[..., None]
    clipped_ratio = torch.clamp(ratio, 1 - eps, 1 + eps)
    per_token = -torch.minimum(ratio * a, clipped_ratio * a) * lam[..., None]
    kl = (ref - logp) ** 2 / 2 if ref is not None else None
    if kl is not None and beta != 0:
        per_token = per_token + beta * kl
    w = torch.where(masked, conf.to(logp.dtype), torch.zeros_like(logp))  # conf is NaN off the proposals
    per_step = (per_token * m * w).sum(-1) / (n_masked + LAMBDA_EPS)  # [B, K]
    loss = per_step.sum() / n_seq
    cnt = masked.sum().clamp_min(1)
    clipped = (ratio.detach() != clipped_ratio.detach()) & masked
    return loss, {"clip_frac": float(clipped.sum() / cnt),
                  "kl": None if kl is None else float((kl.detach() * m).sum() / cnt),
                  "ratio": float((ratio.detach() * m).sum() / cnt), "trained_states": float(masked.any(-1).sum())}


@ALGORITHMS.register("mdpo")
@dataclass(frozen=True, kw_only=True)
class MDPO(Algorithm):
    """MDPO: clipped policy gradient on a rollout's intermediate states, rewarded step by step.

    Every denoising step's full prediction is verified; per-step advantages (reward gain + 1 + mean later
    reward, z-scored per step over the group) weight the log-probs of that step's predictions at the
    state's masked positions, scaled by L/|M| and the rollout's confidence; the 16 steps of largest |A|
    per rollout are trained. Source: autonomousvision/mdpo src/open_r1/mdpo/mdpo_trainer.py
    `compute_loss`, `_generate_and_score_completions`, `split_into_micro_batches`."""

    uses_trajectory: ClassVar[bool] = True
    # The likelihood terms are MDPO's own (log p of each step's prediction on that step's state,
    # `mdpo_logprobs`); `estimator` is not used.
    advantage: Literal["mean", "zscore", "zscore_pop", "loo"] = "zscore"  # per step over the group
    sample_train_steps: int = 16  # MDPOConfig / config_demo.yaml: steps trained per rollout
    eps: float = 0.2  # MDPOConfig.epsilon
    beta: float = 0.0  # config_demo.yaml (MDPOConfig's default 0.04); k2 KL to π_ref
    temperature: float | None = None  # of the log-probs; None: the rollout sampler's (the reference's one τ)
    max_tokens: int = 65536  # tokens per likelihood pass (memory only)

    def __post_init__(self):
        super().__post_init__()
        if self.sample_train_steps < 1:
            raise ValueError(f"sample_train_steps must be >= 1, got {self.sample_train_steps}")
        if not 0 <= self.eps < 1 or self.beta < 0:
            raise ValueError(f"need 0 <= eps < 1 and beta >= 0, got eps {self.eps}, beta {self.beta}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (or null: the rollout sampler's), got {self.temperature}")

    @property
    def needs_old(self) -> bool:
        return True

    @property
    def needs_ref(self) -> bool:
        return self.beta > 0

    def rollout_sampler(self, sampler, policy=None):
        size = block_size_of(policy) if policy is not None else None
        if size is not None:
            raise HarnessError(f"mdpo trains on every step's prediction of the whole completion; this policy is a "
                               f"block-diffusion model (block_size {size}) whose steps predict one block: run mdpo on "
                               "a full-attention model")
        built = SAMPLERS.build(sampler["name"], sampler.get("params") or {}, "options.sampler")
        if not isinstance(built, DecodeLoop):
            raise HarnessError(f"mdpo needs the rollout's denoising trajectory, which options.sampler "
                               f"{sampler['name']!r} does not record: use a fixed-schedule block sampler "
                               "(low_confidence, margin, entropy, random_order) with one block")
        return sampler

    def after_rollout(self, loop, rollout, step):
        """Verify every step's prediction, form the per-step advantages and keep each row's K steps."""
        states, preds, confs = (rollout.pop(f"trajectory_{k}") for k in ("states", "preds", "confs"))
        items = rollout["items"]
        texts = step_texts(loop.policy, preds)
        step_rewards = torch.tensor([[reward(loop.task, it, t) for t in row] for it, row in zip(items, texts)],
                                    dtype=torch.float64)  # [N, T]
        adv = step_advantages(step_rewards, rollout["group"], self.advantages)  # [N, T]
        pick = select_steps(adv, self.sample_train_steps)  # [N, K]
        at = pick.to(states.device)[..., None].expand(-1, -1, states.shape[2])
        sel_states = states.gather(1, at)
        tau = self.temperature if self.temperature is not None else float(getattr(loop.sampler, "temperature", 0.0))
        return {**rollout, "step_rewards": step_rewards, "mdpo_steps": pick, "mdpo_adv": adv.gather(1, pick),
                "mdpo_states": sel_states, "mdpo_targets": preds.gather(1, at), "mdpo_confs": confs.gather(1, at),
                "mdpo_masked": sel_states == loop.policy.mask_id, "mdpo_temperature": tau}

    def loss_tokens(self, rollout):
        """[N, K·L]: the masked positions of each row's K trained states."""
        m = rollout["mdpo_masked"]
        return m.reshape(m.shape[0], -1)

    def draws_for(self, rollout, first_draws, iteration):
        return {"states": rollout["mdpo_states"], "targets": rollout["mdpo_targets"],
                "masked": rollout["mdpo_masked"], "confs": rollout["mdpo_confs"], "adv": rollout["mdpo_adv"],
                "temperature": rollout["mdpo_temperature"]}

    def terms(self, denoiser, prompt, prompt_mask, completion, completion_mask, *, generator, draws,
              iteration: int, n_iterations: int):
        """per_token [B, K·L]: log p_τ of each trained state's prediction at its masked positions (0 elsewhere)."""
        need = ("states", "targets", "masked", "confs", "adv", "temperature")
        if not draws or any(k not in draws for k in need):
            raise HarnessError(f"mdpo scores the rollout's recorded intermediate states: draws must carry {need}")
        states = draws["states"].to(completion.device)
        logp = mdpo_logprobs(denoiser, prompt, prompt_mask, states, draws["targets"].to(completion.device),
                             float(draws["temperature"]), self.max_tokens)  # [B, K, L]
        masked = draws["masked"].to(logp.device)
        per = torch.where(masked, logp, torch.zeros_like(logp)).reshape(logp.shape[0], -1)
        return Estimate(per_token=per, sequence=per.sum(1), draws=draws, n=1)

    def loss(self, batch, policy_terms, old_terms, ref_terms, advantages):
        d = policy_terms.draws
        masked = d["masked"].to(policy_terms.per_token.device)
        B, K, L = masked.shape
        view = lambda t: t.reshape(B, K, L)  # noqa: E731
        ref = view(ref_terms.per_token.detach()) if ref_terms is not None and self.beta > 0 else None
        return mdpo_loss(view(policy_terms.per_token), view(old_terms.per_token.detach()), ref,
                         d["adv"].to(policy_terms.per_token.device), masked, d["confs"].to(masked.device),
                         eps=self.eps, beta=self.beta, length=L, n_seq=batch["n_seq"])
