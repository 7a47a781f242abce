"""The tiny model as a block-diffusion model (`TinyConfig.block_size`): the block-causal mask in every
forward method, the [x_t ; x_0] scoring pass, left padding, the exact KV cache of finished blocks,
the BD3-LM training objective and the built-in block checkpoint."""
from __future__ import annotations

import json

import pytest
import torch

from harness.models.tiny import CHECKPOINT_DIR, CharTokenizer, TinyConfig, TinyDenoiser, TinyMDLM
from harness.models.train import TrainConfig, block_diffusion_loss, greedy_accuracy, train
from harness.registry import MODELS, SAMPLERS, TASKS
from harness.types import HarnessError

BLOCK_CKPT = "tiny-addition-c16-block4"


def make_tiny_block(block_size: int = 4, seed: int = 0, max_len: int = 24, d_model: int = 32,
                    scale: float = 1.0) -> TinyDenoiser:
    """A random tiny block model; `scale` > 1 sharpens its head (less uniform logits)."""
    tok = CharTokenizer()
    cfg = TinyConfig(vocab_size=len(tok), max_len=max_len, d_model=d_model, n_layers=2, n_heads=2, d_ff=64,
                     block_size=block_size)
    module = TinyMDLM(cfg, generator=torch.Generator().manual_seed(seed)).eval()
    if scale != 1.0:
        with torch.no_grad():
            module.head.weight.mul_(scale)
    return TinyDenoiser(module, tok)


def _tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 26, (B, T), generator=torch.Generator().manual_seed(seed))


def test_config_refuses_a_bad_block_size():
    with pytest.raises(HarnessError, match="block_size"):
        TinyConfig(vocab_size=26, block_size=0)
    with pytest.raises(HarnessError, match="block_size"):
        TinyConfig(vocab_size=26, block_size=2.5)


def test_existing_checkpoints_stay_full_attention():
    for name in ("tiny-addition", "tiny-addition-c16"):
        den = MODELS.build("tiny", {"checkpoint": name}).load()
        assert den.block_size is None
        x = _tokens(2, 12)
        # a later column moves an earlier one's logits: attention is bidirectional
        y = x.clone()
        y[:, -1] = (y[:, -1] + 1 - 3) % 23 + 3
        assert not torch.allclose(den.logits(x)[:, 0], den.logits(y)[:, 0])
        # and the scoring pass of a full-attention model is its plain forward
        torch.testing.assert_close(den.logits_denoise(x, y), den.logits(x), rtol=0, atol=0)


