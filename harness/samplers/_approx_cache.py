"""Approximate caches of the block samplers' loop: dKV-Cache (`cache: dkv`, `cache: dkv_prefill`,
`cache: dkv_pd`, `cache: dkv_greedy`) and dLLM-Cache (`cache: dllm_cache`).

Unlike the prefix/dual caches (_cache.py), which reuse keys/values of columns outside the block,
these reuse per-column state that a full pass would recompute, so they change the output; how
much is the accuracy cost the sampler study reports beside the speed-up. Both run on a model's
layer-by-layer view (`denoiser.logits_layerwise(run, **work)`, e.g. harness/models/tiny.py
`TinyLayers`, harness/models/native/llada.py `LLaDALayers`: embed, qkv, qkv_at, value, attend, mlp,
head), and the meter counts each pass by the columns each layer really computes
(`Meter.logits_layerwise`). `qkv` takes the whole canvas; `qkv_at` takes some of its columns and
their canvas indices, so a rotary model rotates each at its own position.

dKV-Cache-Decode (Ma et al., arXiv 2505.15781; horseee/dKV-Cache
generation_utils/llada_dkv_cache_decode.py `generate`, models/modeling_llada_dkv_cache_decode.py
`LLaDABlock.forward`): delayed caching of decoded tokens' keys/values. Per block, step i is a full
pass when i = 0, i = 1 or i % refresh == 0 (`refresh` is the reference's cache_reloading_step;
0: only steps 0 and 1); any other step recomputes only the columns that were still masked at the
INPUT of step i - 1 (the reference's ~prv_transfer_idx: the masks left plus the tokens committed
at step i - 1, whose keys/values are computed here, one step after they were decoded) and every
other column's keys/values come from the last pass that computed them. Columns of later blocks
are masked, so they are always recomputed.

dLLM-Cache (Liu et al., arXiv 2506.06295; maomaocun/dLLM-cache dllm_cache/hooks/cache_hook_LLaDA.py
`cache_hook_feature`, dllm_cache/cache/Cache.py `dLLMCache`): a feature cache per layer of the
prompt's and the response's keys/values, attention outputs and MLP outputs. Passes are counted
over the whole generation (g = 0, 1, ...; not reset at block starts): the prompt part is
recomputed when g % prompt_refresh == 0 (Kp), the response part (every column after the prompt,
later blocks included) when g % refresh == 0 (Kr); layer 0 is always recomputed in full. Between
response refreshes, with 0 < refresh_ratio <= 1 (rho), each layer computes the response's values,
picks the int(G·rho) response columns whose new value is least cosine-similar to the cached one
(`refresh_index`), recomputes their queries/keys, attention and MLP, and keeps the fresh values of
all response columns (the reference's adaptive partial update). Residuals always carry the
current hidden state: a cached column adds its cached attention and MLP outputs.

Dream (a shifted-logit model: column k is predicted at k - 1, `shift_logits`) runs both on its
layer view (harness/models/native/dream.py `DreamLayers`) as the references' Dream variants do.
dKV-Cache's (generation_utils/dream_generation_utils.py `_sample`, cache_type "decoded", shift_type
"un"; models/modeling_dream.py) differs from its LLaDA variant beyond reading the block's
predictions at [lo - 1, hi - 1): the pass at step 0 already caches, so step 1 is a cached pass and
the full passes are steps 0 and every refresh-th (`dkv_full_step_shifted`); and a column counts as
decoded for the cache once the token it PREDICTS, at k + 1, is decoded (`dkv_uncached_shifted`):
the columns a cached pass recomputes are those whose next token was masked at the previous step's
input. The reference has no blocks (Dream decodes one); the harness applies the rule per block,
each block starting with its step-0 pass. dLLM-Cache's Dream hook (dllm_cache/hooks/cache_hook_Dream.py
`decoder_hook`) is its LLaDA hook on Qwen2 layers with the same prompt/response split (the prompt:
the input's P columns): only the read moves one column left, so the response's first token is
predicted by the prompt's last column, whose features refresh with the prompt's.

Differences from the references, documented: the harness keeps its key-padding mask in every
attention (dLLM-Cache's hooked attention drops LLaDA's attention bias and Dream's mask, so left
padding is attended there); the value projections of dLLM-Cache's similarity test are counted as
d_model x d_model (an overestimate for grouped key/value heads, as Dream's); a batch whose rows
need different numbers of recomputed columns (adaptive samplers, inpainting) pads every row to the
most and counts the padding as computed (the references need equal counts per row); a row that has
no cached state yet (it skipped the generation's first pass) makes that dLLM-Cache pass a full one.

dKV-Cache-Prefill (`cache: dkv_prefill`; the same paper; horseee/dKV-Cache
generation_utils/dream_generation_utils.py `_sample`, cache_type "prefill", dream_generate.py
`--prefill`; models/modeling_dream.py; generation_utils/cache_utils.py `PrefillCache`): the Dream
variant that caches only what is decoded when decoding starts. Its first pass is a full one and
caches the keys/values of the columns whose predicted token (one to the right) is decoded then (the
prompt's columns but its last, which predicts the first masked token; the same initial rule as
dKV-Cache-Decode's Dream variant, `dkv_uncached_shifted` with `first`); every later pass recomputes
all the other columns, the committed ones included, and reads those cached keys/values, which are
never refreshed nor extended (the cache is written only while its cache_position is set, i.e. at the
first pass; dream_generate.py passes `--cache-steps`, but the prefill path never reads it, so the
harness refuses `refresh`). The reference has no blocks; the harness applies the rule per block, each
block's step-0 pass caching the columns whose next token is decoded at the block's start (prompt and
earlier blocks), so on one block it is the reference's rule. The reference has it for Dream only and
its rule is written for shifted logits, so a model without the shift is refused (HarnessError): use
`cache: dkv` there.

dKV-Cache-PD (`cache: dkv_pd`; the same paper; generation_utils/dream_generation_utils_pd.py `_sample`,
cache_type "pd", dream_generate.py `--pd --cache-steps`; models/modeling_dream_pd.py;
generation_utils/cache_utils.py `PrefillDynamicCache`): two caches, Dream only. The prefill cache is
dKV-Cache-Prefill's (written by the first pass, never refreshed); the decoded cache is dKV-Cache-Decode's
Dream rule (a column is cached once the token it predicts is decoded, one step late). Every `refresh`-th
step (the reference's cache_steps, >= 1: `i % cache_steps` divides by it; dream_generate.py's default 0
would fail there, so the harness refuses 0) empties the decoded cache only: that pass recomputes every
column the first pass left uncached and reads the prefill cache, where dKV-Cache-Decode's refresh is a
full pass. With refresh 1 it is dKV-Cache-Prefill; with no refresh step inside a block it is
dKV-Cache-Decode's Dream variant. The reference has no blocks; the harness applies it per block, as for
the other two; it is refused on a model without the logit shift, as dKV-Cache-Prefill is.

dKV-Cache-Greedy (the same paper; horseee/dKV-Cache generation_utils/llada_dkv_cache_greedy.py
`generate`, models/modeling_llada_dkv_cache_greedy.py `LLaDALlamaBlock.forward`): the cheaper
variant, which needs to know before a pass which columns that pass will commit, so it runs with a
sampler whose choice ignores the logits (`random`; the reference raises NotImplementedError for
low_confidence). Per block, step i is a full pass when i % refresh == 0 (`refresh` is the
reference's cache_reloading_step, >= 1: its llada_generate.py `--cache-steps` default is 2, its
`generate` default 1 refreshes at every step); it caches every column's keys/values. Any other step
computes only (a) the columns it will commit, (b) the columns the previous step committed and (c)
with window_size w > 0 (`--window-size`, default 0; the README's example uses 4), for each column of
(a) in the sampler's order, up to w more still-masked columns nearest to it, looked for at distance
1 left, 1 right, 2 left, 2 right, ... (`find_window_tokens`; later blocks' masked columns included).
Their fresh keys/values replace the cached ones (the reference's in-place `scatter_`); every other
column's keys/values stay as last computed, and the block's other columns get no logits (nothing
commits them).

dKV-Cache-Greedy differs from its reference in one respect: the reference draws one random order per
block (x0_p = torch.rand, sorted once); the harness's `random` sampler draws fresh scores at every
step (LLaDA's own random remasking), the same distribution of committed sets; it draws them before
the pass, so at temperature 0 the generator is used exactly as without the cache (at temperature > 0
the scores come before the step's Gumbel noise, not after it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.samplers._cache import full_pass_with_cache
from harness.types import HarnessError

APPROX_CACHES = ("dkv", "dkv_prefill", "dkv_pd", "dkv_greedy", "dllm_cache", "d2cache")  # d2cache: _d2cache.py
DLLM_PROMPT_REFRESH = 50  # Kp: d2Cache's docs/kv_caching.md default; dLLM-cache's LLaDA GSM8K script uses 50
DLLM_REFRESH_RATIO = 0.25  # rho: dLLM-cache's demo_LLaDA.py and d2Cache's configs/cache/dllm.yaml


def supports_layerwise(denoiser) -> bool:
    """Whether the (possibly metered) model exposes its layer-by-layer view (`logits_layerwise`)."""
    model = getattr(denoiser, "inner", denoiser)
    return callable(getattr(type(model), "logits_layerwise", None))


SHIFTED_CACHES = ("dkv", "dllm_cache", "d2cache")  # those with a shifted-logit (Dream) variant here
SHIFTED_ONLY_CACHES = ("dkv_prefill", "dkv_pd")  # those whose reference exists for Dream only (refused without a shift)


def check_layerwise_support(denoiser, cache: str) -> None:
    shifted = bool(getattr(denoiser, "shift_logits", False))
    if shifted and cache not in SHIFTED_CACHES + SHIFTED_ONLY_CACHES:
        raise HarnessError(f"cache={cache!r} is implemented for models without a logit shift; this model predicts "
                           f"column k at k - 1 (shift_logits): use cache {' or '.join(SHIFTED_CACHES)}")
    if not shifted and cache in SHIFTED_ONLY_CACHES:
        model = getattr(denoiser, "inner", denoiser)
        raise HarnessError(f"cache={cache!r} is dKV-Cache's Dream-only variant (its reference exists for a "
                           f"shifted-logit model only); {type(model).__name__} has no logit shift: use cache dkv")
    if not supports_layerwise(denoiser):
        model = getattr(denoiser, "inner", denoiser)
        raise HarnessError(f"cache={cache!r} needs a model with a layer-by-layer view (logits_layerwise, e.g. the "
                           f"tiny model); {type(model).__name__} has none: use cache none, prefix or dual")


def _rows(t: torch.Tensor, pick: torch.Tensor | None) -> torch.Tensor:
    return t if pick is None else t[pick]


# -- dKV-Cache-Decode ----------------------------------------------------------------------------
def dkv_full_step(s: int, refresh: int) -> bool:
    """Whether step s of a block is a full pass (llada_dkv_cache_decode.py `generate`: a cached
    pass needs `i % cache_reloading_step != 0 and i > 1`); refresh 0: never again after step 1."""
    return s <= 1 or (refresh > 0 and s % refresh == 0)


def dkv_full_step_shifted(s: int, refresh: int) -> bool:
    """The Dream variant's full passes (dream_generation_utils.py `_sample`, cache_type "decoded":
    the cache is rebuilt when `i % cache_steps == 0`): step 0 and every refresh-th step; refresh 0:
    step 0 only (the reference needs cache_steps >= 1)."""
    return s == 0 or (refresh > 0 and s % refresh == 0)


def dkv_uncached_shifted(x: torch.Tensor, mask_id: int, first: bool) -> torch.Tensor:
    """[B, T] canvas -> [B, T] the columns the Dream variant will NOT cache after this pass: column k
    is cached once the token it predicts, at k + 1, is decoded (dream_generation_utils.py
    shift_type "un": `cat([decoded[:, 1:], decoded[:, :1]])`, so the last column follows column 0,
    the prompt). The block's first pass (`first`) follows the reference's initial rule instead,
    `cat([decoded[:, 1:], decoded[:, -1:]])` (the last column follows itself)."""
    done = x != mask_id
    return ~torch.cat([done[:, 1:], done[:, -1:] if first else done[:, :1]], 1)


@dataclass
class DKVState:
    """What a dKV pass leaves for the next one, for the batch rows `rows` (None: all)."""

    keys: list | None  # per layer [B', H, T, Dh]: each column's keys as last computed (None after step 0)
    values: list | None
    masked: torch.Tensor  # [B', T] the columns masked at the input of this pass
    rows: torch.Tensor | None
    start: torch.Tensor | None = None  # [B', T] shifted models: the columns the block's step-0 pass left uncached


DKV_VARIANTS = ("decode", "prefill", "pd")


def query_columns(want: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] bool -> (cols [B, Tq], valid [B, Tq]): each row's wanted columns in canvas order,
    padded to the most any row wants with its first unwanted columns (valid False)."""
    n = want.sum(1)
    order = torch.sort((~want).to(torch.int8), dim=1, stable=True).indices  # wanted columns first
    tq = int(n.max()) if want.shape[0] else 0
    cols = order[:, :tq]
    return cols, torch.arange(tq, device=want.device)[None, :] < n[:, None]


