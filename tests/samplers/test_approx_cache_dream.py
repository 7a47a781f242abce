"""The approximate caches on Dream, whose logits are shifted (column k is predicted at k - 1):
`cache: dkv` follows dKV-Cache's Dream variant, `cache: dllm_cache` dLLM-Cache's Dream hook. Both
run on the native Dream's layer view (harness/models/native/dream.py `DreamLayers`).

The reference code cannot run here (it needs the 7B Dream code, transformers 4.46 and CUDA), so
its rules are transcribed below with line citations, on a tiny random native Dream:
- horseee/dKV-Cache generation_utils/dream_generation_utils.py `DreamGenerationMixin._sample` (the
  loop, cache_type "decoded", shift_type "un"), models/modeling_dream.py `DreamSdpaAttention.forward`
  and `DreamRotaryEmbedding.forward` (the cached pass), generation_utils/cache_utils.py
  `DynamicCache.update` / `get_transfer_cache` (what the cache keeps);
- maomaocun/dLLM-cache dllm_cache/hooks/cache_hook_Dream.py (the feature cache on Dream's layers).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.budget import Meter
from harness.models.native.dream import DreamLayers
from harness.registry import MODELS, SAMPLERS
from harness.samplers._approx_cache import dkv_full_step_shifted, dkv_uncached_shifted, refresh_index
from harness.samplers._base import DecodeLoop
from harness.types import HarnessError

torch.set_num_threads(1)

L = 16


@pytest.fixture(scope="module")
def den():
    return MODELS.build("dream", {"preset": "tiny", "device": "cpu", "dtype": "float32",
                                  "config": {"initializer_range": 0.2}}).load()


def prompts():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 120, (3, 6), generator=g)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, :2] = False  # left padding
    mask[2, :1] = False
    return ids, mask


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
        assert torch.allclose(a[ea], b[eb], atol=1e-4, rtol=1e-4), (a[ea] - b[eb]).abs().max()


# -- refreshing every step is the uncached loop ------------------------------------------------------
@pytest.mark.parametrize("cache", [{"cache": "dkv", "refresh": 1},
                                   {"cache": "dllm_cache", "refresh": 1, "prompt_refresh": 1}])
@pytest.mark.parametrize("params", [{"steps": 16}, {"steps": 8, "block_length": 8},
                                    {"tau": 0.2, "block_length": 8}])
def test_refresh_every_step_equals_the_uncached_loop(den, cache, params):
    name = "threshold" if "tau" in params else "low_confidence"
    ids, mask = prompts()
    base, meter = Meter(den), Meter(den)
    a = SAMPLERS.build(name, params)(base, ids, generator=None, prompt_mask=mask, gen_length=L)
    b = SAMPLERS.build(name, dict(params, **cache))(meter, ids, generator=None, prompt_mask=mask, gen_length=L)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)
    assert meter.cost.nfe_cached == 0 and meter.cost.nfe_full == base.cost.nfe_full
    assert meter.cost.tokens == base.cost.tokens


# -- dKV-Cache's Dream variant ------------------------------------------------------------------------
def test_dkv_full_steps_follow_the_reference_condition():
    """dream_generation_utils.py lines 457-460: the cache is emptied (a full pass) when i % cache_steps == 0."""
    for R in range(1, 6):
        assert [dkv_full_step_shifted(i, R) for i in range(12)] == [i % R == 0 for i in range(12)]
    assert [dkv_full_step_shifted(i, 0) for i in range(4)] == [True, False, False, False]


def test_dkv_cache_positions_follow_the_reference_shift():
    """Lines 413-414 (the first pass) and 567-569 (shift_type "un", after every step)."""
    m = 9
    x = torch.tensor([[1, 2, 3, m, 5, m, m]])
    first = ~dkv_uncached_shifted(x, m, first=True)
    later = ~dkv_uncached_shifted(x, m, first=False)
    d = x != m
    assert torch.equal(first, torch.cat([d[:, 1:], d[:, -1:]], -1))
    assert torch.equal(later, torch.cat([d[:, 1:], d[:, :1]], -1))
    assert first.tolist() == [[True, True, False, True, False, False, False]]
    assert later[0, -1] and not first[0, -1]


def reference_dream_dkv(den, prompt: torch.Tensor, L: int, steps: int, cache_steps: int, record: list):
    """One row (no padding: attention_mask "full", tok_idx 0..T-1, lines 434-440), one block, the
    harness's proposal rule (argmax without the mask token, float32 confidence), Dream's transfer
    count (lines 534-535) and top-k (line 540); the reference's CACHE transcribed from
    `_sample` (cache_type "decoded", shift_type "un") on the native Dream's layers:
    - x padded with masks (line 397); cache_position = the decoded columns shifted left, the last
      column following itself (lines 413-414);
    - at i % cache_steps == 0 the cache is emptied and prv_cache_position is None (lines 458-460);
    - a cached pass feeds x[~prv_cache_position] (line 466); its keys/values are cat(fresh, past)
      (modeling_dream.py lines 413-416), queries rotated at their own columns and keys at
      cat(query columns, cached columns) (`DreamRotaryEmbedding.forward` lines 174-185; the
      reference caches keys before the rotation and rotates them at every pass, here they are
      kept rotated: the same numbers);
    - every pass leaves the keys/values of the cache_position columns: a full pass takes them from
      itself (cache_utils.py `DynamicCache.update` lines 231-237), a cached pass puts
      cat(~prv, prv) back in canvas order and keeps those columns (`get_transfer_cache` lines
      176-201, `update` lines 239-247);
    - the rows a cached pass skips get -inf logits (lines 499-508), then the logits shift right
      (line 510) and only masked columns are read (line 515);
    - after the step prv_cache_position = cache_position, and cache_position = the decoded columns
      shifted left with the last column following column 0 (lines 565-569)."""
    layers = DreamLayers(den.module)
    mask_id = den.mask_id
    P = prompt.shape[0]
    x = F.pad(prompt[None], (0, L), value=mask_id)  # line 397
    B, T = x.shape
    decoded = x != mask_id
    cache_position = torch.cat([decoded[:, 1:], decoded[:, -1:]], -1)  # lines 413-414
    prv = past = None
    timesteps = torch.linspace(1, 1e-3, steps + 1)  # line 443 (eps 1e-3)
    for i in range(steps):
        mask_index = x == mask_id  # line 450
        if i % cache_steps == 0:  # lines 458-460
            prv, past = None, None
        h, _ = layers.embed(x, None)
        if prv is not None:
            q_cols = (~prv[0]).nonzero().squeeze(1)
            c_cols = prv[0].nonzero().squeeze(1)
            h = h[:, q_cols]  # line 466
            new_past = []
            for li in range(layers.n_layers):
                q, k, v = layers.qkv_at(li, h, q_cols)
                K, V = torch.cat([k, past[li][0]], 2), torch.cat([v, past[li][1]], 2)
                order = torch.cat([q_cols, c_cols])  # current_order: not-cached columns, then cached
                ori_k, ori_v = torch.zeros_like(K), torch.zeros_like(V)
                ori_k[:, :, order], ori_v[:, :, order] = K, V
                new_past.append((ori_k[:, :, cache_position[0]], ori_v[:, :, cache_position[0]]))
                h = h + layers.attend(li, q, K, V, None)
                h = h + layers.mlp(li, h)
            logits = torch.full((B, T, den.vocab_size), -torch.inf)  # lines 499-508
            logits[:, q_cols] = layers.head(h)
            past = new_past
        else:
            store = []
            for li in range(layers.n_layers):
                q, k, v = layers.qkv(li, h)
                store.append((k[:, :, cache_position[0]], v[:, :, cache_position[0]]))  # update lines 231-237
                h = h + layers.attend(li, q, k, v, None)
                h = h + layers.mlp(li, h)
            logits = layers.head(h)
            past = store
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # line 510
        blk = logits[:, P:].clone()
        record.append((blk.clone(), mask_index[:, P:]))
        blk[..., mask_id] = -torch.inf
        x0 = blk.argmax(-1)
        conf = torch.gather(F.softmax(blk.float(), -1), -1, x0[..., None]).squeeze(-1)
        conf = torch.where(mask_index[:, P:], conf, torch.full_like(conf, -torch.inf))
        t, s = timesteps[i], timesteps[i + 1]
        num_mask_token = mask_index.sum() / mask_index.shape[0]  # line 534
        n = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)  # line 535
        if n > 0:
            _, idx = torch.topk(conf[0], n)  # line 540
            x[0, P + idx] = x0[0, idx]
        prv = cache_position  # line 565
        decoded = x != mask_id
        cache_position = torch.cat([decoded[:, 1:], decoded[:, :1]], -1)  # lines 567-569
    return x[0, P:]


@pytest.mark.parametrize("steps, refresh", [(16, 4), (16, 100), (8, 3), (8, 100)])
def test_dkv_tokens_and_logits_equal_a_transcription_of_the_reference(den, steps_seen, steps, refresh):
    """Each row alone decodes as the transcription decodes it, with the same logits at every step;
    the cache is really stale (some step's logits differ from the uncached loop's), so the
    comparison tests the cache and not a full pass computed twice."""
    ids, mask = prompts()
    params = {"steps": steps, "cache": "dkv", "refresh": refresh}
    stale = 0.0
    for r in range(ids.shape[0]):
        row = ids[r][mask[r]]
        steps_seen.clear()
        SAMPLERS.build("low_confidence", {"steps": steps})(den, row[None], generator=None, gen_length=L)
        plain = list(steps_seen)
        steps_seen.clear()
        ours = SAMPLERS.build("low_confidence", params)(den, row[None], generator=None, gen_length=L)
        record: list = []
        ref = reference_dream_dkv(den, row.clone(), L, steps, refresh, record)
        assert torch.equal(ours.tokens[0], ref), r
        assert_same_steps(steps_seen, record)
        stale = max(stale, max(float((a[e] - b[e]).abs().max()) for (a, e), (b, _) in zip(steps_seen, plain)
                               if e.any()))
    assert stale > 1e-3


def test_dkv_cached_passes_compute_the_reference_columns(den):
    """The meter's work of each cached pass: the columns whose predicted token (one to the right)
    was masked at the previous step's input, over every layer; fewer tokens than the plain loop."""
    ids, mask = prompts()
    base, meter = Meter(den), Meter(den)
    SAMPLERS.build("low_confidence", {"steps": L})(base, ids, generator=None, prompt_mask=mask, gen_length=L)
    SAMPLERS.build("low_confidence", {"steps": L, "cache": "dkv", "refresh": 8})(
        meter, ids, generator=None, prompt_mask=mask, gen_length=L)
    assert meter.cost.nfe == base.cost.nfe and meter.cost.nfe_full == 2 * ids.shape[0]  # steps 0 and 8
    assert meter.cost.tokens < 0.7 * base.cost.tokens


