"""Reference losses written from the public reference code's equations (own code, not copies).

Each function names the repository, file and function whose computation it restates; they use
plain per-row Python loops where the reference does, so that they share no code with harness/.
"""
from __future__ import annotations

import torch


def group_mean_advantages(rewards, G):
    """d1 / wd1 / IGPO `_generate_and_score_completions`: A = r − mean over the group (no std)."""
    r = rewards.view(-1, G)
    return (r - r.mean(1, keepdim=True)).reshape(-1)


def z_score_normalize(lst):
    """Gen-Verse/dLLM-RL reward/rl_reward.py `z_score_normalize` (applied to the correctness list of
    one prompt's responses): population std, no eps, all zeros when the std is 0."""
    mean = sum(lst) / len(lst)
    std = (sum((x - mean) ** 2 for x in lst) / len(lst)) ** 0.5
    if std == 0:
        return [0 for _ in lst]
    return [(x - mean) / std for x in lst]


def loo_advantages(rewards, G):
    """Leave-one-out baseline (RLOO; DiffuCoder's coupled-GRPO code): A_i = r_i − mean_{j≠i} r_j."""
    r = rewards.view(-1, G)
    return (r - (r.sum(1, keepdim=True) - r) / (G - 1)).reshape(-1)


def k3(logp, ref):
    """The reference trainers' per-token KL: exp(ref − logp) − (ref − logp) − 1."""
    return torch.exp(ref - logp) - (ref - logp) - 1


def d1_loss(logp, old, ref, adv, mask, eps, beta):
    """dllm-reasoning/d1 diffu-grpo/diffu_grpo_trainer.py DiffuGRPOTrainer.compute_loss (read in its
    verbatim copy xiaohangt/wd1 wd1/trainers/diffu_grpo_trainer.py; the d1 trainer file itself is not
    in the search index) and facebookresearch/igpo trainer_baseline.py: token ratio, PPO clip, k3 KL
    to π_ref added per token, loss = Σ(per_token_loss·mask) / Σ mask over the micro-batch."""
    coef_1 = torch.exp(logp - old)
    coef_2 = torch.clamp(coef_1, 1 - eps, 1 + eps)
    per_token_loss = -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None])
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * k3(logp, ref)
    m = mask.double()
    return (per_token_loss * m).sum() / m.sum()


def igpo_gspo_loss(logp, old, ref, adv, token_mask, eps_low, eps_high, beta):
    """facebookresearch/igpo trainer_igpo.py IGPOTrainer.compute_loss with use_gspo=True (run_igpo.sh):
    sequence_logps = per_token_logps.sum(1) / T over the whole canvas of T positions; ratio
    exp(seq − seq_old) expanded to every token; per-token k3 KL; Σ(loss·token_mask)/Σ token_mask."""
    T = logp.shape[1]
    seq_ratio = torch.exp(logp.sum(1) / T - old.sum(1) / T)  # [B]
    coef_1 = seq_ratio[:, None].expand(-1, T)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None]) + beta * k3(logp, ref)
    m = token_mask.double()
    return (per_token_loss * m).sum() / m.sum()


def wd1_loss(logp, adv, completion_mask):
    """xiaohangt/wd1 wd1/trainers/rev_grpo_trainer.py RevDiffuGRPOTrainer.compute_loss: softmax of
    ±advantages over the micro-batch's rows (dim 0), sequence log-prob = Σ over completion_mask."""
    seq = (logp * completion_mask).sum(-1)
    ce_loss = -(seq * torch.softmax(adv, dim=0)).sum()
    min_likeli_loss = (seq * torch.softmax(-adv, dim=0)).sum()
    return ce_loss + min_likeli_loss


def trace_rl_loss(rows, adv_rows, eps, beta):
    """Gen-Verse/dLLM-RL train/rl_llada.py (and train/rl_mmada.py) `forward_process` in `main`: the
    loss of both its "TraceRL" and "random_masking" methods. `rows` is a list of (logp_new [T],
    logp_old [T], p_mask [T] bool), one training row each (a (sequence, step group) for TraceRL, a
    (sequence, random mask) for random_masking); KL is k3 to π_old, summed over the row's p_mask."""
    n_rows = len(rows)
    logp_new = torch.stack([r[0] for r in rows])
    logp_old = torch.stack([r[1] for r in rows])
    p_mask = torch.stack([r[2] for r in rows]).double()
    ratio = torch.exp(logp_new - logp_old)
    clipped = torch.clamp(ratio, 1 - eps, 1 + eps)
    adv_tok = adv_rows[:, None]
    surrogate_tok = torch.min(ratio * adv_tok, clipped * adv_tok) * p_mask
    num_mask = torch.clamp(p_mask.sum(1), min=1)
    policy_loss = -((surrogate_tok.sum(1) / num_mask).sum() / n_rows)
    kl_seq = logp_new - logp_old
    kl_seq = (-kl_seq).exp() - 1.0 + kl_seq  # use_kl_estimator_k3
    kl_loss = beta * (kl_seq * p_mask).sum(1).sum() / n_rows
    return policy_loss + kl_loss


def collapse_k_unique(lst, k):
    """dLLM-RL rl_llada.py `collapse_k_unique`: every k consecutive distinct steps map to the last of them."""
    uniq = sorted(set(lst))
    mapping = {}
    for idx, val in enumerate(uniq):
        end_idx = min((idx // k + 1) * k - 1, len(uniq) - 1)
        mapping[val] = uniq[end_idx]
    return [mapping[x] for x in lst]


def spg_loss(adv, lower, upper, completion_mask):
    """facebookresearch/SPG spg/spg_trainer.py SPGTrainer.compute_loss: per_seq_loss = −A·(bound / |o|),
    loss = Σ(per_seq_loss·|o|) / Σ|o| over the micro-batch; the bound is the ELBO for A >= 0, else the upper."""
    length = completion_mask.double().sum(1)
    bound = torch.stack([lower[i] if adv[i] >= 0 else upper[i] for i in range(len(adv))])
    return (-adv * bound / length * length).sum() / length.sum()


def gradient_accumulation(loss_of, parts):
    """HF Trainer's gradient accumulation over equal micro-batches: each micro-batch's loss divided by
    the number of accumulation steps, summed (the mean of the micro-batch losses)."""
    return sum(loss_of(p) for p in parts) / len(parts)


def espo_loss(s, s_old, s_ref, adv, T, eps=0.2, beta=0.01):
    """ML-GSAI/ESPO espo/espo_trainer.py ESPOTrainer.compute_loss (kl_scale outside): sequence ratio
    exp((ELBO − ELBO_old)/T), clip ε, −mean over the micro-batch's rows; + β·mean_i k2(ΔELBO_ref)/T."""
    coef_1 = torch.exp((s - s_old) / T)
    coef_2 = torch.clamp(coef_1, 1 - eps, 1 + eps)
    kl = (s - s_ref) ** 2 / 2.0
    return -torch.min(coef_1 * adv, coef_2 * adv).mean() + beta * (kl / T).mean()


def gdpo_paper_loss(s, s_old, s_ref, adv, length, eps=0.2, beta=0.01):
    """GDPO (arXiv 2510.08554), the paper's objective (no code could be read): sequence ratio
    exp(ELBO − ELBO_old), clip ε, k3 KL on the ELBO difference, weight 1/|o|, mean over rows."""
    rho = torch.exp(s - s_old)
    sur = torch.min(rho * adv, torch.clamp(rho, 1 - eps, 1 + eps) * adv)
    kl = torch.exp(s_ref - s) - (s_ref - s) - 1
    return (-(sur - beta * kl) / length).mean()
