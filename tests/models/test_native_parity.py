"""The native LLaDA/Dream against the public model code (../shared/fixtures/real-code, see its README).

Reference: NVlabs/Fast-dLLM at commit 24cc59e, files `llada/model/modeling_llada.py` (LLaDAModelLM,
the public LLaDA file plus past_key_values/replace_position), `dream/model/modeling_dream.py`
(DreamModel), and `llada/generate.py` (`generate`, `generate_with_prefix_cache`,
`generate_with_dual_cache`). The checkpoints are built by the fixture's build_llada.py /
build_dream.py (real config keys and special ids, tiny dims, full vocabularies), once per session.
The reference files run under the pinned transformers 5 through the fixture's tf5_shim.py.
Everything here is float32 on the CPU and compared with tolerance 0 unless a line says otherwise.
"""
from __future__ import annotations

import math

import pytest
import torch

from harness.budget import Meter
from harness.registry import ESTIMATORS, MODELS, SAMPLERS
from harness.text import encode_prompts
from tests.models import _real_code as rc

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # the session builds two 60-75 MB checkpoints; every pass has a 126k-152k vocabulary

PROMPTS = ["12+7=", "The cat sat on", "Q: 3*4?\nA:"]
EOS = {"llada": 126081, "dream": 151643}
MASK = {"llada": 126336, "dream": 151666}


def native(path, dtype="float32", **kw):
    return MODELS.build(kw.pop("kind", "llada"), {"path": str(path), "device": "cpu", "dtype": dtype, **kw}).load()


@pytest.fixture(scope="module")
def llada(llada_real_ckpt):
    return native(llada_real_ckpt), rc.real_llada(llada_real_ckpt)


@pytest.fixture(scope="module")
def dream(dream_real_ckpt):
    return native(dream_real_ckpt, kind="dream"), rc.real_dream(dream_real_ckpt)


def canvas(kind: str, B: int = 2, T: int = 24, seed: int = 0) -> torch.Tensor:
    """Characters, special ids and masks of the real vocabulary, [B, T]."""
    x = torch.randint(0, 96, (B, T), generator=torch.Generator().manual_seed(seed))
    x[:, 6:12] = MASK[kind]
    x[:, 3] = EOS[kind]
    return x


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_logits_equal_the_public_code(kind, llada, dream):
    nat, real = llada if kind == "llada" else dream
    x = canvas(kind)
    with torch.no_grad():
        got, want = nat.logits(x), real(x).logits
    assert got.shape == want.shape == (2, 24, nat.vocab_size)
    assert torch.equal(got, want)


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_bfloat16_logits_equal_the_public_code(kind, llada_real_ckpt, dream_real_ckpt):
    """bf16 weights on both sides (no autocast on the CPU): LLaDA rotates q/k in float32 as the
    public file does (rope_full_precision), Dream in bf16; both norms keep float32 statistics."""
    import transformers

    from harness.models.native.adapter import isolated_auto_registry

    path = llada_real_ckpt if kind == "llada" else dream_real_ckpt
    ref = rc.real_llada(path) if kind == "llada" else rc.real_dream(path)  # patched classes
    with isolated_auto_registry():
        if kind == "llada":
            real = transformers.AutoModel.from_pretrained(str(path), trust_remote_code=True, dtype=torch.bfloat16)
        else:
            real = type(ref).from_pretrained(str(path), dtype=torch.bfloat16)
    real.eval()
    nat = native(path, "bfloat16", kind=kind)
    x = canvas(kind, seed=1)
    with torch.no_grad():
        got, want = nat.logits(x), real(x).logits
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)


def _left_padded(nat):
    ids, pmask = encode_prompts(nat.tokenizer, PROMPTS, nat.pad_id)
    return ids, pmask


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_left_padded_batch_equals_each_row_alone(kind, llada, dream):
    """Logits of every real position are bit-identical batched (left padding) and alone."""
    nat, _ = llada if kind == "llada" else dream
    ids, pmask = _left_padded(nat)
    tail = torch.full((len(PROMPTS), 6), MASK[kind])
    x, attn = torch.cat([ids, tail], 1), torch.cat([pmask, torch.ones_like(tail, dtype=torch.bool)], 1)
    assert not pmask.all()  # some rows really are padded
    with torch.no_grad():
        full = nat.logits(x, attn)
        for i in range(len(PROMPTS)):
            alone = nat.logits(x[i:i + 1, attn[i]])
            assert torch.equal(full[i, attn[i]], alone[0]), i


def test_the_public_llada_file_leaks_left_padding(llada):
    """Why the native code exists: the public file builds a padding mask, then calls attention with
    attn_mask=None, so a padded row's logits change with the padding (same positions 0..T-1)."""
    nat, real = llada
    ids, pmask = _left_padded(nat)
    i = int((~pmask).sum(1).argmax())  # the most padded row
    with torch.no_grad():
        batched = real(ids, attention_mask=pmask.long()).logits[i, pmask[i]]
        alone = real(ids[i:i + 1, pmask[i]]).logits[0]
    assert (batched - alone).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["llada", "dream"])
@pytest.mark.parametrize("name, params", [("low_confidence", {"steps": 8}), ("threshold", {"tau": 0.9})])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_batched_decoding_equals_unbatched(kind, name, params, cache, llada, dream):
    nat, _ = llada if kind == "llada" else dream
    ids, pmask = _left_padded(nat)
    sampler = SAMPLERS.build(name, dict(params, block_length=8, cache=cache))
    batched = sampler(nat, ids, prompt_mask=pmask, generator=None, gen_length=16)
    for i in range(len(PROMPTS)):
        alone = sampler(nat, ids[i:i + 1, pmask[i]], generator=None, gen_length=16)
        assert torch.equal(batched.tokens[i], alone.tokens[0]) and \
            torch.equal(batched.commit_step[i], alone.commit_step[0]), (i, batched.text[i], alone.text[0])


