"""d2Cache, the dual adaptive approximate cache of the block samplers' loop (`cache: d2cache`).

Jiang et al., "d2Cache: Accelerating Diffusion-Based LLMs via Dual Adaptive Caching" (arXiv
2509.23094); reference code Kamichanw/d2Cache src/cache/d2cache.py `d2Cache` (hooks of
src/cache/base.py `dCache`, driven by src/generation/vanilla.py `vanilla_generate` /
`generate_step`), helpers src/utils/common.py `certainty_density`, `nucleus_select`, `top_up_mask_`;
defaults configs/cache/d2cache.yaml (rollout_p 0.1, current_k 32, sigma 10, inflate_w 0).

Like dKV-Cache and dLLM-Cache (_approx_cache.py) it runs on a model's layer-by-layer view
(`logits_layerwise`), and it also needs the attention weights of each layer (the view's
`attention_weights`, the `attention_weights` capability): the reference demands eager attention
for the same reason. What a generation does:

- Its first pass is a full pass (every column of every layer); it stores every layer's keys and
  values and the confidence of every completion column (the maximum softmax probability, mask
  token included, as the reference's `sample_tokens` with maskgit_plus at temperature 0).
- Every later pass computes only a set of query columns, the same in every layer: their keys and
  values overwrite the cached ones, their attention reads all cached columns, and only they get
  logits (the others' logits are zero: the reference scatters its logits into zeros). The cache
  is never reset: not at block starts, and no pass after the first is full.
- During each pass the attention rollout is accumulated over the layers: R starts as the identity;
  per layer, each query row of A (its attention weights averaged over heads; a column that is not
  a query keeps the identity row) is added to the identity, rows renormalised to sum 1, and
  R <- (A + I)/rowsum · R. The column sums of the final R are each column's global importance.
- After each step (`d2Cache.on_step_end`) the query set of the next pass is chosen: (1) the
  masked completion columns with the highest score, at most current_k of them, inside a window
  from the block's first column to a "block boundary" after the current_k-th mask left; the
  score is the cached confidence times the certainty density (a Gaussian kernel of width sigma
  over the decoded/undecoded pattern, `certainty_density`), plus the batch's highest score on the
  block's columns so that they come first. "The block" is the reference's `block_mask` as
  `on_step_end` receives it: `check_can_generate` narrows vanilla.py's block mask in place
  (`eligible_mask &= generated_tokens == mask_token_id`) at every step, so it holds the block's
  columns still masked at the step's input, and its size (the rounding unit of the window's end)
  and first column change as the block is decoded; the harness follows that code. (2) the
  columns committed at this step; (3) a nucleus of the remaining columns by global importance
  (mass rollout_p, at least one);
  (4) with inflate_w > 0, every column in a gap of at most inflate_w between two chosen ones.
  Rows of a pass whose counts differ are topped up to the most any row has (`top_up_mask`):
  completion columns by density score first, then by importance.

The reference's confidence cache never changes after the first step: `on_step_end` writes the new
confidences into `self._conf_cache[self.active_seq_mask][valid_mask]`, and the first (boolean)
index makes a copy, so the write is lost. The harness reproduces the reference as it runs (its
default is the reference's default): the density scores always use the first pass's confidences.
Likewise `generate_step`'s `transfer_index_mask[active_seq_idx].logical_and_(valid_mask)` acts on a
copy, so a masked column that was not a query stays eligible with zero logits (uniform confidence);
the harness keeps that too. It matters only when the current block has more masked columns than
the query set holds (block_length > current_k).

Where the harness differs, documented: the first-pass confidences are the unfiltered float32
softmax of the logits (the reference filters them with its sampling options and, at temperature
> 0, takes the probability of a token it draws from the global RNG); the rollout's rows that are
not queries are kept as they are rather than multiplied by the identity (the same numbers; only
query rows are multiplied, so the FLOP count is 2·Tq·T² per layer and sequence); a pass that
includes a row with no cached state yet (a row of an adaptive sampler or of inpainting that had no
mask in the first block) is a full pass; a row that steps with no mask left in its block (only
with inpainting: the fixed-schedule loop steps every row, the reference skips such a row) keeps its
previous plan, as in the reference; padded prompt columns take part in the rollout as in the
reference (their keys are masked). The proposal rule is the shared loop's (_base.py: the mask token
is never proposed, ties go to the lower column). The attention output is the layer view's own
(SDPA by default; the reference computes it eagerly from the weights), and the rollout runs in the
weights' dtype as the reference's does in the model's (bf16 weights on a GPU: bf16), so bf16 runs
can differ from the reference by rounding; float32 runs match it (below).

Checked against the reference's own code (tests/samplers/test_d2cache_reference.py, opt-in: its
`vanilla_generate` with `d2Cache` on its LLaDA file, eager attention, a random-weight LLaDA-shaped
checkpoint): the same tokens in every setting tried, the defaults, its evaluation setting (certainty
prior, one block), current_k below the block's masks, semi-autoregressive blocks with inflation, no
nucleus, parallel decoding with rows leaving the batch (the `threshold` sampler); and against a
line-by-line transcription on every run (tests/samplers/test_d2cache.py).

On Dream (shifted logits: column k is predicted at k - 1; its layer view, harness/models/native/dream.py
`DreamLayers`) the harness follows the reference's handling of models adapted from an AR model
(`is_adapted_from_ar`): the logits shift right after each pass (src/generation/utils.py
`prepare_logits_for_generation`), so the block and the first-pass confidences are read one column
left; in the plan, each chosen masked column is queried through the column before it (d2cache.py
`on_step_end`: `response_mask = F.pad(selected_mask[:, 1:], (0, 1))`), the committed columns
themselves, and after the nucleus the prompt's last column is set to whether the first completion
column was chosen (an assignment: it drops that column if only the nucleus had chosen it). So on
Dream even the widest settings (rollout_p 1, current_k at least the completion) leave the prompt's
last column stale once the first completion column is decoded: they are not the uncached loop.

The meter counts every pass by the query columns each layer really computes
(`Meter.logits_layerwise`), plus the rollout's matrix products as extra FLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.types import HarnessError

# configs/cache/d2cache.yaml (the reference's docs/kv_caching.md lists inflate_w 4; the yaml, which
# its evaluation loads, and configs/gen_args.py set 0)
D2CACHE_DEFAULTS = {"rollout_p": 0.1, "current_k": 32, "sigma": 10.0, "inflate_w": 0}


def supports_attention_weights(denoiser) -> bool:
    """Whether the (possibly metered) model's layer view returns attention weights."""
    model = getattr(denoiser, "inner", denoiser)
    fn = getattr(model, "logits_layerwise", None)
    if not callable(fn):
        return False
    return bool(fn(lambda layers: callable(getattr(layers, "attention_weights", None))))


