"""d2Cache (`cache: d2cache`): the reference's per-step logic transcribed line by line and compared with
the harness token for token and logit for logit (tiny model and native LLaDA at tiny shapes), exact
equality with the uncached loop when every column is recomputed, honest metering, and refusals.

The reference's own code runs only from a checkout of it (opt-in: tests/samplers/test_d2cache_reference.py,
token-identical in 10 settings), so its rules are also transcribed below with citations, Kamichanw/d2Cache
@72feb60, and this file always runs:
- src/cache/d2cache.py `d2Cache.model_forward` (query rows and the top-up, lines 41-60),
  `d2Cache.attention` (cache writes through `_active_q_indices`, the rollout reset at layer 0, lines
  62-130), `top_up_mask`, `accumulate_attn_rollout` and `on_step_end` (the query plan);
- src/generation/vanilla.py `generate_step` / `vanilla_generate` (the loop and its hook calls);
- src/utils/common.py `certainty_density`, `nucleus_select`, `top_up_mask_` (the transcription
  calls the harness's own versions of these, which are checked against their definitions below).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from harness.budget import Meter
from harness.models.tiny import CharTokenizer, TinyConfig, TinyDenoiser, TinyLayers, TinyMDLM
from harness.registry import MODELS, SAMPLERS, TASKS
from harness.samplers import _d2cache
from harness.samplers._base import DecodeLoop, stop_ids, transfer_schedule, upto_first_stop
from harness.samplers._d2cache import D2CACHE_DEFAULTS, certainty_density, nucleus_select, top_up
from harness.text import encode_prompts
from harness.types import HarnessError

torch.set_num_threads(1)

EVERY_COLUMN = {"cache": "d2cache", "rollout_p": 1.0, "current_k": 64}  # all masks, then all importance mass


def tiny(n_layers=2, seed=0):
    tok = CharTokenizer()
    cfg = TinyConfig(vocab_size=len(tok), max_len=24, d_model=32, n_layers=n_layers, n_heads=2, d_ff=64)
    return TinyDenoiser(TinyMDLM(cfg, generator=torch.Generator().manual_seed(seed)).eval(), tok)


@pytest.fixture(scope="module")
def c16():
    den = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16"}).load()
    task = TASKS.build("addition", {"n_digits": 3, "canvas": 16})
    items = task.items("test")[:120]
    ids, mask = encode_prompts(den.tokenizer, [it.prompt for it in items], den.pad_id)
    return den, ids, mask


@pytest.fixture(scope="module")
def llada():
    return MODELS.build("llada", {"preset": "tiny", "config": {"init_std": 0.2}}).load()


@pytest.fixture
def steps_seen(monkeypatch):
    """Every step's block logits and eligible columns, as the shared loop hands them to its step."""
    seen = []
    orig = DecodeLoop._step

    def spy(self, denoiser, logits, blk, *args, **kwargs):
        seen.append((logits.clone(), blk == denoiser.mask_id))
        return orig(self, denoiser, logits, blk, *args, **kwargs)

    monkeypatch.setattr(DecodeLoop, "_step", spy)
    return seen


