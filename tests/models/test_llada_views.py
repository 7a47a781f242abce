"""The native LLaDA's two extra views: an explicit attention pattern with position ids
(`logits_pattern`, WINO's shadow block) and the layer-by-layer view of the approximate caches
(`logits_layerwise` / `LLaDALayers`). Both must reproduce the plain forward exactly where they
compute the same thing (the plain pattern; every layer over every column), left padding included,
and the layer view's `qkv_at` must rotate a column subset at the subset's own positions.
"""
from __future__ import annotations

import pytest
import torch

from harness.config import declared_capabilities, missing_capabilities
from harness.models.block_attention import positions
from harness.registry import MODELS, SAMPLERS
from harness.types import HarnessError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def den():
    return MODELS.build("llada", {"preset": "tiny", "config": {"init_std": 0.2}}).load()


def batch(padded: bool):
    x = torch.randint(0, 120, (3, 12), generator=torch.Generator().manual_seed(0))
    if not padded:
        return x, None
    am = torch.ones(3, 12, dtype=torch.long)
    am[1, :4] = 0
    am[2, :1] = 0
    return x, am


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


@pytest.mark.parametrize("padded", [False, True])
def test_the_plain_pattern_with_plain_positions_is_the_forward_exactly(den, padded):
    x, am = batch(padded)
    B, T = x.shape
    real = torch.ones(B, T, dtype=torch.bool) if am is None else am.bool()
    allowed = real[:, None, None, :].expand(B, 1, T, T).clone()  # key padding for every query
    want = den.logits(x, am)
    got = den.logits_pattern(x, allowed, positions(am, B, T))
    assert torch.equal(got[real], want[real])
    if padded:  # and each left-padded row is what it is alone
        for r in range(B):
            alone = den.logits(x[r, real[r]][None])
            assert torch.equal(got[r, real[r]], alone[0]), r


def test_a_pattern_is_applied_as_given(den):
    """Two segments that cannot see each other, positions restarting at each: each segment's logits
    are those of the segment alone (up to the masked kernel's rounding); the same tokens under the
    plain pattern differ (the pattern is not ignored), and so do shifted positions for one segment
    with a query that sees both (the positions are not ignored)."""
    a = torch.randint(0, 120, (1, 5), generator=torch.Generator().manual_seed(1))
    b = torch.randint(0, 120, (1, 7), generator=torch.Generator().manual_seed(2))
    x = torch.cat([a, b], 1)
    S = x.shape[1]
    seg = torch.tensor([0] * 5 + [1] * 7)
    allowed = (seg[:, None] == seg[None, :])[None, None]
    pos = torch.cat([torch.arange(5), torch.arange(7)])[None]
    got = den.logits_pattern(x, allowed, pos)
    torch.testing.assert_close(got[:, :5], den.logits(a), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[:, 5:], den.logits(b), rtol=1e-5, atol=1e-5)
    plain = den.logits_pattern(x, torch.ones(1, 1, S, S, dtype=torch.bool), torch.arange(S)[None])
    assert (plain[:, 5:] - got[:, 5:]).abs().max() > 1e-2
    shifted = den.logits_pattern(x, torch.ones(1, 1, S, S, dtype=torch.bool), torch.arange(S)[None] + seg * 3)
    assert (plain - shifted).abs().max() > 1e-2


def test_a_query_that_sees_nothing_stays_finite_and_bad_shapes_are_refused(den):
    x = torch.randint(0, 120, (1, 6), generator=torch.Generator().manual_seed(3))
    allowed = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    allowed[:, :, 2] = False
    assert torch.isfinite(den.logits_pattern(x, allowed, torch.arange(6)[None])).all()
    with pytest.raises(HarnessError, match=r"expected allowed \[1, 1, 6, 6\]"):
        den.logits_pattern(x, allowed[:, :, :5], torch.arange(6)[None])


@pytest.mark.parametrize("padded", [False, True])
def test_the_layer_view_over_every_column_is_the_forward_exactly(den, padded):
    x, am = batch(padded)
    real = torch.ones_like(x, dtype=torch.bool) if am is None else am.bool()
    got = den.logits_layerwise(full_run(x, am))
    assert torch.equal(got[real], den.logits(x, am)[real])


@pytest.mark.parametrize("per_row", [False, True])
def test_qkv_at_rotates_a_column_subset_at_its_positions(den, per_row):
    """A pass that computes only some columns, with every other column's keys/values taken from a full
    pass over the same tokens (nothing stale), gives the full pass's logits at those columns; handing
    qkv_at the wrong columns (one to the left) does not."""
    x, am = batch(True)
    B, T = x.shape
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


def test_capabilities_follow_the_impl():
    native = MODELS.build("llada", {"preset": "tiny"})
    remote = MODELS.build("llada", {"preset": "tiny", "impl": "remote"})
    assert {"logits_pattern", "logits_layerwise", "full_attention"} <= declared_capabilities(native)
    assert declared_capabilities(remote) == {"full_attention"}
    wino = type(SAMPLERS.build("wino", {}))
    assert missing_capabilities(native, wino) == [] and missing_capabilities(remote, wino) == ["logits_pattern"]
    rden = remote.load()
    assert not hasattr(rden, "logits_pattern") and not hasattr(rden, "logits_layerwise")
