"""The lm-eval bridge's engine: lm-eval's three request types served by harness components.

This module does not import lm_eval (harness/bridge/lm_eval.py wraps it as an `LM`), so its
logic is testable on its own. model_args (`model=tiny,sampler=low_confidence,steps=64,...`) are
split between the model, the sampler and the estimator by their registry fields; every forward
pass goes through a `Meter`, so NFE is counted; randomness comes from one generator per request,
seeded by `derive_seed` from the request's task, document, index, repeat and text, so batch
composition never changes a result.

- generate: the sampler decodes `max_gen_toks` tokens (capped to what the model's context
  allows), at the request's temperature, and the text is cut at the first `until` string.
- score: the estimator's value of log p(continuation | context), and `is_greedy` from one pass
  with the whole continuation masked (argmax == continuation everywhere), unless switched off.

Prompting (harness/prompting.py): a context starts with the model's BOS when its family declares
one (LLaDA: <|startoftext|>; `add_bos=false` turns it off); the chat template is lm-eval's to apply
(`--apply_chat_template`, `--fewshot_as_multiturn`: it calls the LM's `apply_chat_template`).

Likelihood: the default estimator is `mc_elbo` with LLaDA's own evaluation law (ESTIMATOR_DEFAULTS:
t_law count_stratified, n_mc 128: exact masked counts, systematic in groups of 32, weight L/l;
ML-GSAI/LLaDA eval_llada.py `get_loglikelihood`, mc_num 128); model_args override any of it.

A loglikelihood request's (context, continuation) is split into tokens as lm-eval's
`TemplateLM._encode_pair` and LLaDA's eval_llada.py `_encode_pair` split it (`encode_pair`: the
context's trailing whitespace joins the continuation, both tokenized together).

Contexts too long for the model are left-truncated; every truncation or capped length is
written to the side records (`side_records.jsonl`) and warned about once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.budget import Meter
from harness.registry import ESTIMATORS, MODELS, SAMPLERS, params_of
from harness.seeding import derive_seed, torch_generator
from harness.tasks.base import truncate_at_stop  # the one stop-string cut all paths share
from harness.types import HarnessError

# Keys the bridge itself takes; every other key goes to the model, sampler or estimator.
BRIDGE_KEYS = {
    "model": "tiny", "sampler": "low_confidence", "estimator": "mc_elbo", "batch_size": 8,
    "greedy_check": True, "seed": 1234, "records": None, "max_length": None, "max_gen_toks": 256,
    "add_bos": None,  # None: the model family's declaration (harness/prompting.py)
}
# The bridge's defaults of an estimator's fields (what lm-eval numbers of the model's own code used).
ESTIMATOR_DEFAULTS = {"mc_elbo": {"t_law": "count_stratified", "n_mc": 128}}
SIDE_RECORDS = "side_records.jsonl"


@dataclass(frozen=True)
class Request:
    """What identifies a request: it names its cost and seeds its generator."""

    task: str | None = None
    doc_id: int | None = None
    idx: int = 0
    repeat: int = 0

    def doc_key(self) -> tuple:
        return (str(self.task), self.doc_id)


def split_model_args(args: dict) -> dict:
    """model_args -> {"bridge": {...}, "model": {...}, "sampler": {...}, "estimator": {...}}.

    A key `sampler.steps` goes to the sampler explicitly; a bare key goes to the one component
    with a field of that name (two candidates is an error asking for the prefix)."""
    bridge = {k: args.get(k, v) for k, v in BRIDGE_KEYS.items()}
    names = {"model": bridge["model"], "sampler": bridge["sampler"], "estimator": bridge["estimator"]}
    regs = {"model": MODELS, "sampler": SAMPLERS, "estimator": ESTIMATORS}
    fields = {kind: regs[kind].fields(names[kind]) for kind in regs}  # unknown names raise here
    out = {"bridge": bridge, "model": {}, "sampler": {}, "estimator": {}}
    valid = sorted(BRIDGE_KEYS) + [f"{kind}.{f}" for kind in fields for f in fields[kind]]
    for key, value in args.items():
        if key in BRIDGE_KEYS:
            continue
        kind, _, name = key.rpartition(".")
        owners = [kind] if kind in fields and name in fields[kind] else (
            [] if kind else [k for k in fields if key in fields[k]])
        if len(owners) != 1:
            what = "ambiguous" if len(owners) > 1 else "unknown"
            hint = f" (it is a field of {' and '.join(owners)}: write e.g. {owners[0]}.{key}=...)" if owners else ""
            raise HarnessError(f"model_args: {what} key {key!r}{hint}; valid keys: {', '.join(valid)}")
        out[owners[0]][name or key] = value
    for kind in ("model", "sampler", "estimator"):
        out[kind] = regs[kind].validate(names[kind], out[kind], f"model_args ({kind} {names[kind]!r})")
    return out


def max_length_of(denoiser) -> int | None:
    """The longest sequence (prompt + completion) the model accepts, if it says."""
    for path in (("max_length",), ("module", "cfg", "max_len"), ("module", "config", "max_position_embeddings")):
        obj = denoiser
        for name in path:
            obj = getattr(obj, name, None)
        if isinstance(obj, int) and obj > 0:
            return obj
    return None


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class SideRecords:
    """Append-only JSONL of what lm-eval's outputs do not hold (NFE, truncation, settings)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = None
        self.tag: dict = {}  # added to every record (the rank under data parallelism)
        if path is not None:
            p = Path(path)
            self.path = p / SIDE_RECORDS if p.is_dir() or not p.suffix else p
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({**record, **self.tag}, sort_keys=True, default=str) + "\n")


