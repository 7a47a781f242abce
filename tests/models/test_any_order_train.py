"""`dlm-harness train --objective any_order`: d2's any-order causal fine-tuning, against a line-cited
transcription of kuleshov-group/d2 SFT_AO/anyorder_sft_trainer.py (`dLLMDataCollator.__call__` lines
114-138 builds the permuted layout, `dLLMTrainer.compute_loss` lines 29-51 its attention bias and loss),
run on the tiny model's `logits_pattern` with the bias as a bool pattern; and the checkpoint it writes
declares `any_order_causal`."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from harness.config import declared_capabilities
from harness.models.train import TrainConfig, any_order_loss, train
from harness.registry import MODELS
from harness.types import HarnessError
from tests.helpers import make_tiny


def ref_sft_loss(den, prompt, target, generation_order):
    """One sequence: prompt [P], target [L], generation_order [L] (completion positions, 0-based, in order)."""
    prompt_length = len(prompt)
    seq_length = len(target)
    generation_order = generation_order + prompt_length  # build_block_generation_order: absolute indices (:89)
    generation_order_sequence = torch.cat([torch.arange(prompt_length), generation_order])  # :123
    position_ids = torch.cat([generation_order_sequence, generation_order])  # :124
    input_ids = torch.cat([prompt, target])[generation_order_sequence]  # :127
    prompt_ids = input_ids[:prompt_length]  # :128
    answer_ids = input_ids[prompt_length:]  # :129
    labels = torch.cat([prompt_ids, answer_ids, answer_ids])  # :130
    noisy_batch = labels.clone()  # :131
    mask_indices = torch.arange(labels.shape[0]) >= (prompt_length + seq_length)  # :132
    labels[~mask_indices] = -100  # :133
    noisy_batch[mask_indices] = den.mask_id  # :135
    t, prompt_len, seq_len = seq_length, prompt_length, len(labels)  # :137, :29, :32
    attention_bias = torch.zeros(1, 1, seq_len, seq_len)  # :33-36
    attention_bias[..., :prompt_len] = 1.  # :38
    attention_bias[..., prompt_len:prompt_len + t, prompt_len:prompt_len + t] = torch.tril(torch.ones(t, t))  # :39
    attention_bias[..., prompt_len + t:seq_len, prompt_len:prompt_len + t] = torch.tril(torch.ones(t, t))  # :40
    attention_bias[..., prompt_len + t + torch.arange(t), prompt_len + torch.arange(t)] = 0.  # :41
    attention_bias[..., prompt_len + t + torch.arange(t), prompt_len + t + torch.arange(t)] = 1.  # :42
    logits = den.logits_pattern(noisy_batch[None], attention_bias == 1., position_ids[None])  # :45
    unscaled_loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels[None].view(-1),
                                    reduction="none").view(1, -1)  # :48-50
    return unscaled_loss.sum() / t  # :51


@pytest.mark.parametrize("block_length", [32, 3])
def test_loss_is_the_reference_sft_loss(block_length):
    den = make_tiny(seed=2, max_len=12, d_model=16)
    den.module.double()
    g = torch.Generator().manual_seed(0)
    B, P, L = 3, 4, 7
    prompt = torch.randint(3, den.vocab_size - 2, (B, P), generator=g)
    target = torch.randint(3, den.vocab_size - 2, (B, L), generator=g)
    target = torch.where(target == den.mask_id, den.eos_id, target)
    prompt = torch.where(prompt == den.mask_id, den.eos_id, prompt)
    got = any_order_loss(den, prompt, torch.ones(B, P, dtype=torch.bool), target,
                         torch.Generator().manual_seed(5), block_length)
    # the same order draws as any_order_loss: keys = chunk + U(0, 1), so each chunk is shuffled and chunks stay in order
    keys = (torch.arange(L) // block_length)[None] + torch.rand(B, L, generator=torch.Generator().manual_seed(5))
    order = keys.argsort(1)
    if block_length == 3:  # build_block_generation_order's shape: shuffled inside [0, 3), [3, 6), [6, 7)
        assert all(sorted(o[:3].tolist()) == [0, 1, 2] and o[6] == 6 for o in order)
    with torch.no_grad():
        want = torch.stack([ref_sft_loss(den, prompt[b], target[b], order[b]) for b in range(B)]).mean()
    torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-10)


def test_any_order_training_records_its_objective_and_the_spec_declares_it(tmp_path):
    cfg = TrainConfig(task_params=(("n_digits", 2), ("n_train", 2000), ("n_test", 20)), d_model=32, n_layers=1,
                      n_heads=2, d_ff=64, steps=2, batch_size=8, eval_every=2, eval_items=4, threads=1,
                      objective="any_order", ao_block_length=4)
    train(cfg, tmp_path / "ao", progress=False)
    config = json.loads((tmp_path / "ao" / "config.json").read_text())
    assert config["train"]["objective"] == "any_order"
    card = (tmp_path / "ao" / "CARD.md").read_text()
    assert "any-order causal" in card and "--objective any_order --ao-block-length 4" in card
    assert "any_order_causal" in declared_capabilities(MODELS.build("tiny", {"checkpoint": str(tmp_path / "ao")}))
    assert "any_order_causal" not in declared_capabilities(MODELS.build("tiny", {}))
    with pytest.raises(HarnessError, match="objective"):
        TrainConfig(objective="ar")
    with pytest.raises(HarnessError, match="block-size"):
        TrainConfig(objective="any_order", block_size=4)
    with pytest.raises(HarnessError, match="ao-block-length"):
        TrainConfig(ao_block_length=1)


def test_builtin_any_order_checkpoint_reproduces_its_card():
    from harness.models.tiny import CHECKPOINT_DIR
    from harness.models.train import greedy_accuracy
    from harness.registry import TASKS

    path = CHECKPOINT_DIR / "tiny-addition-c16-anyorder"
    config = json.loads((path / "config.json").read_text())
    assert config["train"]["objective"] == "any_order" and config["train"]["init_from"] == "tiny-addition-c16"
    stated = config["metrics"]["greedy_accuracy"]
    assert f"**{stated:.3f}**" in (path / "CARD.md").read_text()
    den = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16-anyorder"}).load()
    task = TASKS.build(config["task"], config["task_params"])
    items = task.items("test")[: config["metrics"]["eval_items"]]
    got = greedy_accuracy(den, task, items, objective="any_order", ao_block_length=config["train"]["ao_block_length"])
    assert got == pytest.approx(stated, abs=0.004)  # ≤ 2 items of 500
    assert (path / "model.pt").stat().st_size < 5 * 2**20
