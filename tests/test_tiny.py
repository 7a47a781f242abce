"""The built-in tiny MDLM: padding invariance, deterministic training, and the default checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from harness.models.tiny import CHECKPOINT_DIR, CharTokenizer, resolve_checkpoint
from harness.models.train import TrainConfig, greedy_accuracy, train
from harness.registry import MODELS, TASKS
from harness.types import HarnessError
from tests.helpers import make_tiny


def test_left_padding_does_not_change_a_rows_logits():
    den = make_tiny()
    tok = den.tokenizer
    short, long = tok.encode("12+3="), tok.encode("123+45=")
    alone = den.logits(torch.tensor([short]), torch.ones(1, len(short), dtype=torch.bool))
    pad = len(long) - len(short)
    x = torch.tensor([[tok.pad_id] * pad + short, long])
    m = torch.tensor([[False] * pad + [True] * len(short), [True] * len(long)])
    batched = den.logits(x, m)
    torch.testing.assert_close(batched[0, pad:], alone[0], rtol=1e-5, atol=1e-5)


def test_tokenizer_roundtrip_and_clear_error():
    tok = CharTokenizer()
    ids = tok.encode("12+34=")
    assert tok.decode(ids + [tok.eos_id] + tok.encode("99")) == "12+34="
    with pytest.raises(HarnessError, match="'x'"):
        tok.encode("1x")


def test_unknown_checkpoint_lists_the_builtin_ones(tmp_path):
    with pytest.raises(HarnessError, match="tiny-addition"):
        resolve_checkpoint(str(tmp_path / "nope"))


def test_training_is_bit_identical_on_rerun(tmp_path):
    cfg = TrainConfig(task_params=(("n_digits", 2), ("n_train", 2000), ("n_test", 20)), d_model=32, n_layers=1,
                      n_heads=2, d_ff=64, steps=4, batch_size=32, eval_every=4, eval_items=20, threads=1)
    a = train(cfg, tmp_path / "a", progress=False)
    b = train(cfg, tmp_path / "b", progress=False)
    sa = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["greedy_accuracy"] == b["greedy_accuracy"]
    assert "Retrain" in (tmp_path / "a" / "CARD.md").read_text()


@pytest.mark.parametrize("name, low, high", [("tiny-addition", 0.2, 0.7), ("tiny-addition-c16", 0.5, 1.0)])
def test_builtin_checkpoint_reproduces_its_card(name, low, high):
    """tiny-addition (the default) must leave signal for RL; tiny-addition-c16 (a 16-token canvas
    for the sampler study) must be good enough that parallel decoding is judged on real answers."""
    path = CHECKPOINT_DIR / name
    config = json.loads((path / "config.json").read_text())
    stated = config["metrics"]["greedy_accuracy"]
    assert low <= stated <= high
    assert f"{stated:.3f}" in (path / "CARD.md").read_text()
    den = MODELS.build("tiny", {"checkpoint": name}).load()
    task = TASKS.build(config["task"], config["task_params"])
    assert task.gen_length == config["gen_length"]
    items = task.items("test")[: config["metrics"]["eval_items"]]
    assert greedy_accuracy(den, task, items) == pytest.approx(stated, abs=0.004)  # ≤ 2 items of 500
    assert (path / "model.pt").stat().st_size < 5 * 2**20
