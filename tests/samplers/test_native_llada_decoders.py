"""WINO and the approximate caches on the native LLaDA (the `tiny` preset, randomly initialised with
a wide init so that its predictions are spread from near-uniform to confident), which now provides
`logits_pattern` and `logits_layerwise`.

- `wino` against `reference_wino` (tests/samplers/test_wino.py), the line-by-line transcription of
  Feng-Hong/WINO-DLLM `LLaDA/decoding.py` `decoding_wino`, whose model call takes exactly the
  pattern and position ids that `logits_pattern` applies. The harness never proposes the mask
  token and leaves it out of both softmaxes (a documented difference, harness/samplers/wino.py);
  a trained model gives it ~0, a random one does not, so the reference's forward here drops it too.
- `cache: dkv` / `cache: dllm_cache` refreshing every step are the uncached loop token for token
  (as tests/samplers/test_approx_cache.py shows on the tiny model), with left-padded prompts; a
  real interval computes fewer columns, and the meter counts what the layers really computed.
"""
from __future__ import annotations

import pytest
import torch

from harness.budget import Meter
from harness.models.native.llada import LLaDALayers
from harness.registry import MODELS, SAMPLERS
from tests.samplers.test_wino import reference_wino

torch.set_num_threads(1)

EXACT = {"dkv": {"cache": "dkv", "refresh": 1},
         "dllm_cache": {"cache": "dllm_cache", "refresh": 1, "prompt_refresh": 1}}


@pytest.fixture(scope="module")
def den():
    return MODELS.build("llada", {"preset": "tiny", "config": {"init_std": 0.4}}).load()


def prompts(n: int = 4, seed: int = 0):
    """Left-padded random prompts of lengths 3..6 (ids below the preset's special tokens)."""
    g = torch.Generator().manual_seed(seed)
    lens = [3 + (i * 5) % 4 for i in range(n)]
    ids = torch.zeros(n, max(lens), dtype=torch.long)
    mask = torch.zeros(n, max(lens), dtype=torch.bool)
    for r, m in enumerate(lens):
        ids[r, -m:] = torch.randint(0, 120, (m,), generator=g)
        mask[r, -m:] = True
    return ids, mask


def reference_forward(den):
    def forward(x, attention_mask, position_ids):
        logits = den.logits_pattern(x, attention_mask, position_ids[None]).clone()
        logits[..., den.mask_id] = -torch.inf  # the harness's documented difference (module docstring)
        return logits
    return forward


# (gen_length, block_length, threshold, threshold_back)
SETTINGS = [(16, 16, 0.6, 0.9), (16, 8, 0.3, 0.6), (16, 4, 0.2, 0.9), (12, 12, 0.4, 1.0)]


def test_wino_equals_the_reference_transcription_on_native_llada(den):
    ids, mask = prompts(6)
    events = []
    for L, bl, thr, back in SETTINGS:
        sampler = SAMPLERS.build("wino", {"block_length": bl, "threshold": thr, "threshold_back": back})
        for r in range(ids.shape[0]):
            prompt = ids[r, mask[r]][None]
            want, passes = reference_wino(reference_forward(den), prompt, L, bl, den.mask_id, thr, back, events)
            meter = Meter(den)
            gen = sampler(meter, prompt, generator=[torch.Generator().manual_seed(0)], gen_length=L)
            cut = int(gen.gen_len[0])  # the harness cuts at the first stop token
            assert torch.equal(gen.tokens[0, :cut], want[0, prompt.shape[1]:][:cut]), (L, bl, thr, back, r)
            assert gen.steps == passes == meter.cost.nfe
    # the parity is informative: drafts of several tokens, re-masking and the single-token fallback all occur
    assert sum(a > 1 for _, a, _ in events) >= 10 and sum(rm for _, _, rm in events) >= 10
    assert sum(a == 1 for _, a, _ in events) >= 10


def test_wino_batch_rows_decode_as_alone_on_native_llada(den):
    ids, mask = prompts(4, seed=1)
    sampler = SAMPLERS.build("wino", {"block_length": 8, "threshold": 0.3, "threshold_back": 0.6})
    gen = sampler(den, ids, prompt_mask=mask, generator=[torch.Generator().manual_seed(i) for i in range(4)],
                  gen_length=16)
    for r in range(ids.shape[0]):
        one = sampler(den, ids[r, mask[r]][None], generator=[torch.Generator().manual_seed(r)], gen_length=16)
        assert torch.equal(gen.tokens[r], one.tokens[0]) and int(gen.row_steps[r]) == one.steps, r


@pytest.mark.parametrize("policy", sorted(EXACT))
@pytest.mark.parametrize("name, params", [("low_confidence", {"block_length": 8}),
                                          ("threshold", {"tau": 0.3, "block_length": 8})])
def test_refresh_every_step_equals_the_uncached_loop_on_native_llada(den, policy, name, params):
    ids, mask = prompts()
    base, meter = Meter(den), Meter(den)
    a = SAMPLERS.build(name, params)(base, ids, generator=None, prompt_mask=mask, gen_length=16)
    b = SAMPLERS.build(name, dict(params, **EXACT[policy]))(meter, ids, generator=None, prompt_mask=mask,
                                                            gen_length=16)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)
    assert meter.cost.nfe_cached == 0 and meter.cost.nfe_full == base.cost.nfe_full
    assert meter.cost.tokens == base.cost.tokens


