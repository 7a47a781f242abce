"""The block-causal masks every block model shares (harness/models/block_attention.py).

Checked against a definition written pair by pair, against BD3-LM's own `block_diff_mask`
(kuleshov-group/bd3lms, models/hf/modeling_bd3lm.py; run from the fixture's unmodified file), and
for left padding: a padded row's mask restricted to its real columns equals the row's mask alone.
"""
from __future__ import annotations

import ast

import pytest
import torch

from harness.models.block_attention import block_ids, decode_mask, dual_stream_mask
from tests.models._real_code import real_code_dir


def _pairwise_decode(T: int, b: int) -> torch.Tensor:
    return torch.tensor([[j // b <= i // b for j in range(T)] for i in range(T)])


@pytest.mark.parametrize("T,b", [(7, 1), (8, 4), (9, 4), (12, 3), (5, 8)])
def test_decode_mask_is_block_causal(T, b):
    m = decode_mask(None, 1, T, b)[0, 0]
    assert torch.equal(m, _pairwise_decode(T, b))


@pytest.mark.parametrize("T,b", [(8, 4), (9, 2), (12, 3), (6, 6)])
def test_dual_stream_mask_equals_bd3lm_block_diff_mask(T, b):
    root = real_code_dir()
    if root is None:
        pytest.skip("../shared/fixtures/real-code is absent; set DLM_HARNESS_REAL_CODE")
    path = root / "block" / "bd3lm" / "bd3lms" / "models" / "hf" / "modeling_bd3lm.py"
    tree = ast.parse(path.read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "block_diff_mask")
    scope = {"torch": torch}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), scope)
    q = torch.arange(2 * T)[:, None]
    k = torch.arange(2 * T)[None, :]
    theirs = scope["block_diff_mask"](None, None, q, k, block_size=b, n=T)
    assert torch.equal(dual_stream_mask(None, 1, T, b)[0, 0], theirs)


def test_left_padding_gives_the_row_alone():
    T, b, pad = 10, 4, 3
    am = torch.ones(2, T, dtype=torch.bool)
    am[1, :pad] = False
    assert block_ids(am, 2, T, b)[1, :pad].eq(-1).all()
    for fn in (decode_mask, dual_stream_mask):
        full = fn(am, 2, T, b)[1, 0]
        alone = fn(None, 1, T - pad, b)[0, 0]
        if fn is decode_mask:
            assert torch.equal(full[pad:, pad:], alone)
        else:
            idx = torch.cat([torch.arange(pad, T), torch.arange(T + pad, 2 * T)])
            assert torch.equal(full[idx][:, idx], alone)
        # pad keys are never attended to by real queries; pad queries see themselves only
        real_q = am[1].repeat(2 if fn is dual_stream_mask else 1)
        pad_cols = ~real_q
        assert not full[real_q][:, pad_cols].any()
        assert full[pad_cols].sum(-1).eq(1).all()
