"""A loglikelihood request's (context, continuation) is split into tokens as lm-eval's
`TemplateLM._encode_pair` (lm_eval/api/model.py) and LLaDA's eval_llada.py
(`LLaDAEvalHarness._encode_pair`, ML-GSAI/LLaDA) split it: the context's trailing whitespace joins
the continuation and both are tokenized together. Checked with a byte-level BPE tokenizer (a
subword tokenizer: " Paris" is one token with its space, "Paris" alone is another) against
lm-eval's own `_encode_pair`."""
from __future__ import annotations

import pytest

from harness.bridge.engine import Engine
from harness.models._hf_common import ChatTokenizer
from harness.registry import MODELS

CORPUS = ["The capital of France is Paris.", "Question: What is the capital of France?\nAnswer: Paris",
          "Paris is in France. The answer is Paris, the capital."] * 50


def bpe_tokenizer():
    import tokenizers
    import transformers

    backend = tokenizers.Tokenizer(tokenizers.models.BPE())
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=320, special_tokens=["<bos>", "<eos>"],
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>")


@pytest.fixture(scope="module")
def den():
    pytest.importorskip("transformers")
    d = MODELS.build("llada", {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()
    hf = bpe_tokenizer()
    d.tokenizer = ChatTokenizer(hf, hf.eos_token_id)
    d.prompting = {"add_bos": True, "bos_id": hf.bos_token_id, "chat": False}  # LLaDA's: BOS first
    return d


def lm_eval_pair(hf, bos: int, context: str, continuation: str):
    """lm-eval's own TemplateLM._encode_pair with a tok_encode that puts the BOS first (as LLaDA's
    tokenizer, whose post-processor adds <|startoftext|>)."""
    lm_model = pytest.importorskip("lm_eval.api.model")

    class LM(lm_model.TemplateLM):
        backend = "causal"
        eot_token_id = hf.eos_token_id

        def tok_encode(self, string, **kw):
            return [bos, *hf.encode(string, add_special_tokens=False)]

        def _loglikelihood_tokens(self, *a, **k):
            raise NotImplementedError

        def loglikelihood_rolling(self, *a, **k):
            raise NotImplementedError

        def generate_until(self, *a, **k):
            raise NotImplementedError

    return LM()._encode_pair(context, continuation)


@pytest.mark.parametrize("context,continuation", [
    ("Question: What is the capital of France?\nAnswer: ", "Paris"),
    ("The capital of France is", " Paris"),
    ("The capital of France is  \n", "Paris."),
    ("The answer is", "Paris"),
])
def test_split_equals_lm_evals_encode_pair(den, context, continuation):
    hf = den.tokenizer.hf
    ctx, cont = Engine.from_args({}, denoiser=den).encode_pair(context, continuation)
    ref_ctx, ref_cont = lm_eval_pair(hf, den.prompting["bos_id"], context, continuation)
    assert (ctx, cont) == (list(ref_ctx), list(ref_cont))
    assert ctx[0] == hf.bos_token_id and ctx.count(hf.bos_token_id) == 1


def test_trailing_space_joins_the_continuation_as_one_subword(den):
    """The issue's case: "...Answer: " + "Paris" scores the single token " Paris" (the way the model
    saw the answer in training), not the tokens of "Paris" without its space."""
    hf = den.tokenizer.hf
    eng = Engine.from_args({}, denoiser=den)
    ctx, cont = eng.encode_pair("Question: What is the capital of France?\nAnswer: ", "Paris")
    assert hf.decode(cont) == " Paris" and cont == hf.encode(" Paris", add_special_tokens=False)
    separate = eng.encode("Paris")[0]  # what a separate tokenization of the continuation gives
    assert separate != cont
    assert hf.decode(ctx[1:]).endswith("Answer:")


def test_empty_context_is_the_bos_alone(den):
    ctx, cont = Engine.from_args({}, denoiser=den).encode_pair("", "Paris")
    assert ctx == [den.tokenizer.hf.bos_token_id] and cont == den.tokenizer.hf.encode("Paris", add_special_tokens=False)


def test_the_lm_scores_the_pairs_encode_pair_gives(den, monkeypatch):
    """DLMHarnessLM.loglikelihood hands the engine the split above (the estimator then scores it)."""
    lm_mod = pytest.importorskip("harness.bridge.lm_eval")
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    lm = lm_mod.DLMHarnessLM.__new__(lm_mod.DLMHarnessLM)
    lm.engine = Engine.from_args({}, denoiser=den)
    lm._world_size, lm._rank = 1, 0
    seen = []
    monkeypatch.setattr(lm.engine, "score", lambda items, **kw: seen.extend(items) or [(0.0, False)] * len(items))
    args = ("Question: What is the capital of France?\nAnswer: ", "Paris")
    lm.loglikelihood([Instance("loglikelihood", {}, args, 0, metadata=("t", 0, 1))])
    assert (seen[0][0], seen[0][1]) == lm.engine.encode_pair(*args)
