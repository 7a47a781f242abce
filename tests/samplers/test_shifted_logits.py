"""Samplers read a shifted-logit model's prediction for column k at position k - 1 (Dream).

`Shifted` wraps a tiny model and moves every prediction one position to the left, declaring
`shift_logits`; decoding through it must give exactly the tokens the unshifted model gives, with or
without a KV cache (the cached query columns start one column earlier, at lo - 1)."""
from __future__ import annotations

import pytest
import torch

from harness.budget import Meter
from harness.models.tiny import CharTokenizer, TinyConfig, TinyDenoiser, TinyMDLM
from harness.registry import SAMPLERS
from harness.text import encode_prompts
from tests.helpers import make_tiny


def tiny(n_layers: int) -> TinyDenoiser:
    tok = CharTokenizer()
    cfg = TinyConfig(vocab_size=len(tok), max_len=24, d_model=32, n_layers=n_layers, n_heads=2, d_ff=64)
    return TinyDenoiser(TinyMDLM(cfg, generator=torch.Generator().manual_seed(0)).eval(), tok)


class Shifted:
    def __init__(self, inner):
        self.inner = inner
        for name in ("mask_id", "vocab_size", "eos_id", "pad_id", "tokenizer", "device", "arch"):
            setattr(self, name, getattr(inner, name))
        self.shift_logits = True

    @staticmethod
    def shift(out):
        """[B, T, V] -> [B, T, V]: column k's prediction at k - 1 (the last position gets zeros)."""
        return torch.cat([out[:, 1:], torch.zeros_like(out[:, :1])], 1)

    def logits(self, x, attention_mask=None):
        return self.shift(self.inner.logits(x, attention_mask))

    def logits_build_cache(self, x, attention_mask=None, *, keep):
        out, cache = self.inner.logits_build_cache(x, attention_mask, keep=keep)
        return self.shift(out), cache

    def logits_cached(self, x, cache, *, positions, attention_mask=None):
        """Within the query columns: the last one's prediction (for a column not queried) is zeros,
        and the sampler never reads it."""
        return self.shift(self.inner.logits_cached(x, cache, positions=positions, attention_mask=attention_mask))


@pytest.mark.parametrize("name, params", [("low_confidence", {"block_length": 4}), ("threshold", {"tau": 0.2}),
                                          ("entropy", {}), ("remdm", {"steps": 12}),
                                          ("rcr", {"steps": 4, "block_length": 4}), ("pc_sampler", {"block_length": 4}),
                                          ("klass", {"block_length": 4, "conf_threshold": 0.05, "kl_threshold": 0.5})])
def test_shifted_model_decodes_like_the_unshifted_one(name, params):
    den = make_tiny(max_len=24)
    ids, mask = encode_prompts(den.tokenizer, ["12+34=", "5+6=", "123+4="], den.pad_id)
    sampler = SAMPLERS.build(name, params)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    a = sampler(den, ids, generator=gens(), prompt_mask=mask, gen_length=8)
    b = sampler(Shifted(den), ids, generator=gens(), prompt_mask=mask, gen_length=8)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("name, params", [("low_confidence", {}), ("threshold", {"tau": 0.1})])
def test_shifted_model_with_a_cache_decodes_like_the_unshifted_one(cache, name, params):
    """A one-layer model's cache is exact, so with several steps per block the shifted view with a
    cache, the unshifted model with a cache and the uncached decode agree exactly."""
    den = tiny(n_layers=1)
    ids, mask = encode_prompts(den.tokenizer, ["12+34=", "5+6=", "123+4="], den.pad_id)
    base = dict(params, block_length=4)
    run = lambda d, c: SAMPLERS.build(name, dict(base, cache=c))(  # noqa: E731
        d, ids, generator=None, prompt_mask=mask, gen_length=16)
    a, b, c = run(den, cache), run(Shifted(den), cache), run(Shifted(den), "none")
    assert a.steps > 4  # several steps per block: cached passes really happened
    for g in (b, c):
        assert torch.equal(a.tokens, g.tokens) and torch.equal(a.commit_step, g.commit_step)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_meter_counts_a_shifted_cached_pass_over_its_query_columns(cache):
    """Full passes at block starts, cached ones after; a cached pass covers [lo - 1, T) (prefix)
    or [lo - 1, hi) (dual): one column more than for an unshifted model."""
    meter = Meter(Shifted(tiny(n_layers=2)))
    B, P, L, block = 3, 4, 16, 4
    prompt = torch.randint(3, 20, (B, P), generator=torch.Generator().manual_seed(0))
    SAMPLERS.build("low_confidence", {"block_length": block, "cache": cache})(meter, prompt, generator=None,
                                                                             gen_length=L)
    c = meter.cost
    T, n_blocks = P + L, L // block
    assert c.nfe_full == B * n_blocks and c.nfe_cached == B * n_blocks * (block - 1)
    q = [T - lo + 1 if cache == "prefix" else block + 1 for lo in range(P, T, block)]  # query columns
    assert c.tokens == B * n_blocks * T + sum(B * (block - 1) * n for n in q)
