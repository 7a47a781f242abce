"""Approximate caches `dkv` (dKV-Cache-Decode) and `dllm_cache` (dLLM-Cache): exact when they
refresh every step, the references' caching rules (which columns each pass recomputes), fewer
computed tokens and different outputs with a real interval, and honest metering.

The reference code cannot run here (it needs the 8B LLaDA code and CUDA), so its rules are
transcribed below with line citations:
- horseee/dKV-Cache @49a76fc generation_utils/llada_dkv_cache_decode.py `generate` (the loop) and
  models/modeling_llada_dkv_cache_decode.py `LLaDABlock.forward` lines 996-1065 (the cache);
- maomaocun/dLLM-cache @17235bf dllm_cache/cache/Cache.py `dLLMCache` (the pass counter and the
  refresh tests) and dllm_cache/hooks/cache_hook_LLaDA.py `cache_hook_feature` / `refresh_index`.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.budget import Meter
from harness.models.tiny import CharTokenizer, TinyConfig, TinyDenoiser, TinyLayers, TinyMDLM
from harness.registry import MODELS, SAMPLERS, TASKS
from harness.samplers._approx_cache import DLLMState, dkv_full_step, dllm_plan, refresh_index
from harness.samplers._base import DecodeLoop, transfer_schedule
from harness.text import encode_prompts
from harness.types import HarnessError

torch.set_num_threads(1)

EXACT = {"dkv": {"cache": "dkv", "refresh": 1},
         "dllm_cache": {"cache": "dllm_cache", "refresh": 1, "prompt_refresh": 1}}


def tiny(n_layers=3, seed=0, d_model=32):
    tok = CharTokenizer()
    cfg = TinyConfig(vocab_size=len(tok), max_len=24, d_model=d_model, n_layers=n_layers, n_heads=2, d_ff=64)
    return TinyDenoiser(TinyMDLM(cfg, generator=torch.Generator().manual_seed(seed)).eval(), tok)


def prompts(den, texts=("12+34=", "5+6=", "123+4=")):
    return encode_prompts(den.tokenizer, list(texts), den.pad_id)


@pytest.fixture(scope="module")
def c16():
    den = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16"}).load()
    task = TASKS.build("addition", {"n_digits": 3, "canvas": 16})
    items = task.items("test")[:200]
    ids, mask = encode_prompts(den.tokenizer, [it.prompt for it in items], den.pad_id)
    meter = Meter(den)
    plain = SAMPLERS.build("low_confidence", {"steps": 16})(meter, ids, generator=None, prompt_mask=mask,
                                                            gen_length=16)
    return den, ids, mask, plain, meter.cost


class Spy:
    """Forwards to a denoiser; records every pass: ("full", None) or ("layerwise", work), and with
    `count` the rows each layer's qkv / value / mlp really received."""

    def __init__(self, inner, count=False):
        self.inner, self.count, self.calls, self.computed = inner, count, [], []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def logits(self, x, attention_mask=None):
        self.calls.append(("full", None))
        return self.inner.logits(x, attention_mask)

    def logits_build_cache(self, x, attention_mask=None, *, keep):
        self.calls.append(("full", None))
        return self.inner.logits_build_cache(x, attention_mask, keep=keep)

    def logits_layerwise(self, run, **work):
        self.calls.append(("layerwise", work))
        if not self.count:
            return self.inner.logits_layerwise(run, **work)
        seen = {"qkv": {}, "value": {}, "mlp": {}}
        self.computed.append(seen)

        class Counting(TinyLayers):
            def qkv(s, i, h):
                seen["qkv"][i] = seen["qkv"].get(i, 0) + h.shape[1]
                return super().qkv(i, h)

            def value(s, i, h):
                seen["value"][i] = seen["value"].get(i, 0) + h.shape[1]
                return super().value(i, h)

            def mlp(s, i, h):
                seen["mlp"][i] = seen["mlp"].get(i, 0) + h.shape[1]
                return super().mlp(i, h)

        return run(Counting(self.inner.module))


@pytest.fixture
def steps_seen(monkeypatch):
    """Every step's block logits (before the step edits them) and eligible columns, as the shared
    loop hands them to its step."""
    seen = []
    orig = DecodeLoop._step

    def spy(self, denoiser, logits, blk, *args, **kwargs):
        seen.append((logits.clone(), blk == denoiser.mask_id))
        return orig(self, denoiser, logits, blk, *args, **kwargs)

    monkeypatch.setattr(DecodeLoop, "_step", spy)
    return seen


