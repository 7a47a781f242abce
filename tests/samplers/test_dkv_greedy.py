"""`cache: dkv_greedy` (dKV-Cache-Greedy): exact when it refreshes every step, the reference's
caching rules (which columns each pass computes, which keys/values it reuses), fewer computed
tokens with a real interval, honest metering, and refusals.

The reference code needs the 8B LLaDA code and CUDA, so its rules are transcribed below with line
citations: horseee/dKV-Cache @49a76fc generation_utils/llada_dkv_cache_greedy.py `generate`
(lines 95-235) and `find_window_tokens` (lines 53-77), models/modeling_llada_dkv_cache_greedy.py
`LLaDALlamaBlock.forward` (lines 989-1027: the cached pass's keys/values) and `RotaryEmbedding`
(lines 378-395, 433-444: each computed column rotated at its own position). The reference draws one
random order per block (lines 124-133); the tests hand the harness's `random` sampler that same
order as its scores (`same_order`), so both commit the same columns at every step.
"""
from __future__ import annotations

import pytest
import torch

from harness.budget import Meter
from harness.models.native.llada import LLaDALayers
from harness.models.tiny import CharTokenizer, TinyConfig, TinyDenoiser, TinyLayers, TinyMDLM
from harness.registry import MODELS, SAMPLERS, TASKS
from harness.samplers._approx_cache import dkv_greedy_full_step, window_columns
from harness.samplers._base import DecodeLoop, transfer_schedule
from harness.samplers.random_order import RandomOrder
from harness.text import encode_prompts
from harness.types import HarnessError

torch.set_num_threads(1)


def tiny(n_layers=3, seed=0):
    tok = CharTokenizer()
    cfg = TinyConfig(vocab_size=len(tok), max_len=24, d_model=32, n_layers=n_layers, n_heads=2, d_ff=64)
    return TinyDenoiser(TinyMDLM(cfg, generator=torch.Generator().manual_seed(seed)).eval(), tok)


@pytest.fixture(scope="module")
def c16():
    den = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16"}).load()
    items = TASKS.build("addition", {"n_digits": 3, "canvas": 16}).items("test")[:40]
    ids, mask = encode_prompts(den.tokenizer, [it.prompt for it in items], den.pad_id)
    return den, ids, mask


@pytest.fixture(scope="module")
def llada():
    return MODELS.build("llada", {"preset": "tiny", "config": {"init_std": 0.4}}).load()


def llada_prompts(n: int = 3, seed: int = 0):
    """Left-padded random prompts of lengths 3..6 (ids below the preset's special tokens)."""
    g = torch.Generator().manual_seed(seed)
    lens = [3 + (i * 5) % 4 for i in range(n)]
    ids = torch.zeros(n, max(lens), dtype=torch.long)
    mask = torch.zeros(n, max(lens), dtype=torch.bool)
    for r, m in enumerate(lens):
        ids[r, -m:] = torch.randint(0, 120, (m,), generator=g)
        mask[r, -m:] = True
    return ids, mask


