"""`klass_dream` against KLASS's own Dream decoder, token for token and pass for pass.

Reference: shkim0116/KLASS (commit ad87ecb), `src/model/dream_klass.py`: `DreamGenerationMixin._sample`
(L370-662, alg="klass": L492-547) with `sample_tokens` (L59-91), `top_p_logits` (L38-49) and
`top_k_logits` (L51-56). `reference_klass_dream` transcribes it line by line for one sequence without
padding (the reference's KL history has a batch dimension of 1, L417-418) and runs in CI;
`test_the_reference_itself` calls the repository's own `_sample` when $DLM_HARNESS_KLASS_SRC names a
checkout (skipped otherwise). The model is the harness's native Dream on its tiny random preset
(shifted logits, vocabulary 128, mask 127) with its output head scaled so that confidences spread
over (0.4, 0.9); the reference reads it through `NoMaskDenoiser` (the mask token at -inf, which the
harness does itself: a documented difference). At temperature > 0 the reference draws with torch's
global RNG (`dists.Categorical`, L71) and the harness with the row's generator; seeding both with the
same number gives the same draws (both are one `torch.multinomial` over the row's masked positions).
"""
from __future__ import annotations

import types

import pytest
import torch
import torch.distributions as dists
import torch.nn.functional as F

from harness.registry import MODELS, SAMPLERS
from harness.samplers.klass_dream import fallback_scores
from harness.types import HarnessError
from tests.samplers._reference import NoMaskDenoiser, cut, reference_module

pytest.importorskip("transformers")
torch.set_num_threads(1)


# -- the transcription ----------------------------------------------------------------------------
def ref_top_p(logits, top_p):
    """`top_p_logits` L38-49."""
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)  # L39
    cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)  # L40
    remove = cumulative_probs > top_p  # L41
    remove[..., 1:] = remove[..., :-1].clone()  # L43
    remove[..., 0] = 0  # L44
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_indices, remove)  # L46-47
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)  # L48


def ref_top_k(logits, top_k):
    """`top_k_logits` L51-56."""
    top_k = min(top_k, logits.size(-1))  # L52
    remove = logits < torch.topk(logits, top_k)[0][..., -1, None]  # L54
    return logits.masked_fill(remove, torch.finfo(logits.dtype).min)  # L55


def ref_sample_tokens(logits, temperature, top_p, top_k):
    """`sample_tokens` L59-76 (no margin / entropy: the klass branch passes neither, L517)."""
    if temperature > 0:  # L61-62
        logits = logits / temperature
    if top_p is not None and top_p < 1:  # L63-64
        logits = ref_top_p(logits, top_p)
    if top_k is not None:  # L65-66
        logits = ref_top_k(logits, top_k)
    probs = torch.softmax(logits, dim=-1)  # L67
    if temperature > 0:  # L69-72 (global RNG)
        x0 = dists.Categorical(probs=probs).sample()
        confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    else:  # L76
        confidence, x0 = probs.max(dim=-1)
    return confidence, x0


