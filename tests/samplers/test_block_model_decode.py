"""The shared sampler loop on a block-diffusion model (harness/samplers/_base.py, "Block models"),
and the sampling options SDAR's `block_diffusion_generate` needs (top-k, top-p, multinomial draws,
torch.topk's tie order). The model is the randomly initialised `sdar` preset "tiny" (block 4);
parity with the public code is in tests/models/test_sdar_parity.py."""
from __future__ import annotations

import pytest
import torch

from harness.budget import Meter
from harness.registry import MODELS, SAMPLERS
from harness.samplers._base import inverse_cdf_draw, multinomial_rows, select_topk, top_k_filter, top_p_filter
from harness.types import HarnessError

L = 10  # not a multiple of the block: the reference's length rule applies


@pytest.fixture(scope="module")
def sdar_tiny():
    # a sharper random init than the default, so that proposals vary with position and confidences spread
    den = MODELS.build("sdar", {"preset": "tiny", "device": "cpu", "dtype": "float32", "seed": 3}).load()
    with torch.no_grad():
        den.module.lm_head.weight.mul_(60.0)
    return den


def batch(den, texts):
    ids = [den.tokenizer.encode(t) for t in texts]
    P = max(map(len, ids))
    x = torch.full((len(ids), P), den.pad_id)
    m = torch.zeros(len(ids), P, dtype=torch.bool)
    for i, r in enumerate(ids):
        x[i, P - len(r):] = torch.tensor(r)
        m[i, P - len(r):] = True
    return ids, x, m


TEXTS = ["12+7=", "ab", "The cat sat", "Q: 3*4?"]  # 5, 2, 11, 7 tokens: rows with and without a prefill


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# -- the filters and draws --------------------------------------------------------------------------
def test_top_k_and_top_p_filters():
    logits = torch.tensor([[2.0, 1.0, 0.0, 1.0, -1.0]])
    assert top_k_filter(logits, 0) is logits
    assert torch.isinf(top_k_filter(logits, 1)).tolist() == [[False, True, True, True, True]]
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[False, False, True, False, True]]  # ties kept
    distinct = torch.tensor([[2.0, 1.0, 0.0, 0.5, -1.0]])  # p = .563, .207, .076, .126, .028
    assert (~torch.isinf(top_p_filter(distinct, 0.5))).tolist() == [[True, False, False, False, False]]
    # .563 < .6: the next most likely token is kept as well, then the mass before the third exceeds .6
    assert (~torch.isinf(top_p_filter(distinct, 0.6))).tolist() == [[True, True, False, False, False]]
    assert (~torch.isinf(top_p_filter(distinct, 0.8))).tolist() == [[True, True, False, True, False]]
    assert top_p_filter(logits, 1.0) is logits


def test_multinomial_rows_draw_as_torch_multinomial_per_row():
    probs = torch.softmax(torch.randn(3, 4, 7, generator=torch.Generator().manual_seed(0)), -1)
    got = multinomial_rows(probs, gens([5, 6, 7]))
    want = torch.stack([torch.multinomial(probs[r], 1, generator=g).view(4) for r, g in enumerate(gens([5, 6, 7]))])
    assert torch.equal(got, want)
    shared = multinomial_rows(probs, torch.Generator().manual_seed(9))
    assert torch.equal(shared, torch.multinomial(probs.view(12, 7), 1, generator=torch.Generator().manual_seed(9))
                       .view(3, 4))
    with pytest.raises(ValueError, match="explicit torch.Generator"):
        multinomial_rows(probs, None)


def test_tie_break_topk_follows_torch_topk():
    conf = torch.tensor([[1.0, 0.5, 1.0, 1.0, -torch.inf]])
    k = torch.tensor([2])
    assert select_topk(conf, k).tolist() == [[True, False, True, False, False]]  # lower positions first
    want = torch.zeros(5, dtype=torch.bool)
    want[torch.topk(conf[0], 2).indices] = True
    assert select_topk(conf, k, "topk")[0].tolist() == want.tolist()
    # more than the finite scores: never an ineligible (-inf) position
    assert select_topk(conf, torch.tensor([5]), "topk").tolist() == [[True, True, True, True, False]]