def gens(n: int, seed: int = 0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


# -- the reference, transcribed --------------------------------------------------------------------------
def reference_find_window_tokens(window_index: torch.Tensor, select_ids, mask_id: torch.Tensor, window_size: int):
    """llada_dkv_cache_greedy.py `find_window_tokens` (lines 53-77), pointer for pointer."""
    for select_id in select_ids:
        left, right, cnt, left_turn = select_id - 1, select_id + 1, 0, True
        while cnt < window_size:
            if left_turn:
                if left >= 0 and not window_index[left] and mask_id[left]:
                    window_index[left] = True
                    cnt += 1
                left -= 1
            else:
                if right < window_index.shape[0] and not window_index[right] and mask_id[right]:
                    window_index[right] = True
                    cnt += 1
                right += 1
            left_turn = not left_turn
            if left < 0 and right > window_index.shape[0]:
                break
    return window_index


@torch.no_grad()
def reference_greedy_generate(layers, vocab: int, mask_id: int, prompt: torch.Tensor, L: int, block: int, steps: int,
                              R: int, W: int, x0_p: list, record: list, computed: list):
    """One row (no padding), the harness's proposal rule (argmax without the mask token), the
    reference's loop and cache on a model's layer view. `x0_p[b]`: block b's random scores over the
    canvas (line 125). Records each step's block logits and masked columns, and the columns each
    pass computes (None: all)."""
    P = prompt.shape[0]
    x = torch.cat([prompt, torch.full((L,), mask_id, dtype=prompt.dtype)])[None]  # lines 96-97
    n_blocks = L // block
    steps_b = steps // n_blocks  # line 105
    for nb in range(n_blocks):  # line 107
        past, cur = None, None  # lines 108-109
        lo, hi = P + nb * block, P + (nb + 1) * block
        num_transfer = transfer_schedule((x[:, lo:hi] == mask_id).sum(1), steps_b)[0]  # line 114
        acc = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(num_transfer, 0)])  # lines 115-120
        p = x0_p[nb].clone()
        p[hi:] = -torch.inf  # line 129
        p[:lo] = -torch.inf  # line 130
        denoising_index = torch.sort(p, descending=True).indices  # line 133
        for i in range(steps_b):  # line 137
            mask_index = x[0] == mask_id  # line 140
            h_all, _ = layers.embed(x, None)
            if i % R != 0:  # line 150: a cached pass over x[cur_transfer_index] (line 154)
                cols = cur.nonzero().squeeze(1)  # ascending canvas order, as the boolean gather of line 154
                rest = (~cur).nonzero().squeeze(1)
                h = h_all[:, cols]
                for layer in range(layers.n_layers):
                    q, k, v = layers.qkv_at(layer, h, cols[None])  # RotaryEmbedding: each at its own position
                    past_k, past_v = past[layer]
                    K = torch.cat([k, past_k[:, :, rest]], 2)  # forward lines 989-1007: cat(fresh, past[~cur])
                    V = torch.cat([v, past_v[:, :, rest]], 2)
                    past_k[:, :, cols], past_v[:, :, cols] = k, v  # lines 1009-1011: scatter_ in place
                    h = h + layers.attend(layer, q, K, V, None)
                    h = h + layers.mlp(layer, h)
                logits = torch.zeros(1, x.shape[1], vocab)
                logits[:, cols] = layers.head(h)  # lines 183-187: the other columns' x0 is the mask
                computed.append(cols.tolist())
            else:  # lines 164-176: a full pass; every column's keys/values are the next cache (line 1022)
                h, past = h_all, []
                for layer in range(layers.n_layers):
                    q, k, v = layers.qkv(layer, h)
                    past.append((k.clone(), v.clone()))
                    h = h + layers.attend(layer, q, k, v, None)
                    h = h + layers.mlp(layer, h)
                logits = layers.head(h)
                computed.append(None)
            blk = logits[:, lo:hi].clone()
            record.append((blk.clone(), x[:, lo:hi] == mask_id))
            blk[..., mask_id] = -torch.inf  # the harness's proposal rule
            x0 = torch.full_like(x, mask_id)
            x0[:, lo:hi] = blk.argmax(-1)
            x0 = torch.where(mask_index[None], x0, x)  # line 189
            select = denoising_index[acc[i]:acc[i + 1]]  # line 194
            x[0, select] = x0[0, select]  # lines 195-197
            nxt = torch.zeros_like(mask_index)  # line 192
            if i < steps_b - 1:  # lines 202-215
                next_select = denoising_index[acc[i + 1]:acc[i + 1] + num_transfer[i + 1]]
                nxt[next_select] = True
                nxt[select] = True
                if W > 0:
                    reference_find_window_tokens(nxt, next_select.tolist(), mask_index, W)
            cur = nxt  # line 219
    return x[0, P:]


def same_order(monkeypatch, x0_p: list, steps_b: int, lo: int, block: int):
    """Make `random` score block b's columns by the reference's x0_p[b] (one draw per block, lines
    124-125) instead of its own draws: each step then commits the next slice of the reference's
    denoising order. dkv_greedy draws the scores once per step, before the pass."""
    calls = []

    def confidence(self, probs, x0, generator=None):
        b = len(calls) // steps_b
        calls.append(b)
        return x0_p[b][lo + b * block: lo + (b + 1) * block][None].expand(x0.shape[0], -1).clone()

    monkeypatch.setattr(RandomOrder, "confidence", confidence)
    return calls


@pytest.fixture
def steps_seen(monkeypatch):
    seen = []
    orig = DecodeLoop._step

    def spy(self, denoiser, logits, blk, *args, **kwargs):
        seen.append((logits.clone(), blk == denoiser.mask_id))
        return orig(self, denoiser, logits, blk, *args, **kwargs)

    monkeypatch.setattr(DecodeLoop, "_step", spy)
    return seen