def reference_klass_dream(model, prompt, gen_length, steps, mask_id, conf_threshold, kl_threshold, history,
                          strategy, temperature=0.0, top_p=None, top_k=None, events=None):
    """`_sample` with alg="klass", one unpadded sequence, identity hooks -> (canvas, passes run).
    `events` counts ready steps, fallback steps and completions left with masks."""
    events = {} if events is None else events
    x = F.pad(prompt, (0, gen_length), value=mask_id)  # L400 (max_length = P + max_new_tokens, L213)
    V = model.config.vocab_size  # L416
    kl_history = torch.zeros((1, x.shape[1], history), dtype=torch.float64)  # L417
    p_prev = torch.zeros((1, x.shape[1], V), dtype=torch.float64)  # L418
    passes = 0  # the reference's used_steps (L419, L427) reads 256 when the loop runs out; count instead
    for i in range(steps):  # L424
        mask_index = x == mask_id  # L425
        if mask_index.sum() == 0:  # L426-428
            break
        logits = model(x, "full", None).logits  # L430 (attention_mask "full", tok_idx None: L410-412)
        passes += 1
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # L431
        mask_logits = logits[mask_index]  # L435
        p_curr_masked = torch.softmax(mask_logits, dim=-1).to(torch.float64)  # L493
        x0_masked = torch.argmax(p_curr_masked, dim=-1)  # L494
        x0 = torch.zeros_like(x, dtype=torch.long)  # L496
        x0[mask_index] = x0_masked  # L498
        p_curr = F.softmax(logits.to(torch.float64), dim=-1)  # L500
        curr_conf = torch.gather(p_curr, dim=-1, index=x0.unsqueeze(-1)).squeeze(-1)  # L501
        kl = (p_curr * (torch.log(p_curr + 1e-12) - torch.log(p_prev + 1e-12))).sum(dim=-1)  # L502-503
        kl_history = torch.roll(kl_history, shifts=-1, dims=-1)  # L504
        kl_history[..., -1] = kl  # L505
        p_prev.copy_(p_curr)  # L506
        stable = torch.all(kl_history < kl_threshold, dim=-1)  # L507
        ready = stable & (curr_conf >= conf_threshold) & mask_index  # L508-509
        transfer = torch.zeros_like(mask_index)  # L511
        if not ready.any():  # L515-516 (the batch of one has no ready index)
            conf_fb, _ = ref_sample_tokens(mask_logits, temperature, top_p, top_k)  # L517
            chosen = torch.argmax(conf_fb, dim=-1)  # L518
            transfer[0, torch.where(mask_index[0])[0][chosen]] = True  # L519-521
            events["fallback"] = events.get("fallback", 0) + 1
        else:  # L522-544
            ready_j = torch.where(ready[0])[0]  # L526
            selected = ready_j  # L527-530, L542-543: "all" (or a single ready index)
            if len(ready_j) > 1 and strategy == "max_conf":  # L534-537
                m = torch.argmax(curr_conf[0, ready_j])
                selected = ready_j[m:m + 1]
            elif len(ready_j) > 1 and strategy == "min_kl":  # L538-541
                m = torch.argmin(kl[0, ready_j])
                selected = ready_j[m:m + 1]
            transfer[0, selected] = True  # L544
            events["ready"] = events.get("ready", 0) + 1
        x0_full = torch.zeros_like(x)  # L545
        x0_full[mask_index] = x0_masked  # L546
        x[transfer] = x0_full[transfer]  # L547
    if (x == mask_id).any():
        events["left_masked"] = events.get("left_masked", 0) + 1
    return x, passes


# -- fixtures ---------------------------------------------------------------------------------------
HEAD_SCALE = 50.0  # the tiny preset is near-uniform (p < 0.02 over 128 tokens); this spreads p(x0) over ~(0.4, 0.9)