# -- the reference, transcribed ----------------------------------------------------------------------------
class ReferenceD2Cache:
    """d2Cache's hooks (src/cache/d2cache.py) on a layer view: the reference's tensors and indexing as
    written (boolean-mask gathers, `_active_q_indices` writes, the full [B, T, T] rollout product with the
    identity rows, the confidence-cache write into a copy). Keys/values are kept [B, T, H, Dh] as the
    reference's [B, T, C]; q/k come from the view at the query columns' positions (the reference's
    `q_position_ids`, `select_position_ids`)."""

    def __init__(self, rollout_p, current_k, sigma, inflate_w, mask_id):
        self.rollout_p, self.current_k, self.sigma, self.inflate_w = rollout_p, current_k, sigma, inflate_w
        self.mask_token_id = mask_id
        self.key_cache, self.value_cache = [], []
        self._conf_cache = None
        self._full_q_mask = None
        self.active_q_mask = None
        self.active_seq_mask = None

    def top_up_mask(self, q_mask):  # d2cache.py `top_up_mask`
        q_mask = q_mask.clone()
        num_selected_per_seq = q_mask.sum(dim=-1)
        _, G = self._density_score.shape
        if torch.any(num_selected_per_seq != num_selected_per_seq.max()):
            combined_scores = torch.where(q_mask, -torch.inf, self._global_importance[self.active_seq_mask])
            combined_scores[:, -G:] += combined_scores.max() + self._density_score[self.active_seq_mask]
            # top_up_mask_ (common.py), written out
            need = (int(num_selected_per_seq.max()) - q_mask.sum(-1)).clamp(min=0)
            scores = torch.where(q_mask, -torch.inf, combined_scores)
            _, indices = torch.topk(scores, k=int(need.max()), dim=-1)
            pad = indices.masked_select(torch.arange(int(need.max())).expand(q_mask.shape[0], -1) < need[:, None])
            q_mask[torch.repeat_interleave(torch.arange(q_mask.shape[0]), need.long()), pad] = True
        return q_mask

    def accumulate_attn_rollout(self, attn_scores):  # d2cache.py `accumulate_attn_rollout`
        B, n_heads, q_len, seq_len = attn_scores.shape
        if self.active_q_mask is None:
            effective_attn = attn_scores.mean(dim=1)
        else:
            effective_attn = torch.eye(seq_len, dtype=attn_scores.dtype).repeat(B, 1, 1)
            effective_attn[self.active_q_mask] = attn_scores.mean(dim=1).reshape(-1, seq_len)
        residual_attn = effective_attn + torch.eye(seq_len, dtype=attn_scores.dtype)
        residual_attn = residual_attn / residual_attn.sum(dim=-1, keepdim=True)
        self._attn_rollout = residual_attn @ self._attn_rollout

    def forward(self, layers, x, attention_mask):
        """The model's forward under `model_forward` and `attention` (one pass over the active rows)."""
        h, key_mask = layers.embed(x, attention_mask)
        B, T, C = h.shape
        cols = torch.arange(T).expand(B, -1)
        if self._full_q_mask is not None:  # model_forward
            self.active_q_mask = self.top_up_mask(self._full_q_mask[self.active_seq_mask])
            h = h[self.active_q_mask].view(B, -1, C)
            cols = cols[self.active_q_mask].view(B, -1)  # q_position_ids
        for layer in range(layers.n_layers):
            q, k, v = layers.qkv_at(layer, h, cols)
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, n, H, Dh]
            if len(self.key_cache) <= layer:
                self.key_cache.append(k.clone())
                self.value_cache.append(v.clone())
            else:
                if layer == 0:
                    active_seq_idx = torch.where(self.active_seq_mask)[0]
                    m_nonzero = self.active_q_mask.nonzero(as_tuple=False)
                    self._active_q_indices = (active_seq_idx[m_nonzero[:, 0]], m_nonzero[:, 1])
                self.key_cache[layer][self._active_q_indices] = k.flatten(0, 1)
                self.value_cache[layer][self._active_q_indices] = v.flatten(0, 1)
                k = self.key_cache[layer][self.active_seq_mask]
                v = self.value_cache[layer][self.active_seq_mask]
            K, V = k.transpose(1, 2), v.transpose(1, 2)
            attn_weight = layers.attention_weights(layer, q, K, key_mask)  # eager attention's weights
            h = h + layers.attend(layer, q, K, V, key_mask)
            if layer == 0:
                self._attn_rollout = torch.eye(self.key_cache[layer].size(1)).expand(B, -1, -1)
            self.accumulate_attn_rollout(attn_weight)
            h = h + layers.mlp(layer, h)
        logits = layers.head(h)
        if self._full_q_mask is not None:
            logits = torch.zeros((B, T, logits.size(-1))).masked_scatter_(self.active_q_mask.unsqueeze(-1), logits)
        return logits

    def on_step_end(self, block_mask, prompts, generated, new_generated, transfer_index, confidence):
        """`d2Cache.on_step_end` (frame = prompts + generated before the delta, new_frame after)."""
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
        scores = self._conf_cache[self.active_seq_mask] * certainty_density(~remaining_mask, self.sigma)
        scores[block_mask] += scores.max()
        _, indices = torch.topk(torch.where(search_mask & remaining_mask, scores, -torch.inf),
                                k=min(self.current_k, remaining_mask.size(-1)), dim=-1)
        selected_mask = torch.zeros_like(remaining_mask, dtype=torch.bool).scatter_(1, indices, True) & remaining_mask
        response_mask = selected_mask
        lengths = torch.tensor([ti.numel() for ti in transfer_index if ti.numel() > 0])
        row_indices = torch.repeat_interleave(torch.arange(B_active), lengths)
        response_mask[row_indices, torch.cat(transfer_index)] = True
        q_mask = F.pad(response_mask, (P, 0), value=False)
        global_importance = self._attn_rollout.sum(dim=1)
        q_mask |= nucleus_select(global_importance, self.rollout_p, mask=~q_mask)
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


