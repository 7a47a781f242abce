"""Parity of `uniform_entropy_bound` (and the cached denoiser passes under it) with the installed
transformers' own generation loop, `DiffusionGemmaForBlockDiffusion.generate`
(transformers/models/diffusion_gemma/generation_diffusion_gemma.py: `generate`, `_denoising_step`,
`EntropyBoundSampler`, `StableAndConfidentStoppingCriteria`, `_finalize_canvas`).

Small random DiffusionGemma models are built here with transformers' own classes and a fixed seed.
generate draws from the global RNG (`torch.randint` for canvases and re-noising, `torch.multinomial`
for the samples); the tests route those calls to a torch.Generator seeded like the harness's, so the
two runs see the same random numbers. Tokens must be identical and the meter's NFE must equal the sum
of generate's per-row pass counts (`decoder_forward_passes`, read where generate computes
tokens_per_forward from it). Two models: a plain random one (near-uniform predictions: every canvas
runs all 48 steps) and a low-entropy one (its logits scaled up, EOS made likely) whose rows stop
early, at different steps, and end (EOS) in different canvases.
"""
from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch

from harness.budget import Meter
from harness.registry import SAMPLERS

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "DiffusionGemmaForBlockDiffusion"):
    pytest.skip("this transformers has no DiffusionGemma", allow_module_level=True)

EOS, PAD = 126, 125


def build(seed: int, *, peaked: bool):
    """A tiny DiffusionGemma (the harness's `tiny` preset config) from transformers' classes, seeded;
    `peaked` scales the decoder's output norm (sharp predictions) and the EOS embedding (EOS likely)."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    from harness.models._hf_common import ChatTokenizer, char_tokenizer
    from harness.models.diffusion_gemma import PRESETS, DiffusionGemmaDenoiser

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = DiffusionGemmaForBlockDiffusion._from_config(DiffusionGemmaConfig(**PRESETS["tiny"]),
                                                              dtype=torch.float32, attn_implementation="sdpa").eval()
    if peaked:
        with torch.no_grad():
            module.model.decoder.norm.weight.mul_(60.0)
            module.model.decoder.embed_tokens.weight[EOS].mul_(2.5)  # tied with the output head
    tok = ChatTokenizer(char_tokenizer(eos_id=EOS, pad_id=PAD, mask_id=None), EOS)
    return DiffusionGemmaDenoiser(module, tok, eos_id=EOS, pad_id=PAD)


@pytest.fixture(scope="module")
def plain():
    return build(0, peaked=False)


@pytest.fixture(scope="module")
def peaked():
    return build(0, peaked=True)


@contextlib.contextmanager
def global_draws_from(g: torch.Generator):
    """Route generate's global-RNG draws (torch.randint, torch.multinomial) to the generator g."""
    randint, multinomial = torch.randint, torch.multinomial

    def seeded_randint(*a, generator=None, **k):
        return randint(*a, generator=generator or g, **k)

    def seeded_multinomial(*a, generator=None, **k):
        return multinomial(*a, generator=generator or g, **k)

    with mock.patch.object(torch, "randint", seeded_randint), \
            mock.patch.object(torch, "multinomial", seeded_multinomial):
        yield


def hf_generate(d, prompt, pmask, L: int, seed: int, *, sc: bool = True, undone: list | None = None, **config):
    """transformers' generate with its draws from Generator(seed) -> (new tokens, per-row passes,
    batched passes). sc=False drops the self-conditioning input of every pass (generate has no
    switch for it). `undone` (a list) receives, per pass, how many rows were not yet done denoising
    their canvas (rows that ended in an earlier canvas included)."""
    module, seen = d.module, {"steps": 0}
    cls = type(module)
    tpf, denoising_step = cls._compute_tokens_per_forward, cls._denoising_step

    def spy_passes(input_ids, passes, initial_len, pad_id):
        seen["passes"] = passes.clone()
        return tpf(input_ids, passes, initial_len, pad_id)

    def spy_step(self, *a, **k):
        seen["steps"] += 1
        if undone is not None:
            undone.append(int((~k["finished_denoising"]).sum()))
        return denoising_step(self, *a, **k)

    forward = module.forward
    stop_sc = mock.patch.object(module, "forward", lambda *a, self_conditioning_logits=None, **k: forward(*a, **k))
    with mock.patch.object(cls, "_compute_tokens_per_forward", staticmethod(spy_passes)), \
            mock.patch.object(cls, "_denoising_step", spy_step), \
            global_draws_from(torch.Generator().manual_seed(seed)), (contextlib.nullcontext() if sc else stop_sc):
        out = module.generate(prompt, attention_mask=pmask, max_new_tokens=L, eos_token_id=EOS, pad_token_id=PAD,
                              **config)
    return out.sequences[:, prompt.shape[1]:], seen["passes"], seen["steps"]