def check_attention_weights(denoiser) -> None:
    if not supports_attention_weights(denoiser):
        model = getattr(denoiser, "inner", denoiser)
        raise HarnessError(f"cache='d2cache' needs a layer view that returns attention weights (the attention "
                           f"rollout; `attention_weights`, e.g. the tiny model, native LLaDA or Dream); "
                           f"{type(model).__name__}'s has none: use cache dkv or dllm_cache")


# -- the reference's helpers (src/utils/common.py), written for the harness ----------------------------
def certainty_density(decoded: torch.Tensor, sigma: float) -> torch.Tensor:
    """[B, L] bool (True: decoded) -> [B, L] the Gaussian-smoothed share of decoded columns around each
    column (`certainty_density`): the pattern is extended by L decoded columns on the left and L on the
    right that are decoded when the last column is (else undecoded); density[i] = sum_j ext[j]·g(i - j)
    over the extension, divided by the kernel's total mass over offsets [-3L, 3L); g(d) =
    exp(-d²/(2 sigma²)). Computed by FFT as the reference does (the same rounding)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    B, L = decoded.shape
    dev = decoded.device
    ext = F.pad(decoded.float(), (L, L), value=1.0)  # [B, 3L]
    ext[~decoded[:, -1], 2 * L:] = 0.0
    n = 6 * L
    offsets = torch.cat([torch.arange(3 * L, device=dev), torch.arange(-3 * L, 0, device=dev)])
    kernel = torch.fft.fft(torch.exp(-(offsets ** 2) / (2 * sigma ** 2)), n=n)
    smoothed = torch.fft.ifft(torch.fft.fft(F.pad(ext, (0, 3 * L)), n=n) * kernel, n=n).real
    total = torch.fft.ifft(torch.fft.fft(torch.ones(B, n, device=dev), n=n) * kernel, n=n).real
    return smoothed[:, L:2 * L] / total[:, L:2 * L].clamp_min(1e-8)


def nucleus_select(scores: torch.Tensor, top_p: float, mask: torch.Tensor | None = None,
                   min_k: int = 1) -> torch.Tensor:
    """[B, L] scores >= 0 -> [B, L] bool: among the columns `mask` allows, those whose normalised score,
    in descending order, keeps the running sum <= top_p, and at least the min_k best
    (`nucleus_select`; a column outside `mask` is never chosen)."""
    s = scores if mask is None else torch.where(mask, scores, 0.0)
    share = s / (s.sum(-1, keepdim=True) + 1e-9)
    ordered, order = torch.sort(share, dim=-1, descending=True)
    keep = ordered.cumsum(-1) <= top_p
    keep |= torch.arange(keep.shape[-1], device=keep.device) < min(min_k, s.shape[-1])
    if mask is not None:
        keep &= mask.gather(1, order)
    return torch.zeros_like(s, dtype=torch.bool).scatter_(1, order, keep)


def top_up(q_mask: torch.Tensor, importance: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    """[B, T] query masks -> each row topped up to the most any row has (`d2Cache.top_up_mask` and
    `top_up_mask_`): the unchosen columns ranked by importance, the completion's (the last G) raised
    above all by the batch's highest such score plus their density score."""
    q_mask = q_mask.clone()
    counts = q_mask.sum(-1)
    target = int(counts.max()) if counts.numel() else 0
    if not bool((counts != target).any()):
        return q_mask
    G = density.shape[1]
    rank = torch.where(q_mask, -torch.inf, importance)
    rank[:, -G:] += rank.max() + density
    need = (target - counts).clamp_min(0)
    rank = torch.where(q_mask, -torch.inf, rank)
    idx = torch.topk(rank, k=int(need.max()), dim=-1).indices  # [B, most needed]
    take = torch.arange(idx.shape[1], device=idx.device)[None, :] < need[:, None]
    rows = torch.arange(q_mask.shape[0], device=idx.device)[:, None].expand_as(idx)
    q_mask[rows[take], idx[take]] = True
    return q_mask