@torch.no_grad()
def reference_generate(den, layers, prompt, L: int, block: int, steps: int, params: dict, record: list,
                       sigma: float | None = None, cached: bool = True):
    """`vanilla_generate` with the d2Cache (rows of equal prompt length, no padding), LLaDA's fixed count
    per step (`num_transfer_tokens` = block / steps per block) and the harness's proposal rule (argmax
    without the mask token, float32 confidence, ties to the lower column). `delta.confidence` is the
    reference's `sample_tokens` confidence (max softmax probability, mask included), -inf where not masked.
    `sigma`: the generation's certainty prior (`generate_step`: scores = confidence · certainty_density(
    ~remaining_mask, sigma) over the whole completion, then `confidence_unmasking` on the block);
    `cached` False: no cache (the model's plain forward)."""
    cache = ReferenceD2Cache(mask_id=den.mask_id, **{**D2CACHE_DEFAULTS, **params})
    mask_id = den.mask_id
    B, P = prompt.shape
    gen = torch.full((B, L), mask_id, dtype=prompt.dtype)
    steps_b = steps // (L // block)
    for b in range(L // block):
        block_mask = torch.zeros(B, L, dtype=torch.bool)
        block_mask[:, b * block:(b + 1) * block] = True
        k_sched = transfer_schedule((gen[:, b * block:(b + 1) * block] == mask_id).sum(1), steps_b)
        for i in range(steps_b):
            block_mask &= gen == mask_id  # check_can_generate narrows vanilla's block_mask in place
            can_generate = block_mask.any(-1)
            if not can_generate.any():
                break
            cache.active_seq_mask = can_generate
            x = torch.cat([prompt, gen], -1)[can_generate]
            logits = cache.forward(layers, x, None) if cached else den.logits(x)
            remaining_mask = gen == mask_id
            transfer_index_mask = remaining_mask.clone()
            if cache.active_q_mask is not None:  # generate_step: logical_and_ on a copy (no effect)
                transfer_index_mask[torch.nonzero(can_generate, as_tuple=True)[0]].logical_and_(
                    cache.active_q_mask[:, P:])
            logits = logits[:, P:]
            delta_conf = torch.where(transfer_index_mask, F.softmax(logits.float(), -1).max(-1).values, -torch.inf)
            blk = logits[:, b * block:(b + 1) * block].clone()
            record.append((blk.clone(), gen[:, b * block:(b + 1) * block] == mask_id))
            blk[..., mask_id] = -torch.inf
            x0 = blk.argmax(-1)
            conf = torch.gather(F.softmax(blk.float(), -1), -1, x0[..., None]).squeeze(-1)
            conf = torch.where(gen[:, b * block:(b + 1) * block] == mask_id, conf, -torch.inf)
            if sigma is not None and sigma > 0:
                conf = conf * certainty_density(~remaining_mask, sigma=sigma)[:, b * block:(b + 1) * block]
                conf = torch.where(gen[:, b * block:(b + 1) * block] == mask_id, conf, -torch.inf)
            transfer_index = []
            new_gen = gen.clone()
            for r in range(B):
                order = torch.sort(conf[r], descending=True, stable=True).indices[:int(k_sched[r, i])]
                new_gen[r, b * block + order] = x0[r, order]
                transfer_index.append(torch.sort(b * block + order).values)
            if cached:
                cache.on_step_end(block_mask, prompt, gen, new_gen, transfer_index, delta_conf)
            gen = new_gen
    return cut(den, gen)


def cut(den, tokens):
    """The completion cut at its first stop token, later tokens EOS (the harness's `finish`)."""
    n = upto_first_stop(tokens, stop_ids(den))
    return torch.where(torch.arange(tokens.shape[1])[None, :] < n[:, None], tokens, den.eos_id)


def assert_same_steps(ours: list, ref: list, atol=2e-4) -> None:
    """The same number of steps, and at each step the same logits at every eligible column."""
    assert len(ours) == len(ref)
    for (a, ea), (b, eb) in zip(ours, ref):
        assert torch.equal(ea, eb)
        assert torch.allclose(a[ea], b[eb], atol=atol, rtol=1e-4), (a[ea] - b[eb]).abs().max()


CASES = [({}, 16, 16), ({"current_k": 3, "rollout_p": 0.3, "inflate_w": 2}, 4, 8),
         ({"current_k": 5, "sigma": 2.0}, 8, 16), ({"current_k": 2, "rollout_p": 0.0}, 16, 8)]


@pytest.mark.parametrize("params, block, steps", CASES)
def test_tokens_and_logits_equal_a_transcription_of_the_reference(params, block, steps, steps_seen):
    """A random tiny model (so the stale caches change many tokens), three rows decoded together (the
    batch-wide maxima of the block bias and the top-up), 16 completion columns."""
    den = tiny()
    den.stop_ids = (den.mask_id,)  # never proposed: the whole canvas is compared, not cut at an EOS
    ids, _ = encode_prompts(den.tokenizer, ["12+34=", "56+78=", "90+12="], den.pad_id)
    SAMPLERS.build("low_confidence", {"steps": steps, "block_length": block})(den, ids, generator=None, gen_length=16)
    plain_steps = list(steps_seen)
    ours = SAMPLERS.build("low_confidence", {"steps": steps, "block_length": block, "cache": "d2cache", **params})(
        den, ids, generator=None, gen_length=16)
    record: list = []
    ref = reference_generate(den, TinyLayers(den.module), ids, 16, block, steps, params, record)
    assert torch.equal(ours.tokens, ref)
    assert_same_steps(steps_seen[-len(record):], record)
    # the stale keys/values moved the logits: the comparison above tests the cache (this random model's
    # greedy tokens barely react; the trained checkpoint's test below compares rows whose tokens change)
    moved = max((a[e] - b[e]).abs().max().item() for (a, e), (b, _) in zip(plain_steps, record) if e.any())
    assert moved > 1e-3


def test_trained_checkpoint_rows_equal_the_transcription(c16, steps_seen):
    """On the trained checkpoint d2Cache (current_k 4) changes a few rows' answers; the transcription
    must reproduce those rows token for token, with the same logits at every step (and a row it leaves
    alone)."""
    den, ids, mask = c16
    params = {"steps": 16, "cache": "d2cache", "current_k": 4}
    plain = SAMPLERS.build("low_confidence", {"steps": 16})(den, ids, generator=None, prompt_mask=mask, gen_length=16)
    ours = SAMPLERS.build("low_confidence", params)(den, ids, generator=None, prompt_mask=mask, gen_length=16)
    differ = (plain.tokens != ours.tokens).any(1).nonzero().squeeze(1).tolist()
    assert differ, "the cache changed no row: the comparison below would not test it"
    same = (plain.tokens == ours.tokens).all(1).nonzero().squeeze(1).tolist()
    for r in differ[:3] + same[:1]:
        row = ids[r][mask[r]][None]
        steps_seen.clear()
        alone = SAMPLERS.build("low_confidence", params)(den, row, generator=None, gen_length=16)
        record: list = []
        ref = reference_generate(den, TinyLayers(den.module), row, 16, 16, 16, {"current_k": 4}, record)
        assert torch.equal(alone.tokens, ref), r
        assert_same_steps(steps_seen, record)


@pytest.mark.parametrize("params, block, steps", CASES[1:3])
def test_native_llada_equals_the_transcription(llada, params, block, steps, steps_seen):
    """Native LLaDA's view (rotary q/k at the query columns' positions) under the same transcription."""
    from harness.models.native.llada import LLaDALayers

    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    ours = SAMPLERS.build("low_confidence", {"steps": steps, "block_length": block, "cache": "d2cache", **params})(
        llada, ids, generator=None, gen_length=16)
    record: list = []
    ref = reference_generate(llada, LLaDALayers(llada.module), ids, 16, block, steps, params, record)
    assert torch.equal(ours.tokens, ref)
    assert_same_steps(steps_seen[-len(record):], record, atol=1e-3)


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("sigma, block, steps", [(10.0, 16, 16), (2.0, 8, 16), (1.0, 16, 8)])
def test_the_certainty_prior_equals_the_transcription(cached, sigma, block, steps, steps_seen):
    """`prior_sigma` (the reference's generation sigma), alone and with the d2Cache (sigma 10 over one
    block: the reference's d2cache configuration), against the transcription; the prior changes the
    decoding order (commit steps) of the plain loop."""
    den = tiny()
    den.stop_ids = (den.mask_id,)
    ids, _ = encode_prompts(den.tokenizer, ["12+34=", "56+78=", "90+12="], den.pad_id)
    params = {"steps": steps, "block_length": block, **({"cache": "d2cache"} if cached else {})}
    plain = SAMPLERS.build("low_confidence", params)(den, ids, generator=None, gen_length=16)
    ours = SAMPLERS.build("low_confidence", dict(params, prior_sigma=sigma))(den, ids, generator=None, gen_length=16)
    record: list = []
    ref = reference_generate(den, TinyLayers(den.module), ids, 16, block, steps, {}, record, sigma=sigma,
                             cached=cached)
    assert torch.equal(ours.tokens, ref)
    assert_same_steps(steps_seen[-len(record):], record)
    assert not torch.equal(plain.commit_step, ours.commit_step)


def test_the_certainty_prior_is_refused_where_it_would_be_ignored():
    for name, params in [("threshold", {"tau": 0.9}), ("entropy_bound", {})]:
        with pytest.raises(HarnessError, match="prior_sigma"):
            SAMPLERS.build(name, dict(params, prior_sigma=10.0))
    with pytest.raises(HarnessError, match="prior_sigma must be > 0"):
        SAMPLERS.build("low_confidence", {"prior_sigma": 0.0})
    den = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16-block4"}).load()
    ids, _ = encode_prompts(den.tokenizer, ["1+2="], den.pad_id)
    with pytest.raises(HarnessError, match="prior_sigma on a block-diffusion model"):
        SAMPLERS.build("low_confidence", {"prior_sigma": 10.0})(den, ids, generator=None, gen_length=8)


# -- every column recomputed: the uncached loop ----------------------------------------------------------
LOOPS = [("low_confidence", {"steps": 16}), ("low_confidence", {"block_length": 4, "steps": 8}),
         ("threshold", {"tau": 0.3, "block_length": 8}), ("entropy_bound", {"bound": 1.0})]


def padded_batch(model, llada):
    den = tiny() if model == "tiny" else llada
    if model == "tiny":
        ids, mask = encode_prompts(den.tokenizer, ["12+34=", "5+6=", "123+4="], den.pad_id)
    else:
        ids = torch.randint(0, 100, (3, 6), generator=torch.Generator().manual_seed(2))
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[1, :2] = False
    return den, ids, mask


@pytest.mark.parametrize("name, params", LOOPS)
@pytest.mark.parametrize("model", ["tiny", "llada"])
def test_recomputing_every_column_equals_the_uncached_loop(name, params, model, llada, monkeypatch):
    """When every pass's query set is every column (the plan's nucleus made to take every column left),
    the cache's gathers, scatters and rollout change nothing: tokens, commit steps, every step's logits
    and the computed tokens are the uncached loop's exactly (left-padded rows, rows of adaptive samplers
    leaving the batch and coming back at the next block)."""
    den, ids, mask = padded_batch(model, llada)
    monkeypatch.setattr(_d2cache, "nucleus_select", lambda scores, top_p, mask=None: mask.clone())
    seen = []
    orig = DecodeLoop._step
    monkeypatch.setattr(DecodeLoop, "_step", lambda self, d, logits, *a, **k: (seen.append(logits.clone()),
                                                                              orig(self, d, logits, *a, **k))[1])
    base, meter = Meter(den), Meter(den)
    a = SAMPLERS.build(name, params)(base, ids, generator=None, prompt_mask=mask, gen_length=16)
    n = len(seen)
    b = SAMPLERS.build(name, dict(params, cache="d2cache"))(meter, ids, generator=None, prompt_mask=mask,
                                                            gen_length=16)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)
    assert len(seen) == 2 * n and all(torch.equal(x, y) for x, y in zip(seen[:n], seen[n:]))
    assert meter.cost.tokens == base.cost.tokens and meter.cost.nfe == base.cost.nfe
    assert meter.cost.nfe_full == ids.shape[0]  # the first pass only; the cache is never rebuilt