def dkv_logits(denoiser, x, attn, lo: int, hi: int, s: int, state: DKVState | None, rows, refresh: int,
               mask_id: int, variant: str = "decode"):
    """Logits [B', hi - lo, V] of the block at step s, and the state for the next step.

    A shifted-logit model (Dream, `shift_logits`) follows dKV-Cache's Dream variant: the block's
    predictions are read at [lo - 1, hi - 1), the pass at step 0 already caches (then full passes
    at the refresh steps only: `dkv_full_step_shifted`), and a column counts as decoded for the
    cache when the token it predicts is (`dkv_uncached_shifted`).

    Two more variants, Dream only: `prefill` (dKV-Cache-Prefill): the block's step-0 pass is the
    only full one; the columns it caches (those whose predicted token is decoded at the block's
    start) keep its keys/values for the whole block, and every later pass recomputes all the
    others (`refresh` is not used). `pd` (dKV-Cache-PD): `decode`'s rule, except that its refresh
    passes after step 0 recompute only what the step-0 pass left uncached (the columns cached at
    step 0 keep their step-0 keys/values for the whole block)."""
    if variant not in DKV_VARIANTS:
        raise HarnessError(f"dkv_logits: variant must be one of {', '.join(DKV_VARIANTS)}, got {variant!r}")
    T = x.shape[1]
    shift = bool(getattr(denoiser, "shift_logits", False))
    if variant != "decode" and not shift:
        raise HarnessError(f"dkv_logits(variant={variant!r}): dKV-Cache's {variant} variant is implemented for a "
                           "shifted-logit model (Dream) only")
    masked = dkv_uncached_shifted(x, mask_id, state is None) if shift else x == mask_id  # [B', T]
    qlo, qhi = lo - shift, hi - shift  # the rows holding the block's predictions
    if state is None:
        full = True
    elif variant == "prefill":
        full = False
    else:
        full = (dkv_full_step_shifted if shift else dkv_full_step)(s, refresh)
    if full and not (variant == "pd" and state is not None):
        start = masked if state is None else state.start
        if not shift and (s == 0 or state is None):  # the reference's first pass of a block caches nothing
            logits = denoiser.logits(x, attn)
            return logits[:, lo:hi].clone(), DKVState(None, None, masked, rows)
        full_logits, kv = full_pass_with_cache(denoiser, x, attn, torch.arange(T, device=x.device))
        if start is not None and state is not None and rows is not None:
            start = _rows(start, rows if state.rows is None else torch.searchsorted(state.rows, rows))
        return full_logits[:, qlo:qhi].clone(), DKVState(list(kv.keys), list(kv.values), masked, rows, start)
    pick = None  # where this pass's rows sit among the previous pass's (rows only leave a block)
    if rows is not None:
        pick = rows if state.rows is None else torch.searchsorted(state.rows, rows)
    keys = [_rows(k, pick) for k in state.keys]
    values = [_rows(v, pick) for v in state.values]
    start = None if state.start is None else _rows(state.start, pick)
    if variant == "prefill":  # the prefill cache is never updated (cache_utils.py `PrefillCache.update`)
        prev_masked = masked = start
    elif full:  # pd's refresh: the decoded cache is emptied, the prefill cache kept
        prev_masked = start
    else:
        prev_masked = _rows(state.masked, pick)  # masked at the input of the previous step
    cols, valid = query_columns(prev_masked)
    B, tq = cols.shape

    def run(layers):
        h_all, key_mask = layers.embed(x, attn)
        h = h_all.gather(1, cols[..., None].expand(-1, -1, h_all.shape[-1]))
        new_k, new_v = [], []
        for i in range(layers.n_layers):
            q, k, v = layers.qkv_at(i, h, cols)
            idx = cols[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            keep = valid[:, None, :, None]
            K = keys[i].scatter(2, idx, torch.where(keep, k, keys[i].gather(2, idx)))
            V = values[i].scatter(2, idx, torch.where(keep, v, values[i].gather(2, idx)))
            h = h + layers.attend(i, q, K, V, key_mask)
            h = h + layers.mlp(i, h)
            new_k.append(K)
            new_v.append(V)
        return layers.head(h), new_k, new_v

    out, new_k, new_v = denoiser.logits_layerwise(run, batch=B, layer_tokens=[tq] * len(keys), t_key=T, full=False)
    blk = out.new_zeros(B, hi - lo, out.shape[-1])  # committed columns outside the query set: never eligible
    sel = valid & (cols >= qlo) & (cols < qhi)
    b_idx, j_idx = sel.nonzero(as_tuple=True)
    blk[b_idx, cols[b_idx, j_idx] - qlo] = out[b_idx, j_idx]
    return blk, DKVState(new_k, new_v, masked, rows, start)


# -- dLLM-Cache -----------------------------------------------------------------------------------
def refresh_index(new_v: torch.Tensor, cached_v: torch.Tensor, ratio: float) -> torch.Tensor:
    """[B, G, D] new and cached response values -> [B, int(G·ratio)] the columns to recompute: the
    least cosine-similar (cache_hook_LLaDA.py `refresh_index`)."""
    n = int(new_v.shape[1] * ratio)
    cos = F.cosine_similarity(new_v, cached_v, dim=-1)  # [B, G]
    return torch.topk(cos, k=n, largest=False).indices


def _flat(v: torch.Tensor) -> torch.Tensor:
    """[B, H, n, Dh] -> [B, n, H·Dh] (the projection's output before the head split)."""
    B, H, n, Dh = v.shape
    return v.transpose(1, 2).reshape(B, n, H * Dh)


@dataclass
class DLLMState:
    """dLLM-Cache's per-layer features for the whole batch (rows written back after each pass)."""

    batch: int
    step: int = 0  # passes so far in this generation
    seen: torch.Tensor | None = None  # [B] rows with cached features
    layers: list = field(default_factory=list)  # per layer: dict name -> [B, ...] tensor


def dllm_plan(state: DLLMState, P: int, T: int, n_layers: int, prompt_refresh: int, refresh: int, ratio: float,
              live_seen: bool) -> tuple[bool, bool, list[int], int]:
    """(refresh prompt, refresh response, query columns per layer, response columns picked) of the
    pass at state.step: Cache.py `refresh_prompt` / `refresh_gen` ((current_step - 1) % interval
    == 0, current_step counting passes from 1) and layer 0 always in full."""
    g = state.step
    rp = g % prompt_refresh == 0 or not live_seen
    rg = g % refresh == 0 or not live_seen
    G = T - P
    n_sel = int(G * ratio) if 0 < ratio <= 1 else 0
    rest = (P if rp else 0) + (G if rg else n_sel)
    return rp, rg, [T] + [rest] * (n_layers - 1), n_sel


_NAMES = ("kp", "vp", "kg", "vg", "ap", "ag", "mp", "mg")


def dllm_logits(denoiser, x, attn, P: int, lo: int, hi: int, state: DLLMState, rows, prompt_refresh: int,
                refresh: int, ratio: float):
    """Logits [B', hi - lo, V] of the block from one dLLM-Cache pass; the state is updated in place.

    A shifted-logit model (Dream, `shift_logits`) runs the same feature cache (cache_hook_Dream.py
    `decoder_hook` is the LLaDA hook on Qwen2 layers, with the prompt the first P columns) and reads
    the block's predictions at [lo - 1, hi - 1): the first response token is predicted by the
    prompt's last column, whose features refresh with the prompt's."""
    B, T = x.shape
    r = torch.arange(B, device=x.device) if rows is None else rows
    if state.seen is None:
        state.seen = torch.zeros(state.batch, dtype=torch.bool, device=x.device)
    n_layers = int(getattr(denoiser, "arch").n_layers)
    rp, rg, layer_tokens, n_sel = dllm_plan(state, P, T, n_layers, prompt_refresh, refresh, ratio,
                                            bool(state.seen[r].all()))
    transfer = n_sel > 0 and not rg
    G = T - P
    d = int(getattr(denoiser, "arch").d_model)
    # value projections of every response column in each layer after the first (the similarity test)
    extra = 2.0 * d * d * B * G * (n_layers - 1) if transfer else 0.0

    def put(i: int, name: str, t: torch.Tensor):
        store = state.layers[i]
        if name not in store:
            store[name] = t.new_zeros((state.batch, *t.shape[1:]))
        store[name][r] = t

    def get(i: int, name: str) -> torch.Tensor:
        return state.layers[i][name][r]

    prompt_cols, response = torch.arange(P, device=x.device), torch.arange(P, T, device=x.device)  # canvas columns

    def run(layers):
        while len(state.layers) < layers.n_layers:
            state.layers.append({})
        h, key_mask = layers.embed(x, attn)
        for i in range(layers.n_layers):
            if i == 0 or (rp and rg):
                q, k, v = layers.qkv(i, h)
                for name, t in (("kp", k[:, :, :P]), ("vp", v[:, :, :P]), ("kg", k[:, :, P:]), ("vg", v[:, :, P:])):
                    put(i, name, t)
                att = layers.attend(i, q, k, v, key_mask)
                put(i, "ap", att[:, :P])
                put(i, "ag", att[:, P:])
                h = h + att
                m = layers.mlp(i, h)
                put(i, "mp", m[:, :P])
                put(i, "mg", m[:, P:])
                h = h + m
                continue
            if rg:  # the response recomputed, the prompt's features reused
                q, kg, vg = layers.qkv_at(i, h[:, P:], response)
                put(i, "kg", kg)
                put(i, "vg", vg)
                att_g = layers.attend(i, q, torch.cat([get(i, "kp"), kg], 2), torch.cat([get(i, "vp"), vg], 2),
                                      key_mask)
                put(i, "ag", att_g)
                h = h + torch.cat([get(i, "ap"), att_g], 1)
                m_g = layers.mlp(i, h[:, P:])
                put(i, "mg", m_g)
                h = h + torch.cat([get(i, "mp"), m_g], 1)
                continue
            idx = None
            if transfer:  # adaptive partial update of the response
                vg_new = layers.value(i, h[:, P:])  # [B', H, G, Dh]
                idx = refresh_index(_flat(vg_new), _flat(get(i, "vg")), ratio)  # [B', n_sel]
                h_sel = h[:, P:].gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))
                q_sel, k_sel, _ = layers.qkv_at(i, h_sel, idx + P)
                kidx = idx[:, None, :, None].expand(-1, k_sel.shape[1], -1, k_sel.shape[3])
                put(i, "kg", get(i, "kg").scatter(2, kidx, k_sel))
                put(i, "vg", vg_new)
            if rp:
                qp, kp, vp = layers.qkv_at(i, h[:, :P], prompt_cols)
                put(i, "kp", kp)
                put(i, "vp", vp)
            K = torch.cat([get(i, "kp"), get(i, "kg")], 2)
            V = torch.cat([get(i, "vp"), get(i, "vg")], 2)
            queries = ([qp] if rp else []) + ([q_sel] if transfer else [])
            if queries:
                att_q = layers.attend(i, torch.cat(queries, 2), K, V, key_mask)
                if rp:
                    put(i, "ap", att_q[:, :P])
                if transfer:
                    aidx = idx[..., None].expand(-1, -1, att_q.shape[-1])
                    put(i, "ag", get(i, "ag").scatter(1, aidx, att_q[:, P if rp else 0:]))
            h = h + torch.cat([get(i, "ap"), get(i, "ag")], 1)
            parts = ([h[:, :P]] if rp else []) + ([h[:, P:].gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))]
                                                  if transfer else [])
            if parts:
                m = layers.mlp(i, torch.cat(parts, 1))
                if rp:
                    put(i, "mp", m[:, :P])
                if transfer:
                    put(i, "mg", get(i, "mg").scatter(1, idx[..., None].expand(-1, -1, m.shape[-1]),
                                                      m[:, P if rp else 0:]))
            h = h + torch.cat([get(i, "mp"), get(i, "mg")], 1)
        return layers.head(h)

    out = denoiser.logits_layerwise(run, batch=B, layer_tokens=layer_tokens, t_key=T, full=rp and rg,
                                    extra_flops=extra)
    state.step += 1
    state.seen[r] = True
    shift = int(bool(getattr(denoiser, "shift_logits", False)))
    return out[:, lo - shift:hi - shift].clone()


