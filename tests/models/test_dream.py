"""Tests of the `dream` adapter on its tiny random stand-in preset (CPU, float32)."""
from __future__ import annotations

import pytest
import torch

from harness.estimators._common import completion_logprobs
from harness.registry import MODELS
from tests.models import _diffusion_common as common

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def dream():
    return MODELS.build("dream", {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()


def test_protocol_mask_id_and_shift(dream):
    common.check_protocol(dream, mask_id=127, shift=True, vocab=128)
    assert dream.eos_id == dream.pad_id == 126
    assert (dream.arch.n_layers, dream.arch.d_model) == (2, 64)


def test_dream_7b_preset_uses_dreams_mask_id():
    cfg = MODELS.build("dream", {"preset": "dream-7b"}).resolved_config()
    assert cfg["mask_token_id"] == 151666 and cfg["vocab_size"] == 152064 and cfg["num_hidden_layers"] == 28


def test_estimators_read_position_k_at_k_minus_1(dream):
    """completion_logprobs on Dream equals log-softmax(logits)[k-1] gathered at the token of k."""
    prompt, pmask, comp = common.batch(dream)
    B, P = prompt.shape
    L = comp.shape[1]
    noised = comp.clone()
    noised[:, 1::2] = dream.mask_id  # mask every other completion position
    with torch.no_grad():
        got = completion_logprobs(dream, prompt, pmask, comp, noised[:, None], max_tokens=10_000)[:, 0]  # [B, L]
        x = torch.cat([prompt, noised], 1)
        attn = torch.cat([pmask, torch.ones_like(comp, dtype=torch.bool)], 1)
        logp = dream.logits(x, attn).log_softmax(-1)  # [B, T, V]
    manual = torch.stack([logp[b, P + k - 1, comp[b, k]] for b in range(B) for k in range(L)]).view(B, L)
    unshifted = torch.stack([logp[b, P + k, comp[b, k]] for b in range(B) for k in range(L)]).view(B, L)
    torch.testing.assert_close(got, manual)
    assert not torch.allclose(got, unshifted)  # the alignment matters: reading k at k would differ


def test_padding_is_passed_as_dream_expects(dream):
    """Padding goes in as a boolean [B, 1, T, T] mask with position ids counting real tokens."""
    kw = dream._kwargs(torch.tensor([[False, True, True], [True, True, True]]))
    assert kw["attention_mask"].shape == (2, 1, 3, 3) and kw["attention_mask"].dtype == torch.bool
    assert kw["position_ids"].tolist() == [[0, 0, 1], [0, 1, 2]]
    common.check_padding_invariance(dream)


def test_end_to_end_through_meter(dream):
    common.check_end_to_end(dream)


def test_no_kv_cache_on_dream(dream):
    from harness.samplers._cache import supports_cache

    assert not supports_cache(dream)


def test_path_route_loads_saved_standin_with_remote_code(dream, tmp_path):
    from harness.models._hf_common import save_pretrained_dir

    path = save_pretrained_dir(dream.module, dream.tokenizer.hf, tmp_path / "dream", "dream_standin")
    d = MODELS.build("dream", {"path": str(path), "device": "cpu", "dtype": "float32"}).load()
    assert type(d.module).__module__.startswith("transformers_modules")
    assert (d.mask_id, d.eos_id, d.shift_logits) == (127, 126, True)
    x = torch.randint(0, 128, (2, 8))
    attn = torch.ones(2, 8, dtype=torch.bool)
    attn[0, :3] = False
    with torch.no_grad():
        assert torch.equal(d.logits(x, attn), dream.logits(x, attn))


def test_bfloat16_dtype_on_cpu_runs():
    d = MODELS.build("dream", {"preset": "tiny", "device": "cpu", "dtype": "bfloat16"}).load()
    with torch.no_grad():
        out = d.logits(torch.randint(0, 128, (1, 5)))
    assert out.dtype == torch.bfloat16 and next(d.module.parameters()).dtype == torch.bfloat16