def assert_same_steps(ours: list, ref: list) -> None:
    """The same number of steps, and at each step the same logits at every eligible column."""
    assert len(ours) == len(ref)
    for (a, ea), (b, eb) in zip(ours, ref):
        assert torch.equal(ea, eb)
        assert torch.allclose(a[ea], b[eb], atol=2e-4, rtol=1e-4), (a[ea] - b[eb]).abs().max()


# -- (a) refreshing every step is the uncached loop --------------------------------------------------
@pytest.mark.parametrize("policy", sorted(EXACT))
@pytest.mark.parametrize("name, params", [("low_confidence", {"block_length": 8}), ("low_confidence", {"steps": 8}),
                                          ("threshold", {"tau": 0.3, "block_length": 8}),
                                          ("entropy_bound", {"bound": 1.0})])
def test_refresh_every_step_equals_the_uncached_loop(policy, name, params):
    den = tiny()
    ids, mask = prompts(den)
    a = SAMPLERS.build(name, params)(den, ids, generator=None, prompt_mask=mask, gen_length=16)
    base, meter = Meter(den), Meter(den)
    SAMPLERS.build(name, params)(base, ids, generator=None, prompt_mask=mask, gen_length=16)
    b = SAMPLERS.build(name, dict(params, **EXACT[policy]))(meter, ids, generator=None, prompt_mask=mask,
                                                            gen_length=16)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)
    assert meter.cost.nfe_cached == 0 and meter.cost.nfe_full == base.cost.nfe_full
    assert meter.cost.tokens == base.cost.tokens and meter.cost.flops == pytest.approx(base.cost.flops)


def test_dllm_cache_updating_every_response_column_equals_the_uncached_loop():
    """refresh_ratio 1 recomputes every response column through the adaptive-update path (value
    similarity, gathers and scatters) at each pass that is not a response refresh; with the prompt
    refreshed each pass too, that is a full pass computed another way."""
    den = tiny()
    ids, mask = prompts(den)
    params = {"block_length": 8}
    a = SAMPLERS.build("low_confidence", params)(den, ids, generator=None, prompt_mask=mask, gen_length=16)
    spy = Spy(den)
    b = SAMPLERS.build("low_confidence", dict(params, cache="dllm_cache", refresh=100, prompt_refresh=1,
                                              refresh_ratio=1.0))(spy, ids, generator=None, prompt_mask=mask,
                                                                  gen_length=16)
    assert torch.equal(a.tokens, b.tokens)
    assert sum(not w["full"] for _, w in spy.calls) == 15  # every pass after the first took the adaptive path


