"""low_confidence on a hand-built denoiser whose confidences are known in advance."""
from __future__ import annotations

import torch

from harness.registry import SAMPLERS
from harness.types import ArchInfo


class FixedConfidence:
    """Predicts token 3 + (position mod 4) at every masked position with a fixed, per-position
    probability, independent of the context: the commit order must follow `conf` exactly."""

    mask_id, eos_id, pad_id, shift_logits = 1, 2, 0, False
    vocab_size = 8
    device = torch.device("cpu")
    arch = ArchInfo(n_params=1, n_layers=1, d_model=1)

    class tokenizer:  # noqa: N801 - a minimal tokenizer namespace
        @staticmethod
        def decode(ids, stop_at_eos=True):
            return "".join(str(i) for i in ids)

    def __init__(self, conf: list[float], prompt_len: int):
        self.conf = torch.tensor(conf)
        self.P = prompt_len

    def logits(self, x, attention_mask=None):
        B, T = x.shape
        out = torch.full((B, T, self.vocab_size), -1e4)
        for k in range(T - self.P):
            p = self.conf[k]
            # two live tokens: the proposal with probability p, token 7 with 1 - p
            out[:, self.P + k, 3 + k % 4] = torch.log(p)
            out[:, self.P + k, 7] = torch.log(1 - p)
        return out


def test_commits_in_hand_computed_confidence_order():
    conf = [0.6, 0.9, 0.7, 0.95, 0.8, 0.65]
    den = FixedConfidence(conf, prompt_len=2)
    gen = SAMPLERS.build("low_confidence", {})(den, torch.tensor([[5, 5]]), generator=None, gen_length=6)
    order = sorted(range(6), key=lambda k: -conf[k])  # [3, 1, 4, 2, 5, 0]
    assert gen.commit_step[0].tolist() == [order.index(k) for k in range(6)]
    assert gen.tokens[0].tolist() == [3 + k % 4 for k in range(6)]
    assert gen.steps == 6


def test_semi_ar_blocks_never_commit_past_the_current_block():
    conf = [0.5, 0.6, 0.7, 0.99, 0.98, 0.97]  # the late positions are the most confident
    den = FixedConfidence(conf, prompt_len=1)
    gen = SAMPLERS.build("low_confidence", {"block_length": 3})(den, torch.tensor([[5]]), generator=None,
                                                                   gen_length=6)
    steps = gen.commit_step[0].tolist()
    assert max(steps[:3]) < min(steps[3:])  # block 1 finishes before block 2 starts
    assert steps[:3] == [2, 1, 0]


def test_several_tokens_per_step_follow_llada_schedule():
    den = FixedConfidence([0.6, 0.9, 0.7, 0.95, 0.8], prompt_len=1)
    gen = SAMPLERS.build("low_confidence", {"steps": 2})(den, torch.tensor([[5]]), generator=None, gen_length=5)
    # 5 tokens over 2 steps: 3 then 2 (the remainder goes to the earlier steps)
    assert sorted(gen.commit_step[0].tolist()) == [0, 0, 0, 1, 1]
    assert gen.commit_step[0].tolist() == [1, 0, 1, 0, 0]


def test_same_seed_same_output_with_temperature():
    from tests.helpers import make_tiny

    den = make_tiny()
    sampler = SAMPLERS.build("low_confidence", {"temperature": 1.0})
    prompt = torch.tensor([[3, 4, 5, 6]] * 3)
    a = sampler(den, prompt, generator=torch.Generator().manual_seed(7), gen_length=6)
    b = sampler(den, prompt, generator=torch.Generator().manual_seed(7), gen_length=6)
    c = sampler(den, prompt, generator=torch.Generator().manual_seed(8), gen_length=6)
    assert torch.equal(a.tokens, b.tokens) and a.text == b.text
    assert not torch.equal(a.tokens, c.tokens)


def test_the_confidence_at_commit_is_the_probability_the_step_gave_the_token():
    """Each position's proposal has a fixed probability, so the trace must carry exactly `conf`."""
    conf = [0.6, 0.9, 0.7, 0.95, 0.8, 0.65]
    den = FixedConfidence(conf, prompt_len=2)
    for params in ({}, {"block_length": 2, "steps": 6}, {"steps": 2}):
        gen = SAMPLERS.build("low_confidence", params)(den, torch.tensor([[5, 5]]), generator=None, gen_length=6)
        assert torch.allclose(gen.commit_conf[0], torch.tensor(conf), atol=1e-5), params


def test_a_block_model_records_the_confidence_of_every_committed_token():
    from harness.registry import MODELS, TASKS
    from harness.text import encode_prompts

    den = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16-block4"}).load()
    items = TASKS.build("addition", {"n_digits": 3}).items("test")[:3]
    ids, mask = encode_prompts(den.tokenizer, [it.prompt for it in items], den.pad_id)
    gen = SAMPLERS.build("low_confidence", {})(den, ids, prompt_mask=mask, generator=None, gen_length=8)
    done = gen.commit_step >= 0
    assert done.any() and gen.commit_conf.shape == gen.commit_step.shape
    assert torch.isfinite(gen.commit_conf[done]).all() and not torch.isfinite(gen.commit_conf[~done]).any()
    assert ((gen.commit_conf[done] > 0) & (gen.commit_conf[done] <= 1)).all()
