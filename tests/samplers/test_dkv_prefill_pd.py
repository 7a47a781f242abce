"""`cache: dkv_prefill` (dKV-Cache-Prefill) on Dream, whose logits are shifted (column k is predicted at k - 1).

The reference cannot run here (it needs the 7B Dream code, transformers 4.46 and CUDA), so its rule is
transcribed below with line citations on a tiny random native Dream (the fixture and the step helpers of
tests/samplers/test_approx_cache_dream.py, imported):
- horseee/dKV-Cache generation_utils/dream_generation_utils.py `DreamGenerationMixin._sample`, cache_type
  "prefill" (dream_generate.py `--prefill`: cache_type "prefill", its `--cache-steps` not read on this path);
- models/modeling_dream.py `DreamSdpaAttention.forward` (the cached pass: fresh keys/values then the cached
  ones) and `DreamRotaryEmbedding.forward` (queries rotated at their own columns, keys at cat(query, cached));
- generation_utils/cache_utils.py `PrefillCache.update` (what the cache keeps, and that it is never updated).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.budget import Meter
from harness.models.native.dream import DreamLayers
from harness.registry import MODELS, SAMPLERS
from harness.samplers._approx_cache import check_layerwise_support
from harness.samplers._base import stop_ids, upto_first_stop
from harness.types import HarnessError
from tests.samplers.test_approx_cache_dream import L, assert_same_steps, den, dream_step, prompts, steps_seen

torch.set_num_threads(1)

__all__ = ["den", "steps_seen"]  # the imported fixtures


def reference_dream_prefill(den, prompt: torch.Tensor, L: int, steps: int, record: list) -> torch.Tensor:
    """One row (no padding: attention_mask "full", tok_idx 0..T-1, dream_generation_utils.py lines 434-440),
    one block, Dream's step with the harness's proposal rule (`dream_step`: line 510's shift, lines
    534-540's count and top-k); the CACHE transcribed from `_sample`, cache_type "prefill":
    - x padded with masks (line 397); cache_position = the decoded columns shifted left, the last column
      following itself (lines 404-408); prv_cache_position None (line 410);
    - nothing is emptied between steps (lines 455-456);
    - the first pass is a full one (prv None: step_x = x, line 485); each layer's PrefillCache is empty
      while it runs (`is_empty`, cache_utils.py lines 64-65), so modeling_dream.py line 413 concatenates
      nothing, and `PrefillCache.update` (cache_utils.py lines 99-104, called at modeling_dream.py lines
      425-430) keeps the keys/values of the cache_position columns;
    - after it, prv_cache_position = cache_position and cache_position = None (lines 559-563), so no later
      pass updates the cache (modeling_dream.py line 425 needs cache_position);
    - every later pass feeds x[~prv_cache_position] (line 466): keys/values cat(fresh, cached)
      (modeling_dream.py lines 413-416), queries rotated at their own columns, keys at cat(query
      columns, cached columns) (`DreamRotaryEmbedding.forward` lines 174-182; the reference rotates keys at
      each pass, here they are kept rotated: the same numbers); the rows it skips get -inf logits (lines
      499-508)."""
    layers = DreamLayers(den.module)
    mask_id = den.mask_id
    P = prompt.shape[0]
    x = F.pad(prompt[None], (0, L), value=mask_id)  # line 397
    B, T = x.shape
    decoded = x != mask_id
    cache_position = torch.cat([decoded[:, 1:], decoded[:, -1:]], -1)  # lines 407-408
    prv, past = None, []  # line 410; PrefillCache(...) (line 405)
    for i in range(steps):
        mask_index = x == mask_id  # line 450
        h, _ = layers.embed(x, None)
        if prv is not None:
            q_cols = (~prv[0]).nonzero().squeeze(1)
            h = h[:, q_cols]  # line 466
            for li in range(layers.n_layers):
                q, k, v = layers.qkv_at(li, h, q_cols)
                K, V = torch.cat([k, past[li][0]], 2), torch.cat([v, past[li][1]], 2)  # lines 413-416
                h = h + layers.attend(li, q, K, V, None)
                h = h + layers.mlp(li, h)
            logits = torch.full((B, T, den.vocab_size), -torch.inf)  # lines 499-508
            logits[:, q_cols] = layers.head(h)
        else:
            for li in range(layers.n_layers):
                q, k, v = layers.qkv(li, h)
                if cache_position is not None:  # modeling_dream.py line 425
                    past.append((k[:, :, cache_position[0]], v[:, :, cache_position[0]]))  # cache_utils.py 99-104
                h = h + layers.attend(li, q, k, v, None)
                h = h + layers.mlp(li, h)
            logits = layers.head(h)
        dream_step(x, logits, mask_index, P, i, steps, mask_id, record)
        if prv is None:  # lines 561-563
            prv, cache_position = cache_position, None
    return x[0, P:]


@pytest.mark.parametrize("steps", [16, 8, 4])
def test_prefill_tokens_and_logits_equal_a_transcription_of_the_reference(den, steps_seen, steps):
    """Each row alone decodes as the transcription decodes it, with the same logits at every step; the
    cache is really stale (some step's logits differ from the uncached loop's and from dkv's with the
    same settings), so the comparison tests the prefill cache and not a full pass computed twice."""
    ids, mask = prompts()
    stale_plain = stale_dkv = 0.0
    for r in range(ids.shape[0]):
        row = ids[r][mask[r]]
        runs = {}
        for name, params in (("plain", {}), ("dkv", {"cache": "dkv", "refresh": 100}),
                             ("prefill", {"cache": "dkv_prefill"})):
            steps_seen.clear()
            gen = SAMPLERS.build("low_confidence", dict(params, steps=steps))(den, row[None], generator=None,
                                                                               gen_length=L)
            runs[name] = (gen, list(steps_seen))
        record: list = []
        ref = reference_dream_prefill(den, row.clone(), L, steps, record)
        ours, seen = runs["prefill"]
        cut = int(upto_first_stop(ref[None], stop_ids(den))[0])  # the harness ends a row at its first stop token
        assert torch.equal(ours.tokens[0, :cut], ref[:cut]), r
        assert (ours.tokens[0, cut:] == den.eos_id).all(), r
        assert_same_steps(seen, record)

        def gap(other):
            return max(float((a[e] - b[e]).abs().max()) for (a, e), (b, _) in zip(seen, other) if e.any())

        stale_plain = max(stale_plain, gap(runs["plain"][1]))
        if steps > 2:
            stale_dkv = max(stale_dkv, gap(runs["dkv"][1]))
    assert stale_plain > 1e-3 and stale_dkv > 1e-3


@pytest.mark.parametrize("params", [{"steps": 16}, {"steps": 8, "block_length": 8}, {"steps": 16, "block_length": 4}])
def test_prefill_passes_compute_exactly_the_uncached_columns(den, params):
    """The meter's work: per block, one full pass (T columns), then every pass computes the columns
    whose predicted token was masked at the block's start, [lo - 1, T) (the left padding's columns
    count as decoded, as the reference's pad tokens do), over every layer."""
    ids, mask = prompts()
    B, P = ids.shape
    T = P + L
    meter = Meter(den)
    SAMPLERS.build("low_confidence", dict(params, cache="dkv_prefill"))(meter, ids, generator=None,
                                                                         prompt_mask=mask, gen_length=L)
    block = params.get("block_length", L)
    n_blocks, per_block = L // block, params["steps"] // (L // block)
    expected = sum(B * (T + (per_block - 1) * (T - (P + b * block) + 1)) for b in range(n_blocks))
    assert meter.cost.nfe_full == B * n_blocks and meter.cost.nfe == B * params["steps"]
    assert meter.cost.tokens == expected


@pytest.mark.parametrize("name, params", [("low_confidence", {"steps": 8, "block_length": 8}),
                                          ("threshold", {"tau": 0.2, "block_length": 8})])
def test_a_left_padded_batch_decodes_each_row_as_alone(den, name, params):
    """The view's padding (positions counting real tokens, padding keys unseen) and, with an adaptive
    sampler, rows leaving the batch: a left-padded row decodes as its real prompt does alone."""
    ids, mask = prompts()
    run = SAMPLERS.build(name, dict(params, cache="dkv_prefill"))
    batch = run(den, ids, generator=None, prompt_mask=mask, gen_length=L)
    for r in range(ids.shape[0]):
        alone = run(den, ids[r][mask[r]][None], generator=None, gen_length=L)
        assert torch.equal(batch.tokens[r], alone.tokens[0]), r


def test_prefill_refuses_a_refresh_interval():
    with pytest.raises((ValueError, HarnessError), match="dkv_prefill.*no refresh"):
        SAMPLERS.build("low_confidence", {"steps": 8, "cache": "dkv_prefill", "refresh": 2})


def test_prefill_is_refused_on_a_model_without_a_logit_shift(den):
    """The reference has dKV-Cache-Prefill for Dream only: a model without the shift (tiny, LLaDA) is refused
    by name, at the check and when decoding."""
    tiny = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16"}).load()
    with pytest.raises(HarnessError, match="dkv_prefill.*Dream-only.*use cache dkv"):
        check_layerwise_support(tiny, "dkv_prefill")
    with pytest.raises(HarnessError, match="dkv_prefill"):
        SAMPLERS.build("low_confidence", {"steps": 4, "cache": "dkv_prefill"})(
            tiny, torch.ones(1, 3, dtype=torch.long), generator=None, gen_length=4)
    check_layerwise_support(den, "dkv_prefill")  # Dream passes
