"""`klass_dream` against KLASS's Dream decoder on the public Dream model file.

The transcription of KLASS's `DreamGenerationMixin._sample` (alg="klass"; tests/samplers/test_klass_dream.py,
cited line by line) drives the public `modeling_dream.py` of the real-code fixture
(../shared/fixtures/real-code: a random-weight checkpoint with Dream's 152k vocabulary and special ids,
mask 151666), as KLASS drives Dream-v0-Instruct-7B, on a chat-template prompt; `klass_dream` decodes on the
harness's native Dream loaded from the same checkpoint. With $DLM_HARNESS_KLASS_SRC naming a checkout of
shkim0116/KLASS, the repository's own `_sample` runs on the public model too. The reference reads the
mask token at -inf, as the harness does (a documented difference; this checkpoint gives it < 1e-17).
Skipped without the fixture. One prompt and 8 tokens: every pass is a float64 softmax over 152k entries.
"""
from __future__ import annotations

import os
import types

import pytest
import torch

from harness.registry import MODELS, SAMPLERS
from tests.models import _real_code as rc
from tests.samplers._reference import cut, reference_module
from tests.samplers.test_klass_dream import reference_klass_dream

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # a 75 MB checkpoint; every pass has a 152k vocabulary

MASK = 151666
SETTING = {"steps": 8, "conf_threshold": 0.6, "kl_threshold": 0.05, "history_length": 2, "unmask_strategy": "all",
           "temperature": 0.2, "top_p": 0.95}  # the authors' temperature and top_p, looser thresholds


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    path = rc.build("dream", tmp_path_factory.mktemp("real-code") / "dream")
    real = rc.real_dream(path)
    den = MODELS.build("dream", {"path": str(path), "dtype": "float32", "device": "cpu"}).load()
    tok = den.tokenizer.hf
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}], add_generation_prompt=True,
                                   tokenize=False)
    return real, den, torch.tensor([tok(chat, add_special_tokens=False)["input_ids"]])


class Real:
    """The public module called as KLASS's `_sample` calls itself: self(x, attention_mask, tok_idx).logits, raw
    (unshifted), the mask token at -inf; `config.vocab_size` (L416)."""

    def __init__(self, real):
        self.real, self.device = real, torch.device("cpu")
        self.config = types.SimpleNamespace(vocab_size=real.lm_head.out_features)
        self.calls = 0

    def __call__(self, x, attention_mask=None, tok_idx=None):
        self.calls += 1
        out = self.real(x, attention_mask, tok_idx).logits.clone()
        out[..., MASK] = -torch.inf
        return types.SimpleNamespace(logits=out)


def test_klass_dream_on_the_public_dream_file(dream):
    real, den, prompt = dream
    s = SETTING
    events = {}
    torch.manual_seed(3)
    model = Real(real)
    ref, passes = reference_klass_dream(model, prompt, 8, s["steps"], MASK, s["conf_threshold"], s["kl_threshold"],
                                        s["history_length"], s["unmask_strategy"], s["temperature"], s["top_p"],
                                        None, events)
    out = SAMPLERS.build("klass_dream", s)(den, prompt, generator=[torch.Generator().manual_seed(3)], gen_length=8)
    assert torch.equal(out.tokens, cut(ref[:, prompt.shape[1]:], den)) and out.steps == passes == model.calls
    assert events.get("ready", 0) > 0 and events.get("fallback", 0) > 0  # both branches compared
    if not os.environ.get("DLM_HARNESS_KLASS_SRC"):  # the repository's own function needs a checkout
        return
    mod = reference_module("DLM_HARNESS_KLASS_SRC", "src/model/dream_klass.py", "shkim0116/KLASS")
    cfg = mod.DreamGenerationConfig(max_length=prompt.shape[1] + 8, mask_token_id=MASK, steps=s["steps"], alg="klass",
                                    temperature=s["temperature"], top_p=s["top_p"],
                                    conf_threshold=s["conf_threshold"], kl_threshold=s["kl_threshold"],
                                    kl_history_length=s["history_length"], unmask_strategy=s["unmask_strategy"])
    torch.manual_seed(3)
    own, _ = mod.DreamGenerationMixin._sample(Real(real), prompt, attention_mask=None, generation_config=cfg,
                                              generation_tokens_hook_func=lambda i, x, logits: x,
                                              generation_logits_hook_func=lambda i, x, logits: logits)
    assert torch.equal(own, ref)
