"""What one batch of a cell does, per study kind. Each returns one result dict per item.

`generate`: decode each prompt with the cell's sampler and score the text with the task.
`likelihood`: estimate log-likelihood (or its bound) of each item's reference completion.
The meter passed in counts everything; these functions never measure their own cost.
"""
from __future__ import annotations

import torch

from harness.text import completion_mask, encode_completions, encode_prompts


def _prompts(denoiser, items):
    ids, mask = encode_prompts(denoiser.tokenizer, [it.prompt for it in items], denoiser.pad_id)
    return ids.to(denoiser.device), mask.to(denoiser.device)


@torch.no_grad()
def generate(denoiser, task, sampler, items, generators) -> list[dict]:
    ids, mask = _prompts(denoiser, items)
    gen = sampler(denoiser, ids, generator=generators, prompt_mask=mask, gen_length=task.gen_length)
    out = []
    for i, (item, text) in enumerate(zip(items, gen.text)):
        out.append({
            "outcome": {"metric": "accuracy", "value": float(task.score(item, text))},
            "generation": {"text": text, "gen_len": int(gen.gen_len[i]), "steps": gen.steps,
                           "commit_step": gen.commit_step[i].tolist()},
        })
    return out


@torch.no_grad()
def likelihood(denoiser, task, estimator, items, generators) -> list[dict]:
    ids, mask = _prompts(denoiser, items)
    completion = encode_completions(denoiser.tokenizer, [it.reference for it in items], task.gen_length,
                                    denoiser.eos_id).to(denoiser.device)
    cmask = completion_mask(completion, denoiser.eos_id)
    est = estimator(denoiser, ids, completion, cmask, generator=generators, prompt_mask=mask)
    metric = getattr(estimator, "metric", "log_likelihood")
    out = []
    for i in range(len(items)):
        value = float(est.sequence[i])
        out.append({
            "outcome": {"metric": metric, "value": value},
            "estimate": {"value": value, "n": est.n, "length": int(cmask[i].sum()),
                         "per_token": [round(float(v), 6) for v in est.per_token[i][cmask[i]]]},
        })
    return out


STUDIES = {"generate": generate, "likelihood": likelihood}