def test_a_row_that_joins_after_the_first_pass_gets_a_full_pass(monkeypatch):
    """Inpainting fills row 0's first block, so an adaptive sampler leaves it out of the generation's first
    pass; it joins at the second block, whose pass is then full (it has no cache yet). With every column
    recomputed the tokens are still the uncached loop's, and the meter counts the two full passes' rows."""
    den, ids, mask = padded_batch("tiny", None)
    fixed = torch.full((3, 16), -1)
    fixed[0, :8] = torch.tensor(den.tokenizer.encode("46++++++"))
    monkeypatch.setattr(_d2cache, "nucleus_select", lambda scores, top_p, mask=None: mask.clone())
    params = {"tau": 0.3, "block_length": 8}
    a = SAMPLERS.build("threshold", params)(den, ids, generator=None, prompt_mask=mask, gen_length=16, fixed=fixed)
    meter = Meter(den)
    b = SAMPLERS.build("threshold", dict(params, cache="d2cache"))(meter, ids, generator=None, prompt_mask=mask,
                                                                    gen_length=16, fixed=fixed)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)
    assert meter.cost.nfe_full == 2 + 3  # rows 1, 2 at the first pass; all three when row 0 joins


@pytest.mark.parametrize("name, params", LOOPS)
def test_the_widest_settings_decode_as_the_uncached_loop(name, params):
    """The same through the settings alone (rollout_p 1, current_k >= the completion): every masked
    column and nearly all the rest are recomputed (a nucleus of mass exactly 1 can lose its last
    column to rounding, as the reference's), and the tokens are the uncached loop's."""
    den, ids, mask = padded_batch("tiny", None)
    base, meter = Meter(den), Meter(den)
    a = SAMPLERS.build(name, params)(base, ids, generator=None, prompt_mask=mask, gen_length=16)
    b = SAMPLERS.build(name, dict(params, **EVERY_COLUMN))(meter, ids, generator=None, prompt_mask=mask,
                                                           gen_length=16)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)
    assert meter.cost.tokens >= 0.99 * base.cost.tokens


