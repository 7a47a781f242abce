"""Greedy decoding of the harness samplers vs the models' own reference decoders, token for token,
on small random-weight checkpoints of the REAL model code with the real vocabularies and ids
(../shared/fixtures/real-code; skipped without it). Each sampler runs on both paths of the adapter:
`native` (the harness's torch implementation loaded from the checkpoint directory) and `remote`
(the public model file itself, loaded through the fixture's transformers-5 shim and wrapped in the
harness's DiffusionDenoiser with the family's declarations, as `impl: remote` does).

References (read from the fixture copies, Fast-dLLM commit 24cc59e):
- LLaDA: NVlabs/Fast-dLLM `llada/generate.py`, `generate` (LLaDA's loop: linear step counts,
  low-confidence remasking, semi-AR blocks; `threshold=` is Fast-dLLM's parallel decoding) and
  `get_transfer_index` (confidence = float64 softmax).
- Dream: Dream-org/Dream `generation_utils.py`, `DreamGenerationMixin.diffusion_generate` / `_sample`
  (algs maskgit_plus, entropy, topk_margin; step counts int(m · (1 − s/t))).
"""
from __future__ import annotations

import sys

import pytest
import torch

from harness.registry import MODELS, SAMPLERS
from tests.models import _real_code as rc

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # two 60-75 MB checkpoints; every pass has a 126k-152k vocabulary


def wrap_remote(real, path, kind: str):
    """The public module as the harness's remote path serves it: DiffusionDenoiser + family declarations."""
    import transformers

    from harness.models import dream as dream_mod
    from harness.models import llada as llada_mod
    from harness.models._family import declare
    from harness.models._hf_common import ChatTokenizer, DiffusionDenoiser

    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    fam = llada_mod if kind == "llada" else dream_mod
    den = DiffusionDenoiser(real, ChatTokenizer(tok, tok.eos_token_id), mask_id=fam.MASK_ID, eos_id=tok.eos_token_id,
                            pad_id=tok.pad_token_id, shift_logits=kind == "dream",
                            mask_style="2d" if kind == "llada" else "4d")
    return declare(den, tok, path=str(path), **fam.FAMILY)


def paths(kind: str, path, real) -> dict:
    native = MODELS.build(kind, {"path": str(path), "dtype": "float32", "device": "cpu"}).load()
    return {"native": native, "remote": wrap_remote(real, path, kind)}


@pytest.fixture(scope="module")
def llada(llada_real_ckpt):
    real = rc.real_llada(llada_real_ckpt)
    return real, paths("llada", llada_real_ckpt, real)


@pytest.fixture(scope="module")
def dream(dream_real_ckpt):
    real = rc.real_dream(dream_real_ckpt)
    return real, paths("dream", dream_real_ckpt, real)


def chat_prompt(den, text: str) -> torch.Tensor:
    tok = den.tokenizer.hf
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return torch.tensor([tok(ids, add_special_tokens=False)["input_ids"]])


def cut(tokens: torch.Tensor, den) -> torch.Tensor:
    """The reference canvas with the harness's post-stop padding (tokens after the first stop id -> EOS)."""
    from harness.samplers._base import stop_ids, upto_first_stop

    tokens = tokens.clone()
    n = upto_first_stop(tokens, stop_ids(den))
    tokens[torch.arange(tokens.shape[1])[None, :] >= n[:, None]] = den.eos_id
    return tokens


@pytest.mark.parametrize("impl", ["native", "remote"])
@pytest.mark.parametrize("steps,gen_length,block,dtype", [
    (16, 16, 16, "float64"), (8, 16, 8, "float64"), (16, 32, 8, "float64"), (8, 32, 16, "float32")])
def test_llada_generate_equals_low_confidence(llada, impl, steps, gen_length, block, dtype):
    """Fast-dLLM `generate` (LLaDA's loop) vs `low_confidence` at temperature 0 on a chat prompt:
    identical tokens and passes; with the reference's float64 confidences and the harness's float32."""
    real, dens = llada
    den = dens[impl]
    prompt = chat_prompt(den, "What is 12 + 30?")
    ref, nfe = rc.fast_dllm_generate().generate(real, prompt, steps=steps, gen_length=gen_length,
                                                block_length=block, temperature=0.0)
    sampler = SAMPLERS.build("low_confidence", {"steps": steps, "block_length": block, "confidence_dtype": dtype})
    out = sampler(den, prompt, generator=torch.Generator().manual_seed(0), gen_length=gen_length)
    assert torch.equal(out.tokens, cut(ref[:, prompt.shape[1]:], den))
    assert out.steps == nfe == steps


@pytest.mark.parametrize("impl", ["native", "remote"])
@pytest.mark.parametrize("gen_length,block", [(16, 16), (32, 8)])
def test_llada_threshold_equals_fast_dllm(llada, impl, gen_length, block):
    """Fast-dLLM `generate(threshold=0.9)` vs the harness `threshold` sampler (tau 0.9): same tokens, same NFE."""
    real, dens = llada
    den = dens[impl]
    prompt = chat_prompt(den, "Name three colours.")
    ref, nfe = rc.fast_dllm_generate().generate(real, prompt, steps=gen_length, gen_length=gen_length,
                                                block_length=block, temperature=0.0, threshold=0.9)
    out = SAMPLERS.build("threshold", {"tau": 0.9, "block_length": block})(
        den, prompt, generator=torch.Generator().manual_seed(0), gen_length=gen_length)
    assert torch.equal(out.tokens, cut(ref[:, prompt.shape[1]:], den))
    assert out.steps == nfe
    assert nfe < gen_length  # some steps committed several tokens: the comparison covers parallel commits