# -- (b) the references' caching rules ------------------------------------------------------------------
def reference_dkv_schedule(commit_step: torch.Tensor, P: int, L: int, block: int, steps: int, R: int):
    """Transcription of llada_dkv_cache_decode.py `generate` (lines 85-174) for one row, replayed
    on the commits of a finished decode: -> per pass, ("full", None) or ("cached", the columns the
    pass computes). `commit_step` [L]: the (row-global) step that committed each completion column."""
    out = []
    steps_b = steps // (L // block)  # line 82
    t = 0  # global step index of the row
    for _ in range(L // block):  # line 85
        prv = cur = None  # lines 86-87
        for i in range(steps_b):  # line 92
            if i % R != 0 and i > 1:  # line 103: the cached branch
                out.append(("cached", (~prv).nonzero().squeeze(1).tolist()))  # lines 106-107: x[~prv_transfer_idx]
            else:  # lines 116-125: a full pass (with or without preprocess_cache)
                out.append(("full", None))
            decoded = torch.ones(P + L, dtype=torch.bool)  # line 167: all_transfer_index = x != mask_id
            decoded[P:] = commit_step <= t
            prv, cur = cur, decoded  # line 173
            t += 1
    return out


@pytest.mark.parametrize("R, block, steps", [(4, 16, 16), (2, 8, 16), (3, 8, 8), (1, 8, 16), (0, 4, 16)])
def test_dkv_recomputes_the_reference_columns_at_each_step(R, block, steps):
    den = tiny()
    ids, _ = prompts(den, ("12+34=",))
    P, L = ids.shape[1], 16
    spy = Spy(den)
    gen = SAMPLERS.build("low_confidence", {"block_length": block, "steps": steps, "cache": "dkv", "refresh": R})(
        spy, ids, generator=None, gen_length=L)
    # refresh 0 (never): the reference's cache_reloading_step larger than any block's step count
    expected = reference_dkv_schedule(gen.commit_step[0], P, L, block, steps, R or steps + 1)
    got = []
    for kind, work in spy.calls:
        got.append(("full", None) if kind == "full" or work["full"] else ("cached", work))
    assert [k for k, _ in got] == [k for k, _ in expected]
    for (kind, work), (_, cols) in zip(got, expected):
        if kind == "cached":
            assert work["layer_tokens"] == [len(cols)] * den.module.cfg.n_layers


def test_dkv_full_steps_follow_the_reference_condition():
    """llada_dkv_cache_decode.py line 103: cached iff i % cache_reloading_step != 0 and i > 1."""
    for R in range(1, 6):
        for i in range(12):
            assert dkv_full_step(i, R) == (not (i % R != 0 and i > 1))
    assert [dkv_full_step(i, 0) for i in range(4)] == [True, True, False, False]


def reference_dkv_generate(den, prompt: torch.Tensor, L: int, block: int, steps: int, R: int, record: list):
    """One row (no padding), the harness's proposal rule (argmax without the mask token, float32
    confidence, LLaDA's schedule, ties to the lower column), the reference's CACHE: transcribed
    from llada_dkv_cache_decode.py `generate` and modeling_llada_dkv_cache_decode.py
    `LLaDABlock.forward` on the tiny model's layers. A cached pass feeds x[~prv] (lines 106-107);
    its keys/values are cat(fresh, past) (forward lines 1006-1011); the next cache is the keys of
    `cur` after putting cat(~prv, prv) columns back in canvas order (lines 1042-1063); a full pass
    at i > 0 caches the keys of `cur` (lines 1020-1027); the pass at i = 0 caches nothing."""
    layers = TinyLayers(den.module)
    mask_id = den.mask_id
    P = prompt.shape[0]
    x = torch.cat([prompt, torch.full((L,), mask_id, dtype=prompt.dtype)])[None]  # [1, T]
    steps_b = steps // (L // block)
    for b in range(L // block):
        lo, hi = P + b * block, P + (b + 1) * block
        k_sched = transfer_schedule((x[:, lo:hi] == mask_id).sum(1), steps_b)[0]
        past = prv = cur = None
        for i in range(steps_b):
            h, _ = layers.embed(x, None)
            if i % R != 0 and i > 1:
                q_cols = (~prv[0]).nonzero().squeeze(1)
                c_cols = prv[0].nonzero().squeeze(1)
                h = h[:, q_cols]
                new_past = []
                for layer in range(layers.n_layers):
                    q, k, v = layers.qkv(layer, h)
                    K, V = torch.cat([k, past[layer][0]], 2), torch.cat([v, past[layer][1]], 2)
                    h = h + layers.attend(layer, q, K, V, None)
                    h = h + layers.mlp(layer, h)
                    order = torch.cat([q_cols, c_cols])  # prv_position: not-cached columns, then cached
                    ori_k, ori_v = torch.zeros_like(K), torch.zeros_like(V)
                    ori_k[:, :, order], ori_v[:, :, order] = K, V
                    new_past.append((ori_k[:, :, cur[0]], ori_v[:, :, cur[0]]))
                logits = torch.full((1, x.shape[1], den.vocab_size), -torch.inf)
                logits[:, q_cols] = layers.head(h)
                past = new_past
            else:
                store = []
                for layer in range(layers.n_layers):
                    q, k, v = layers.qkv(layer, h)
                    if i > 0:
                        store.append((k[:, :, cur[0]], v[:, :, cur[0]]))
                    h = h + layers.attend(layer, q, k, v, None)
                    h = h + layers.mlp(layer, h)
                logits = layers.head(h)
                past = store if i > 0 else None
            blk = logits[:, lo:hi].clone()
            record.append((blk.clone(), x[:, lo:hi] == mask_id))
            blk[..., mask_id] = -torch.inf
            x0 = blk.argmax(-1)
            conf = torch.gather(F.softmax(blk.float(), -1), -1, x0[..., None]).squeeze(-1)
            conf = torch.where(x[:, lo:hi] == mask_id, conf, torch.full_like(conf, -torch.inf))
            order = torch.sort(conf[0], descending=True, stable=True).indices[:int(k_sched[i])]
            x[0, lo + order] = x0[0, order]
            prv, cur = cur, x != mask_id  # lines 167-173
    return x[0, P:]


def test_dkv_tokens_equal_a_transcription_of_the_reference_cache(c16, steps_seen):
    """On the trained checkpoint the stale keys/values change ~1% of the rows; the transcription
    of the reference's cache must reproduce those rows token for token, with the same logits at
    every step (and the rows it leaves alone)."""
    den, ids, mask, plain, _ = c16
    params = {"steps": 16}
    dkv = SAMPLERS.build("low_confidence", dict(params, cache="dkv", refresh=0))(den, ids, generator=None,
                                                                                 prompt_mask=mask, gen_length=16)
    differ = (plain.tokens != dkv.tokens).any(1).nonzero().squeeze(1).tolist()
    assert differ, "the stale cache changed no row: the comparison below would not test the cache"
    for r in differ[:2] + [0]:
        row = ids[r][mask[r]]
        steps_seen.clear()
        alone = SAMPLERS.build("low_confidence", dict(params, cache="dkv", refresh=0))(
            den, row[None], generator=None, gen_length=16)
        record: list = []
        ref = reference_dkv_generate(den, row.clone(), 16, 16, 16, 10 ** 6, record)
        assert torch.equal(alone.tokens[0], ref), r
        assert_same_steps(steps_seen, record)


def test_dllm_plan_follows_the_reference_counter():
    """Cache.py: every forward increments the counter (update_step, line 65; current_step = the
    count, line 80); refresh_gen/refresh_prompt are (current_step - 1) % interval == 0 (lines
    67-71); cache_hook_LLaDA.py lines 156-157 refresh layer 0 always."""
    P, T, n_layers, ratio = 5, 21, 4, 0.25
    for kp, kr in [(50, 4), (3, 2), (1, 7), (5, 5)]:
        state = DLLMState(batch=1)
        for current_step in range(1, 30):  # the reference's 1-based count of passes
            rp, rg, lt, n_sel = dllm_plan(state, P, T, n_layers, kp, kr, ratio, live_seen=True)
            assert (rp, rg) == ((current_step - 1) % kp == 0, (current_step - 1) % kr == 0)
            G = T - P
            assert n_sel == int(G * ratio)  # refresh_index line 136: num_replace = int(gen_len * transfer_ratio)
            assert lt[0] == T and lt[1:] == [(P if rp else 0) + (G if rg else n_sel)] * (n_layers - 1)
            state.step += 1


def test_dllm_cache_counts_passes_over_the_whole_generation():
    """The reference resets its counter once per generate call (generate_function.py line 58,
    reset_cache), not per block: with 6 passes per block and Kr 4, the response refreshes at
    passes 0, 4, 8 (the second block's third pass), not at each block start."""
    den = tiny()
    ids, mask = prompts(den)
    spy = Spy(den)
    SAMPLERS.build("low_confidence", {"block_length": 8, "steps": 12, "cache": "dllm_cache", "refresh": 4,
                                      "prompt_refresh": 100, "refresh_ratio": 0.0})(
        spy, ids, generator=None, prompt_mask=mask, gen_length=16)
    P, T, n_layers = ids.shape[1], ids.shape[1] + 16, den.module.cfg.n_layers
    rg = [w["layer_tokens"][1] >= T - P for _, w in spy.calls]
    assert len(rg) == 12 and [g for g in range(12) if rg[g]] == [0, 4, 8]
    assert [w["full"] for _, w in spy.calls] == [True] + [False] * 11  # the prompt refreshes at pass 0 only
    assert all(w["layer_tokens"][1:] == [0] * (n_layers - 1) for _, w in spy.calls if not w["full"] and
               w["layer_tokens"][1] < T - P)  # rho 0: nothing but layer 0 between refreshes


def test_refresh_index_picks_the_least_similar_response_columns():
    """cache_hook_LLaDA.py `refresh_index` (lines 129-141): int(G·ratio) columns, smallest cosine
    similarity between new and cached values."""
    cached = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]])
    new = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, -1.0], [1.0, 0.1]]])  # cos: 1, 0, 1, 0, ~1
    assert sorted(refresh_index(new, cached, 0.4)[0].tolist()) == [1, 3]
    assert refresh_index(new, cached, 0.1).shape == (1, 0)  # int(5 * 0.1) = 0