# -- metering, helpers, refusals --------------------------------------------------------------------------
def test_meter_counts_the_query_columns_each_layer_computes(c16):
    """Tokens are the columns each layer really ran through its q/k/v projections (a counting view)."""
    den, ids, mask = c16
    computed, works = [], []

    class Counting(TinyLayers):
        def qkv(s, i, h):
            computed.append(h.shape[0] * h.shape[1])
            return super().qkv(i, h)

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def logits_layerwise(self, run, **work):
            works.append(work)
            return run(Counting(self.inner.module))

    meter = Meter(Spy(den))
    SAMPLERS.build("low_confidence", {"steps": 8, "cache": "d2cache", "current_k": 3})(
        meter, ids[:20], generator=None, prompt_mask=mask[:20], gen_length=16)
    works = [w for w in works if w]  # (the capability check runs the view once with no pass)
    n_layers = den.arch.n_layers
    counted = [sum(computed[j * n_layers:(j + 1) * n_layers]) for j in range(len(works))]
    assert counted == [w["batch"] * sum(w["layer_tokens"]) for w in works]
    assert meter.cost.tokens == sum(w["batch"] * w["layer_tokens"][0] for w in works)
    T = ids.shape[1] + 16
    assert works[0]["full"] and works[0]["layer_tokens"][0] == T
    assert all(not w["full"] and w["layer_tokens"][0] < T for w in works[1:])
    rollout = sum(2.0 * w["batch"] * w["layer_tokens"][0] * T * T * n_layers for w in works)
    assert all(w["extra_flops"] > 0 for w in works) and sum(w["extra_flops"] for w in works) == rollout