def test_dllm_cache_updating_every_response_column_equals_the_uncached_loop_on_native_llada(den):
    """refresh_ratio 1 recomputes every response column through the adaptive path (values, then q/k of
    the picked columns by `qkv_at` at their canvas positions, gathers and scatters) at each pass that
    is not a response refresh; with the prompt refreshed each pass too, that is a full pass computed
    another way, so a wrong rotary position would change tokens."""
    ids, mask = prompts()
    params = {"block_length": 8}
    a = SAMPLERS.build("low_confidence", params)(den, ids, generator=None, prompt_mask=mask, gen_length=16)
    meter = Meter(den)
    b = SAMPLERS.build("low_confidence", dict(params, cache="dllm_cache", refresh=100, prompt_refresh=1,
                                              refresh_ratio=1.0))(meter, ids, generator=None, prompt_mask=mask,
                                                                  gen_length=16)
    assert meter.cost.nfe_cached > 0  # the adaptive path ran
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)


class Counting:
    """Forwards to the denoiser; runs each layer-wise pass on an LLaDALayers that counts the columns
    each layer's q/k/v (whole canvas or `qkv_at`) and MLP really received."""

    def __init__(self, inner):
        self.inner, self.calls, self.computed = inner, [], []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def logits_build_cache(self, x, attention_mask=None, *, keep):  # dKV's full passes (declared on the type)
        return self.inner.logits_build_cache(x, attention_mask, keep=keep)

    def logits_cached(self, x, cache, **kwargs):
        return self.inner.logits_cached(x, cache, **kwargs)

    def logits_layerwise(self, run, **work):
        self.calls.append(work)
        seen = {"qkv": {}, "mlp": {}}
        self.computed.append(seen)

        class Layers(LLaDALayers):
            def qkv(s, i, h):
                seen["qkv"][i] = seen["qkv"].get(i, 0) + h.shape[1]
                return super().qkv(i, h)

            def qkv_at(s, i, h, columns):
                seen["qkv"][i] = seen["qkv"].get(i, 0) + h.shape[1]
                return super().qkv_at(i, h, columns)

            def mlp(s, i, h):
                seen["mlp"][i] = seen["mlp"].get(i, 0) + h.shape[1]
                return super().mlp(i, h)

        return run(Layers(self.inner.module))


@pytest.mark.parametrize("params", [{"cache": "dkv", "refresh": 3}, {"cache": "dllm_cache", "refresh": 3,
                                                                     "prompt_refresh": 5}])
def test_a_real_interval_computes_fewer_columns_and_the_meter_counts_them(den, params):
    ids, mask = prompts()
    base = Meter(den)
    SAMPLERS.build("low_confidence", {"block_length": 8})(base, ids, generator=None, prompt_mask=mask, gen_length=16)
    spy = Counting(den)
    meter = Meter(spy)
    SAMPLERS.build("low_confidence", dict(params, block_length=8))(meter, ids, generator=None, prompt_mask=mask,
                                                                   gen_length=16)
    assert spy.calls and len(spy.calls) == len(spy.computed)
    for work, seen in zip(spy.calls, spy.computed):
        lt = work["layer_tokens"]
        assert [seen["qkv"].get(i, 0) for i in range(len(lt))] == lt
        assert [seen["mlp"].get(i, 0) for i in range(len(lt))] == lt
    assert meter.cost.nfe == base.cost.nfe and meter.cost.nfe_cached > 0
    assert meter.cost.tokens < base.cost.tokens


@pytest.mark.parametrize("cache", ["dkv", "dllm_cache"])
def test_the_approximate_caches_are_refused_at_plan_time_without_a_layer_view(tmp_path, cache):
    """The plan asks the model spec for `logits_layerwise` when a sampler's cache needs it: the public
    files (LLaDA's and Dream's, impl remote) and a block checkpoint fail before any compute; the native
    LLaDA and Dream and the tiny model plan."""
    from harness.config import load_suite, plan
    from harness.types import HarnessError
    from tests.helpers import write_suite

    def suite(model: str, name: str) -> str:
        return (f"suite: caps\nmodels: {{m: {model}}}\n"
                "tasks: {t: {name: addition, params: {n_digits: 2}, split: test, n_items: 2}}\n"
                "studies:\n  - {id: g, kind: generate, model: m, task: t, sampler: {name: low_confidence, "
                f"params: {{steps: 4, cache: {cache}, refresh: 2}}}}}}\n")

    for i, model in enumerate(["{name: llada, params: {preset: tiny}}", "{name: dream, params: {preset: tiny}}",
                               "{name: tiny, params: {}}"]):
        assert plan(load_suite(write_suite(tmp_path, suite(model, cache), f"ok{i}.yaml")))
    for i, model in enumerate(["{name: llada, params: {preset: tiny, impl: remote}}",
                               "{name: dream, params: {preset: tiny, impl: remote}}",
                               "{name: tiny, params: {checkpoint: tiny-addition-c16-block4}}"]):
        with pytest.raises(HarnessError, match="needs the model's logits_layerwise.*models "
                           "that do, as configured by default: .*llada.*tiny"):
            plan(load_suite(write_suite(tmp_path, suite(model, cache), f"no{i}.yaml")))
    plain = suite("{name: dream, params: {preset: tiny}}", cache).replace(f"cache: {cache}, refresh: 2", "cache: dual")
    assert plan(load_suite(write_suite(tmp_path, plain, "dual.yaml")))  # the exact caches need no layer view
