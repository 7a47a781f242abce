"""Prefix and dual KV caches (Fast-dLLM): exact where they must be, counted apart by the meter.

A cached column's keys/values are computed at the block start. In a bidirectional model they
would change once the block's tokens are committed (every column attends to every other), so the
cache is stale, not exact, in general. It is exact (a) when the canvas has not changed since the
cache was built, (b) in a one-layer model, whose keys/values depend on a column's own token only
(and semi-AR decoding changes nothing outside the current block), (c) when a block takes one step.
"""
from __future__ import annotations

import pytest
import torch

from harness.budget import Meter, attention_flops
from harness.models.tiny import CharTokenizer, TinyConfig, TinyDenoiser, TinyMDLM
from harness.registry import MODELS, SAMPLERS, TASKS
from harness.text import encode_prompts
from tests.helpers import make_tiny

CACHES = ["prefix", "dual"]


def tiny(n_layers=2, max_len=24, seed=0):
    tok = CharTokenizer()
    cfg = TinyConfig(vocab_size=len(tok), max_len=max_len, d_model=32, n_layers=n_layers, n_heads=2, d_ff=64)
    return TinyDenoiser(TinyMDLM(cfg, generator=torch.Generator().manual_seed(seed)).eval(), tok)


def padded_prompts(den, texts=("12+34=", "5+6=", "123+4=")):
    return encode_prompts(den.tokenizer, list(texts), den.pad_id)


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("keep, query", [(range(0, 8), range(8, 20)),  # prefix layout
                                         ([*range(0, 8), *range(12, 20)], range(8, 12)),  # dual layout
                                         (range(0, 20, 2), range(1, 20, 2))])  # scattered
def test_cached_pass_equals_the_full_pass_on_an_unchanged_canvas(with_mask, keep, query):
    den = make_tiny(max_len=24)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, len(den.tokenizer), (3, 20), generator=g)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, :3] = False  # a left-padded row
    mask = mask if with_mask else None
    keep, query = torch.tensor(list(keep)), torch.tensor(list(query))
    with torch.no_grad():
        full = den.logits(x, mask)
        again, cache = den.logits_build_cache(x, mask, keep=keep)
        part = den.logits_cached(x[:, query], cache, positions=query, attention_mask=mask)
    assert torch.equal(again, full)  # the cache-building pass is the ordinary full pass
    assert cache.length == len(keep)
    assert torch.allclose(part, full[:, query], atol=1e-5)


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("name, params", [("low_confidence", {}), ("threshold", {"tau": 0.1}),
                                          ("entropy_bound", {"bound": 2.0}), ("margin", {"steps": 8})])
def test_one_layer_model_cache_is_exact(cache, name, params):
    den = tiny(n_layers=1)
    ids, mask = padded_prompts(den)
    base = dict(params, block_length=4)
    a = SAMPLERS.build(name, base)(den, ids, generator=None, prompt_mask=mask, gen_length=16)
    b = SAMPLERS.build(name, dict(base, cache=cache))(den, ids, generator=None, prompt_mask=mask, gen_length=16)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)
    assert a.steps > 4  # several steps per block: cached passes really happened


@pytest.mark.parametrize("cache", CACHES)
def test_one_step_per_block_is_exact_for_any_model(cache):
    den = tiny(n_layers=2)
    ids, mask = padded_prompts(den)
    params = {"block_length": 4, "steps": 4}
    a = SAMPLERS.build("low_confidence", params)(den, ids, generator=None, prompt_mask=mask, gen_length=16)
    b = SAMPLERS.build("low_confidence", dict(params, cache=cache))(den, ids, generator=None, prompt_mask=mask,
                                                                      gen_length=16)
    assert torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize("cache", CACHES)