def inflate(q_mask: torch.Tensor, width: int) -> torch.Tensor:
    """Also choose every column that lies in a gap of at most `width` between two chosen columns
    (the reference's step 4, `inflate_w`)."""
    B, T = q_mask.shape
    pos = torch.arange(T, device=q_mask.device).expand(B, -1)
    nxt = torch.flip(torch.cummin(torch.flip(torch.where(q_mask, pos, T), [-1]), -1).values, [-1])
    prv = torch.cummax(torch.where(q_mask, pos, -1), -1).values
    return q_mask | (((nxt - pos) + (pos - prv) <= width) & (prv >= 0) & (nxt < T))


# -- the cache ---------------------------------------------------------------------------------------------
@dataclass
class D2State:
    """d2Cache's state for the whole batch (rows written back after each pass)."""

    batch: int
    keys: list | None = None  # per layer [B, H, T, Dh]: each column's keys as last computed
    values: list | None = None
    seen: torch.Tensor | None = None  # [B] rows with cached keys/values and confidences
    conf: torch.Tensor | None = None  # [B, G] the first pass's confidences (-inf: not masked then)
    q_mask: torch.Tensor | None = None  # [B, T] the next pass's query columns (before the top-up)
    importance: torch.Tensor | None = None  # [B, T] the global importance of each row's last pass
    density: torch.Tensor | None = None  # [B, G] each row's last density scores
    last: tuple | None = None  # (rows, masked at its input [B', T], lo, hi, importance [B', T]) of the last pass