def reference_dllm_generate(den, prompt: torch.Tensor, L: int, steps: int, kp: int, kr: int, rho: float,
                            record: list):
    """One row, one block (no padding: the reference's hooked attention has no mask), the
    harness's proposal rule, the reference's FEATURE CACHE transcribed from cache_hook_LLaDA.py
    `cache_hook_feature` (lines 151-429) on the tiny model's layers: a cache dict keyed like
    dLLMCache.set_cache (type, layer, name), refresh tests of Cache.py lines 64-80, and the
    generate loop of utils/generate_function.py (reset_cache once, line 58)."""
    layers = TinyLayers(den.module)
    mask_id, P = den.mask_id, prompt.shape[0]
    x = torch.cat([prompt, torch.full((L,), mask_id, dtype=prompt.dtype)])[None]
    cache: dict = {}
    counter = 0  # update_step: one increment per forward (per layer in the reference; all layers agree)
    k_sched = transfer_schedule(torch.tensor([L]), steps)[0]
    for i in range(steps):
        counter += 1
        current_step = counter
        h, _ = layers.embed(x, None)
        for lid in range(layers.n_layers):
            refresh_gen = (current_step - 1) % kr == 0 or lid == 0  # line 156
            refresh_prompt = (current_step - 1) % kp == 0 or lid == 0  # line 157
            transfer = 0 < rho <= 1  # line 160
            x_prompt, x_gen = h[:, :P], h[:, P:]
            if refresh_gen and refresh_prompt:  # lines 207-233
                q, k, v = layers.qkv(lid, h)
                cache["prompt", lid, "kv"] = (k[:, :, :P], v[:, :, :P])
                cache["gen", lid, "kv"] = (k[:, :, P:], v[:, :, P:])
                att = layers.attend(lid, q, k, v, None)
                cache["prompt", lid, "attn"], cache["gen", lid, "attn"] = att[:, :P], att[:, P:]
            elif refresh_gen:  # lines 235-258
                q, k_gen, v_gen = layers.qkv(lid, x_gen)
                cache["gen", lid, "kv"] = (k_gen, v_gen)
                kp_, vp_ = cache["prompt", lid, "kv"]
                att_gen = layers.attend(lid, q, torch.cat([kp_, k_gen], 2), torch.cat([vp_, v_gen], 2), None)
                cache["gen", lid, "attn"] = att_gen
                att = torch.cat([cache["prompt", lid, "attn"], att_gen], 1)
            else:  # lines 260-374: the response's cached features, optionally partly refreshed
                kg, vg = cache["gen", lid, "kv"]
                att_gen_cache = cache["gen", lid, "attn"].clone()
                if transfer:
                    v_gen = layers.value(lid, x_gen)
                    index = refresh_index(_merged(v_gen), _merged(vg), rho)  # lines 277-279 / 345-347
                    q_sel, k_sel, _ = layers.qkv(lid, x_gen[:, index[0]])
                    kg = kg.clone()
                    kg[:, :, index[0]] = k_sel  # lines 285 / 353: scatter the selected keys
                    vg = v_gen  # lines 284 / 352: every response value is the new one
                    cache["gen", lid, "kv"] = (kg, vg)
                if refresh_prompt:  # lines 261-331
                    q_prompt, k_prompt, v_prompt = layers.qkv(lid, x_prompt)
                    cache["prompt", lid, "kv"] = (k_prompt, v_prompt)
                    K, V = torch.cat([k_prompt, kg], 2), torch.cat([v_prompt, vg], 2)
                    if transfer:
                        a = layers.attend(lid, torch.cat([q_prompt, q_sel], 2), K, V, None)
                        att_prompt = a[:, :P]
                        att_gen_cache[:, index[0]] = a[:, P:]
                    else:
                        att_prompt = layers.attend(lid, q_prompt, K, V, None)
                    cache["prompt", lid, "attn"] = att_prompt
                    att = torch.cat([att_prompt, att_gen_cache], 1)
                else:  # lines 332-374
                    kp_, vp_ = cache["prompt", lid, "kv"]
                    if transfer:
                        a = layers.attend(lid, q_sel, torch.cat([kp_, kg], 2), torch.cat([vp_, vg], 2), None)
                        att_gen_cache[:, index[0]] = a
                    att = torch.cat([cache["prompt", lid, "attn"], att_gen_cache], 1)
                cache["gen", lid, "attn"] = att_gen_cache
            h = h + att  # line 376
            og = h
            if refresh_gen and refresh_prompt:  # lines 382-389
                m = layers.mlp(lid, h)
                cache["gen", lid, "mlp"], cache["prompt", lid, "mlp"] = m[:, P:], m[:, :P]
            elif refresh_gen:  # lines 391-397
                m_gen = layers.mlp(lid, h[:, P:])
                cache["gen", lid, "mlp"] = m_gen
                m = torch.cat([cache["prompt", lid, "mlp"], m_gen], 1)
            else:  # lines 399-424
                m_gen_cache = cache["gen", lid, "mlp"].clone()
                if transfer:
                    m_gen_cache[:, index[0]] = layers.mlp(lid, h[:, P:][:, index[0]])
                    cache["gen", lid, "mlp"] = m_gen_cache
                if refresh_prompt:
                    m_prompt = layers.mlp(lid, h[:, :P])
                    cache["prompt", lid, "mlp"] = m_prompt
                m = torch.cat([cache["prompt", lid, "mlp"], m_gen_cache], 1)
            h = og + m  # line 427
        logits = layers.head(h)[:, P:].clone()
        record.append((logits.clone(), x[:, P:] == mask_id))
        logits[..., mask_id] = -torch.inf
        x0 = logits.argmax(-1)
        conf = torch.gather(F.softmax(logits.float(), -1), -1, x0[..., None]).squeeze(-1)
        conf = torch.where(x[:, P:] == mask_id, conf, torch.full_like(conf, -torch.inf))
        order = torch.sort(conf[0], descending=True, stable=True).indices[:int(k_sched[i])]
        x[0, P + order] = x0[0, order]
    return x[0, P:]