@pytest.mark.parametrize("model", ["tiny", "llada"])
def test_attention_weights_are_what_attend_weighs_the_values_by(model, llada):
    """The view's weights times the values, heads merged and projected, are `attend`'s output (left padding
    included: zero weight on padding keys), and each row sums to 1."""
    den, ids, mask = padded_batch(model, llada)
    x = torch.cat([ids, torch.full((ids.shape[0], 5), den.mask_id, dtype=ids.dtype)], 1)
    am = torch.cat([mask, torch.ones(ids.shape[0], 5, dtype=torch.bool)], 1)

    def run(layers):
        h, km = layers.embed(x, am)
        q, k, v = layers.qkv(0, h)
        w = layers.attention_weights(0, q, k, km)
        rep = q.shape[1] // v.shape[1]
        o = w @ v.repeat_interleave(rep, 1)
        B, H, n, Dh = o.shape
        merged = o.transpose(1, 2).reshape(B, n, H * Dh)
        proj = layers.module.blocks[0].proj if model == "tiny" else layers.blocks[0].attn_out
        return w, proj(merged), layers.attend(0, q, k, v, km)

    with torch.no_grad():
        w, ours, want = den.logits_layerwise(run)
    real = am.bool()
    assert torch.allclose(ours[real], want[real], atol=1e-5)
    assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-5)
    assert float(w.masked_select(~real[:, None, None, :].expand_as(w)).abs().max()) == 0.0


