"""Every registered RL algorithm trains a block-diffusion model through the shared loop (a contract).

On a block model (the tiny model with `block_size` 4) the rollouts come from the block decoding loop
(harness/samplers/_base.py, "Block models"), whose completions run to the end of the last decoded
block: up to block_size - 1 tokens longer than gen_length. The likelihood passes must be block
passes: the [x_t ; x_0] scoring pass of the estimators (`logits_denoise`) or, for trace_rl,
TraceRL's [prompt ; clean ; noisy] rows (`logits_pattern`); a plain forward of a noised canvas would
let each block see noised earlier blocks, so it is refused here while the loop updates.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import harness.algorithms  # noqa: F401  (registers every algorithm)
from harness.algorithms.loop import LoopOptions, RLLoop
from harness.models.tiny import CharTokenizer, TinyConfig, TinyDenoiser, TinyMDLM
from harness.registry import ALGORITHMS
from harness.seeding import derive_seed
from harness.types import HarnessError
from tests.algorithms.toy import ITEMS

PARAMS = {"trace_rl": {"acc_low": 0.0, "acc_high": 1.0}}  # keep every group: the rewards below are arbitrary
GEN = 4


@dataclass(frozen=True)
class Spread:
    """A reward with spread inside every group: a fixed function of the completion's characters."""

    gen_length: int = GEN

    def score(self, item, completion: str) -> float:
        return (sum(map(ord, completion)) % 7) / 6


def block_policy(seed: int = 0) -> TinyDenoiser:
    tok = CharTokenizer()
    cfg = TinyConfig(vocab_size=len(tok), max_len=12, d_model=32, n_layers=2, n_heads=2, d_ff=64, block_size=4)
    return TinyDenoiser(TinyMDLM(cfg, generator=torch.Generator().manual_seed(seed)).eval(), tok)


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_trains_a_block_model_with_block_passes(name, monkeypatch):
    torch.set_num_threads(1)
    policy = block_policy()
    algo = ALGORITHMS.build(name, PARAMS.get(name, {}))
    opts = LoopOptions(steps=1, prompts=2, group_size=4, mu=2, lr=1e-2, eval_items=2,
                       sampler={"name": "low_confidence", "params": {"temperature": 1.0}})
    key = lambda item, r, stream: derive_seed("test", f"block_rl/{name}", item, r, stream)  # noqa: E731
    # JustGRPO's order needs blocks of one token; MDPO trains on steps that predict the whole completion;
    # d2-AnyOrder's layout is its own pattern over the whole completion
    if getattr(algo, "rollout", None) == "left_to_right" or algo.uses_trajectory or name == "d2_any_order":
        with pytest.raises(HarnessError, match="block-diffusion model"):
            RLLoop(policy, algo, Spread(), opts, key, ITEMS, ITEMS[:2])
        return
    loop = RLLoop(policy, algo, Spread(), opts, key, ITEMS, ITEMS[:2])
    buf = loop.rollout(0)
    # prompts "NN+" (3 tokens) end inside the first block: it is decoded with the first generated tokens,
    # and the completion runs to the end of the second block (5 tokens, one more than gen_length)
    assert buf["tokens"].shape[1] == 2 * 4 - 3 > GEN
    assert buf["commit_step"].shape == buf["tokens"].shape and bool((buf["commit_step"] >= 0).any())
    assert len(set(buf["rewards"].tolist())) > 1
    buf = algo.after_rollout(loop, buf, 0)  # IGPO's inpainted rollouts decode here (plain passes allowed)
    before = [p.detach().clone() for p in policy.module.parameters()]
    calls = {"denoise": 0, "pattern": 0}

    def plain(*_a, **_k):
        raise AssertionError(f"{name}: a plain forward in the likelihood of a block model")

    def counted(method, what):
        def run(self, *a, **k):
            calls[what] += 1
            return method(self, *a, **k)
        return run

    monkeypatch.setattr(TinyDenoiser, "logits", plain)
    monkeypatch.setattr(TinyDenoiser, "logits_denoise", counted(TinyDenoiser.logits_denoise, "denoise"))
    monkeypatch.setattr(TinyDenoiser, "logits_pattern", counted(TinyDenoiser.logits_pattern, "pattern"))
    log = loop.update(buf, 0)
    monkeypatch.undo()
    assert log["kept_groups"] == 2 and torch.isfinite(torch.tensor(log["loss"])), log
    if name == "trace_rl":  # TraceRL's block rows, one pass each
        assert calls["pattern"] > 0 and calls["denoise"] == 0 and log["trace_rows"] > 0
    else:
        assert calls["denoise"] > 0 and calls["pattern"] == 0
    assert loop.meters["policy"].cost.nfe > 0
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(policy.module.parameters(), before))
    assert moved > 0, f"{name}: the update left the block model unchanged"
    scores = loop.evaluate(ITEMS[:2])  # greedy held-out decoding on the block model
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