class Counting:
    """Forwards to a denoiser; records each layer-wise pass's declared work and the rows each
    layer's q/k/v (`qkv` / `qkv_at`) and MLP really received, and the query columns of each pass."""

    def __init__(self, inner, layers_cls):
        self.inner, self.layers_cls, self.calls, self.computed, self.columns = inner, layers_cls, [], [], []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def logits_build_cache(self, x, attention_mask=None, *, keep):
        self.calls.append(None)
        return self.inner.logits_build_cache(x, attention_mask, keep=keep)

    def logits_cached(self, x, cache, **kwargs):  # declared on the type: the KV-cache support check reads it
        return self.inner.logits_cached(x, cache, **kwargs)

    def logits_layerwise(self, run, **work):
        self.calls.append(work)
        seen = {"qkv": {}, "mlp": {}}
        self.computed.append(seen)
        cols_seen = self.columns

        class Layers(self.layers_cls):
            def qkv(s, i, h):
                seen["qkv"][i] = seen["qkv"].get(i, 0) + h.shape[1]
                return super().qkv(i, h)

            def qkv_at(s, i, h, columns):
                seen["qkv"][i] = seen["qkv"].get(i, 0) + h.shape[1]
                if i == 0:
                    cols_seen.append(columns.clone())
                return super().qkv_at(i, h, columns)

            def mlp(s, i, h):
                seen["mlp"][i] = seen["mlp"].get(i, 0) + h.shape[1]
                return super().mlp(i, h)

        return run(Layers(self.inner.module))


def assert_same_steps(ours: list, ref: list) -> None:
    """The same steps, and at each step the same logits at every column the reference computed
    that is still masked (the only columns a step can commit)."""
    assert len(ours) == len(ref)
    for (a, ea), (b, eb) in zip(ours, ref):
        assert torch.equal(ea, eb)
        live = ea & (b != 0).any(-1)  # columns the reference's pass computed
        assert live.any()
        assert torch.allclose(a[live], b[live], atol=2e-4, rtol=1e-4), (a[live] - b[live]).abs().max()


