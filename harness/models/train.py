"""Training the tiny MDLM on a synthetic task (`dlm-harness train`).

Objective (MDLM / LLaDA SFT, docs/methods.md §1 `mc_elbo`): per sequence draw t ~ U(eps, 1), mask each
completion position (EOS padding included) independently with probability t, and minimise
E_t[(1/t) Σ_masked CE] / L. The prompt is never masked. Everything random comes from one explicit
generator seeded by the training config, so a retrain on the same machine is bit-identical.

With `block_size` B the model is a block-diffusion model (harness/models/block_attention.py) trained
with BD3-LM's objective (arXiv 2503.09573, kuleshov-group/bd3lms `diffusion.py` `_loss`): one t per
(sequence, block), drawn antithetically over the batch's blocks as BD3-LM's `_sample_t` does and scaled
into [eps, 1]; each completion position is masked with its block's t; one pass over [x_t ; x_0]
scores every noised block given the clean earlier blocks; loss = Σ_masked CE/t / L, averaged over
the batch. `init_from` starts from another tiny checkpoint's weights (BD3-LM fine-tunes its block
models from a full-attention MDLM the same way).

`objective: any_order` is d2's any-order causal fine-tuning (kuleshov-group/d2 SFT_AO/anyorder_sft_trainer.py:
`build_block_generation_order` draws a random order of the completion positions, shuffled inside chunks
of `ao_block_length` (its 32); `dLLMTrainer.compute_loss` runs one pass over [prompt ; completion in that
order ; L mask queries with the same position ids], the clean tokens causal in the order, mask query i
attending the prompt, the clean tokens strictly before i and itself, and minimises Σ_i CE(o_i) / L at the
mask queries (EOS padding included)). The harness keeps natural columns and derives the pattern from
the order (harness/estimators/any_order.py `any_order_pattern`, each token its own group), through the
model's `logits_pattern`. Its checkpoint records `train.objective: any_order`, from which the tiny
model spec declares the `any_order_causal` capability; its greedy evaluation decodes with the
`any_order` sampler (two tokens per step, blocks of ao_block_length), the decoder it is trained for.

Every numeric setting is checked (harness/validate.py) before anything is built, and `train` refuses
to write into an existing directory unless told to overwrite it: a typo in `--out` must not replace
another checkpoint.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from harness import validate
from harness.estimators.any_order import any_order_pattern
from harness.models.block_attention import block_ids, positions
from harness.models.tiny import (
    CharTokenizer,
    TinyConfig,
    TinyDenoiser,
    TinyMDLM,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from harness.registry import SAMPLERS, TASKS
from harness.text import encode_completions, encode_prompts
from harness.types import HarnessError


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    task: str = "addition"
    task_params: tuple = ()  # ((key, value), ...) passed to the task
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    steps: int = 3000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 100
    eps: float = 1e-3
    seed: int = 0
    eval_every: int = 500
    eval_items: int = 200
    threads: int = 2
    device: str = "cpu"  # "cuda": model and batches on the GPU; every draw still comes from the CPU generator
    block_size: int | None = None  # block diffusion with blocks of this many positions (None: full attention MDLM)
    init_from: str | None = None  # a tiny checkpoint (name or directory) whose weights start the training
    objective: str = "mdlm"  # "mdlm" (block_size: BD3-LM's) or "any_order" (d2's SFT_AO, module docstring)
    ao_block_length: int = 32  # any_order: the order is shuffled inside chunks of this many positions (SFT_AO 32)

    def __post_init__(self):
        for f in ("steps", "batch_size", "lr", "d_model", "n_layers", "n_heads", "d_ff", "weight_decay", "warmup",
                  "eps", "eval_every", "eval_items", "threads"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise HarnessError(f"train --{f.replace('_', '-')}: expected a number, got {validate.show(v)}")
            validate.field(TrainConfig, f, v, f"train --{f.replace('_', '-')}")
        if self.eval_every < 1:
            raise HarnessError(f"train --eval-every: expected an integer >= 1, got {self.eval_every}")
        if self.d_model % self.n_heads:
            raise HarnessError(f"train --n-heads: must divide --d-model ({self.d_model}), got {self.n_heads}")
        validate.device(self.device, "train --device")
        if self.objective not in ("mdlm", "any_order"):
            raise HarnessError(f"train --objective: expected 'mdlm' or 'any_order', got "
                               f"{validate.show(self.objective)}")
        if self.objective == "any_order" and self.block_size is not None:
            raise HarnessError("train --objective any_order: the any-order causal model has no diffusion blocks; "
                               "drop --block-size (--ao-block-length sets its order's chunks)")
        ao = self.ao_block_length
        if isinstance(ao, bool) or not isinstance(ao, int) or ao < 2:
            raise HarnessError(f"train --ao-block-length: expected an integer >= 2, got "
                               f"{validate.show(self.ao_block_length)}")
        if self.block_size is not None and (isinstance(self.block_size, bool) or not isinstance(self.block_size, int)
                                            or self.block_size < 1):
            raise HarnessError(f"train --block-size: expected an integer >= 1, got {validate.show(self.block_size)}")


def mdlm_loss(denoiser, prompt: torch.Tensor, prompt_mask: torch.Tensor, target: torch.Tensor,
              generator: torch.Generator, eps: float = 1e-3) -> torch.Tensor:
    """MDLM loss: mean over the batch of (1/t) Σ_masked CE / L.  prompt [B, P], target [B, L]."""
    B, L = target.shape
    t = (eps + (1 - eps) * torch.rand(B, 1, generator=generator)).to(target.device)  # [B, 1]
    masked = torch.rand(B, L, generator=generator).to(target.device) < t  # [B, L]
    x = torch.cat([prompt, torch.where(masked, denoiser.mask_id, target)], 1)  # [B, P+L]
    attn = torch.cat([prompt_mask, torch.ones_like(masked)], 1)
    logits = denoiser.logits(x, attn)[:, prompt.shape[1]:]  # [B, L, V]
    ce = F.cross_entropy(logits.reshape(B * L, -1), target.reshape(-1), reduction="none").view(B, L)
    return ((ce * masked) / t).sum(1).div(L).mean()


def block_diffusion_loss(denoiser, prompt: torch.Tensor, prompt_mask: torch.Tensor, target: torch.Tensor,
                         generator: torch.Generator, eps: float = 1e-3) -> torch.Tensor:
    """BD3-LM loss of a block model: mean over the batch of Σ_masked CE/t_block / L (module docstring).
    prompt [B, P] (never masked), target [B, L]."""
    B, L = target.shape
    P = prompt.shape[1]
    attn = torch.cat([prompt_mask.bool(), torch.ones(B, L, dtype=torch.bool, device=prompt.device)], 1)  # [B, T]
    blk = block_ids(attn, B, P + L, denoiser.block_size)[:, P:].cpu()  # [B, L] block of each completion column
    n_blocks = int(blk.max()) + 1
    # BD3-LM `_sample_t` with antithetic sampling: B·n_blocks stratified uniforms, then [eps, 1].
    u = torch.rand(B, n_blocks, generator=generator)
    u = (u / (B * n_blocks) + torch.arange(B * n_blocks).view(B, n_blocks) / (B * n_blocks)) % 1
    t = (eps + (1 - eps) * u).gather(1, blk).to(target.device)  # [B, L] each column's block t
    masked = torch.rand(B, L, generator=generator).to(target.device) < t  # [B, L]
    xt = torch.cat([prompt, torch.where(masked, denoiser.mask_id, target)], 1)  # [B, P+L]
    x0 = torch.cat([prompt, target], 1)
    logits = denoiser.logits_denoise(xt, x0, attn)[:, P:]  # [B, L, V]
    ce = F.cross_entropy(logits.reshape(B * L, -1), target.reshape(-1), reduction="none").view(B, L)
    return ((ce * masked) / t).sum(1).div(L).mean()


def any_order_loss(denoiser, prompt: torch.Tensor, prompt_mask: torch.Tensor, target: torch.Tensor,
                   generator: torch.Generator, block_length: int = 32) -> torch.Tensor:
    """d2's any-order causal SFT loss (module docstring): mean over the batch of Σ_i CE(o_i) / L at the mask
    queries, each row's order a random permutation inside chunks of `block_length`. prompt [B, P], target [B, L]."""
    B, L = target.shape
    P = prompt.shape[1]
    dev = target.device
    chunk = torch.arange(L) // block_length  # [L]
    keys = chunk[None, :] + torch.rand(B, L, generator=generator)  # shuffle inside each chunk, chunks in order
    rank = keys.argsort(1).argsort(1).to(dev)  # [B, L] each position's place in the order
    real = prompt_mask.bool()
    canvas_real = torch.cat([real, torch.ones(B, L, dtype=torch.bool, device=dev)], 1)
    pos = positions(canvas_real, B, P + L, dev)
    pos2 = torch.cat([pos, pos[:, P:]], 1)
    x = torch.cat([prompt, target, torch.full_like(target, denoiser.mask_id)], 1)
    logits = denoiser.logits_pattern(x, any_order_pattern(rank, real), pos2)[:, P + L:]  # [B, L, V]
    ce = F.cross_entropy(logits.reshape(B * L, -1), target.reshape(-1), reduction="none").view(B, L)
    return ce.sum(1).div(L).mean()