ALGS = {"maskgit_plus": "low_confidence", "entropy": "entropy", "topk_margin": "margin"}


@pytest.mark.parametrize("impl", ["native", "remote"])
@pytest.mark.parametrize("alg,steps,gen_length", [
    ("maskgit_plus", 8, 16), ("maskgit_plus", 5, 24), ("entropy", 8, 16), ("entropy", 16, 16), ("topk_margin", 8, 16)])
def test_dream_diffusion_generate_equals_harness(dream, impl, alg, steps, gen_length):
    """Dream `diffusion_generate` (temperature 0) vs the harness sampler of the same confidence with
    Dream's step schedule (the Dream adapter's default: schedule auto): identical tokens for a
    two-row batch, and the same number of tokens committed at every step."""
    real, dens = dream
    den = dens[impl]
    tok = den.tokenizer.hf
    rows = [chat_prompt(den, "What is 2+3?")[0], chat_prompt(den, "Say hi!")[0]]
    width = min(len(r) for r in rows)
    prompt = torch.stack([r[-width:] for r in rows])  # equal lengths: no padding in either decoder
    assert tok.pad_token_id not in prompt.tolist()
    seen = []
    gc = dream_generation_config(real, den, max_new_tokens=gen_length, steps=steps, temperature=0.0, alg=alg)
    ref = real.diffusion_generate(
        prompt, generation_config=gc,
        generation_tokens_hook_func=lambda i, x, logits: (seen.append((x == den.mask_id).sum(1)), x)[1])
    out = SAMPLERS.build(ALGS[alg], {"steps": steps})(
        den, prompt, generator=torch.Generator().manual_seed(0), gen_length=gen_length)
    assert torch.equal(out.tokens, cut(ref[:, prompt.shape[1]:], den))
    ref_counts = [int(a[0] - b[0]) for a, b in zip(seen, seen[1:])]  # seen[0]: before the first step
    ours = [int((out.commit_step[0] == s).sum()) for s in range(steps)]
    assert ours == ref_counts and sum(ours) == gen_length


def test_dream_schedule_differs_from_llada_counts(dream):
    """The schedule is what made Dream's outputs differ: the linear counts commit other tokens."""
    real, dens = dream
    den = dens["native"]
    prompt = chat_prompt(den, "What is 2+3?")
    gc = dream_generation_config(real, den, max_new_tokens=16, steps=8, temperature=0.0, alg="maskgit_plus")
    ref = cut(real.diffusion_generate(prompt, generation_config=gc)[:, prompt.shape[1]:], den)
    g = torch.Generator().manual_seed(0)
    dream_out = SAMPLERS.build("low_confidence", {"steps": 8, "schedule": "dream"})(den, prompt, generator=g,
                                                                                   gen_length=16)
    linear_out = SAMPLERS.build("low_confidence", {"steps": 8, "schedule": "linear"})(den, prompt, generator=g,
                                                                                     gen_length=16)
    assert torch.equal(dream_out.tokens, ref)
    assert not torch.equal(linear_out.tokens, ref)


@pytest.mark.parametrize("impl", ["native", "remote"])
def test_llada_declares_eot_as_stop_and_bos(llada, dream, impl):
    """The real-vocabulary checkpoints declare their stop ids and prompting as data."""
    la, dr = llada[1][impl], dream[1][impl]
    assert la.stop_ids == (126081, 126348)
    assert la.decode_defaults["schedule"] == "linear"
    assert la.prompting["add_bos"] and la.prompting["bos_id"] == 126080
    assert dr.decode_defaults["schedule"] == "dream"
    assert dr.stop_ids == (151643, 151645)  # <|endoftext|>, <|im_end|>


def test_llada_prompt_ids_match_llada_eval_tokenization(llada):
    """ML-GSAI/LLaDA eval_llada.py tokenizes a context with `tokenizer(context)`, whose post-processor
    puts <|startoftext|> first; the harness lays out the same ids. With the chat template (which writes
    the BOS itself) the BOS appears once (LLaDA's generate.py example feeds it twice; not reproduced)."""
    from harness.prompting import prompt_ids

    llada = llada[1]["native"]
    tok = llada.tokenizer.hf
    text = "Question: 2+3?\nAnswer:"
    assert prompt_ids(llada, text, chat=False) == tok(text)["input_ids"]
    templated = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=False)
    ids = prompt_ids(llada, text, chat=True)
    assert ids == tok(templated, add_special_tokens=False)["input_ids"]
    assert ids[0] == 126080 and ids.count(126080) == 1
    assert tok(templated)["input_ids"][:2] == [126080, 126080]  # the doubled BOS of tokenizing it again


def dream_generation_config(real, den, **kw):
    """A DreamGenerationConfig of the public module (transformers 5 cannot derive one from the model
    config: `from_model_config` trips on Dream's extra fields), special ids from the model."""
    cls = sys.modules[type(real).__module__].DreamGenerationConfig
    return cls(mask_token_id=den.mask_id, eos_token_id=den.eos_id, pad_token_id=den.pad_id,
               bos_token_id=den.eos_id, **kw)
