"""The approximate caches on Dream, whose logits are shifted (column k is predicted at k - 1):
`cache: dkv` follows dKV-Cache's Dream variant, `cache: dllm_cache` dLLM-Cache's Dream hook,
`cache: d2cache` d2Cache's handling of models adapted from an AR model. All run on the native
Dream's layer view (harness/models/native/dream.py `DreamLayers`).

The reference code cannot run here (it needs the 7B Dream code, transformers 4.46 and CUDA), so
its rules are transcribed below with line citations, on a tiny random native Dream:
- horseee/dKV-Cache generation_utils/dream_generation_utils.py `DreamGenerationMixin._sample` (the
  loop, cache_type "decoded", shift_type "un"), models/modeling_dream.py `DreamSdpaAttention.forward`
  and `DreamRotaryEmbedding.forward` (the cached pass), generation_utils/cache_utils.py
  `DynamicCache.update` / `get_transfer_cache` (what the cache keeps);
- maomaocun/dLLM-cache dllm_cache/hooks/cache_hook_Dream.py (the feature cache on Dream's layers);
- Kamichanw/d2Cache src/cache/d2cache.py `d2Cache.on_step_end` and src/generation/utils.py
  `prepare_logits_for_generation` (the transcription of tests/samplers/test_d2cache.py with them).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.budget import Meter
from harness.models.native.dream import DreamLayers
from harness.registry import MODELS, SAMPLERS
from harness.samplers import _d2cache
from harness.samplers._approx_cache import dkv_full_step_shifted, dkv_uncached_shifted, refresh_index
from harness.samplers._base import DecodeLoop
from tests.samplers import test_d2cache as td2

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


# -- d2Cache on Dream ------------------------------------------------------------------------------------
class ReferenceD2CacheDream(td2.ReferenceD2Cache):
    """The transcription of d2Cache's hooks (tests/samplers/test_d2cache.py) with the reference's
    handling of a model adapted from an AR model (`is_adapted_from_ar`, Kamichanw/d2Cache @72feb60):
    the logits shift right after the forward (src/generation/utils.py `prepare_logits_for_generation`
    line 25), and `on_step_end` (src/cache/d2cache.py lines 176-298) queries the column before each
    selected mask (lines 235-239) and sets the prompt's last column to the first completion
    column's selection after the nucleus (lines 261-264)."""

    def forward(self, layers, x, attention_mask):
        logits = super().forward(layers, x, attention_mask)
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)

    def on_step_end(self, block_mask, prompts, generated, new_generated, transfer_index, confidence):
        B, P = prompts.shape
        B_active, G = confidence.shape
        T = G + P
        block_mask = block_mask[self.active_seq_mask]
        if self._conf_cache is None:
            self._conf_cache = confidence
        remaining_mask = new_generated[self.active_seq_mask] == self.mask_token_id
        if self.active_q_mask is not None:
            valid_mask = (self.active_q_mask[:, P:] & generated[self.active_seq_mask] == self.mask_token_id)
            self._conf_cache[self.active_seq_mask][valid_mask] = confidence[valid_mask]  # a copy: lost
        block_size = block_mask.sum(dim=1, keepdim=True)
        meets_target = torch.cumsum(remaining_mask.int(), dim=1) >= self.current_k
        min_search_end = torch.argmax(meets_target.int(), dim=1, keepdim=True)
        min_search_end[~meets_target.any(dim=1, keepdim=True)] = G - 1
        search_end = (((min_search_end // block_size) + 1) * block_size) - 1
        block_start_indices = torch.argmax(block_mask.int(), dim=1, keepdim=True)
        col_indices = torch.arange(G)
        search_mask = (col_indices >= block_start_indices) & (col_indices <= search_end)
        scores = self._conf_cache[self.active_seq_mask] * td2.certainty_density(~remaining_mask, self.sigma)
        scores[block_mask] += scores.max()
        _, indices = torch.topk(torch.where(search_mask & remaining_mask, scores, -torch.inf),
                                k=min(self.current_k, remaining_mask.size(-1)), dim=-1)
        selected_mask = torch.zeros_like(remaining_mask, dtype=torch.bool).scatter_(1, indices, True) & remaining_mask
        response_mask = F.pad(selected_mask[:, 1:], (0, 1), value=False)  # lines 235-237
        lengths = torch.tensor([ti.numel() for ti in transfer_index if ti.numel() > 0])
        row_indices = torch.repeat_interleave(torch.arange(B_active), lengths)
        response_mask[row_indices, torch.cat(transfer_index)] = True
        q_mask = F.pad(response_mask, (P, 0), value=False)
        global_importance = self._attn_rollout.sum(dim=1)
        q_mask |= td2.nucleus_select(global_importance, self.rollout_p, mask=~q_mask)
        q_mask[:, P - 1] = selected_mask[:, 0]  # lines 261-264
        if self.inflate_w > 0:
            arange_t = torch.arange(T).expand(B_active, -1)
            masked_indices_next = torch.where(q_mask, arange_t, T)
            next_selected = torch.flip(torch.cummin(torch.flip(masked_indices_next, dims=[-1]), dim=-1).values, [-1])
            prev_selected = torch.cummax(torch.where(q_mask, arange_t, -1), dim=-1).values
            gap_len = (next_selected - arange_t) + (arange_t - prev_selected)
            q_mask |= (gap_len <= self.inflate_w) & (prev_selected >= 0) & (next_selected < T)
        if self._full_q_mask is None:
            self._full_q_mask, self._global_importance, self._density_score = q_mask, global_importance, scores
        else:
            self._full_q_mask[self.active_seq_mask] = q_mask
            self._global_importance[self.active_seq_mask] = global_importance
            self._density_score[self.active_seq_mask] = scores


D2_CASES = [({}, 16, 16), ({"current_k": 3, "rollout_p": 0.3, "inflate_w": 2}, 4, 8),
            ({"current_k": 5, "sigma": 2.0}, 8, 16), ({"current_k": 2, "rollout_p": 0.0}, 16, 8),
            ({"current_k": 64, "rollout_p": 1.0}, 8, 16)]


@pytest.mark.parametrize("params, block, steps", D2_CASES)
def test_d2cache_tokens_and_logits_equal_a_transcription_of_the_reference(params, block, steps, steps_seen,
                                                                          monkeypatch):
    """Three rows decoded together (the batch-wide maxima of the block bias and the top-up), the
    shared transcription's loop (`reference_generate`: LLaDA's count per step, so the harness runs
    the linear schedule) with the Dream hooks; the cache is really stale."""
    den = MODELS.build("dream", {"preset": "tiny", "device": "cpu", "dtype": "float32",
                                 "config": {"initializer_range": 0.2}}).load()
    den.stop_ids = (den.mask_id,)  # never proposed: the whole canvas is compared, not cut at an EOS
    ids = torch.randint(0, 120, (3, 6), generator=torch.Generator().manual_seed(2))
    base = {"steps": steps, "block_length": block, "schedule": "linear"}
    SAMPLERS.build("low_confidence", base)(den, ids, generator=None, gen_length=L)
    plain = list(steps_seen)
    steps_seen.clear()
    ours = SAMPLERS.build("low_confidence", dict(base, cache="d2cache", **params))(den, ids, generator=None,
                                                                                 gen_length=L)
    record: list = []
    monkeypatch.setattr(td2, "ReferenceD2Cache", ReferenceD2CacheDream)  # reference_generate builds this class
    ref = td2.reference_generate(den, DreamLayers(den.module), ids, L, block, steps, params, record)
    assert torch.equal(ours.tokens, ref)
    assert_same_steps(steps_seen, record)
    moved = max((a[e] - b[e]).abs().max().item() for (a, e), (b, _) in zip(plain, record) if e.any())
    assert moved > 1e-3


def test_d2cache_widest_settings_still_drop_the_prompts_last_column(den):
    """current_k above the canvas and the whole importance mass recompute every column on LLaDA; on
    Dream the reference's assignment (d2cache.py lines 261-264) drops the prompt's last column once the
    first completion column is decoded, so its keys go stale: every cached pass computes T - 1 or T
    columns, and at least one computes T - 1."""
    ids, mask = prompts()
    T = ids.shape[1] + L
    spy = []
    meter = Meter(den)
    orig = meter.logits_layerwise

    def record(run, **work):
        spy.append(work)
        return orig(run, **work)

    meter.logits_layerwise = record
    SAMPLERS.build("low_confidence", {"steps": 16, "cache": "d2cache", "rollout_p": 1.0, "current_k": 64})(
        meter, ids, generator=None, prompt_mask=mask, gen_length=L)
    widths = [w["layer_tokens"][0] for w in spy if not w["full"]]
    assert widths and set(widths) <= {T - 1, T} and T - 1 in widths


def test_the_shifted_plan_queries_the_column_before_each_chosen_mask():
    """plan_next with shift: a chosen mask at completion column j is queried at canvas column P + j - 1;
    the prompt's last column follows the first completion column's choice, even against the nucleus."""
    P, G = 3, 6
    mask_id = 9
    x = torch.tensor([[1, 2, 3, 4, mask_id, 5, mask_id, mask_id, mask_id]])
    masked_in = x == mask_id
    masked_in[0, P] = True  # column P was committed at this step
    importance = torch.zeros(1, P + G)
    importance[0, P - 1] = 1.0  # the nucleus alone would choose the prompt's last column
    p = _d2cache.D2Params(rollout_p=0.0, current_k=2, sigma=10.0, inflate_w=0)
    plans = {}
    for shift in (False, True):
        state = _d2cache.D2State(batch=1, q_mask=torch.zeros(1, P + G, dtype=torch.bool),
                            importance=torch.zeros(1, P + G), density=torch.zeros(1, G),
                            conf=torch.tensor([[0.0, 0.9, 0.0, 0.8, 0.1, 0.1]]))
        state.last = (None, masked_in, P, P + G, importance)
        _d2cache.plan_next(state, x, P, p, mask_id, shift)
        plans[shift] = state.q_mask[0].nonzero().squeeze(1).tolist()
    # chosen masks: completion columns 1 and 3 (canvas 4 and 6); committed: canvas 3; nucleus: canvas 2
    assert plans[False] == [2, 3, 4, 6]
    assert plans[True] == [3, 5]  # 4 - 1 = 3 (also committed), 6 - 1 = 5; column 2 dropped (first not chosen)


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


def test_a_cache_without_a_dream_variant_is_refused_on_a_shifted_model(den):
    """Only the caches with a shifted-logit variant pass the check; any other name is refused with the
    reason (a cache added for unshifted models does not silently run on Dream)."""
    from harness.samplers._approx_cache import SHIFTED_CACHES, check_layerwise_support
    from harness.types import HarnessError

    assert set(SHIFTED_CACHES) == {"dkv", "dllm_cache", "d2cache"}
    for cache in SHIFTED_CACHES:
        check_layerwise_support(den, cache)
    with pytest.raises(HarnessError, match="shift_logits"):
        check_layerwise_support(den, "some_new_cache")