def test_certainty_density_is_its_definition():
    """Against the formula computed directly (extension: L decoded columns left, L right that copy the
    last column's state; kernel mass over offsets [-3L, 3L))."""
    g = torch.Generator().manual_seed(0)
    decoded = torch.rand(4, 11, generator=g) < 0.5
    decoded[0, -1], decoded[1, -1] = True, False
    sigma = 2.5
    L = decoded.shape[1]
    kern = lambda d: math.exp(-d * d / (2 * sigma * sigma))  # noqa: E731
    total = sum(kern(d) for d in range(-3 * L, 3 * L))
    want = torch.zeros(4, L)
    for b in range(4):
        ext = [1.0] * L + decoded[b].float().tolist() + [float(decoded[b, -1])] * L
        for i in range(L):
            want[b, i] = sum(ext[j] * kern(i + L - j) for j in range(3 * L)) / total
    assert torch.allclose(certainty_density(decoded, sigma), want, atol=1e-6)


def test_nucleus_select_and_top_up():
    s = torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.0, 0.0, 0.9, 0.1]])
    allowed = torch.tensor([[True, True, True, True], [True, True, False, True]])
    got = nucleus_select(s, 0.85, mask=allowed)
    # row 0: shares .5, .3 (running .8 <= .85), then .9 > .85; row 1: only column 3 has mass (share ~1)
    assert got.tolist() == [[True, True, False, False], [False, False, False, True]]
    assert nucleus_select(s, 0.0).sum(1).tolist() == [1, 1]  # at least one
    q = torch.tensor([[True, False, False, True, False], [True, False, False, False, False]])
    imp = torch.tensor([[0.0, 1.0, 2.0, 0.0, 0.0], [0.0, 3.0, 1.0, 0.0, 0.0]])
    dens = torch.tensor([[0.1, 0.2], [0.5, 0.05]])  # the last G = 2 columns come first, by density
    assert top_up(q, imp, dens).tolist() == [[True, False, False, True, False], [True, False, False, True, False]]