def run_both(den, layers, prompt, L, block, steps, R, W, seed, monkeypatch, steps_seen):
    """The harness (`random`, cache dkv_greedy, the reference's order) and the transcription on one
    row: -> (harness tokens, reference tokens, the reference's computed columns per pass)."""
    T = prompt.shape[0] + L
    g = torch.Generator().manual_seed(seed)
    x0_p = [torch.rand(T, generator=g) for _ in range(L // block)]
    steps_b = steps // (L // block)
    steps_seen.clear()
    same_order(monkeypatch, x0_p, steps_b, prompt.shape[0], block)
    spy = Counting(den, type(layers))
    params = {"block_length": block, "steps": steps, "cache": "dkv_greedy", "refresh": R, "window_size": W}
    ours = SAMPLERS.build("random", params)(spy, prompt[None], generator=gens(1), gen_length=L)
    record, computed = [], []
    ref = reference_greedy_generate(layers, den.vocab_size, den.mask_id, prompt.clone(), L, block, steps, R, W, x0_p,
                                    record, computed)
    assert_same_steps(steps_seen, record)
    # the same columns computed at every cached pass (the harness's in canvas order, as the reference's gather)
    got = [None if w is None else spy.columns.pop(0)[0].tolist() for w in spy.calls]
    assert got == computed
    return ours.tokens[0], ref, computed, x0_p


# -- (a) refreshing every step is the uncached loop ---------------------------------------------------------
@pytest.mark.parametrize("params", [{"block_length": 8}, {"block_length": 8, "window_size": 4},
                                    {"steps": 8, "window_size": 2}])
def test_refresh_every_step_equals_the_uncached_random_loop(params, llada):
    """refresh 1: every step a full pass (line 150: i % 1 == 0); the step's scores, drawn before
    the pass, are the uncached loop's draws, so the tokens are the same (left-padded batch, one
    generator per row), on the tiny model and on native LLaDA."""
    small = tiny()
    for den, (ids, mask) in ((small, encode_prompts(small.tokenizer, ["12+34=", "5+6=", "123+4="], small.pad_id)),
                             (llada, llada_prompts())):
        plain = {k: v for k, v in params.items() if k != "window_size"}
        base, meter = Meter(den), Meter(den)
        a = SAMPLERS.build("random", plain)(base, ids, generator=gens(3), prompt_mask=mask, gen_length=16)
        b = SAMPLERS.build("random", dict(params, cache="dkv_greedy", refresh=1))(
            meter, ids, generator=gens(3), prompt_mask=mask, gen_length=16)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)
        assert meter.cost.nfe_cached == 0 and meter.cost.nfe_full == base.cost.nfe_full
        assert meter.cost.tokens == base.cost.tokens


# -- (b) the reference's rules ------------------------------------------------------------------------------
def test_full_steps_follow_the_reference_condition():
    """llada_dkv_cache_greedy.py line 150: cached iff i % cache_reloading_step != 0."""
    for R in range(1, 6):
        for i in range(12):
            assert dkv_greedy_full_step(i, R) == (i % R == 0)


def test_window_columns_equal_find_window_tokens():
    """Random masks, picks in random order, windows of 0-5: the same columns as the pointer walk."""
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        T = int(torch.randint(4, 20, (1,), generator=g))
        masked = torch.rand(T, generator=g) < 0.6
        picks = masked & (torch.rand(T, generator=g) < 0.3)
        if not picks.any():
            continue
        scores = torch.rand(T, generator=g)
        want = picks | (~masked & (torch.rand(T, generator=g) < 0.3))  # plus some committed columns
        W = trial % 6
        order = torch.sort(torch.where(picks, scores, -torch.inf), descending=True).indices[:int(picks.sum())]
        expected = reference_find_window_tokens(want.clone(), order.tolist(), masked, W)
        got = window_columns(want[None], masked[None], picks[None], scores[None], W)[0]
        assert torch.equal(got, expected), (trial, W)


@pytest.mark.parametrize("R, W, block, steps", [(10 ** 6, 0, 16, 16), (3, 4, 16, 16), (2, 2, 8, 16)])
def test_tokens_and_logits_equal_the_transcription_on_the_trained_tiny_model(c16, R, W, block, steps, monkeypatch,
                                                                             steps_seen):
    """On the trained checkpoint, each row decodes as the transcription decodes it, with the same
    logits at every step and the same columns computed at every cached pass; the stale keys/values
    really move the logits (against the same decode refreshing every step), so the parity tests the cache."""
    den, ids, mask = c16
    layers = TinyLayers(den.module)
    moved = 0.0
    for r in range(6):
        row = ids[r][mask[r]]
        ours, ref, computed, x0_p = run_both(den, layers, row, 16, block, steps, R, W, 100 + r, monkeypatch,
                                             steps_seen)
        assert torch.equal(ours, ref), r
        assert any(c is not None for c in computed)
        fresh: list = []
        reference_greedy_generate(layers, den.vocab_size, den.mask_id, row.clone(), 16, block, steps, 1, 0, x0_p, fresh,
                                  [])
        for (a, ea), (b, _) in zip(steps_seen, fresh):
            live = ea & (a != 0).any(-1)
            moved = max(moved, float((a[live] - b[live]).abs().max()) if live.any() else 0.0)
    assert moved > 1e-2, "the stale keys/values moved no logit: the comparison would not test the cache"


@pytest.mark.parametrize("R, W, block, steps", [(10 ** 6, 0, 12, 12), (2, 4, 12, 12), (3, 1, 6, 12)])
def test_tokens_and_logits_equal_the_transcription_on_native_llada(llada, R, W, block, steps, monkeypatch, steps_seen):
    """Native LLaDA's layer view: rotary keys at their own positions (a wrong position changes the logits)."""
    ids, mask = llada_prompts(2, seed=3)
    layers = LLaDALayers(llada.module)
    for r in range(2):
        row = ids[r][mask[r]]
        ours, ref, computed, _ = run_both(llada, layers, row, 12, block, steps, R, W, 7 + r, monkeypatch, steps_seen)
        assert torch.equal(ours, ref), r
        assert any(c is not None for c in computed)


# -- (c) a real interval computes fewer columns, and the meter counts them ---------------------------------
@pytest.mark.parametrize("W", [0, 4])
def test_meter_counts_the_columns_each_layer_computes(llada, W):
    ids, mask = llada_prompts(4)
    base = Meter(llada)
    SAMPLERS.build("random", {"block_length": 8})(base, ids, generator=gens(4), prompt_mask=mask, gen_length=16)
    spy = Counting(llada, LLaDALayers)
    meter = Meter(spy)
    SAMPLERS.build("random", {"block_length": 8, "cache": "dkv_greedy", "refresh": 4, "window_size": W})(
        meter, ids, generator=gens(4), prompt_mask=mask, gen_length=16)
    works = [w for w in spy.calls if w is not None]
    assert works and len(works) == len(spy.computed)
    for work, seen in zip(works, spy.computed):
        lt = work["layer_tokens"]
        assert [seen["qkv"].get(i, 0) for i in range(len(lt))] == lt
        assert [seen["mlp"].get(i, 0) for i in range(len(lt))] == lt
    assert meter.cost.nfe == base.cost.nfe and meter.cost.nfe_cached == 4 * 12  # steps 1-3, 5-7 of both blocks
    assert meter.cost.tokens < base.cost.tokens and meter.cost.flops < base.cost.flops


def test_a_wider_window_computes_more_columns(c16):
    den, ids, mask = c16
    costs = []
    for W in (0, 2, 6):
        meter = Meter(den)
        SAMPLERS.build("random", {"steps": 16, "cache": "dkv_greedy", "refresh": 4, "window_size": W})(
            meter, ids, generator=gens(ids.shape[0]), prompt_mask=mask, gen_length=16)
        costs.append(meter.cost.tokens)
    assert costs[0] < costs[1] < costs[2]


# -- refusals ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, params, match", [
    ("low_confidence", {"cache": "dkv_greedy", "refresh": 2}, "known before the pass"),
    ("threshold", {"tau": 0.5, "cache": "dkv_greedy", "refresh": 2}, "known before the pass"),
    ("random", {"cache": "dkv_greedy"}, "refresh >= 1"),
    ("random", {"cache": "dkv", "window_size": 2}, "dkv_greedy setting"),
    ("random", {"cache": "dkv_greedy", "refresh": 2, "window_size": -1}, ">= 0"),
    ("random", {"cache": "dkv_greedy", "refresh": -1}, "refresh"),
    ("random", {"cache": "dkv_greedy", "refresh": 2, "cfg_scale": 1.0}, "classifier-free"),
])
def test_bad_settings_are_refused(name, params, match):
    with pytest.raises(HarnessError, match=match):
        SAMPLERS.build(name, params)