def _eos_padded(tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """Positions after the first EOS set to EOS (the harness's Generation.tokens convention)."""
    after = (tokens == eos).long().cumsum(1) > 0
    return torch.where(after, torch.full_like(tokens, eos), tokens)


@pytest.mark.parametrize("cache, fn", [("none", "generate"), ("prefix", "generate_with_prefix_cache"),
                                       ("dual", "generate_with_dual_cache")])
@pytest.mark.parametrize("name, params, threshold", [("low_confidence", {"steps": 8}, None),
                                                     ("threshold", {"tau": 0.9}, 0.9)])
def test_fast_dllm_decoding_on_the_public_llada_equals_the_native_samplers(cache, fn, name, params, threshold,
                                                                          llada):
    """Fast-dLLM llada/generate.py `generate` / `generate_with_prefix_cache` /
    `generate_with_dual_cache` (low-confidence remasking; `threshold` = its parallel decoding) on the
    public LLaDA file vs the harness's `low_confidence` / `threshold` samplers with `cache:` on the
    native model from the same checkpoint: token-identical with the same number of forward passes.
    Two blocks of 8, greedy; the BOS-prefixed prompts of the checkpoint's tokenizer."""
    nat, real = llada
    gen = getattr(rc.fast_dllm_generate(), fn)
    sampler = SAMPLERS.build(name, dict(params, block_length=8, cache=cache))
    for text in PROMPTS:
        prompt = torch.tensor([nat.tokenizer.hf(text)["input_ids"]])
        assert prompt[0, 0] == 126080  # <|startoftext|>, as LLaDA's tokenizer adds it
        x, nfe = gen(real, prompt, steps=8, gen_length=16, block_length=8, threshold=threshold)
        meter = Meter(nat)
        out = sampler(meter, prompt, generator=None, gen_length=16)
        assert torch.equal(out.tokens, _eos_padded(x[:, prompt.shape[1]:], EOS["llada"])), text
        assert meter.cost.nfe == nfe, text
        if cache != "none":
            assert meter.cost.nfe_cached > 0


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_dream_caches_on_the_public_checkpoint(cache, dream):
    """Dream (shifted logits): right after the cache-building pass, a cached pass over the query
    columns gives the public file's full-pass logits there (same keys, fewer queries: equal to
    float32 rounding); rebuilding the cache at every step decodes exactly as without a cache."""
    nat, real = dream
    x = canvas("dream", B=1, T=20)
    lo, hi = 8, 12
    keep = torch.arange(lo - 1) if cache == "prefix" else torch.cat([torch.arange(lo - 1), torch.arange(hi, 20)])
    cols = torch.arange(lo - 1, 20 if cache == "prefix" else hi)
    with torch.no_grad():
        want = real(x).logits
        built, kv = nat.logits_build_cache(x, keep=keep)
        part = nat.logits_cached(x[:, cols], kv, positions=cols)
    assert torch.equal(built, want)
    torch.testing.assert_close(part, want[:, cols], atol=1e-4, rtol=1e-6)
    ids, pmask = _left_padded(nat)
    base = {"tau": 0.9, "block_length": 8}
    a = SAMPLERS.build("threshold", base)(nat, ids, prompt_mask=pmask, generator=None, gen_length=16)
    b = SAMPLERS.build("threshold", dict(base, cache=cache, refresh=1))(nat, ids, prompt_mask=pmask, generator=None,
                                                                         gen_length=16)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.commit_step, b.commit_step)


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_mc_elbo_on_the_native_model_has_the_exact_elbo_as_expectation(kind, llada, dream):
    """mc_elbo's count law (LLaDA's evaluation estimator: l ~ U{1..L}, l positions masked uniformly,
    weight L/l), replayed over every mask with its probability (1/L)·1/C(L, l), equals the `exact`
    estimator's ELBO (docs/methods.md §4) on the native model: the estimator is unbiased on a real
    architecture, vocabulary and mask id, and Dream's shifted logits are read right."""
    from harness.estimators.exact import exact_terms, reveal_bits

    nat, _ = llada if kind == "llada" else dream
    ids, pmask = _left_padded(nat)
    prompt, pm = ids[:1, pmask[0]], None
    completion = torch.tensor([nat.tokenizer.encode("1 9")[:3] + [EOS[kind]]])  # [1, L]
    L = completion.shape[1]
    cmask = torch.ones(1, L, dtype=torch.bool)
    masks = ~reveal_bits(L)  # [2^L - 1, L]: every non-empty masked set
    l = masks.sum(1).double()
    prob = 1.0 / (L * torch.tensor([math.comb(L, int(k)) for k in l], dtype=torch.float64))
    assert float(prob.sum()) == pytest.approx(1.0)
    n = len(masks)
    draws = {"t": l[None] / L, "masks": masks[None], "weight": (L / l * prob * n)[None]}
    est = ESTIMATORS.build("mc_elbo", {"n_mc": n, "t_law": "count", "max_tokens": 512})
    with torch.no_grad():
        replay = est(nat, prompt, completion, cmask, generator=None, prompt_mask=pm, draws=draws).sequence
        exact = exact_terms(nat, prompt, completion, cmask, max_tokens=512)["elbo"]
    assert float(replay[0]) == pytest.approx(float(exact[0]), rel=1e-9, abs=1e-9)
    assert float(exact[0]) < 0