def test_bad_settings_are_refused():
    for params, match in [({"cache": "d2cache", "refresh": 2}, "no refresh interval"),
                          ({"cache": "dkv", "current_k": 4}, "d2cache settings"),
                          ({"cache": "d2cache", "rollout_p": 1.5}, "rollout_p"),
                          ({"cache": "d2cache", "current_k": 0}, "current_k"),
                          ({"cache": "d2cache", "sigma": 0.0}, "sigma"),
                          ({"cache": "d2cache", "inflate_w": -1}, "inflate_w")]:
        with pytest.raises(HarnessError, match=match):
            SAMPLERS.build("low_confidence", params)


def test_a_view_without_attention_weights_is_refused():
    class NoWeights(TinyLayers):
        attention_weights = None

    class Den(TinyDenoiser):
        def logits_layerwise(self, run, **work):
            return run(NoWeights(self.module))

    d = tiny()
    den = Den(d.module, d.tokenizer)
    ids, mask = encode_prompts(den.tokenizer, ["1+2="], den.pad_id)
    with pytest.raises(HarnessError, match="attention weights"):
        SAMPLERS.build("low_confidence", {"cache": "d2cache"})(den, ids, generator=None, gen_length=4)
    SAMPLERS.build("low_confidence", {"cache": "dkv"})(den, ids, generator=None, gen_length=4)  # dkv needs none


def test_the_plan_refuses_a_model_without_the_capability(tmp_path):
    from harness.config import load_suite, plan
    from tests.helpers import write_suite

    suite = """
suite: caps
models: {m: {name: llada, params: {preset: tiny}}}
tasks: {t: {name: addition, params: {n_digits: 2}, split: test, n_items: 2}}
studies:
  - {id: g, kind: generate, model: m, task: t, sampler: {name: low_confidence, params: {cache: d2cache}}}
"""
    plan(load_suite(write_suite(tmp_path, suite)))
    remote = suite.replace("{preset: tiny}", "{preset: tiny, impl: remote}")
    with pytest.raises(HarnessError, match="needs the model's logits_layerwise, attention_weights"):
        plan(load_suite(write_suite(tmp_path, remote, "remote.yaml")))


def test_block_models_are_refused():
    den = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16-block4"}).load()
    ids, _ = encode_prompts(den.tokenizer, ["1+2="], den.pad_id)
    with pytest.raises(HarnessError, match="block-diffusion"):
        SAMPLERS.build("low_confidence", {"cache": "d2cache"})(den, ids, generator=None, gen_length=8)


def test_record_steps_is_refused(c16):
    """A cached pass recomputes only the chosen query columns; the other masked columns have no prediction."""
    den, ids, mask = c16
    with pytest.raises(HarnessError, match="record_steps"):
        SAMPLERS.build("low_confidence", {"steps": 16, "cache": "d2cache"})(
            den, ids[:2], generator=None, prompt_mask=mask[:2], gen_length=16, record_steps=True)