def eval_sampler(denoiser, objective: str = "mdlm", ao_block_length: int = 32):
    """Greedy low-confidence decoding, one token per step; a block model decodes block by block
    (semi-autoregressive blocks of its block_size); an any-order causal model with the `any_order`
    sampler (two tokens per step, blocks of ao_block_length)."""
    if objective == "any_order":
        return SAMPLERS.build("any_order", {"block_length": ao_block_length})
    block = getattr(denoiser, "block_size", None)
    return SAMPLERS.build("low_confidence", {"block_length": block} if block else {})


@torch.no_grad()
def greedy_accuracy(denoiser, task, items, batch_size: int = 256, objective: str = "mdlm",
                    ao_block_length: int = 32) -> float:
    """Greedy decoding (`eval_sampler`): fraction of items scored correct."""
    sampler = eval_sampler(denoiser, objective, ao_block_length)
    correct = 0.0
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        ids, mask = encode_prompts(denoiser.tokenizer, [it.prompt for it in chunk], denoiser.pad_id)
        ids, mask = ids.to(denoiser.device), mask.to(denoiser.device)
        gen = sampler(denoiser, ids, generator=None, prompt_mask=mask, gen_length=task.gen_length)
        correct += sum(task.score(it, text) for it, text in zip(chunk, gen.text))
    return correct / len(items)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def check_out(out: Path, overwrite: bool) -> None:
    """`out` may be written: absent, or an existing directory with `overwrite`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HarnessError(f"train --out {out}: exists and is not a directory")
    if out.exists() and not overwrite and any(out.iterdir()):
        raise HarnessError(f"train --out {out}: the directory exists and is not empty (a checkpoint?); "
                           "pass --overwrite to replace its model.pt, config.json and CARD.md, or choose another")


def train(cfg: TrainConfig, out: Path, progress: bool = True, overwrite: bool = False) -> dict:
    """Train, evaluate periodically, write a checkpoint with its card; return the final metrics."""
    from tqdm import tqdm

    check_out(out, overwrite)
    torch.set_num_threads(cfg.threads)
    task = TASKS.build(cfg.task, dict(cfg.task_params), where="train --task")
    train_items = task.items("train")
    eval_items = task.items("test")[: cfg.eval_items]
    tokenizer = CharTokenizer()
    prompts, prompt_mask = encode_prompts(tokenizer, [it.prompt for it in train_items], tokenizer.pad_id)
    targets = encode_completions(tokenizer, [it.reference for it in train_items], task.gen_length, tokenizer.eos_id)
    g = torch.Generator().manual_seed(cfg.seed)
    module = TinyMDLM(TinyConfig(vocab_size=len(tokenizer), max_len=prompts.shape[1] + task.gen_length,
                                 d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                                 d_ff=cfg.d_ff, block_size=cfg.block_size), generator=g)
    if cfg.init_from is not None:
        init_weights(module, tokenizer, cfg.init_from)
    module = module.to(cfg.device)
    if cfg.objective == "any_order":
        loss_fn = lambda den, p, pm, tg, gen, _eps: any_order_loss(den, p, pm, tg, gen, cfg.ao_block_length)  # noqa: E731
    else:
        loss_fn = mdlm_loss if cfg.block_size is None else block_diffusion_loss
    prompts, prompt_mask, targets = prompts.to(cfg.device), prompt_mask.to(cfg.device), targets.to(cfg.device)
    denoiser = TinyDenoiser(module, tokenizer)
    decay = [p for n, p in module.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in module.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    history = []
    t0 = time.perf_counter()
    check_out(out, overwrite)  # again: another process may have made it while the data was built
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.task}", disable=not progress, mininterval=2)
    for step in bar:
        module.train()
        idx = torch.randint(len(train_items), (cfg.batch_size,), generator=g)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = loss_fn(denoiser, prompts[idx], prompt_mask[idx], targets[idx], g, cfg.eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            module.eval()
            acc = greedy_accuracy(denoiser, task, eval_items, objective=cfg.objective,
                                  ao_block_length=cfg.ao_block_length)
            history.append({"step": step + 1, "loss": round(loss.item(), 4), "greedy_accuracy": acc,
                            "elapsed_s": round(time.perf_counter() - t0, 1)})
            bar.write(json.dumps(history[-1]))
    module.eval()
    metrics = {"greedy_accuracy": history[-1]["greedy_accuracy"], "eval_items": len(eval_items),
               "train_seconds": round(time.perf_counter() - t0, 1),
               "n_params": sum(p.numel() for p in module.parameters())}
    extra = {"train": asdict(cfg) | {"task_params": dict(cfg.task_params)}, "task": cfg.task,
             "task_params": dict(cfg.task_params), "gen_length": task.gen_length,
             "metrics": metrics, "history": history}
    save_checkpoint(out, module, tokenizer, extra)
    (out / "CARD.md").write_text(card(cfg, task, metrics, history))
    return metrics


def init_weights(module: TinyMDLM, tokenizer: CharTokenizer, name: str) -> None:
    """Copy the weights of the tiny checkpoint `name` into `module` (same shapes and tokenizer)."""
    path = resolve_checkpoint(name)
    init, init_tok, _ = load_checkpoint(path)
    if init_tok.to_json() != tokenizer.to_json():
        raise HarnessError(f"train --init-from {name}: its tokenizer differs from the trainer's")
    mine = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in init.state_dict().items()}
    if mine != theirs:
        diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        raise HarnessError(f"train --init-from {name}: its weights do not fit this model's shape (--d-model, "
                           f"--n-layers, --n-heads, --d-ff, task canvas); differing tensors: {', '.join(diff[:4])}")
    module.load_state_dict(init.state_dict())


def card(cfg: TrainConfig, task, metrics: dict, history: list[dict]) -> str:
    """The checkpoint's card: how it was trained, how to retrain it, what it scores."""
    params = " ".join(f"--task-param {k}={v}" for k, v in cfg.task_params)
    cmd = (f"dlm-harness train --task {cfg.task} {params} --steps {cfg.steps} --batch-size {cfg.batch_size} "
           f"--lr {cfg.lr} --d-model {cfg.d_model} --n-layers {cfg.n_layers} --n-heads {cfg.n_heads} "
           f"--d-ff {cfg.d_ff} --seed {cfg.seed} --eval-every {cfg.eval_every} --eval-items {cfg.eval_items} "
           f"--threads {cfg.threads}"
           + (f" --block-size {cfg.block_size}" if cfg.block_size else "")
           + (f" --init-from {cfg.init_from}" if cfg.init_from else "")
           + (f" --objective any_order --ao-block-length {cfg.ao_block_length}" if cfg.objective == "any_order" else "")
           + " --out <dir>")
    if cfg.objective == "any_order":
        init = (f"Initialised from the weights of `{cfg.init_from}` (d2 likewise fine-tunes LLaDA), then trained"
                if cfg.init_from else "Trained from scratch")
        head = f"""# Tiny any-order causal checkpoint: {cfg.task}

A transformer ({metrics['n_params']:,} parameters; d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads,
d_ff {cfg.d_ff}) with the harness's character tokenizer, for d2-AnyOrder's any-order causal layout (the
`any_order` sampler and estimator; its config.json `train.objective: any_order` makes the tiny spec declare
`any_order_causal`). {init} with d2's any-order causal objective (kuleshov-group/d2
SFT_AO/anyorder_sft_trainer.py: a random order of the completion, shuffled inside chunks of {cfg.ao_block_length};
one pass over [prompt ; clean completion ; mask queries], clean tokens causal in the order, each mask query
seeing the prompt and the clean tokens strictly before it; loss Σ CE / L at the mask queries, EOS padding
included; prompt never masked) on task `{cfg.task}` with parameters {dict(cfg.task_params)}.
"""
        decoding = (f"greedy `any_order` decoding (two tokens per step by confidence, blocks of "
                    f"{cfg.ao_block_length},\n  canvas")
    elif cfg.block_size:
        init = (f"Initialised from the weights of `{cfg.init_from}` (BD3-LM likewise fine-tunes block models\nfrom a "
                "full-attention MDLM), then trained" if cfg.init_from else "Trained from scratch")
        head = f"""# Tiny block-diffusion checkpoint: {cfg.task}, block {cfg.block_size}

A block-diffusion transformer ({metrics['n_params']:,} parameters; d_model {cfg.d_model}, {cfg.n_layers} layers,
{cfg.n_heads} heads, d_ff {cfg.d_ff}, block_size {cfg.block_size}) with the harness's character tokenizer: attention
is bidirectional inside a block of {cfg.block_size} positions and causal across blocks, blocks counted from the first
real token (harness/models/block_attention.py). {init} with BD3-LM's objective (one t per sequence
and block, antithetic over the batch, in [eps, 1]; completion tokens masked with their block's t; one pass over
[x_t ; x_0] scores each noised block given the clean earlier blocks; loss (1/t)·CE over masked tokens / L; prompt
never masked) on task `{cfg.task}` with parameters {dict(cfg.task_params)}.
"""
        decoding = (f"greedy low-confidence decoding block by block (blocks of {cfg.block_size}, one token per "
                    "step,\n  canvas")
    else:
        head = f"""# Tiny MDLM checkpoint: {cfg.task}

A bidirectional transformer masked diffusion LM ({metrics['n_params']:,} parameters; d_model {cfg.d_model},
{cfg.n_layers} layers, {cfg.n_heads} heads, d_ff {cfg.d_ff}) with the harness's character tokenizer, trained from
scratch with the MDLM objective (t ~ U(eps, 1), completion tokens masked with probability t, loss (1/t)·CE
over masked tokens / L; prompt never masked) on task `{cfg.task}` with parameters {dict(cfg.task_params)}.
"""
        decoding = "greedy low-confidence decoding (one token per step, canvas"
    rows = "\n".join(f"| {h['step']} | {h['loss']} | {h['greedy_accuracy']:.3f} | {h['elapsed_s']} |" for h in history)
    items = f"{metrics['eval_items']} test items: **{metrics['greedy_accuracy']:.3f}**"
    accuracy = (f"{decoding} {task.gen_length} tokens) on the first {items}\n  (exact match of the integer sum)."
                if cfg.block_size or cfg.objective == "any_order" else
                f"{decoding} {task.gen_length} tokens) on the first\n  {items} (exact match of the integer sum).")
    return f"""{head}
- Training: {cfg.steps} steps at batch {cfg.batch_size}, AdamW lr {cfg.lr} (warmup {cfg.warmup}, cosine to 10%),
  weight decay {cfg.weight_decay}, seed {cfg.seed}, {cfg.threads} CPU threads; took {metrics['train_seconds']} s.
- Accuracy: {accuracy}
- Retrain (bit-identical on the same machine and thread count):

```
{cmd}
```

| step | loss | greedy accuracy | elapsed s |
|---|---|---|---|
{rows}
"""