def test_meter_counts_full_and_cached_passes_apart(cache):
    den = tiny(n_layers=2)
    meter = Meter(den)
    B, P, L, block = 3, 4, 16, 4
    prompt = torch.randint(3, 20, (B, P), generator=torch.Generator().manual_seed(0))
    SAMPLERS.build("low_confidence", {"block_length": block, "cache": cache})(meter, prompt, generator=None,
                                                                             gen_length=L)
    c = meter.cost
    T, n_blocks, per_block = P + L, L // block, L // (L // block)
    assert c.nfe_full == B * n_blocks  # one cache-building pass per block
    assert c.nfe_cached == B * n_blocks * (per_block - 1)
    assert c.nfe == B * L
    lows = [P + b * block for b in range(n_blocks)]
    q = [T - lo if cache == "prefix" else block for lo in lows]  # query columns of a cached pass
    assert c.tokens == B * n_blocks * T + sum(B * (per_block - 1) * n for n in q)
    arch = den.arch
    flops = n_blocks * (2.0 * arch.n_params * B * T + attention_flops(arch.n_layers, arch.d_model, B, T, T))
    flops += sum((per_block - 1) * (2.0 * arch.n_params * B * n + attention_flops(arch.n_layers, arch.d_model, B, n, T))
                 for n in q)  # every cached pass attends to all T columns (cached + its own)
    assert c.flops == pytest.approx(flops)


@pytest.mark.parametrize("cache", CACHES)
def test_adaptive_sampler_counts_one_full_pass_per_block_and_row(cache, tiny_addition, addition_prompts):
    ids, mask = addition_prompts
    meter = Meter(tiny_addition)
    gen = SAMPLERS.build("threshold", {"cache": cache, "tau": 0.9})(meter, ids, generator=None, prompt_mask=mask,
                                                                   gen_length=5)
    passes = int((gen.commit_step.max(1).values + 1).sum())  # per row: its own number of steps
    assert meter.cost.nfe_full == len(ids) and meter.cost.nfe_cached == passes - len(ids)


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("name, params", [("low_confidence", {}), ("threshold", {"tau": 0.3}),
                                          ("entropy_bound", {"bound": 1.0})])
def test_refresh_every_step_is_exact_for_any_model(cache, name, params):
    """refresh=1 rebuilds the cache at every step: every pass is a full pass, so the tokens equal
    the uncached sampler's for a deep model too (adaptive samplers: rows leave mid-block)."""
    den = tiny(n_layers=2)
    ids, mask = padded_prompts(den)
    base = dict(params, block_length=8)
    a = SAMPLERS.build(name, base)(den, ids, generator=None, prompt_mask=mask, gen_length=16)
    meter = Meter(den)
    b = SAMPLERS.build(name, dict(base, cache=cache, refresh=1))(meter, ids, generator=None, prompt_mask=mask,
                                                                 gen_length=16)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)
    assert meter.cost.nfe_cached == 0 and meter.cost.nfe_full == int((b.commit_step.max(1).values + 1).sum())


@pytest.mark.parametrize("cache", CACHES)
def test_refresh_counts_one_full_pass_per_refresh(cache):
    den = tiny(n_layers=2)
    meter = Meter(den)
    B, P, L, block, refresh = 3, 4, 16, 8, 3
    prompt = torch.randint(3, 20, (B, P), generator=torch.Generator().manual_seed(0))
    SAMPLERS.build("low_confidence", {"block_length": block, "cache": cache, "refresh": refresh})(
        meter, prompt, generator=None, gen_length=L)
    full_per_block = len(range(0, block, refresh))  # steps 0, 3, 6 of each 8-step block
    assert meter.cost.nfe_full == B * (L // block) * full_per_block
    assert meter.cost.nfe_cached == B * L - meter.cost.nfe_full


def test_refresh_after_rows_left_the_block_uses_their_own_cache_rows():
    """An adaptive sampler rebuilds the cache for the live rows only; a later cached pass over a
    smaller set of rows must pick those rows' entries (a wrong row would change the tokens)."""
    den = tiny(n_layers=1)  # one layer: the cache is exact, so any row mix-up shows as a difference
    ids, mask = padded_prompts(den, ("12+34=", "5+6=", "123+4=", "9=", "77+1=", "3+3="))
    params = {"tau": 0.05, "block_length": 8}  # near a random model's typical confidence: rows differ
    a = SAMPLERS.build("threshold", params)(den, ids, generator=None, prompt_mask=mask, gen_length=16)
    b = SAMPLERS.build("threshold", dict(params, cache="dual", refresh=2))(den, ids, generator=None,
                                                                          prompt_mask=mask, gen_length=16)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)
    steps = b.commit_step.max(1).values + 1
    assert steps.max() > steps.min()  # rows really left at different steps


