"""Samplers read a shifted-logit model's prediction for column k at position k - 1 (Dream).

`Shifted` wraps a tiny model and moves every prediction one position to the left, declaring
`shift_logits`; decoding through it must give exactly the tokens the unshifted model gives."""
from __future__ import annotations

import pytest
import torch

from harness.registry import SAMPLERS
from harness.text import encode_prompts
from harness.types import HarnessError
from tests.helpers import make_tiny


class Shifted:
    def __init__(self, inner):
        self.inner = inner
        for name in ("mask_id", "vocab_size", "eos_id", "pad_id", "tokenizer", "device", "arch"):
            setattr(self, name, getattr(inner, name))
        self.shift_logits = True

    def logits(self, x, attention_mask=None):
        out = self.inner.logits(x, attention_mask)  # [B, T, V]
        return torch.cat([out[:, 1:], torch.zeros_like(out[:, :1])], 1)  # column k's prediction at k - 1


@pytest.mark.parametrize("name, params", [("low_confidence", {"block_length": 4}), ("threshold", {"tau": 0.2}),
                                          ("entropy", {}), ("remdm", {"steps": 12})])
def test_shifted_model_decodes_like_the_unshifted_one(name, params):
    den = make_tiny(max_len=24)
    ids, mask = encode_prompts(den.tokenizer, ["12+34=", "5+6=", "123+4="], den.pad_id)
    sampler = SAMPLERS.build(name, params)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    a = sampler(den, ids, generator=gens(), prompt_mask=mask, gen_length=8)
    b = sampler(Shifted(den), ids, generator=gens(), prompt_mask=mask, gen_length=8)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)


def test_cache_with_a_shifted_model_is_refused():
    den = Shifted(make_tiny(max_len=24))
    ids, mask = encode_prompts(den.tokenizer, ["12+34="], den.pad_id)
    with pytest.raises(HarnessError, match="shifted-logit"):
        SAMPLERS.build("low_confidence", {"cache": "dual"})(den, ids, generator=None, prompt_mask=mask, gen_length=8)