# -- dLLM-Cache's Dream hook ---------------------------------------------------------------------------
def dream_step(x, logits, mask_index, P: int, i: int, steps: int, mask_id: int, record: list) -> None:
    """One step of Dream's `_sample` on one row after the model's pass: the logits shift right
    (dream_generation_utils.py line 510, as the checkpoint's own generation_utils.py), the
    harness's proposal rule on the masked columns, Dream's transfer count (lines 534-535) and
    top-k (line 540); x is edited in place."""
    logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    blk = logits[:, P:].clone()
    record.append((blk.clone(), mask_index[:, P:]))
    blk[..., mask_id] = -torch.inf
    x0 = blk.argmax(-1)
    conf = torch.gather(F.softmax(blk.float(), -1), -1, x0[..., None]).squeeze(-1)
    conf = torch.where(mask_index[:, P:], conf, torch.full_like(conf, -torch.inf))
    timesteps = torch.linspace(1, 1e-3, steps + 1)  # line 443 (eps 1e-3)
    t, s = timesteps[i], timesteps[i + 1]
    num_mask_token = mask_index.sum() / mask_index.shape[0]
    n = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
    if n > 0:
        _, idx = torch.topk(conf[0], n)
        x[0, P + idx] = x0[0, idx]


def _merged(v: torch.Tensor) -> torch.Tensor:
    """[B, H, n, Dh] -> [B, n, H·Dh]: v_proj's output before the head split (what the hook compares)."""
    return v.transpose(1, 2).reshape(v.shape[0], v.shape[2], -1)