def _merged(v: torch.Tensor) -> torch.Tensor:
    """[B, H, n, Dh] -> [B, n, H·Dh]: v_proj's output before the head split."""
    return v.transpose(1, 2).reshape(v.shape[0], v.shape[2], -1)


@pytest.mark.parametrize("params", [{"refresh": 4, "prompt_refresh": 6, "refresh_ratio": 0.25},
                                    {"refresh": 8, "refresh_ratio": 0.0}])
def test_dllm_cache_tokens_equal_a_transcription_of_the_reference_hook(params, c16, steps_seen):
    """Rows the feature cache changes (and two others) decode exactly as the transcription of the
    reference's hook decodes them, with the same logits at every step (tokens alone would miss
    small errors: the trained model's argmax is robust to them)."""
    den, ids, mask, plain, _ = c16
    ours = dict(params, steps=16, cache="dllm_cache")
    cached = SAMPLERS.build("low_confidence", ours)(den, ids, generator=None, prompt_mask=mask, gen_length=16)
    differ = (plain.tokens != cached.tokens).any(1).nonzero().squeeze(1).tolist()
    assert differ, "the feature cache changed no row: the comparison below would not test it"
    for r in differ[:2] + [0]:
        row = ids[r][mask[r]]
        steps_seen.clear()
        alone = SAMPLERS.build("low_confidence", ours)(den, row[None], generator=None, gen_length=16)
        record: list = []
        ref = reference_dllm_generate(den, row.clone(), 16, 16, params.get("prompt_refresh", 50), params["refresh"],
                                      params["refresh_ratio"], record)
        assert torch.equal(alone.tokens[0], ref), r
        assert_same_steps(steps_seen, record)