# -- dKV-Cache-Greedy ----------------------------------------------------------------------------
def dkv_greedy_full_step(s: int, refresh: int) -> bool:
    """Whether step s of a block is a full pass (llada_dkv_cache_greedy.py `generate`: a cached pass
    needs `i % cache_reloading_step != 0`)."""
    return s % refresh == 0


def window_columns(want: torch.Tensor, masked: torch.Tensor, picks: torch.Tensor, scores: torch.Tensor,
                   size: int) -> torch.Tensor:
    """[B, T] query columns `want` plus each row's window columns (dKV-Cache-Greedy's
    `find_window_tokens`): for each picked column c (`picks` [B, T] bool, visited in descending
    `scores` [B, T]), up to `size` columns that are masked (`masked` [B, T]) and not yet wanted,
    looked for in the order c - 1, c + 1, c - 2, c + 2, ...; each one found is wanted from then on."""
    want = want.clone()
    B, T = want.shape
    col = torch.arange(T, device=want.device)
    for b in range(B):
        order = torch.sort(torch.where(picks[b], scores[b].float(), -torch.inf), descending=True, stable=True).indices
        for c in order[: int(picks[b].sum())].tolist():
            d = (col - c).abs()
            rank = torch.where(col < c, 2 * d - 1, 2 * d)  # c-1: 1, c+1: 2, c-2: 3, c+2: 4, ...
            free = masked[b] & ~want[b] & (col != c)
            n = min(size, int(free.sum()))
            if n:
                want[b, torch.topk(torch.where(free, -rank, -(4 * T)), k=n).indices] = True
    return want


