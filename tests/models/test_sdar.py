"""The `sdar` adapter without the public code: presets, a checkpoint directory written and read
back by tensor name, the ids it declares, and the errors on bad configs. (Parity with the public
SDAR/TraDo code: tests/models/test_sdar_parity.py.)"""
from __future__ import annotations

import json

import pytest
import torch

from harness.models._hf_common import save_pretrained_dir
from harness.registry import MODELS
from harness.types import HarnessError


def build(**params):
    return MODELS.build("sdar", {"device": "cpu", "dtype": "float32", **params}).load()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny preset saved as a checkpoint directory with a generation_config.json."""
    den = build(preset="tiny", seed=1)
    path = save_pretrained_dir(den.module, den.tokenizer.hf, tmp_path_factory.mktemp("sdar") / "ckpt")
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [125, 126]}))
    return den, path


def test_a_saved_checkpoint_loads_by_name_with_its_ids(saved):
    den, path = saved
    again = build(path=str(path))
    x = torch.randint(0, 90, (2, 11), generator=torch.Generator().manual_seed(0))
    x[:, 5:9] = den.mask_id
    with torch.no_grad():
        assert torch.equal(again.logits(x), den.logits(x))
    assert again.block_size == 4 and again.mask_id == 127 and again.eos_id == 126
    assert again.stop_ids == (126, 125)  # the EOS, then generation_config.json's other id
    assert again.decode_defaults == {"schedule": "linear", "sampling": "multinomial", "tie_break": "topk",
                                     "stop_after_block": True}
    assert again.prompting["add_bos"] is False


def test_block_causal_attention_and_the_block_size_field(saved):
    """A plain pass never lets a block see a later one; `block_size` changes the attention block."""
    den, path = saved
    x = torch.randint(0, 90, (1, 12), generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[:, 4:8] = den.mask_id  # change the second block of 4 only
    eight = build(path=str(path), block_size=8)
    assert eight.block_size == 8 and eight.module.block_size == 8
    with torch.no_grad():
        a, b = den.logits(x), den.logits(y)
        assert torch.equal(a[:, :4], b[:, :4]) and not torch.equal(a[:, 4:], b[:, 4:])
        c, d = eight.logits(x), eight.logits(y)  # blocks of 8: columns 0-3 share the changed block
        assert not torch.equal(c[:, :4], d[:, :4])
        z = x.clone()
        z[:, 8:] = den.mask_id
        assert torch.equal(c[:, :8], eight.logits(z)[:, :8])  # and still never see columns 8-11


def test_bad_configs_are_errors_naming_the_key(saved, tmp_path):
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    for key, value, match in [("block_size", None, "block_size"), ("mask_token_id", None, "mask_token_id"),
                              ("block_size", 0, "block_size"), ("hidden_act", "gelu", "hidden_act"),
                              ("model_type", "qwen3", "model_type")]:
        bad = tmp_path / f"{key}-{value}"
        bad.mkdir()
        for f in path.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        c = dict(cfg)
        if value is None:
            c.pop(key)
        else:
            c[key] = value
        (bad / "config.json").write_text(json.dumps(c))
        with pytest.raises(HarnessError, match=match):
            build(path=str(bad))
    with pytest.raises(HarnessError, match="block_size"):
        MODELS.build("sdar", {"preset": "tiny", "block_size": 0})
    with pytest.raises(HarnessError, match="needs path"):
        MODELS.build("sdar", {"preset": "tiny", "impl": "remote"})
    with pytest.raises(HarnessError, match="left padding"):
        build(preset="tiny").logits(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[1, 0, 1, 1]]))