def reference_dream_dllm(den, prompt: torch.Tensor, L: int, steps: int, kp: int, kr: int, rho: float,
                         record: list):
    """One row, one block, no padding (the hooked attention passes attn_mask=None, line 390), the
    prompt the first P = input length columns (demo_Dream.py line 141, reset_cache), Dream's step
    (`dream_step`), the FEATURE CACHE transcribed from cache_hook_Dream.py `decoder_hook` (lines
    53-351) on the native Dream's layers: a cache dict keyed like dLLMCache.set_cache (type, layer,
    name) and the refresh tests of Cache.py (a pass counter, (current_step - 1) % interval == 0).
    The hook keeps keys unrotated and rotates them at each attention call (`attention` lines
    375-378, queries at q_index); here they are kept rotated (the same numbers), and the queries of
    the selected response columns are rotated at index + P (lines 200, 272)."""
    layers = DreamLayers(den.module)
    mask_id, P = den.mask_id, prompt.shape[0]
    x = F.pad(prompt[None], (0, L), value=mask_id)
    cache: dict = {}
    for i in range(steps):
        current_step = i + 1  # update_step (line 68): the count of passes
        mask_index = x == mask_id
        h, _ = layers.embed(x, None)
        T = x.shape[1]
        for lid in range(layers.n_layers):
            refresh_gen = (current_step - 1) % kr == 0 or lid == 0  # line 70
            refresh_prompt = (current_step - 1) % kp == 0 or lid == 0  # line 71
            transfer = 0 < rho <= 1  # line 76
            x_prompt, x_gen = h[:, :P], h[:, P:]
            if refresh_gen and refresh_prompt:  # lines 90-116
                q, k, v = layers.qkv(lid, h)
                cache["prompt", lid, "kv"] = (k[:, :, :P], v[:, :, :P])
                cache["gen", lid, "kv"] = (k[:, :, P:], v[:, :, P:])
                att = layers.attend(lid, q, k, v, None)
                cache["prompt", lid, "attn"], cache["gen", lid, "attn"] = att[:, :P], att[:, P:]
            elif refresh_gen:  # lines 118-153
                q_gen, k_gen, v_gen = layers.qkv_at(lid, x_gen, torch.arange(P, T))
                cache["gen", lid, "kv"] = (k_gen, v_gen)
                kp_, vp_ = cache["prompt", lid, "kv"]
                att_gen = layers.attend(lid, q_gen, torch.cat([kp_, k_gen], 2), torch.cat([vp_, v_gen], 2), None)
                cache["gen", lid, "attn"] = att_gen
                att = torch.cat([cache["prompt", lid, "attn"], att_gen], 1)
            else:  # lines 154-286: the response's cached features, optionally partly refreshed
                kg, vg = cache["gen", lid, "kv"]
                att_gen_cache = cache["gen", lid, "attn"].clone()
                if transfer:  # lines 168-189 / 238-269
                    v_gen = layers.value(lid, x_gen)
                    index = refresh_index(_merged(v_gen), _merged(vg), rho)  # lines 38-50
                    q_sel, k_sel, _ = layers.qkv_at(lid, x_gen[:, index[0]], index[0] + P)
                    kg = kg.clone()
                    kg[:, :, index[0]] = k_sel  # lines 179-183 / 259-263: scatter the selected keys
                    vg = v_gen  # lines 178 / 258: every response value is the new one
                    cache["gen", lid, "kv"] = (kg, vg)
                if refresh_prompt:  # lines 155-233
                    q_prompt, k_prompt, v_prompt = layers.qkv_at(lid, x_prompt, torch.arange(P))
                    cache["prompt", lid, "kv"] = (k_prompt, v_prompt)
                    K, V = torch.cat([k_prompt, kg], 2), torch.cat([v_prompt, vg], 2)
                    if transfer:  # lines 192-217
                        a = layers.attend(lid, torch.cat([q_prompt, q_sel], 2), K, V, None)
                        att_prompt = a[:, :P]
                        att_gen_cache[:, index[0]] = a[:, P:]
                    else:  # lines 218-226
                        att_prompt = layers.attend(lid, q_prompt, K, V, None)
                    cache["prompt", lid, "attn"] = att_prompt
                    att = torch.cat([att_prompt, att_gen_cache], 1)
                else:  # lines 270-286
                    kp_, vp_ = cache["prompt", lid, "kv"]
                    if transfer:
                        a = layers.attend(lid, q_sel, torch.cat([kp_, kg], 2), torch.cat([vp_, vg], 2), None)
                        att_gen_cache[:, index[0]] = a
                    att = torch.cat([cache["prompt", lid, "attn"], att_gen_cache], 1)
                cache["gen", lid, "attn"] = att_gen_cache
            h = h + att  # line 288
            og = h
            if refresh_gen and refresh_prompt:  # lines 293-303
                m = layers.mlp(lid, h)
                cache["gen", lid, "mlp"], cache["prompt", lid, "mlp"] = m[:, P:], m[:, :P]
            elif refresh_gen:  # lines 304-312
                m_gen = layers.mlp(lid, h[:, P:])
                cache["gen", lid, "mlp"] = m_gen
                m = torch.cat([cache["prompt", lid, "mlp"], m_gen], 1)
            else:  # lines 313-347
                m_gen_cache = cache["gen", lid, "mlp"].clone()
                if transfer:
                    m_gen_cache[:, index[0]] = layers.mlp(lid, h[:, P:][:, index[0]])
                    cache["gen", lid, "mlp"] = m_gen_cache
                if refresh_prompt:
                    cache["prompt", lid, "mlp"] = layers.mlp(lid, h[:, :P])
                m = torch.cat([cache["prompt", lid, "mlp"], m_gen_cache], 1)
            h = og + m  # line 349
        dream_step(x, layers.head(h), mask_index, P, i, steps, mask_id, record)
    return x[0, P:]