def test_models_without_a_layerwise_view_and_block_models_are_refused():
    from tests.samplers.toys import TableDenoiser

    den = TableDenoiser([[0.5, 0.5]] * 4, prompt_len=1)
    with pytest.raises(HarnessError, match="layer-by-layer view"):
        SAMPLERS.build("random", {"cache": "dkv_greedy", "refresh": 2})(den, torch.tensor([[5]]), generator=gens(1),
                                                                        gen_length=4)
    tok = CharTokenizer()
    cfg = TinyConfig(vocab_size=len(tok), max_len=24, d_model=16, n_layers=1, n_heads=2, d_ff=32, block_size=4)
    block = TinyDenoiser(TinyMDLM(cfg, generator=torch.Generator().manual_seed(0)).eval(), tok)
    with pytest.raises(HarnessError, match="block-diffusion"):
        SAMPLERS.build("random", {"cache": "dkv_greedy", "refresh": 2})(block, torch.tensor([[5, 6, 7, 8]]),
                                                                         generator=gens(1), gen_length=8)


def test_temperature_sampling_runs_and_is_reproducible(c16):
    """At temperature > 0 the scores are drawn before the step's Gumbel noise (documented): the
    same generators give the same tokens."""
    den, ids, mask = c16
    sampler = SAMPLERS.build("random", {"steps": 16, "temperature": 0.7, "cache": "dkv_greedy", "refresh": 2,
                                        "window_size": 2})
    a = sampler(den, ids[:8], generator=gens(8), prompt_mask=mask[:8], gen_length=16)
    b = sampler(den, ids[:8], generator=gens(8), prompt_mask=mask[:8], gen_length=16)
    assert torch.equal(a.tokens, b.tokens)


def test_record_steps_is_refused(c16):
    """A cached pass leaves most masked columns without a prediction: no trajectory to hand out."""
    den, ids, mask = c16
    with pytest.raises(HarnessError, match="record_steps"):
        SAMPLERS.build("random", {"steps": 16, "cache": "dkv_greedy", "refresh": 2})(
            den, ids[:2], generator=gens(2), prompt_mask=mask[:2], gen_length=16, record_steps=True)
