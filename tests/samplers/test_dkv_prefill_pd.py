"""`cache: dkv_prefill` (dKV-Cache-Prefill) and `cache: dkv_pd` (dKV-Cache-PD) on Dream, whose logits are
shifted (column k is predicted at k - 1).

The reference cannot run here (it needs the 7B Dream code, transformers 4.46 and CUDA), so its rule is
transcribed below with line citations on a tiny random native Dream (the fixture and the step helpers of
tests/samplers/test_approx_cache_dream.py, imported):
- horseee/dKV-Cache generation_utils/dream_generation_utils.py `DreamGenerationMixin._sample`, cache_type
  "prefill" (dream_generate.py `--prefill`: cache_type "prefill", its `--cache-steps` not read on this path);
- models/modeling_dream.py `DreamSdpaAttention.forward` (the cached pass: fresh keys/values then the cached
  ones) and `DreamRotaryEmbedding.forward` (queries rotated at their own columns, keys at cat(query, cached));
- generation_utils/cache_utils.py `PrefillCache.update` (what the cache keeps, and that it is never updated);
- for PD: generation_utils/dream_generation_utils_pd.py `_sample` (cache_type "pd", dream_generate.py `--pd`
  `--cache-steps`), models/modeling_dream_pd.py `DreamSdpaAttention.forward` / `DreamRotaryEmbedding.forward`,
  generation_utils/cache_utils.py `PrefillDynamicCache` (`__getitem__`, `update`, `get_transfer_cache`).
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


# -- dKV-Cache-PD ---------------------------------------------------------------------------------------------
def reference_dream_pd(den, prompt: torch.Tensor, L: int, steps: int, cache_steps: int, record: list,
                       computed: list) -> torch.Tensor:
    """One row, no padding, one block, Dream's step (`dream_step`); the CACHE transcribed from
    dream_generation_utils_pd.py `_sample`, cache_type "pd", with `PrefillDynamicCache` (cache_utils.py) on
    the native Dream's layers. `computed` gets each pass's number of query columns.
    - prefill_cache_position = the decoded columns shifted left, the last following itself; cache_position
      starts equal to it, prv_cache_position None (lines 416-421);
    - at i % cache_steps == 0, prv_cache_position = None and the DECODED cache is emptied
      (`refresh_decode_cache`), the prefill cache kept (lines 465-468);
    - the pass feeds x[~prv_cache_position] when prv is set (lines 472-473), else x[~prefill_cache_position]
      after step 0 (lines 490-491), else the whole x (line 494);
    - once the prefill cache holds every layer, keys/values are cat(prefill, decoded (if any), fresh)
      (modeling_dream_pd.py lines 414-416, cache_utils.py `__getitem__` lines 275-282);
    - `update` (modeling_dream_pd.py line 449, every pass: cache_position is always set) keeps: the first
      sum(prefill_cache_position) columns as the prefill cache while it is not full (cache_utils.py lines
      391-393); else, while the decoded cache is empty, the columns cache_position & ~prefill of the pass's
      keys (lines 394-403); else the pass's keys put in the order cat(cache_position, ~cache_position) by the
      transfer order (lines 411-414, `get_transfer_cache` lines 323-360) and sliced to
      [sum(prefill), sum(cache_position)) (lines 416-420);
    - the rows a pass skips get -inf logits (lines 508-522); after the step prv_cache_position =
      cache_position and cache_position = the decoded columns shifted left, the last column following
      column 0 (lines 577-582).
    The reference rotates keys at each pass at cat(cached columns, query columns) (modeling_dream_pd.py
    `DreamRotaryEmbedding.forward` lines 174-182; line 438-440 for the passes after a refresh); here keys are
    kept rotated at their own columns, which is the same only if the cached keys are the prv (resp. prefill)
    columns in canvas order: the transcription tracks each cached key's column and asserts it."""
    layers = DreamLayers(den.module)
    mask_id, n_layers = den.mask_id, layers.n_layers
    P = prompt.shape[0]
    x = F.pad(prompt[None], (0, L), value=mask_id)  # line 397
    B, T = x.shape
    decoded = x != mask_id
    pcp = torch.cat([decoded[:, 1:], decoded[:, -1:]], -1)  # lines 418-419
    n_pre = int(pcp.sum())
    assert pcp[0, :n_pre].all()  # a prefix: what the first-columns slices below rely on
    cp, prv = pcp, None  # lines 420-421
    prefill: list = []  # per layer (keys, values): prefill_key_cache / prefill_value_cache
    dec: list = []  # per layer (keys, values, columns): key_cache / value_cache
    for i in range(steps):
        mask_index = x == mask_id
        if i % cache_steps == 0:  # lines 465-468
            prv, dec = None, []
        if prv is not None:  # lines 472-473
            q_cols = (~prv[0]).nonzero().squeeze(1)
        elif i != 0:  # lines 490-491
            q_cols = (~pcp[0]).nonzero().squeeze(1)
        else:  # line 494
            q_cols = torch.arange(T)
        computed.append(len(q_cols))
        h, _ = layers.embed(x, None)
        h = h[:, q_cols]
        order = None
        for li in range(n_layers):
            q, k, v = layers.qkv_at(li, h, q_cols)
            if len(prefill) == n_layers:  # not is_empty (cache_utils.py lines 307-308): lines 414-416
                ck, cv, ccols = prefill[li][0], prefill[li][1], torch.arange(n_pre)
                if li < len(dec):  # __getitem__ lines 275-282
                    ck, cv, ccols = torch.cat([ck, dec[li][0]], 2), torch.cat([cv, dec[li][1]], 2), \
                        torch.cat([ccols, dec[li][2]])
                expect = prv[0].nonzero().squeeze(1) if prv is not None else pcp[0].nonzero().squeeze(1)
                assert torch.equal(ccols, expect)  # the rotary layout of lines 174-182 / 438-440
                K, V, kcols = torch.cat([ck, k], 2), torch.cat([cv, v], 2), torch.cat([ccols, q_cols])
            else:
                K, V, kcols = k, v, q_cols
            if len(prefill) < n_layers:  # update lines 391-393
                prefill.append((K[:, :, :n_pre], V[:, :, :n_pre]))
            elif len(dec) < n_layers:  # lines 394-403
                sel = (cp & ~pcp)[0, kcols]  # the pass's keys here are in canvas order
                assert torch.equal(kcols, torch.arange(T))
                if sel.any():
                    dec.append((K[:, :, sel], V[:, :, sel], kcols[sel]))
            else:  # lines 411-420
                if order is None:  # get_transfer_cache: computed at layer 0, reused by the others
                    current = torch.cat([prv[0].nonzero().squeeze(1), (~prv[0]).nonzero().squeeze(1)])
                    nxt = torch.cat([cp[0].nonzero().squeeze(1), (~cp[0]).nonzero().squeeze(1)])
                    pos = {int(c): j for j, c in enumerate(current)}
                    order = torch.tensor([pos.get(int(c), -1) for c in nxt])
                Kt, Vt, ct = K[:, :, order], V[:, :, order], kcols[order]
                end = int(cp.sum())
                dec[li] = (Kt[:, :, n_pre:end], Vt[:, :, n_pre:end], ct[n_pre:end])
            h = h + layers.attend(li, q, K, V, None)
            h = h + layers.mlp(li, h)
        logits = torch.full((B, T, den.vocab_size), -torch.inf)  # lines 508-522
        logits[:, q_cols] = layers.head(h)
        dream_step(x, logits, mask_index, P, i, steps, mask_id, record)
        prv = cp  # line 578
        decoded = x != mask_id
        cp = torch.cat([decoded[:, 1:], decoded[:, :1]], -1)  # lines 580-582
    return x[0, P:]