def harness_generate(d, prompt, pmask, L: int, seed: int, **params):
    meter = Meter(d)
    gen = SAMPLERS.build("uniform_entropy_bound", params)(meter, prompt, prompt_mask=pmask, gen_length=L,
                                                         generator=torch.Generator().manual_seed(seed))
    return gen, meter.cost


def as_harness(new: torch.Tensor, total: int) -> torch.Tensor:
    """generate's tokens in the harness's convention: after a row's first EOS, EOS padding (generate
    writes pad there, and stops adding canvases once every row has ended)."""
    out = torch.full((new.shape[0], total), EOS, dtype=new.dtype)
    out[:, :new.shape[1]] = new
    seen = (out == EOS).cumsum(1) > 0
    after = seen & ~((out == EOS) & ((out == EOS).cumsum(1) == 1))
    out[after] = EOS
    return out


def prompts(B: int, P: int, seed: int, uneven: bool = False):
    ids = torch.randint(0, 96, (B, P), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(B, P, dtype=torch.bool)
    if uneven:  # left padding: row r has r padded columns
        for r in range(B):
            mask[r, :r] = False
            ids[r, :r] = PAD
    return ids, mask


GREEDY = {"t_min": 0.0, "t_max": 1e-3}  # near-zero temperature: the samples are the argmax
# (model, gen_length, self_conditioning, sampling knobs, uneven prompts, batch)
CASES = [
    pytest.param("plain", 8, True, {}, False, 3, id="random-sc-sampled"),
    pytest.param("plain", 8, False, {}, False, 3, id="random-nosc-sampled"),
    pytest.param("plain", 5, True, GREEDY, True, 3, id="random-sc-greedy-short-uneven"),
    pytest.param("peaked", 32, True, {}, False, 4, id="peaked-sc-sampled-4canvases"),
    pytest.param("peaked", 32, False, {}, False, 4, id="peaked-nosc-sampled-4canvases"),
    pytest.param("peaked", 20, True, {}, True, 4, id="peaked-sc-sampled-uneven-not-a-multiple"),
    pytest.param("peaked", 24, True, GREEDY, True, 3, id="peaked-sc-greedy-uneven"),
    pytest.param("peaked", 24, False, GREEDY, False, 3, id="peaked-nosc-greedy"),
]


@pytest.mark.parametrize("model,L,sc,knobs,uneven,B", CASES)
def test_batch_generate_equals_transformers_generate(model, L, sc, knobs, uneven, B, request):
    """batch="generate" (generate's batches): token for token and pass for pass, in every case.
    Stock settings (max_steps 48, bound 0.1, τ 0.8 -> 0.4, stability 1, confidence 0.005,
    self-conditioning on) unless the case says otherwise."""
    d = request.getfixturevalue(model)
    prompt, pmask = prompts(B, 6, seed=3, uneven=uneven)
    new, _, steps = hf_generate(d, prompt, pmask, L, seed=7, sc=sc, **knobs)
    gen, cost = harness_generate(d, prompt, pmask, L, seed=7, batch="generate", self_conditioning=sc, **knobs)
    total = -(-L // 8) * 8  # whole canvases of 8, as generate returns them
    assert gen.tokens.shape == (B, total)
    assert torch.equal(gen.tokens, as_harness(new, total))
    assert gen.steps == steps and cost.nfe == B * steps  # every pass runs the whole batch
    assert cost.nfe_full == B  # one full pass (the prompt's encoding + the first step), then cached ones


@pytest.mark.parametrize("model,L,sc,knobs,uneven,B", [c for c in CASES if not c.values[3]])
def test_default_equals_transformers_generate_at_stock_temperatures(model, L, sc, knobs, uneven, B, request):
    """The default batch="live" with one shared generator (done rows leave the batch; rows that
    ended in an earlier canvas stay until their canvas is done, since generate's step count and so
    its later draws depend on them): generate's tokens; the meter counts the rows not yet done at
    each pass, and each record's steps are the row's own (generate's decoder_forward_passes), on
    the stock settings. (Its rows' logits can differ from generate's in the last bits, being
    computed in other batch shapes; at near-zero temperature that can flip a decision, so the
    greedy cases are checked with batch="generate" only.)"""
    d = request.getfixturevalue(model)
    prompt, pmask = prompts(B, 6, seed=3, uneven=uneven)
    undone = []
    new, passes, _ = hf_generate(d, prompt, pmask, L, seed=7, sc=sc, undone=undone, **knobs)
    gen, cost = harness_generate(d, prompt, pmask, L, seed=7, self_conditioning=sc, **knobs)
    total = -(-L // 8) * 8
    assert torch.equal(gen.tokens, as_harness(new, total))
    assert cost.nfe == sum(undone) and torch.equal(gen.row_steps, passes.long())


def test_the_peaked_cases_exercise_early_stops_and_ends(peaked):
    """The low-entropy model's cases cover what parity has to get right: rows stopping at different
    steps, rows ending (EOS) in different canvases, and ended rows skipped (fewer passes than when
    they stay in the batch)."""
    prompt, pmask = prompts(4, 6, seed=3)
    new, passes, _ = hf_generate(peaked, prompt, pmask, 32, seed=7)
    assert len(set(passes.tolist())) > 1 and (passes < 4 * 48).all()
    ends = [int((row == EOS).nonzero()[0, 0]) // 8 if (row == EOS).any() else None for row in new]
    assert len({e for e in ends if e is not None}) > 1 and new.shape[1] == 32  # ends in 2+ canvases; 4 canvases
    _, skip = harness_generate(peaked, prompt, pmask, 32, seed=7)
    _, keep = harness_generate(peaked, prompt, pmask, 32, seed=7, batch="generate")
    assert keep.nfe > skip.nfe


def test_per_row_generators_equal_generate_on_each_row_alone(peaked):
    """With one generator per row, each row is generate run on that row alone with its generator
    (rows do not share random numbers: a batch splits into the same rows)."""
    prompt, pmask = prompts(3, 6, seed=2, uneven=True)
    meter = Meter(peaked)
    gens = [torch.Generator().manual_seed(s) for s in (3, 4, 5)]
    gen = SAMPLERS.build("uniform_entropy_bound", {})(meter, prompt, prompt_mask=pmask, gen_length=16, generator=gens)
    total_passes = 0
    for r, s in enumerate((3, 4, 5)):
        new, passes, _ = hf_generate(peaked, prompt[r:r + 1], pmask[r:r + 1], 16, seed=s)  # the row alone
        assert torch.equal(gen.tokens[r:r + 1], as_harness(new, 16)), r
        total_passes += int(passes.sum())
    assert meter.cost.nfe == total_passes


def test_pure_steps_equal_transformers_pieces():
    """The sampler's pure steps against transformers' own classes (hand-checked values too)."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        EntropyBoundSampler,
        EntropyBoundSamplerConfig,
        LinearTemperatureScheduleLogitsProcessor,
    )

    from harness.samplers.uniform_entropy_bound import after_eos, categorical_entropy, entropy_bound_accept, temperature

    h = torch.tensor([[0.05, 0.0, 0.2, 0.04], [1.0, 0.01, 0.3, 0.02]])
    # sorted, the sums of the strictly earlier entropies: row 0 (0, .04, .05, .2) -> 0, 0, .04, .09: all
    # accepted; row 1 (.01, .02, .3, 1) -> 0, .01, .03, .33: all but the 1.0
    expect = torch.tensor([[True, True, True, True], [False, True, True, True]])
    assert torch.equal(entropy_bound_accept(h, 0.1), expect)
    logits = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(0)) * 3
    eb = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=0.1), canvas_length=8, vocab_size=16,
                             max_denoising_steps=48)
    eb.accept_canvas(torch.zeros(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long), logits, 5)
    assert torch.equal(entropy_bound_accept(categorical_entropy(logits), 0.1), eb.accepted_token_mask)
    proc = LinearTemperatureScheduleLogitsProcessor(t_min=0.4, t_max=0.8, max_denoising_steps=48)
    for cur in (48, 31, 1):
        ref = proc(None, logits, cur_step=torch.tensor(cur, dtype=torch.int32))
        assert torch.equal(logits / temperature(0.4, 0.8, cur, 48, "cpu"), ref)
    canvas = torch.tensor([[3, EOS, 4, EOS], [1, 2, 3, 4], [5, 6, 7, 8]])
    out = after_eos(canvas, torch.tensor([False, False, True]), EOS, PAD)
    assert out.tolist() == [[3, EOS, PAD, PAD], [1, 2, 3, 4], [PAD] * 4]
