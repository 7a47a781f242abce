"""The native Dream's layer-by-layer view (`logits_layerwise` / `DreamLayers`), which the approximate
caches run on: every layer over every column must reproduce the plain forward exactly (left padding
included; grouped key/value heads and Dream's biased q/k/v as the tiny preset has them), and
`qkv_at` must rotate a column subset at the subset's own positions. The view's logits are Dream's
own, unshifted (the denoiser's `logits` are unshifted too; the samplers read them at k - 1)."""
from __future__ import annotations

import pytest
import torch

from harness.config import declared_capabilities
from harness.registry import MODELS

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def den():
    return MODELS.build("dream", {"preset": "tiny", "device": "cpu", "dtype": "float32",
                                  "config": {"initializer_range": 0.2}}).load()


def batch(padded: bool):
    x = torch.randint(0, 120, (3, 12), generator=torch.Generator().manual_seed(0))
    if not padded:
        return x, None
    am = torch.ones(3, 12, dtype=torch.long)
    am[1, :4] = 0
    am[2, :1] = 0
    return x, am


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def full_run(x, am):
    """Every layer over every column with the view's pieces (what the approximate caches do at a refresh)."""
    def run(layers):
        h, km = layers.embed(x, am)
        for i in range(layers.n_layers):
            q, k, v = layers.qkv(i, h)
            h = h + layers.attend(i, q, k, v, km)
            h = h + layers.mlp(i, h)
        return layers.head(h)
    return run


def test_the_preset_has_grouped_heads_and_biases(den):
    """The comparison below covers what makes Dream's blocks differ from LLaDA's."""
    cfg = den.module.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    assert den.module.model.layers[0].self_attn.q_proj.bias is not None


@pytest.mark.parametrize("padded", [False, True])
def test_the_layer_view_over_every_column_is_the_forward_exactly(den, padded):
    x, am = batch(padded)
    real = torch.ones_like(x, dtype=torch.bool) if am is None else am.bool()
    got = den.logits_layerwise(full_run(x, am))
    want = den.logits(x, am)
    assert torch.equal(got[real], want[real])
    if padded:  # and each left-padded row is what it is alone
        for r in range(x.shape[0]):
            alone = den.logits(x[r, real[r]][None])
            assert torch.equal(got[r, real[r]], alone[0]), r


@pytest.mark.parametrize("dtype, attn", [("bfloat16", "sdpa"), ("float32", "eager"), ("bfloat16", "eager")])
def test_the_layer_view_is_the_forward_exactly_in_bf16_and_eager(dtype, attn):
    d = MODELS.build("dream", {"preset": "tiny", "device": "cpu", "dtype": dtype, "attn": attn,
                               "config": {"initializer_range": 0.2}}).load()
    x, am = batch(True)
    real = am.bool()
    assert torch.equal(d.logits_layerwise(full_run(x, am))[real], d.logits(x, am)[real])


def test_attention_weights_are_what_attend_weighs_the_values_by(den):
    """The view's weights (d2Cache's rollout) sum to 1 over each real row's keys, give a padding key
    nothing, and weigh the values (grouped heads repeated) into what `attend` returns."""
    from harness.models.standins.standin_layers import merge_heads

    x, am = batch(True)
    real = am.bool()

    def run(layers):
        h, km = layers.embed(x, am)
        q, k, v = layers.qkv(0, h)
        return layers.attention_weights(0, q, k, km), v, layers.attend(0, q, k, v, km)

    w, v, want = den.logits_layerwise(run)
    assert torch.allclose(w.sum(-1)[real[:, None, :].expand(-1, w.shape[1], -1)], torch.ones(1))
    assert float(w[1, :, :, :4].abs().max()) == 0.0 and float(w[2, :, :, :1].abs().max()) == 0.0
    a = w @ v.repeat_interleave(w.shape[1] // v.shape[1], 1)  # [B, H, T, Dh]
    got = den.module.model.layers[0].self_attn.o_proj(merge_heads(a))
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_row", [False, True])
def test_qkv_at_rotates_a_column_subset_at_its_positions(den, per_row):
    """A pass that computes only some columns, with every other column's keys/values taken from a full
    pass over the same tokens (nothing stale), gives the full pass's logits at those columns; handing
    qkv_at the wrong columns (one to the left) does not."""
    x, am = batch(True)
    B = x.shape[0]
    keys, values = [], []

    def record(layers):
        h, km = layers.embed(x, am)
        for i in range(layers.n_layers):
            q, k, v = layers.qkv(i, h)
            keys.append(k)
            values.append(v)
            h = h + layers.attend(i, q, k, v, km)
            h = h + layers.mlp(i, h)
        return layers.head(h)

    full = den.logits_layerwise(record)
    cols = torch.tensor([[5, 7, 9, 10], [6, 8, 10, 11], [4, 5, 9, 11]]) if per_row else torch.tensor([6, 8, 10, 11])

    def subset(shift):
        def run(layers):
            h_all, km = layers.embed(x, am)
            c = cols if cols.dim() == 2 else cols.expand(B, -1)
            h = h_all.gather(1, c[..., None].expand(-1, -1, h_all.shape[-1]))
            for i in range(layers.n_layers):
                q, k, v = layers.qkv_at(i, h, cols + shift)
                idx = c[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
                K, V = keys[i].scatter(2, idx, k), values[i].scatter(2, idx, v)
                h = h + layers.attend(i, q, K, V, km)
                h = h + layers.mlp(i, h)
            return layers.head(h)
        return den.logits_layerwise(run)

    c = cols if cols.dim() == 2 else cols.expand(B, -1)
    want = full.gather(1, c[..., None].expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(subset(0), want, rtol=1e-5, atol=1e-5)
    assert (subset(-1) - want).abs().max() > 1e-3


def test_value_is_the_layers_value_projection(den):
    x, _ = batch(False)

    def run(layers):
        h, _km = layers.embed(x, None)
        _q, _k, v = layers.qkv(0, h)
        return layers.value(0, h), v

    got, want = den.logits_layerwise(run)
    assert torch.equal(got, want)


def test_capabilities_follow_the_impl():
    native = MODELS.build("dream", {"preset": "tiny"})
    remote = MODELS.build("dream", {"preset": "tiny", "impl": "remote"})
    assert {"logits_layerwise", "attention_weights", "full_attention"} <= declared_capabilities(native)
    assert declared_capabilities(remote) == {"full_attention", "shifted_logits"}