@pytest.mark.parametrize("steps, refresh", [(16, 4), (16, 3), (8, 2), (8, 100)])
def test_pd_tokens_logits_and_work_equal_a_transcription_of_the_reference(den, steps_seen, steps, refresh):
    """Each row alone decodes as the transcription decodes it, with the same logits at every step, and the
    meter counts exactly the columns the transcription's passes compute (its first pass: all of them). With
    refresh passes inside the block the cache differs from dkv's (dKV-Cache-Decode) with the same interval."""
    ids, mask = prompts()
    stale_dkv = 0.0
    for r in range(ids.shape[0]):
        row = ids[r][mask[r]]
        steps_seen.clear()
        SAMPLERS.build("low_confidence", {"steps": steps, "cache": "dkv", "refresh": refresh})(
            den, row[None], generator=None, gen_length=L)
        dkv_seen = list(steps_seen)
        steps_seen.clear()
        meter = Meter(den)
        ours = SAMPLERS.build("low_confidence", {"steps": steps, "cache": "dkv_pd", "refresh": refresh})(
            meter, row[None], generator=None, gen_length=L)
        record: list = []
        computed: list = []
        ref = reference_dream_pd(den, row.clone(), L, steps, refresh, record, computed)
        cut = int(upto_first_stop(ref[None], stop_ids(den))[0])
        assert torch.equal(ours.tokens[0, :cut], ref[:cut]), r
        assert (ours.tokens[0, cut:] == den.eos_id).all(), r
        assert_same_steps(steps_seen, record)
        assert meter.cost.tokens == sum(computed) and meter.cost.nfe_full == 1 and meter.cost.nfe == steps
        stale_dkv = max(stale_dkv, max(float((a[e] - b[e]).abs().max()) for (a, e), (b, _) in
                                       zip(steps_seen, dkv_seen) if e.any()))
    assert (stale_dkv > 1e-3) == (refresh < steps)  # no refresh inside the block: PD is dkv's Dream variant