@pytest.fixture(scope="module")
def dream():
    den = MODELS.build("dream", {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()
    with torch.no_grad():
        den.module.lm_head.weight.mul_(HEAD_SCALE)
    return den


class RefDream:
    """The denoiser called as the reference calls its model: self(x, attention_mask, tok_idx).logits, raw
    (unshifted) logits; `config.vocab_size` (no `lm_head`, L416)."""

    def __init__(self, den):
        self.den = NoMaskDenoiser(den)
        self.device = torch.device("cpu")
        self.config = types.SimpleNamespace(vocab_size=den.vocab_size)
        self.calls = 0

    def __call__(self, x, attention_mask=None, tok_idx=None):
        self.calls += 1
        return types.SimpleNamespace(logits=self.den.logits(x))


def prompts(n, seed, P=6):
    return torch.randint(0, 120, (n, P), generator=torch.Generator().manual_seed(seed))


CASES = [  # steps, gen_length, conf_threshold, kl_threshold, history_length, unmask_strategy, temperature, top_p
    (16, 16, 0.9, 0.01, 2, "all", 0.0, None),  # DreamGenerationConfig's defaults
    (16, 16, 0.6, 0.05, 2, "all", 0.0, None),
    (16, 16, 0.5, 0.1, 3, "max_conf", 0.0, 0.9),
    (16, 16, 0.5, 0.1, 1, "min_kl", 0.0, None),
    (16, 16, 0.6, 0.05, 2, "all", 0.2, 0.95),  # the authors' temperature and top_p
    (16, 16, 0.5, 0.1, 2, "max_conf", 2.0, None),
]
SEEDS = (0, 1, 2)


def harness_klass_dream(den, ids, gen_length, steps, conf, kl, history, strategy, temperature, top_p, seeds=None):
    params = {"steps": steps, "conf_threshold": conf, "kl_threshold": kl, "history_length": history,
              "unmask_strategy": strategy, "temperature": temperature, "top_p": top_p or 1.0}
    gens = None if seeds is None else [torch.Generator().manual_seed(s) for s in seeds]
    return SAMPLERS.build("klass_dream", params)(den, ids, generator=gens, gen_length=gen_length)


@pytest.mark.parametrize("steps,gen_length,conf,kl,history,strategy,temperature,top_p", CASES)
def test_matches_the_transcribed_reference(dream, steps, gen_length, conf, kl, history, strategy, temperature,
                                           top_p):
    """Several prompts (seeds) per setting, each row alone: the reference's tokens and passes (at
    temperature > 0 with the reference's global RNG and the row's generator seeded alike); the batch:
    the same tokens as the rows alone."""
    ids = torch.cat([prompts(2, seed) for seed in SEEDS])  # 6 prompts
    row_seeds = list(range(100, 100 + ids.shape[0]))
    batch = harness_klass_dream(dream, ids, gen_length, steps, conf, kl, history, strategy, temperature, top_p,
                                row_seeds)
    events = {}
    for r in range(ids.shape[0]):
        torch.manual_seed(row_seeds[r])
        ref, passes = reference_klass_dream(RefDream(dream), ids[r:r + 1], gen_length, steps, dream.mask_id, conf, kl,
                                            history, strategy, temperature, top_p, None, events)
        alone = harness_klass_dream(dream, ids[r:r + 1], gen_length, steps, conf, kl, history, strategy, temperature,
                                    top_p, row_seeds[r:r + 1])
        assert torch.equal(alone.tokens, cut(ref[:, ids.shape[1]:], dream)), f"row {r}"
        assert alone.steps == passes, f"row {r}"
        assert torch.equal(batch.tokens[r], alone.tokens[0]) and torch.equal(batch.commit_step[r],
                                                                             alone.commit_step[0]), f"row {r}"
    assert "left_masked" not in events  # steps = gen_length: the documented end-of-loop difference stays out
    if (conf, kl) != (0.9, 0.01):
        assert events.get("ready", 0) > 0 and events.get("fallback", 0) > 0  # both branches compared


def test_temperature_moves_the_fallback_positions(dream):
    """At temperature > 0 the draws change which position a fallback step commits (so the rows'
    generators matter), while every committed token is still the argmax proposal of its pass."""
    ids = prompts(4, 0)
    greedy = harness_klass_dream(dream, ids, 16, 16, 0.9, 0.01, 2, "all", 0.0, None)
    hot = [harness_klass_dream(dream, ids, 16, 16, 0.9, 0.01, 2, "all", 1.0, None, seeds=[s] * 4) for s in (0, 1)]
    assert not torch.equal(hot[0].commit_step, greedy.commit_step)
    assert not torch.equal(hot[0].commit_step, hot[1].commit_step)
    again = harness_klass_dream(dream, ids, 16, 16, 0.9, 0.01, 2, "all", 1.0, None, seeds=[0] * 4)
    assert torch.equal(again.tokens, hot[0].tokens) and torch.equal(again.commit_step, hot[0].commit_step)


def test_the_reference_itself(dream):
    """KLASS's own `DreamGenerationMixin._sample` (a checkout named by $DLM_HARNESS_KLASS_SRC), bound to the
    tiny Dream, against the transcription and the harness."""
    mod = reference_module("DLM_HARNESS_KLASS_SRC", "src/model/dream_klass.py", "shkim0116/KLASS")
    ids = torch.cat([prompts(1, seed) for seed in SEEDS])
    for steps, gen_length, conf, kl, history, strategy, temperature, top_p in CASES:
        batch = harness_klass_dream(dream, ids, gen_length, steps, conf, kl, history, strategy, temperature, top_p,
                                    [7] * ids.shape[0])
        for r in range(ids.shape[0]):
            cfg = mod.DreamGenerationConfig(max_length=ids.shape[1] + gen_length, mask_token_id=dream.mask_id,
                                            steps=steps, alg="klass", temperature=temperature, top_p=top_p,
                                            conf_threshold=conf, kl_threshold=kl, kl_history_length=history,
                                            unmask_strategy=strategy)
            model = RefDream(dream)
            torch.manual_seed(7)
            ref, _ = mod.DreamGenerationMixin._sample(model, ids[r:r + 1], attention_mask=None, generation_config=cfg,
                                                      generation_tokens_hook_func=lambda i, x, logits: x,
                                                      generation_logits_hook_func=lambda i, x, logits: logits)
            torch.manual_seed(7)
            mine, passes = reference_klass_dream(RefDream(dream), ids[r:r + 1], gen_length, steps, dream.mask_id, conf,
                                                 kl, history, strategy, temperature, top_p)
            assert torch.equal(ref, mine) and model.calls == passes, (conf, kl, strategy, temperature, r)
            assert torch.equal(batch.tokens[r:r + 1], cut(ref[:, ids.shape[1]:], dream)), (conf, kl, strategy, r)


# -- what the harness adds, the helpers, the options -----------------------------------------------
def test_fewer_steps_than_tokens_commit_everything_at_the_last_pass(dream):
    """With fewer passes than tokens, the reference leaves masks after its last pass; the harness's last
    allowed pass commits every mask left (a documented difference)."""
    ids = prompts(3, 0)
    out = SAMPLERS.build("klass_dream", {"steps": 4})(dream, ids, generator=None, gen_length=16)
    assert out.steps == 4 and (out.tokens != dream.mask_id).all() and (out.commit_step == 3).any()
    events = {}
    for r in range(ids.shape[0]):
        reference_klass_dream(RefDream(dream), ids[r:r + 1], 16, 4, dream.mask_id, 0.9, 0.01, 2, "all", events=events)
    assert events.get("left_masked", 0) == ids.shape[0]  # the setting where the reference differs


def test_a_left_padded_batch_decodes_each_row_as_alone(dream):
    ids = prompts(3, 4)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :2] = False
    ids[1, :2] = dream.pad_id
    sampler = SAMPLERS.build("klass_dream", {"conf_threshold": 0.6, "kl_threshold": 0.05})
    batch = sampler(dream, ids, generator=None, prompt_mask=mask, gen_length=12)
    alone = sampler(dream, ids[1:2, 2:], generator=None, gen_length=12)
    assert torch.equal(batch.tokens[1], alone.tokens[0]) and torch.equal(batch.commit_step[1], alone.commit_step[0])


def test_shifted_view_decodes_like_the_unshifted_model():
    """On the tiny unshifted model, the `Shifted` view (predictions moved one column left) gives the same
    tokens and commit steps: the sampler reads column k at k - 1 exactly when the model says so."""
    from harness.text import encode_prompts
    from tests.helpers import make_tiny
    from tests.samplers.test_shifted_logits import Shifted

    den = make_tiny(max_len=24)
    ids, mask = encode_prompts(den.tokenizer, ["12+34=", "5+6=", "123+4="], den.pad_id)
    sampler = SAMPLERS.build("klass_dream", {"conf_threshold": 0.04, "kl_threshold": 1.0, "temperature": 0.5})
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    a = sampler(den, ids, generator=gens(), prompt_mask=mask, gen_length=8)
    b = sampler(Shifted(den), ids, generator=gens(), prompt_mask=mask, gen_length=8)
    assert a.steps < 8  # ready steps happened (several tokens in one pass)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)


def test_the_confidence_test_is_inclusive():
    """p(x0) >= conf_threshold (L508; the LLaDA decoder's test is strict): with every proposal at exactly
    0.5 and context-free predictions (KL 0 from the second pass on), the third pass finds all ready at
    threshold 0.5 (two fallback passes first: the first pass's KL against the zero distribution is in
    the history until then), and never at a threshold just above."""
    from tests.samplers.test_low_confidence import FixedConfidence

    den = FixedConfidence([0.5] * 6, prompt_len=2)
    prompt = torch.tensor([[5, 5]])
    at = SAMPLERS.build("klass_dream", {"conf_threshold": 0.5})(den, prompt, generator=None, gen_length=6)
    above = SAMPLERS.build("klass_dream", {"conf_threshold": 0.5001})(den, prompt, generator=None, gen_length=6)
    assert at.steps == 3 and sorted(at.commit_step[0].tolist()) == [0, 1, 2, 2, 2, 2]
    assert above.steps == 6 and sorted(above.commit_step[0].tolist()) == [0, 1, 2, 3, 4, 5]
    torch.testing.assert_close(at.commit_conf[0], torch.full((6,), 0.5))


def test_fallback_scores_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.35, 0.25]]))
    torch.testing.assert_close(fallback_scores(logits, 0.0, 1.0, 0, None), torch.tensor([0.5, 0.4]))
    # top_p 0.6 keeps {0.5, 0.3} and {0.4, 0.35}: renormalised maxima
    torch.testing.assert_close(fallback_scores(logits, 0.0, 0.6, 0, None), torch.tensor([0.5 / 0.8, 0.4 / 0.75]))
    torch.testing.assert_close(fallback_scores(logits, 0.0, 1.0, 1, None), torch.tensor([1.0, 1.0]))
    drawn = fallback_scores(logits, 1.0, 1.0, 0, torch.Generator().manual_seed(0))
    assert all(any(abs(v - p) < 1e-6 for p in row) for v, row in zip(drawn.tolist(), [[0.5, 0.3, 0.2],
                                                                                       [0.4, 0.35, 0.25]]))