@pytest.mark.parametrize("steps, params", [(16, {"refresh": 4, "prompt_refresh": 6, "refresh_ratio": 0.25}),
                                           (8, {"refresh": 3, "prompt_refresh": 5, "refresh_ratio": 0.25}),
                                           (8, {"refresh": 8, "refresh_ratio": 0.0})])
def test_dllm_cache_tokens_and_logits_equal_a_transcription_of_the_reference_hook(den, steps_seen, steps, params):
    """Each row alone decodes as the transcription decodes it, with the same logits at every step;
    the cache is really stale (some step's logits differ from the uncached loop's)."""
    ids, mask = prompts()
    ours = dict(params, steps=steps, cache="dllm_cache")
    stale = 0.0
    for r in range(ids.shape[0]):
        row = ids[r][mask[r]]
        steps_seen.clear()
        SAMPLERS.build("low_confidence", {"steps": steps})(den, row[None], generator=None, gen_length=L)
        plain = list(steps_seen)
        steps_seen.clear()
        got = SAMPLERS.build("low_confidence", ours)(den, row[None], generator=None, gen_length=L)
        record: list = []
        ref = reference_dream_dllm(den, row.clone(), L, steps, params.get("prompt_refresh", 50), params["refresh"],
                                   params["refresh_ratio"], record)
        assert torch.equal(got.tokens[0], ref), r
        assert_same_steps(steps_seen, record)
        stale = max(stale, max(float((a[e] - b[e]).abs().max()) for (a, e), (b, _) in zip(steps_seen, plain)
                               if e.any()))
    assert stale > 1e-3


def test_d2cache_is_refused_on_dream(den):
    ids, mask = prompts()
    with pytest.raises(HarnessError, match="shift_logits"):
        SAMPLERS.build("low_confidence", {"cache": "d2cache"})(den, ids, generator=None, prompt_mask=mask,
                                                                gen_length=L)


@pytest.mark.parametrize("params", [{"cache": "dkv", "refresh": 3},
                                    {"cache": "dllm_cache", "refresh": 3, "prompt_refresh": 5}])
def test_a_left_padded_batch_decodes_each_row_as_alone(den, params):
    """The caches keep the view's padding (positions counting real tokens, padding keys unseen): a
    left-padded row of a batch decodes as its real prompt does alone, unpadded."""
    ids, mask = prompts()
    run = SAMPLERS.build("low_confidence", dict(params, steps=8))
    batch = run(den, ids, generator=None, prompt_mask=mask, gen_length=L)
    for r in range(ids.shape[0]):
        alone = run(den, ids[r][mask[r]][None], generator=None, gen_length=L)
        assert torch.equal(batch.tokens[r], alone.tokens[0]), r