def test_pd_refreshing_every_step_is_prefill(den):
    """cache_steps 1 (refresh 1): every pass after step 0 recomputes what step 0 left uncached, as
    dKV-Cache-Prefill does; on several blocks and a left-padded batch too."""
    ids, mask = prompts()
    for params in ({"steps": 16}, {"steps": 8, "block_length": 4}):
        a, b = Meter(den), Meter(den)
        x = SAMPLERS.build("low_confidence", dict(params, cache="dkv_prefill"))(a, ids, generator=None,
                                                                                 prompt_mask=mask, gen_length=L)
        y = SAMPLERS.build("low_confidence", dict(params, cache="dkv_pd", refresh=1))(b, ids, generator=None,
                                                                                       prompt_mask=mask, gen_length=L)
        assert torch.equal(x.tokens, y.tokens) and a.cost.tokens == b.cost.tokens


@pytest.mark.parametrize("name, params", [("low_confidence", {"steps": 8, "block_length": 8}),
                                          ("threshold", {"tau": 0.2, "block_length": 8})])
def test_pd_left_padded_batch_decodes_each_row_as_alone(den, name, params):
    ids, mask = prompts()
    run = SAMPLERS.build(name, dict(params, cache="dkv_pd", refresh=3))
    batch = run(den, ids, generator=None, prompt_mask=mask, gen_length=L)
    for r in range(ids.shape[0]):
        alone = run(den, ids[r][mask[r]][None], generator=None, gen_length=L)
        assert torch.equal(batch.tokens[r], alone.tokens[0]), r


def test_pd_refusals(den):
    """refresh (cache_steps) must be >= 1, as the reference's i % cache_steps needs; a model without the
    logit shift is refused by name."""
    with pytest.raises((ValueError, HarnessError), match="dkv_pd.*refresh >= 1"):
        SAMPLERS.build("low_confidence", {"steps": 8, "cache": "dkv_pd"})
    tiny = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16"}).load()
    with pytest.raises(HarnessError, match="dkv_pd.*Dream-only"):
        SAMPLERS.build("low_confidence", {"steps": 4, "cache": "dkv_pd", "refresh": 2})(
            tiny, torch.ones(1, 3, dtype=torch.long), generator=None, gen_length=4)


@pytest.mark.parametrize("cache, extra", [("dkv_prefill", ""), ("dkv_pd", ", refresh: 2")])
def test_the_dream_only_variants_are_refused_at_plan_time_without_a_logit_shift(tmp_path, cache, extra):
    """`shifted_logits` is a declared capability: native Dream plans them, the tiny MDLM and native LLaDA
    (unshifted) fail before any compute."""
    from harness.config import load_suite, plan
    from tests.helpers import write_suite

    def suite(model: str) -> str:
        return (f"suite: caps\nmodels: {{m: {model}}}\n"
                "tasks: {t: {name: addition, params: {n_digits: 2}, split: test, n_items: 2}}\n"
                "studies:\n  - {id: g, kind: generate, model: m, task: t, sampler: {name: low_confidence, "
                f"params: {{steps: 4, cache: {cache}{extra}}}}}}}\n")

    assert plan(load_suite(write_suite(tmp_path, suite("{name: dream, params: {preset: tiny}}"), "ok.yaml")))
    for i, model in enumerate(["{name: tiny, params: {}}", "{name: llada, params: {preset: tiny}}"]):
        with pytest.raises(HarnessError, match="shifted_logits"):
            plan(load_suite(write_suite(tmp_path, suite(model), f"bad{i}.yaml")))