@dataclass
class DKVGreedyState:
    """What a dKV-Cache-Greedy pass leaves for the next one (fixed-schedule loop: the whole batch)."""

    keys: list  # per layer [B, H, T, Dh]: each column's keys as last computed
    values: list
    masked: torch.Tensor  # [B, T] the columns masked at the input of this pass


def dkv_greedy_logits(denoiser, x, attn, lo: int, hi: int, s: int, state: DKVGreedyState | None,
                      picks: torch.Tensor, scores: torch.Tensor, refresh: int, window_size: int, mask_id: int):
    """Logits [B, hi - lo, V] of the block at step s (zero at the columns the pass does not compute),
    and the state for the next step. `picks` [B, hi - lo]: the columns this step will commit, known
    before the pass; `scores` [B, hi - lo]: the sampler's scores, whose order the window follows."""
    B, T = x.shape
    masked = x == mask_id
    if state is None or dkv_greedy_full_step(s, refresh):
        full, kv = full_pass_with_cache(denoiser, x, attn, torch.arange(T, device=x.device))
        return full[:, lo:hi].clone(), DKVGreedyState(list(kv.keys), list(kv.values), masked)
    want = state.masked & ~masked  # (b) committed by the previous step
    want[:, lo:hi] |= picks  # (a) committed by this one
    if window_size > 0:  # (c)
        pick_all = torch.zeros_like(masked)
        pick_all[:, lo:hi] = picks
        score_all = torch.zeros(B, T, dtype=scores.dtype, device=x.device)
        score_all[:, lo:hi] = scores
        want = window_columns(want, masked, pick_all, score_all, window_size)
    cols, valid = query_columns(want)
    tq = cols.shape[1]
    keys, values = state.keys, state.values

    def run(layers):
        h_all, key_mask = layers.embed(x, attn)
        h = h_all.gather(1, cols[..., None].expand(-1, -1, h_all.shape[-1]))
        new_k, new_v = [], []
        for i in range(layers.n_layers):
            q, k, v = layers.qkv_at(i, h, cols)
            idx = cols[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            keep = valid[:, None, :, None]  # padding columns keep their cached keys/values
            K = keys[i].scatter(2, idx, torch.where(keep, k, keys[i].gather(2, idx)))
            V = values[i].scatter(2, idx, torch.where(keep, v, values[i].gather(2, idx)))
            h = h + layers.attend(i, q, K, V, key_mask)
            h = h + layers.mlp(i, h)
            new_k.append(K)
            new_v.append(V)
        return layers.head(h), new_k, new_v

    out, new_k, new_v = denoiser.logits_layerwise(run, batch=B, layer_tokens=[tq] * len(keys), t_key=T, full=False)
    blk = out.new_zeros(B, hi - lo, out.shape[-1])  # columns the pass does not compute: never committed here
    sel = valid & (cols >= lo) & (cols < hi)
    b_idx, j_idx = sel.nonzero(as_tuple=True)
    blk[b_idx, cols[b_idx, j_idx] - lo] = out[b_idx, j_idx]
    return blk, DKVGreedyState(new_k, new_v, masked)