# -- (c) a real interval computes fewer tokens and changes the output -----------------------------
@pytest.mark.parametrize("params", [{"cache": "dkv", "refresh": 4}, {"cache": "dkv"},
                                    {"cache": "dllm_cache", "refresh": 4},
                                    {"cache": "dllm_cache", "refresh": 4, "refresh_ratio": 0.0}])
def test_real_interval_computes_fewer_tokens_and_changes_outputs(params, c16):
    den, ids, mask, a, base = c16
    meter = Meter(den)
    b = SAMPLERS.build("low_confidence", dict(params, steps=16))(meter, ids, generator=None, prompt_mask=mask,
                                                                 gen_length=16)
    assert meter.cost.nfe == base.nfe  # matched NFE: the same passes, each computing less
    assert meter.cost.nfe_cached > 0
    assert meter.cost.tokens < 0.7 * base.tokens and meter.cost.flops < 0.7 * base.flops
    assert not torch.equal(a.tokens, b.tokens)  # approximate: some row changes
    agree = (a.tokens == b.tokens).float().mean().item()
    assert agree > 0.99  # measured 99.8-99.97% of greedy tokens on these 200 items


@pytest.mark.parametrize("params", [{"cache": "dkv", "refresh": 3, "block_length": 8},
                                    {"cache": "dllm_cache", "refresh": 3, "prompt_refresh": 5, "block_length": 8},
                                    {"cache": "dllm_cache", "refresh": 2, "refresh_ratio": 0.0}])