def test_a_later_block_never_moves_an_earlier_blocks_logits():
    den = make_tiny_block(4)
    x = _tokens(2, 16)
    base = den.logits(x)
    for col in (8, 11, 15):  # block 2 and 3
        y = x.clone()
        y[:, col] = den.mask_id
        out = den.logits(y)
        torch.testing.assert_close(out[:, : col // 4 * 4], base[:, : col // 4 * 4], rtol=0, atol=0)
        # ... while the changed block itself sees the change (bidirectional inside a block)
        lo = col // 4 * 4
        assert not torch.allclose(out[:, lo:lo + 4], base[:, lo:lo + 4])


def test_dual_stream_pass_conditions_each_block_on_the_clean_earlier_blocks():
    den = make_tiny_block(4)
    x0 = _tokens(2, 16, seed=1)
    xt = x0.clone()
    xt[:, [1, 5, 6, 9, 14]] = den.mask_id
    out = den.logits_denoise(xt, x0)
    for b in range(4):
        lo, hi = 4 * b, 4 * b + 4
        # block b given clean blocks < b is a plain forward of [x0 blocks < b ; xt block b]
        alone = den.logits(torch.cat([x0[:, :lo], xt[:, lo:hi]], 1))[:, lo:hi]
        torch.testing.assert_close(out[:, lo:hi], alone, rtol=1e-5, atol=1e-5)
    # an earlier clean block moves later blocks; x0 of the same or later blocks and noised earlier
    # blocks do not
    y0 = x0.clone()
    y0[:, 2] = (y0[:, 2] + 1 - 3) % 23 + 3
    moved = den.logits_denoise(xt, y0)
    torch.testing.assert_close(moved[:, :4], out[:, :4], rtol=0, atol=0)
    assert not torch.allclose(moved[:, 4:8], out[:, 4:8])
    z0 = x0.clone()
    z0[:, 4:] = den.mask_id
    zt = xt.clone()
    zt[:, 0] = den.mask_id
    got = den.logits_denoise(zt, z0)
    torch.testing.assert_close(got[:, 4:8], den.logits_denoise(xt, z0)[:, 4:8], rtol=0, atol=0)
    torch.testing.assert_close(den.logits_denoise(xt, z0)[:, :8], out[:, :8], rtol=0, atol=0)


def test_the_scoring_pass_differs_from_a_plain_forward_only_after_the_first_block():
    den = make_tiny_block(4)
    x0 = _tokens(1, 8)
    xt = x0.clone()
    xt[:, [1, 5]] = den.mask_id
    got = den.logits_denoise(xt, x0)
    # block 1 sees the clean block 0, not the noised one a plain forward of xt would show it
    assert not torch.allclose(got[:, 4:], den.logits(xt)[:, 4:])
    torch.testing.assert_close(got[:, :4], den.logits(xt)[:, :4], rtol=1e-5, atol=1e-5)


def test_an_explicit_pattern_reproduces_the_plain_and_dual_passes_and_trace_rl_rows():
    """`logits_pattern` applies the pattern and positions given: with decode_mask / dual_stream_mask it is
    the plain / [x_t ; x_0] pass; with TraceRL's [prompt ; clean ; noisy] rows each noisy block's logits
    equal a dual-stream pass of [prompt ; response] whose blocks start at the response (the prompt
    length is a multiple of the block here, so the two layouts coincide)."""
    from harness.algorithms.trace_rl import training_pattern
    from harness.models.block_attention import decode_mask, dual_stream_mask, positions

    den = make_tiny_block(4)
    x = _tokens(2, 10, seed=4)
    am = torch.ones(2, 10, dtype=torch.bool)
    am[0, :3] = False
    x[0, :3] = den.pad_id
    with torch.no_grad():
        got = den.logits_pattern(x, decode_mask(am, 2, 10, 4), positions(am, 2, 10))
        torch.testing.assert_close(got[0, 3:], den.logits(x, am)[0, 3:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1], den.logits(x, am)[1], rtol=1e-5, atol=1e-5)
        xt = x.clone()
        xt[:, 5:8] = den.mask_id
        pos = positions(am, 2, 10)
        got = den.logits_pattern(torch.cat([xt, x], 1), dual_stream_mask(am, 2, 10, 4), torch.cat([pos, pos], 1))
        torch.testing.assert_close(got[1, :10], den.logits_denoise(xt, x, am)[1], rtol=1e-5, atol=1e-5)
        prompt, resp = _tokens(1, 8, seed=5), _tokens(1, 8, seed=6)
        noisy = resp.clone()
        noisy[:, [1, 2, 6]] = den.mask_id
        ids = torch.cat([prompt, resp, noisy], 1)
        allowed, pos = training_pattern(ids, 8, 8, 4, den.pad_id)
        got = den.logits_pattern(ids, allowed, pos)[:, 16:]
        clean = torch.cat([prompt, resp], 1)
        want = den.logits_denoise(torch.cat([prompt, noisy], 1), clean)[:, 8:]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(HarnessError, match="max_len"):
        den.logits_pattern(ids, allowed, pos + 20)


@pytest.mark.parametrize("pad", [1, 3, 4])
def test_left_padding_gives_each_row_its_numbers_alone(pad):
    den = make_tiny_block(4)
    short, long = _tokens(1, 12 - pad, seed=2), _tokens(1, 12, seed=3)
    x = torch.cat([torch.cat([torch.full((1, pad), den.pad_id), short], 1), long])
    am = torch.ones(2, 12, dtype=torch.bool)
    am[0, :pad] = False
    torch.testing.assert_close(den.logits(x, am)[0, pad:], den.logits(short)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(den.logits(x, am)[1], den.logits(long)[0], rtol=1e-5, atol=1e-5)
    xt = x.clone()
    xt[:, -3:] = den.mask_id
    got = den.logits_denoise(xt, x, am)
    torch.testing.assert_close(got[0, pad:], den.logits_denoise(xt[:1, pad:], short)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], den.logits_denoise(xt[1:], long)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padded", [False, True])
def test_cached_passes_equal_full_passes(padded):
    den = make_tiny_block(4)
    x = _tokens(2, 20, seed=4)
    am = None
    if padded:  # a whole block of left padding keeps both rows' blocks on the same columns
        am = torch.ones(2, 20, dtype=torch.bool)
        am[0, :4] = False
        x[0, :4] = den.pad_id
    full = den.logits(x, am)
    real = slice(None) if am is None else am[:, 8:12]
    # a prefix cache of the finished blocks, then the current block (dual: the later blocks cached too)
    for keep in (torch.arange(8), torch.cat([torch.arange(8), torch.arange(12, 20)])):
        logits, cache = den.logits_build_cache(x, am, keep=keep)
        torch.testing.assert_close(logits, full, rtol=0, atol=0)
        q = torch.arange(8, 12)
        got = den.logits_cached(x[:, q], cache, positions=q, attention_mask=am)
        torch.testing.assert_close(got[real], full[:, 8:12][real], rtol=1e-5, atol=1e-5)
    # the cache of finished blocks stays exact when later columns change (its keys never saw them)
    _, cache = den.logits_build_cache(x, am, keep=torch.arange(8))
    y = x.clone()
    y[:, 8:] = den.mask_id
    q = torch.arange(8, 20)
    torch.testing.assert_close(den.logits_cached(y[:, q], cache, positions=q, attention_mask=am),
                               den.logits(y, am)[:, 8:], rtol=1e-5, atol=1e-5)
    # a pad query column of a cached pass gives finite numbers (it attends to itself)
    if padded:
        q = torch.arange(0, 4)
        _, cache = den.logits_build_cache(x, am, keep=torch.arange(4, 20))
        assert torch.isfinite(den.logits_cached(x[:, q], cache, positions=q, attention_mask=am)).all()


def test_samplers_caches_are_exact_on_a_block_model():
    """Prompt length a multiple of block_size and block_length == block_size: the decoding loop's
    blocks are the model's, so the prefix cache of finished blocks changes no token (with a
    full-attention model it is an approximation); a dual cache is refused on a block model (the
    columns after the current block are never attended to, so there is nothing to cache there)."""
    den = make_tiny_block(4, scale=30.0)
    prompt = _tokens(3, 8, seed=5)
    outs = [SAMPLERS.build("low_confidence", {"block_length": 4, "cache": c})(
        den, prompt, generator=None, gen_length=12).tokens for c in ("none", "prefix")]
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(HarnessError, match="dual"):
        SAMPLERS.build("low_confidence", {"block_length": 4, "cache": "dual"})(
            den, prompt, generator=None, gen_length=12)


def test_block_loss_is_bd3lm_objective_on_one_block():
    """With one masked column and t known the loss is CE/t/L at that column, scored given the clean prompt."""
    den = make_tiny_block(4)
    B, P, L = 1, 4, 8
    prompt, target = _tokens(B, P, seed=6), _tokens(B, L, seed=7)
    g = torch.Generator().manual_seed(0)
    loss = block_diffusion_loss(den, prompt, torch.ones(B, P, dtype=torch.bool), target, g, eps=1e-3)
    # replay the draws: t per (row, block) antithetic, then the masking uniforms
    g = torch.Generator().manual_seed(0)
    u = torch.rand(B, 3, generator=g)
    u = (u / 3 + torch.arange(3).view(1, 3) / 3) % 1
    t = (1e-3 + (1 - 1e-3) * u)[0, [1] * 4 + [2] * 4]
    masked = torch.rand(B, L, generator=g)[0] < t
    xt = torch.cat([prompt, torch.where(masked, den.mask_id, target)], 1)
    logp = torch.log_softmax(den.logits_denoise(xt, torch.cat([prompt, target], 1))[0, P:], -1)
    ce = -logp.gather(-1, target[0][:, None])[:, 0]
    assert masked.any()
    torch.testing.assert_close(loss, (ce * masked / t).sum() / L)


def test_block_training_is_bit_identical_and_writes_a_block_card(tmp_path):
    cfg = TrainConfig(task_params=(("n_digits", 2), ("n_train", 2000), ("n_test", 20)), d_model=32, n_layers=1,
                      n_heads=2, d_ff=64, steps=3, batch_size=16, eval_every=3, eval_items=8, threads=1,
                      block_size=2)
    a = train(cfg, tmp_path / "a", progress=False)
    b = train(cfg, tmp_path / "b", progress=False)
    sa = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["greedy_accuracy"] == b["greedy_accuracy"]
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["model"]["block_size"] == 2
    card = (tmp_path / "a" / "CARD.md").read_text()
    assert "block-diffusion" in card and "--block-size 2" in card
    den = MODELS.build("tiny", {"checkpoint": str(tmp_path / "a")}).load()
    assert den.block_size == 2
    # --init-from copies the weights (then trains); a shape mismatch is a clear error
    init = TrainConfig(**{**cfg.__dict__, "steps": 1, "init_from": str(tmp_path / "a"), "lr": 1e-12})
    train(init, tmp_path / "c", progress=False)
    sc = torch.load(tmp_path / "c" / "model.pt", weights_only=True)
    assert all(torch.allclose(sa[k], sc[k], atol=1e-6) for k in sa)
    with pytest.raises(HarnessError, match="init-from"):
        train(TrainConfig(**{**init.__dict__, "d_model": 64}), tmp_path / "d", progress=False)
    with pytest.raises(HarnessError, match="block-size"):
        TrainConfig(block_size=0)


@pytest.mark.slow
def test_builtin_block_checkpoint_reproduces_its_card():
    path = CHECKPOINT_DIR / BLOCK_CKPT
    config = json.loads((path / "config.json").read_text())
    assert config["model"]["block_size"] == 4
    stated = config["metrics"]["greedy_accuracy"]
    assert 0.5 <= stated <= 1.0
    assert f"{stated:.3f}" in (path / "CARD.md").read_text()
    den = MODELS.build("tiny", {"checkpoint": BLOCK_CKPT}).load()
    assert den.block_size == 4
    task = TASKS.build(config["task"], config["task_params"])
    items = task.items("test")[: config["metrics"]["eval_items"]]
    assert greedy_accuracy(den, task, items) == pytest.approx(stated, abs=0.004)  # ≤ 2 items of 500
    assert (path / "model.pt").stat().st_size < 5 * 2**20


@pytest.mark.parametrize("params, gen", [({"steps": 2}, 5), ({"steps": 2}, 8), ({"steps": 2, "cache": "prefix"}, 5),
                                         ({"steps": 8, "cache": "prefix"}, 8), ({"tau": 0.9}, 6)])
def test_plan_time_nfe_bounds_every_prompt_length_on_a_block_model(params, gen):
    """max_nfe_per_sequence(L, block_size) bounds the passes of every row whatever its prompt length
    (a partial last prompt block adds one decode block; the prefix cache a prefill and a store pass
    per block), and at one pass per block the bound is reached."""
    from harness.budget import Meter

    name = "threshold" if "tau" in params else "low_confidence"
    sampler = SAMPLERS.build(name, {**params, "temperature": 0.0})
    bound = sampler.max_nfe_per_sequence(gen, block_size=4)
    if gen % 4 == 0 or params.get("cache"):  # the full-attention count undercounts the block model
        assert bound > sampler.max_nfe_per_sequence(gen)
    den = make_tiny_block(4, scale=4.0)
    seen = []
    for n in range(1, 9):  # prompts ending at every offset of a block, with and without a prefill
        m = Meter(den)
        sampler(m, _tokens(1, n, seed=n), generator=None, gen_length=gen)
        seen.append(m.cost.nfe)
    assert max(seen) <= bound, (seen, bound)
    if params.get("steps") == 2:  # one pass per block (and its store pass): no early stop
        assert max(seen) == bound, (seen, bound)