def test_commit_conf_and_nfe_budget(dream):
    ids = prompts(2, 1)
    sampler = SAMPLERS.build("klass_dream", {"conf_threshold": 0.6, "kl_threshold": 0.05})
    out = sampler(dream, ids, generator=None, gen_length=16)
    assert sampler.max_nfe_per_sequence(16) == 16 and out.steps <= 16
    # every pass commits at least one token: more steps than tokens never run
    assert SAMPLERS.build("klass_dream", {"steps": 32}).max_nfe_per_sequence(16) == 16
    assert SAMPLERS.build("klass_dream", {"steps": 4}).max_nfe_per_sequence(16) == 4
    assert (out.commit_step >= 0).all() and ((out.commit_conf > 0) & (out.commit_conf <= 1)).all()


@pytest.mark.parametrize("params", [{"conf_threshold": 1.5}, {"kl_threshold": -1.0}, {"history_length": 0},
                                    {"unmask_strategy": "random"}, {"steps": 0}, {"top_p": 0.0}, {"top_k": -1},
                                    {"temperature": -0.1}, {"block_length": 4}])
def test_bad_options_are_refused(params):
    with pytest.raises(HarnessError):
        SAMPLERS.build("klass_dream", params)


def test_refuses_what_it_cannot_decode(dream):
    from tests.samplers._reference import ContextDenoiser

    class Block(ContextDenoiser):
        block_size = 4

    with pytest.raises(HarnessError, match="block-diffusion"):
        SAMPLERS.build("klass_dream", {})(Block(), prompts(1, 0), generator=None, gen_length=8)
    with pytest.raises(HarnessError, match="non-empty prompt"):
        SAMPLERS.build("klass_dream", {})(dream, torch.zeros(1, 0, dtype=torch.long), generator=None, gen_length=8)
    with pytest.raises(HarnessError, match="Generator"):
        SAMPLERS.build("klass_dream", {"temperature": 0.5})(dream, prompts(1, 0), generator=None, gen_length=8)


def test_a_block_model_is_refused_at_plan_time(tmp_path):
    """`requires: full_attention`: a suite pairing klass_dream with a block checkpoint fails when planned,
    before any model loads; with the tiny Dream it plans."""
    from harness.config import load_suite, plan
    from tests.helpers import write_suite

    suite = """
suite: caps
models: {m: {name: dream, params: {preset: tiny, device: cpu}}}
tasks: {t: {name: addition, params: {n_digits: 2}, split: test, n_items: 2}}
studies:
  - {id: g, kind: generate, model: m, task: t, sampler: {name: klass_dream}}
"""
    plan(load_suite(write_suite(tmp_path, suite)))
    block = suite.replace("{name: dream, params: {preset: tiny, device: cpu}}",
                          "{name: tiny, params: {checkpoint: tiny-addition-c16-block4}}")
    with pytest.raises(HarnessError, match="klass_dream.*needs the model's full_attention"):
        plan(load_suite(write_suite(tmp_path, block, "block.yaml")))