def test_cache_needs_a_model_that_supports_it():
    from harness.types import HarnessError
    from tests.samplers.toys import TableDenoiser

    den = TableDenoiser([[0.5, 0.5]] * 4, prompt_len=1)
    with pytest.raises(HarnessError, match="KV-cache support"):
        SAMPLERS.build("low_confidence", {"cache": "prefix"})(den, torch.tensor([[5]]), generator=None, gen_length=4)


def _agreement(den, items, params, cache):
    ids, mask = encode_prompts(den.tokenizer, [it.prompt for it in items], den.pad_id)
    a = SAMPLERS.build("low_confidence", params)(den, ids, generator=None, prompt_mask=mask, gen_length=5)
    b = SAMPLERS.build("low_confidence", dict(params, cache=cache))(den, ids, generator=None, prompt_mask=mask,
                                                                      gen_length=5)
    return (a.tokens == b.tokens).float().mean().item()


@pytest.mark.parametrize("cache", CACHES)
def test_tiny_addition_one_token_blocks_agree_exactly(cache, tiny_addition, addition_items):
    assert _agreement(tiny_addition, addition_items[:200], {"block_length": 1}, cache) == 1.0


@pytest.mark.parametrize("cache", CACHES)
def test_tiny_addition_stale_cache_agreement_is_measured(cache, tiny_addition, addition_items):
    """One 5-token block: the prompt's keys/values are cached while the whole answer is masked and
    reused for 4 more steps. Measured: 94.8% of greedy tokens agree (24.5% of rows differ) on
    200 items; this guards that level."""
    assert _agreement(tiny_addition, addition_items[:200], {}, cache) >= 0.94


@pytest.mark.xfail(strict=True, reason="the 5-token default checkpoint measures 94.8% greedy-token agreement with a "
                                       "stale one-block cache; the >= 99% target is met on tiny-addition-c16 below")
def test_tiny_addition_stale_cache_meets_the_99_percent_target(tiny_addition, addition_items):
    assert _agreement(tiny_addition, addition_items[:200], {}, "dual") >= 0.99


@pytest.fixture(scope="module")
def c16():
    den = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16"}).load()
    items = TASKS.build("addition", {"n_digits": 3, "canvas": 16}).items("test")[:200]
    ids, mask = encode_prompts(den.tokenizer, [it.prompt for it in items], den.pad_id)
    return den, ids, mask


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("params", [{}, {"block_length": 4}, {"block_length": 8, "refresh": 2}])
def test_long_canvas_cache_agrees_on_99_percent_of_greedy_answer_tokens(cache, params, c16):
    """The issue's >= 99% target, on the trained 16-token-canvas checkpoint (greedy accuracy 0.952).
    Counted over the tokens up to and including the uncached run's first EOS, so the easy EOS tail
    does not pad the number. Measured on 300 items: 99.64% (no refresh), 99.8-99.9% (refresh 2)."""
    den, ids, mask = c16
    a = SAMPLERS.build("low_confidence", params)(den, ids, generator=None, prompt_mask=mask, gen_length=16)
    b = SAMPLERS.build("low_confidence", dict(params, cache=cache))(den, ids, generator=None, prompt_mask=mask,
                                                                      gen_length=16)
    answer = torch.arange(16)[None, :] < a.gen_len[:, None]  # [B, L]
    assert (a.tokens == b.tokens)[answer].float().mean().item() >= 0.99
    assert not torch.equal(a.tokens, b.tokens) or params.get("refresh")  # stale, not exact: a real test