# -- block models -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, params", [
    ("low_confidence", {"cache": "prefix", "temperature": 1.0}),
    ("threshold", {"tau": 0.9, "cache": "prefix", "temperature": 0.7, "top_k": 20, "top_p": 0.95}),
    ("low_confidence", {"cache": "none", "temperature": 1.0}),
    ("entropy_bound", {"bound": 0.5, "cache": "prefix", "sampling": "gumbel", "temperature": 0.5}),
])
def test_left_padded_batch_decodes_as_single_rows(sdar_tiny, name, params):
    s = SAMPLERS.build(name, params)
    ids, x, m = batch(sdar_tiny, TEXTS)
    meter = Meter(sdar_tiny)
    both = s(meter, x, prompt_mask=m, generator=gens(range(10, 14)), gen_length=L)
    nfe = 0
    for i, r in enumerate(ids):
        one_meter = Meter(sdar_tiny)
        one = s(one_meter, torch.tensor([r]), generator=gens([10 + i]), gen_length=L)
        n = one.tokens.shape[1]
        assert n == -(-(len(r) + L) // 4) * 4 - len(r)  # block_diffusion_generate's completion length
        assert torch.equal(both.tokens[i, :n], one.tokens[0]) and torch.equal(both.commit_step[i, :n],
                                                                               one.commit_step[0])
        assert int(both.gen_len[i]) == int(one.gen_len[0]) and both.text[i] == one.text[0]
        nfe += one_meter.cost.nfe
    assert meter.cost.nfe == nfe  # every row pays exactly its own passes


def test_cached_and_uncached_decoding_agree_and_count_the_reference_passes(sdar_tiny):
    ids, x, m = batch(sdar_tiny, TEXTS)
    out = {}
    for cache in ("none", "prefix"):
        meter = Meter(sdar_tiny)
        gen = SAMPLERS.build("low_confidence", {"cache": cache, "temperature": 1.0})(
            meter, x, prompt_mask=m, generator=gens(range(4)), gen_length=L)
        out[cache] = (gen, meter.cost)
    (plain, c_plain), (cached, c_cached) = out["none"], out["prefix"]
    assert torch.equal(plain.tokens, cached.tokens) and torch.equal(plain.commit_step, cached.commit_step)
    assert c_plain.nfe_cached == 0
    n = torch.tensor([len(r) for r in ids])
    blocks = (-(-(n % 4 + L) // 4)).sum()  # decode blocks (no row stops: the tiny preset's EOS is never drawn)
    prefills = int((n >= 4).sum())
    assert c_cached.nfe == c_plain.nfe + prefills + int(blocks)  # + prefill per row with a full block + stores
    # full passes: the prefills, and for a row without one its first block (its denoising steps and its store)
    first = sum(len(set(cached.commit_step[i, :4 - len(r)].tolist())) + 1 for i, r in enumerate(ids) if len(r) < 4)
    assert first == 3  # "ab": 2 masks, one per step, then the store pass
    assert c_cached.nfe_full == prefills + first


def test_static_schedule_counts_the_block_length(sdar_tiny):
    """SDAR's get_num_transfer_tokens(block_length, steps): a prompt ending inside a block leaves
    fewer masks than the schedule spreads, so the block finishes early and the loop moves on."""
    ids = torch.tensor([sdar_tiny.tokenizer.encode("abcdefg")])  # 7 tokens: the first decode block holds 1 mask
    meter = Meter(sdar_tiny)
    # gen_length 8 = 2 blocks of the generation: steps 4 -> 2 per block; this row decodes 3 blocks
    gen = SAMPLERS.build("low_confidence", {"steps": 4, "temperature": 1.0})(meter, ids, generator=gens([0]),
                                                                            gen_length=8)
    cs = gen.commit_step[0].tolist()
    assert len(cs) == 16 - 7  # ceil((7 + 8) / 4) * 4 - 7
    # block 0: 1 mask, k = [2, 2] -> done after one step; blocks 1 and 2: 4 masks, 2 + 2
    assert cs[0] == 0 and sorted(cs[1:5]) == [1, 1, 2, 2] and sorted(cs[5:9]) == [3, 3, 4, 4]
    assert meter.cost.nfe == 5 and gen.steps == 5


def test_stop_id_ends_decoding_after_its_block(sdar_tiny):
    ids = torch.tensor([sdar_tiny.tokenizer.encode("12+7=")])  # 5 tokens: first decode block has 3 masks
    s = SAMPLERS.build("low_confidence", {"temperature": 1.0, "cache": "prefix"})
    full_meter = Meter(sdar_tiny)
    full = s(full_meter, ids, generator=gens([1]), gen_length=12)
    first = int(full.tokens[0, 0])
    saved = sdar_tiny.stop_ids
    try:
        sdar_tiny.stop_ids = (int(sdar_tiny.eos_id), first)
        meter = Meter(sdar_tiny)
        cut = s(meter, ids, generator=gens([1]), gen_length=12)
    finally:
        sdar_tiny.stop_ids = saved
    assert int(cut.gen_len[0]) == 1 and cut.tokens[0, 0] == first
    assert (cut.tokens[0, 1:] == sdar_tiny.eos_id).all()
    assert meter.cost.nfe == 1 + 3 + 1  # prefill, 3 denoising steps, the store pass: no later block
    assert full_meter.cost.nfe > meter.cost.nfe


def test_multinomial_at_temperature_zero_is_the_argmax(sdar_tiny):
    ids, x, m = batch(sdar_tiny, TEXTS[:2])
    a = SAMPLERS.build("low_confidence", {"sampling": "multinomial"})(sdar_tiny, x, prompt_mask=m,
                                                                      generator=gens([0, 1]), gen_length=L)
    b = SAMPLERS.build("low_confidence", {"sampling": "gumbel"})(sdar_tiny, x, prompt_mask=m,
                                                                 generator=gens([5, 6]), gen_length=L)
    assert torch.equal(a.tokens, b.tokens)  # greedy: no draw, the mask token is never the argmax here


@pytest.mark.parametrize("params, match", [
    ({"block_length": 8}, "block_size 4"),
    ({"cache": "dual"}, "nothing after the block"),
    ({"cache": "prefix", "refresh": 2}, "refresh"),
    ({"cfg_scale": 1.0}, "cfg_scale"),
])
def test_block_model_refuses_what_it_cannot_do(sdar_tiny, params, match):
    ids = torch.tensor([sdar_tiny.tokenizer.encode("12+7=")])
    with pytest.raises(HarnessError, match=match):
        SAMPLERS.build("low_confidence", params)(sdar_tiny, ids, generator=gens([0]), gen_length=8)


def test_sampler_options_are_checked():
    for params, match in [({"top_k": -1}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"sampling": "beam"}, "sampling"),
                          ({"tie_break": "random"}, "tie_break")]:
        with pytest.raises((ValueError, HarnessError), match=match):
            SAMPLERS.build("low_confidence", params)


def test_remdm_refuses_a_block_model(sdar_tiny):
    ids = torch.tensor([sdar_tiny.tokenizer.encode("12+7=")])
    with pytest.raises(HarnessError, match="block by block"):
        SAMPLERS.build("remdm", {"steps": 8})(sdar_tiny, ids, generator=gens([0]), gen_length=8)


def test_inverse_cdf_draw_samples_the_distribution():
    """What multinomial_rows uses for GPU probabilities with the runner's CPU generators."""
    probs = torch.tensor([0.1, 0.6, 0.0, 0.3]).expand(1, 20000, 4).contiguous()
    u = torch.rand(1, 20000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pick = inverse_cdf_draw(probs, u)
    freq = torch.bincount(pick.view(-1), minlength=4).double() / 20000
    assert torch.allclose(freq, torch.tensor([0.1, 0.6, 0.0, 0.3], dtype=torch.float64), atol=0.01)
    assert inverse_cdf_draw(probs[:, :3], torch.tensor([[0.0, 0.1, 0.7 - 1e-12]])).tolist() == [[0, 1, 1]]
    assert inverse_cdf_draw(probs[:, :1] * 5, torch.tensor([[0.75]])).tolist() == [[3]]  # unnormalised


def test_threshold_floor_schedule_is_sdars_dynamic_rule():
    """block_diffusion_generate's low_confidence_dynamic: if at least num_transfer confidences pass
    the threshold commit all of them, else the num_transfer most confident (here num_transfer 2)."""
    from harness.samplers._base import Step

    probs = torch.tensor([[[0.95, 0.05], [0.5, 0.5], [0.92, 0.08], [0.7, 0.3], [0.99, 0.01]]])  # [1, 5, 2]
    x0 = torch.zeros(1, 5, dtype=torch.long)

    def step(eligible, k):
        return Step(logits=probs.log(), probs=probs, x0=x0, eligible=torch.tensor([eligible]), k=None, step=0,
                    last=False, generator=None, k_schedule=torch.tensor([k]))

    sched = SAMPLERS.build("threshold", {"tau": 0.9, "floor": "schedule"})
    one = SAMPLERS.build("threshold", {"tau": 0.9})
    everything = [True] * 5
    assert sched.choose(step(everything, 2)).tolist() == [[True, False, True, False, True]]  # 3 >= 2 pass
    assert sched.choose(step([False, True, True, True, False], 2)).tolist() == [[False, False, True, True, False]]
    assert one.choose(step([False, True, True, True, False], 2)).tolist() == [[False, False, True, False, False]]
    assert sched.choose(step([False, True, False, True, False], 2)).tolist() == [[False, True, False, True, False]]
    with pytest.raises(HarnessError, match="floor"):
        SAMPLERS.build("threshold", {"floor": "two"})


def test_fixed_tokens_start_committed_on_a_block_model(sdar_tiny):
    """Inpainting (IGPO's `fixed`): [B, L] tokens >= 0 sit at the completion's positions from the start."""
    ids, x, m = batch(sdar_tiny, TEXTS[:2])
    fixed = torch.full((2, L), -1)
    fixed[:, 1] = 7
    fixed[0, 6] = 9
    gen = SAMPLERS.build("low_confidence", {"cache": "prefix", "temperature": 1.0})(
        sdar_tiny, x, prompt_mask=m, generator=gens([0, 1]), gen_length=L, fixed=fixed)
    assert gen.tokens[:, 1].tolist() == [7, 7] and int(gen.tokens[0, 6]) == 9
    assert gen.commit_step[:, 1].tolist() == [-1, -1] and int(gen.commit_step[0, 6]) == -1
    assert (gen.commit_step[1, :L] >= 0).sum() == L - 1