@dataclass(frozen=True)
class D2Params:
    rollout_p: float
    current_k: int
    sigma: float
    inflate_w: int


def plan_next(state: D2State, x: torch.Tensor, P: int, p: D2Params, mask_id: int, shift: bool = False) -> None:
    """`d2Cache.on_step_end` for the rows of the last pass, their commits now written in x (the
    whole batch's canvas [B, T]); sets their query columns for the next pass. `shift` (Dream): a
    chosen masked column is queried through the column before it, which predicts it."""
    rows, masked_in, lo, hi, importance = state.last
    state.last = None
    xr = x if rows is None else x[rows]
    B, T = xr.shape
    G = T - P
    dev = xr.device
    remaining = xr[:, P:] == mask_id  # [B', G]
    committed = masked_in[:, P:] & ~remaining  # the step's transfer index
    col = torch.arange(G, device=dev)
    # vanilla.py's block_mask after check_can_generate's in-place `eligible_mask &= ... == mask_token_id`:
    # the block's columns still masked at the step's input
    block = ((col >= lo - P) & (col < hi - P))[None, :] & masked_in[:, P:]
    live = block.any(1)  # a row with no mask left in its block did not step in the reference: its plan stays
    size = block.sum(1, keepdim=True).clamp_min(1)
    start = torch.argmax(block.int(), dim=1, keepdim=True)
    meets = remaining.int().cumsum(1) >= p.current_k
    end = torch.argmax(meets.int(), dim=1, keepdim=True)
    end[~meets.any(1, keepdim=True)] = G - 1
    end = (end // size + 1) * size - 1  # "rounded up to the next block boundary" of that size
    window = (col[None, :] >= start) & (col[None, :] <= end)
    conf = state.conf if rows is None else state.conf[rows]
    scores = conf * certainty_density(~remaining, p.sigma)
    scores = torch.where(block, scores + scores.max(), scores)  # the block's columns first
    idx = torch.topk(torch.where(window & remaining, scores, -torch.inf), k=min(p.current_k, G), dim=-1).indices
    chosen = torch.zeros_like(remaining).scatter_(1, idx, True) & remaining
    response = F.pad(chosen[:, 1:], (0, 1), value=False) if shift else chosen  # d2cache.py lines 235-239
    q_mask = F.pad(response | committed, (P, 0), value=False)
    q_mask |= nucleus_select(importance, p.rollout_p, mask=~q_mask)
    if shift:  # the prompt's last column predicts the first completion column (lines 261-264): set, not added
        q_mask[:, P - 1] = chosen[:, 0]
    if p.inflate_w > 0:
        q_mask = inflate(q_mask, p.inflate_w)
    r = torch.arange(B, device=dev) if rows is None else rows
    r, q_mask, importance, scores = r[live], q_mask[live], importance[live], scores[live]
    state.q_mask[r], state.importance[r], state.density[r] = q_mask, importance, scores


def _rollout_step(R: torch.Tensor, weights: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """One layer of the rollout: R [B, T, T]; weights [B, H, Tq, T] of the query columns cols [B, Tq]."""
    a = weights.mean(1).to(R.dtype)  # [B, Tq, T]
    a = a.scatter_add(2, cols[..., None], torch.ones_like(cols[..., None], dtype=a.dtype))  # + I on the query rows
    a = a / a.sum(-1, keepdim=True)
    out = R.clone()
    idx = cols[..., None].expand(-1, -1, R.shape[-1])
    return out.scatter(1, idx, a @ R)


def d2_logits(denoiser, x: torch.Tensor, rows, attn, P: int, lo: int, hi: int, state: D2State, p: D2Params,
              mask_id: int) -> torch.Tensor:
    """Logits [B', hi - lo, V] of the block for the live rows `rows` (None: all) of the whole canvas x
    [B, T]; plans the previous pass's next query set first and records this pass for the next plan."""
    shift = int(bool(getattr(denoiser, "shift_logits", False)))
    if state.last is not None:
        plan_next(state, x, P, p, mask_id, bool(shift))
    xr = x if rows is None else x[rows]
    B, T = xr.shape
    dev = xr.device
    r = torch.arange(state.batch, device=dev) if rows is None else rows
    if state.seen is None:
        state.seen = torch.zeros(state.batch, dtype=torch.bool, device=dev)
    full = state.keys is None or not bool(state.seen[r].all())
    if full:
        cols = torch.arange(T, device=dev)[None, :].expand(B, -1)
    else:
        q_mask = top_up(state.q_mask[r], state.importance[r], state.density[r])
        tq = int(q_mask.sum(1)[0])
        cols = q_mask.nonzero()[:, 1].view(B, tq)  # each row's query columns in canvas order
    tq = cols.shape[1]
    n_layers = int(getattr(denoiser, "arch").n_layers)

    def run(layers):
        h_all, key_mask = layers.embed(xr, attn)
        h = h_all if full else h_all.gather(1, cols[..., None].expand(-1, -1, h_all.shape[-1]))
        R = torch.eye(T, device=dev).expand(B, T, T)
        keys, values = [], []
        for i in range(layers.n_layers):
            if full:
                q, K, V = layers.qkv(i, h)
            else:
                q, k, v = layers.qkv_at(i, h, cols)
                idx = cols[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
                K = state.keys[i][r].scatter(2, idx, k)
                V = state.values[i][r].scatter(2, idx, v)
            h = h + layers.attend(i, q, K, V, key_mask)
            w = layers.attention_weights(i, q, K, key_mask)  # [B, H, Tq, T]
            R = _rollout_step(R.to(w.dtype), w, cols)
            h = h + layers.mlp(i, h)
            keys.append(K)
            values.append(V)
        return layers.head(h), keys, values, R.sum(1)

    rollout = 2.0 * B * tq * T * T * n_layers
    out, keys, values, importance = denoiser.logits_layerwise(run, batch=B, layer_tokens=[tq] * n_layers, t_key=T,
                                                             full=full, extra_flops=rollout)
    if state.keys is None:
        state.keys = [k.new_zeros((state.batch, *k.shape[1:])) for k in keys]
        state.values = [v.new_zeros((state.batch, *v.shape[1:])) for v in values]
        state.q_mask = torch.zeros(state.batch, T, dtype=torch.bool, device=dev)
        state.importance = importance.new_zeros(state.batch, T)
        state.conf = torch.full((state.batch, T - P), -torch.inf, device=dev)
        state.density = state.conf.new_zeros(state.batch, T - P)
    for i in range(len(keys)):
        state.keys[i][r] = keys[i]
        state.values[i][r] = values[i]
    masked = xr == mask_id
    if full:  # a row's confidences are those of its first pass (a row seen before keeps its own)
        conf = torch.where(masked[:, P:], F.softmax(out[:, P - shift:T - shift].float(), -1).amax(-1), -torch.inf)
        new = ~state.seen[r]
        state.conf[r[new]] = conf[new]
        state.seen[r] = True
        logits = out
    else:
        logits = out.new_zeros(B, T, out.shape[-1]).scatter(1, cols[..., None].expand(-1, -1, out.shape[-1]), out)
    state.last = (rows, masked, lo, hi, importance)
    return logits[:, lo - shift:hi - shift].clone()