@dataclass
class Engine:
    """Serves generate / score requests with one model, sampler and estimator."""

    args: dict
    denoiser: Any = None
    meter: Any = None
    sampler: Any = None
    estimator: Any = None
    max_length: int | None = None
    costs: dict = field(default_factory=dict)  # (task, doc_id) -> summed cost dict
    side: SideRecords = None
    _warned: set = field(default_factory=set)

    @classmethod
    def from_args(cls, model_args: dict, denoiser=None) -> "Engine":
        parts = split_model_args(dict(model_args))
        b = parts["bridge"]
        for key in ("batch_size", "seed", "max_gen_toks"):
            if not isinstance(b[key], int) or isinstance(b[key], bool) or b[key] < (0 if key == "seed" else 1):
                raise HarnessError(f"model_args: {key} must be a positive integer, got {b[key]!r}")
        for key in ("greedy_check", "add_bos"):
            if not isinstance(b[key], bool) and not (key == "add_bos" and b[key] is None):
                raise HarnessError(f"model_args: {key} must be true or false, got {b[key]!r}")
        if denoiser is None:
            denoiser = MODELS.build(b["model"], parts["model"], "model_args").load()
        sampler = SAMPLERS.build(b["sampler"], parts["sampler"], "model_args (sampler)")
        est_params = {**ESTIMATOR_DEFAULTS.get(b["estimator"], {}), **parts["estimator"]}
        estimator = ESTIMATORS.build(b["estimator"], est_params, "model_args (estimator)")
        max_len = b["max_length"] or max_length_of(denoiser)
        eng = cls(args=parts, denoiser=denoiser, meter=Meter(denoiser), sampler=sampler, estimator=estimator,
                  max_length=max_len, side=SideRecords(b["records"]))
        eng.side.write({"type": "settings", "model": {"name": b["model"], "params": parts["model"]},
                        "sampler": {"name": b["sampler"], "params": params_of(sampler)},
                        "estimator": {"name": b["estimator"], "params": params_of(estimator)},
                        "bridge": {k: v for k, v in b.items() if k != "records"}, "max_length": max_len})
        return eng

    @property
    def bridge(self) -> dict:
        return self.args["bridge"]

    # -- helpers -------------------------------------------------------------------------------------
    def warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(f"dlm-harness bridge: {message}", stacklevel=3)

    def encode(self, text: str) -> tuple[list[int], int]:
        """-> (ids, characters dropped). A character tokenizer (the tiny model's) drops the
        characters outside its alphabet instead of failing; that is counted and warned about."""
        tok = self.denoiser.tokenizer
        stoi = getattr(tok, "stoi", None)
        if isinstance(stoi, dict):
            kept = [c for c in text if c in stoi]
            dropped = len(text) - len(kept)
            if dropped:
                self.warn_once("dropped", "characters outside the character tokenizer's alphabet are dropped "
                               "(counted as dropped_chars in the side records)")
            return tok.encode("".join(kept)), dropped
        return list(tok.encode(text)), 0

    def encode_context(self, text: str) -> tuple[list[int], int]:
        """A context's ids as the model's evaluation lays them out: BOS first when declared."""
        from harness.prompting import prompting_of, with_bos

        if prompting_of(self.denoiser)["add_special_tokens"]:
            self.warn_once("special_tokens", "the model option add_special_tokens applies to the harness's own "
                           "studies (harness/prompting.py); lm-eval contexts are laid out with the BOS only")
        ids, dropped = self.encode(text)
        return with_bos(ids, self.denoiser, self.bridge["add_bos"]), dropped

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) split as lm-eval's `TemplateLM._encode_pair` and LLaDA's
        `eval_llada.py` (`LLaDAEvalHarness._encode_pair`) split them: trailing whitespace of the
        context moves to the continuation, the two are tokenized jointly, and the continuation is
        what the joint ids hold after the context's own ids (a subword tokenizer merges " Paris"
        into one token only when it sees the space with the word). An empty context is its BOS
        alone (or nothing), the continuation tokenized on its own, as lm-eval does."""
        if not context:
            return self.encode_context("")[0], self.encode(continuation)[0]
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole, _ = self.encode_context(context + continuation)
        ctx, _ = self.encode_context(context)
        return ctx, whole[len(ctx):]

    def generator(self, req: Request, text: str) -> torch.Generator:
        seed = derive_seed("lm-eval", str(req.task), str(req.doc_id), req.repeat,
                           f"{self.bridge['seed']}:{req.idx}:{_sha(text)}")
        return torch_generator(seed, self.denoiser.device)

    def _charge(self, reqs: list[Request], before) -> dict:
        """Split the cost since `before` evenly over the batch's requests; -> one request's share."""
        cost = self.meter.cost.minus(before).as_dict()
        share = {k: (v if k == "peak_mem" else v / len(reqs)) for k, v in cost.items()}
        for r in reqs:
            acc = self.costs.setdefault(r.doc_key(), {k: 0 for k in share})
            for k, v in share.items():
                acc[k] = max(acc[k], v) if k == "peak_mem" else acc[k] + v
        return share

    def _sampler_for(self, gen_kwargs: dict):
        sampler = self.sampler
        temp = gen_kwargs.get("temperature")
        if temp is None and gen_kwargs.get("do_sample") is False:
            temp = 0.0
        if temp is not None and hasattr(sampler, "temperature"):
            if float(temp) < 0:
                raise HarnessError(f"generation kwarg temperature must be >= 0, got {temp!r}")
            sampler = dataclasses.replace(sampler, temperature=float(temp))
        return sampler

    def gen_length(self, gen_kwargs: dict) -> tuple[int, int]:
        """-> (canvas length to decode, the length asked for)."""
        asked = (gen_kwargs.get("max_gen_toks") or getattr(self.sampler, "gen_length", None)
                 or self.bridge["max_gen_toks"])
        L = int(asked)
        if self.max_length is not None and L > self.max_length - 1:
            L = max(1, self.max_length - 1)
            self.warn_once("gen_cap", f"max_gen_toks {asked} does not fit the model's context of {self.max_length} "
                           f"positions; capped to {L} (recorded as gen_length_capped)")
        block = getattr(self.sampler, "block_length", None)
        if block and L > block and L % block:
            up = -(-L // block) * block
            L = up if self.max_length is None or up <= self.max_length - 1 else (L // block) * block
        return L, int(asked)

    def fit(self, ids: list[int], room: int) -> tuple[list[int], int]:
        """Left-truncate ids to `room` tokens; -> (ids, tokens cut)."""
        if self.max_length is None or len(ids) <= room:
            return ids, 0
        self.warn_once("truncate", f"prompts longer than the model's context ({self.max_length}) are left-truncated "
                       "(recorded as truncated_tokens)")
        cut = len(ids) - max(room, 0)
        return ids[cut:], cut

    # -- generate_until --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests: list[tuple[str, dict, Request]]) -> list[str]:
        """(context, gen_kwargs, request) -> completion cut at the first `until` string."""
        from harness.text import encode_prompts

        prepared = []
        for i, (context, kw, req) in enumerate(requests):
            kw = dict(kw or {})
            L, asked = self.gen_length(kw)
            ids, dropped = self.encode_context(context)
            ids, cut = self.fit(ids, (self.max_length or 0) - L)
            sampler = self._sampler_for(kw)
            group = (L, json.dumps(params_of(sampler), sort_keys=True, default=str))
            prepared.append((group, i, ids, kw, req, sampler, L, asked, cut, dropped, context))
        out: list[str] = [""] * len(requests)
        prepared.sort(key=lambda p: (p[0], p[1]))
        bs = self.bridge["batch_size"]
        groups: dict = {}
        for p in prepared:
            groups.setdefault(p[0], []).append(p)
        for rows in groups.values():
            for lo in range(0, len(rows), bs):
                batch = rows[lo:lo + bs]
                sampler, L = batch[0][5], batch[0][6]
                dev = self.denoiser.device
                ids, mask = encode_prompts(_IdTokenizer(), [p[2] for p in batch], self.denoiser.pad_id)
                gens = [self.generator(p[4], p[10]) for p in batch]
                before = self.meter.cost
                try:
                    gen = sampler(self.meter, ids.to(dev), generator=gens, prompt_mask=mask.to(dev), gen_length=L)
                except ValueError as exc:
                    raise HarnessError(f"sampler {self.bridge['sampler']!r} cannot decode {L} tokens: {exc} "
                                       "(set block_length/steps in model_args to fit)") from None
                share = self._charge([p[4] for p in batch], before)
                for j, (p, text, n) in enumerate(zip(batch, gen.text, gen.gen_len.tolist())):
                    final = truncate_at_stop(text, p[3].get("until"))
                    out[p[1]] = final
                    req = p[4]
                    self.side.write({
                        "type": "generate_until", "task": req.task, "doc_id": req.doc_id, "idx": req.idx,
                        "repeat": req.repeat, "gen_length": L, "gen_length_asked": p[7],
                        "gen_length_capped": L < p[7], "prompt_tokens": len(p[2]), "truncated_tokens": p[8],
                        "dropped_chars": p[9], "gen_len": n, "steps": gen.steps_of(j),
                        "stopped_by_until": final != text,
                        "sampler": {"name": self.bridge["sampler"], "params": params_of(sampler)},
                        "cost": share})
        return out

    # -- loglikelihood ---------------------------------------------------------------------------------
    def _prefix(self, ctx: list[int]) -> list[int]:
        """An empty context reads the EOS token as BOS for shifted (causal-style) models."""
        if not ctx and getattr(self.denoiser, "shift_logits", False):
            return [self.denoiser.eos_id]
        return ctx

    @torch.no_grad()
    def score(self, requests: list[tuple[list[int], list[int], Request]], greedy: bool | None = None,
              kind: str = "loglikelihood", extra: list[dict] | None = None) -> list[tuple[float, bool]]:
        """(context ids, continuation ids, request) -> (estimate of log p(cont | ctx), is_greedy)."""
        greedy = self.bridge["greedy_check"] if greedy is None else greedy
        prepared = []
        for i, (ctx, cont, req) in enumerate(requests):
            if not cont:
                raise HarnessError(f"{kind}: empty continuation in request {req}")
            ctx, cut_c = self._prefix(list(ctx)), 0
            if self.max_length is not None and len(cont) > self.max_length - (1 if ctx else 0):
                keep = self.max_length - (1 if ctx else 0)
                cut_c, cont = len(cont) - keep, cont[-keep:]
                self.warn_once("cont", "continuations longer than the model's context are left-truncated "
                               "(recorded as truncated_continuation_tokens)")
            ctx, cut = self.fit(ctx, (self.max_length or 0) - len(cont))
            prepared.append((len(cont), i, ctx, cont, req, cut, cut_c))
        prepared.sort(key=lambda p: (p[0], p[1]))  # one continuation length per batch: batch-invariant
        out: list = [None] * len(requests)
        bs = self.bridge["batch_size"]
        groups: dict = {}
        for p in prepared:
            groups.setdefault(p[0], []).append(p)
        for L, rows in groups.items():
            for lo in range(0, len(rows), bs):
                self._score_batch(rows[lo:lo + bs], L, greedy, kind, extra, out)
        return out

    def _score_batch(self, batch, L: int, greedy: bool, kind: str, extra, out) -> None:
        from harness.text import encode_prompts

        dev = self.denoiser.device
        ids, pmask = encode_prompts(_IdTokenizer(), [p[2] for p in batch], self.denoiser.pad_id)
        ids, pmask = ids.to(dev), pmask.to(dev)
        completion = torch.tensor([p[3] for p in batch], dtype=torch.long, device=dev)  # [B, L]
        cmask = torch.ones_like(completion, dtype=torch.bool)
        gens = [self.generator(p[4], json.dumps([p[2], p[3]])) for p in batch]
        before = self.meter.cost
        est = self.estimator(self.meter, ids, completion, cmask, generator=gens, prompt_mask=pmask)
        est_cost = self.meter.cost.minus(before)
        flags = self.greedy_flags(ids, pmask, completion) if greedy else [False] * len(batch)
        share = self._charge([p[4] for p in batch], before)
        for j, p in enumerate(batch):
            value = float(est.sequence[j])
            out[p[1]] = (value, bool(flags[j]))
            req = p[4]
            rec = {"type": kind, "task": req.task, "doc_id": req.doc_id, "idx": req.idx, "value": value,
                   "is_greedy": bool(flags[j]) if greedy else None, "greedy_check": greedy,
                   "context_tokens": len(p[2]), "continuation_tokens": L, "truncated_tokens": p[5],
                   "truncated_continuation_tokens": p[6],
                   "estimator": {"name": self.bridge["estimator"], "params": params_of(self.estimator)},
                   "estimator_n": est.n, "estimator_nfe": est_cost.nfe / len(batch), "cost": share}
            if extra is not None:
                rec.update(extra[p[1]])
            self.side.write(rec)

    def greedy_flags(self, ids: torch.Tensor, pmask: torch.Tensor, completion: torch.Tensor) -> list[bool]:
        """One pass with the whole continuation masked: is its argmax the continuation everywhere?"""
        B, P = ids.shape
        L = completion.shape[1]
        x = torch.cat([ids, torch.full_like(completion, self.denoiser.mask_id)], 1)  # [B, P + L]
        attn = torch.cat([pmask, torch.ones_like(completion, dtype=torch.bool)], 1)
        logits = self.meter.logits(x, attn)  # [B, P + L, V]
        logits = logits[:, P - 1:P + L - 1] if self.denoiser.shift_logits else logits[:, P:]
        logits = logits.clone()
        if self.denoiser.mask_id is not None:
            logits[..., self.denoiser.mask_id] = -torch.inf  # the mask token is never a prediction
        return (logits.argmax(-1) == completion).all(1).tolist()


class _IdTokenizer:
    """encode_prompts over lists of ids that are already tokens."""

    @staticmethod
    def encode(ids):
        return list(ids)