@pytest.mark.parametrize("name, extra", [("low_confidence", {}), ("threshold", {"tau": 0.05})])
def test_meter_counts_the_columns_each_layer_computes(params, name, extra):
    """The declared work of every layer-wise pass is what its layers really received (qkv and mlp
    rows per layer; value rows only where the similarity test ran and its FLOPs were counted)."""
    den = tiny()
    ids, mask = prompts(den, ("12+34=", "5+6=", "123+4=", "9=", "77+1="))
    spy = Spy(den, count=True)
    SAMPLERS.build(name, dict(params, **extra))(spy, ids, generator=None, prompt_mask=mask, gen_length=16)
    layerwise = [w for kind, w in spy.calls if kind == "layerwise"]
    assert layerwise and len(layerwise) == len(spy.computed)
    for w, seen in zip(layerwise, spy.computed):
        lt = w["layer_tokens"]
        assert [seen["qkv"].get(i, 0) for i in range(len(lt))] == lt
        assert [seen["mlp"].get(i, 0) for i in range(len(lt))] == lt
        assert (w.get("extra_flops", 0.0) > 0) == bool(seen["value"])


def test_meter_tokens_and_flops_of_a_layerwise_pass():
    den = tiny(n_layers=3)
    meter = Meter(den)
    x = torch.randint(0, 20, (2, 10))
    meter.logits_layerwise(lambda layers: layers.head(layers.embed(x, None)[0]), batch=2, layer_tokens=[10, 4, 1],
                           t_key=10, full=False, extra_flops=7.0)
    arch = den.arch
    assert meter.cost.tokens == 10 and meter.cost.nfe_cached == 2  # 2 rows x (10 + 4 + 1) / 3 layers
    attn = sum(4.0 * arch.d_model * n * 10 * 2 for n in (10, 4, 1))
    assert meter.cost.flops == pytest.approx(2.0 * arch.n_params * 2 * 5 + attn + 7.0)
    with pytest.raises(ValueError, match="3 layers"):
        meter.logits_layerwise(lambda layers: None, batch=2, layer_tokens=[1], t_key=10, full=False)


# -- bad settings -------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, match", [({"cache": "dllm_cache"}, "refresh >= 1"),
                                           ({"cache": "dkv", "prompt_refresh": 4}, "dllm_cache settings"),
                                           ({"cache": "dllm_cache", "refresh": 2, "refresh_ratio": 1.5}, r"\[0, 1\]"),
                                           ({"cache": "dllm_cache", "refresh": 2, "prompt_refresh": 0}, ">= 1"),
                                           ({"cache": "dkv_cache"}, "one of")])
def test_bad_settings_are_refused(params, match):
    with pytest.raises(HarnessError, match=match):
        SAMPLERS.build("low_confidence", params)


def test_models_without_a_layerwise_view_are_refused():
    from tests.samplers.toys import TableDenoiser

    den = TableDenoiser([[0.5, 0.5]] * 4, prompt_len=1)
    for cache in ("dkv", "dllm_cache"):
        with pytest.raises(HarnessError, match="layer-by-layer view"):
            SAMPLERS.build("low_confidence", {"cache": cache, "refresh": 1})(den, torch.tensor([[5]]), generator=None,
                                                                           gen_length=4)


def test_block_models_are_refused():
    tok = CharTokenizer()
    cfg = TinyConfig(vocab_size=len(tok), max_len=24, d_model=16, n_layers=1, n_heads=2, d_ff=32, block_size=4)
    den = TinyDenoiser(TinyMDLM(cfg, generator=torch.Generator().manual_seed(0)).eval(), tok)
    with pytest.raises(HarnessError, match="block-diffusion"):
        SAMPLERS.build("low_confidence", {"cache": "dkv"})(den, torch.tensor([[5, 6, 7, 8]]), generator=None,
                                                          gen_length=8)
