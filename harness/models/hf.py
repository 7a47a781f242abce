"""Adapters for transformers models: masked LMs (`hf_masked`) and causal LMs (`hf_causal`).

`hf_masked` loads any AutoModelForMaskedLM (BERT, ModernBERT, ...): one forward pass predicts every
masked position, so it is a (one-step) masked denoiser with BERT's [MASK] as the mask token.
`hf_causal` loads any AutoModelForCausalLM as the autoregressive baseline: logits at position k
predict the token at k+1 (`shift_logits`), scored exactly by the `autoregressive` estimator.

transformers is imported inside functions only, so that `import harness.models.hf` (which the
registry does to list the models) stays cheap (docs/architecture.md, convention 5).
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.registry import MODELS
from harness.types import ArchInfo, HarnessError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Masked LMs whose embeddings derive positions from the pad token themselves (padding_idx + 1 +
# cumsum of non-pad tokens); explicit 0-based position_ids would shift them, so they get none.
_SELF_POSITIONED = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                    "data2vec-text", "xmod", "longformer", "luke", "ibert", "esm"}


class HFTokenizer:
    """The harness tokenizer interface over a transformers tokenizer.

    encode() adds no special tokens (the harness lays out prompt and completion itself);
    decode() stops at the first EOS and drops special tokens ([MASK], [PAD], ...).
    """

    def __init__(self, hf_tokenizer: Any, eos_id: int):
        self.hf = hf_tokenizer
        self.eos_id = eos_id

    def __len__(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids, stop_at_eos: bool = True) -> str:
        ids = [int(i) for i in ids]
        if stop_at_eos and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.hf.decode(ids, skip_special_tokens=True)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.LongTensor:
    """[B, T] mask -> [B, T] position ids counting real tokens only (0 on left padding).

    Models with absolute (or rotary) positions would otherwise see a left-padded row's tokens at
    shifted positions, and the same sequence would score differently alone and in a batch.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _accepts(module: Any, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


class HFDenoiser:
    """Common adapter of a transformers LM: ids/attention mask in, [B, T, V] logits out."""

    shift_logits = False

    def __init__(self, module: Any, tokenizer: HFTokenizer, *, mask_id: int | None, eos_id: int,
                 pad_id: int, position_ids: bool):
        self.module = module
        self.tokenizer = tokenizer
        self.mask_id = mask_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        # The output width, which can exceed len(tokenizer) (vocabularies padded to a multiple of 64).
        head = module.get_output_embeddings()
        self.vocab_size = int(head.weight.shape[0] if head is not None else module.config.vocab_size)
        self._position_ids = position_ids

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def arch(self) -> ArchInfo:
        # Embedding matrices (tokens, positions, token types) cost no FLOPs per token beyond a
        # lookup; a tied output head shares its tensor and parameters() yields it once.
        embed = {id(p) for m in self.module.modules() if isinstance(m, torch.nn.Embedding)
                 for p in m.parameters()}
        n = sum(p.numel() for p in self.module.parameters() if id(p) not in embed)
        cfg = self.module.config.get_text_config()
        return ArchInfo(n_params=n, n_layers=int(cfg.num_hidden_layers), d_model=int(cfg.hidden_size))

    def _kwargs(self, attention_mask: torch.Tensor | None) -> dict:
        if attention_mask is None:
            return {}
        kw = {"attention_mask": attention_mask.long()}
        if self._position_ids:
            kw["position_ids"] = positions_from_mask(attention_mask)
        return kw

    def logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.module(input_ids=x, **self._kwargs(attention_mask)).logits  # [B, T, V]


class HFCausalDenoiser(HFDenoiser):
    """A causal LM: the logits at k predict the token at k+1; no mask token."""

    shift_logits = True

    def _kwargs(self, attention_mask: torch.Tensor | None) -> dict:
        return {"use_cache": False, **super()._kwargs(attention_mask)}  # no KV cache to build


def _is_local(path: str) -> bool:
    """Whether `path` is meant as a filesystem path rather than a hub id like 'org/name'."""
    p = Path(path).expanduser()
    return p.exists() or p.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1


def _pretrained(loader: Any, spec: "HFModel", **kwargs) -> Any:
    """loader.from_pretrained(spec.path, ...) with errors that say what to do offline."""
    where = f"model {spec.path!r}"
    path = Path(spec.path).expanduser()
    if _is_local(spec.path) and not path.is_dir():
        raise HarnessError(f"{where}: not an existing directory (offline machines need a local directory "
                           "holding the saved model and tokenizer)")
    if spec.revision is not None:
        kwargs["revision"] = spec.revision
    try:
        return loader.from_pretrained(str(path) if path.is_dir() else spec.path,
                                      trust_remote_code=spec.trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:  # hub unreachable, unknown id, incomplete directory
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarnessError(
            f"{where}: cannot load {loader.__name__} ({first}); it is neither a complete local "
            "directory nor reachable on the Hugging Face hub (offline machines need a local "
            "directory holding the saved model and tokenizer)"
        ) from None


def weights_sha256(path: Path) -> tuple[str | None, list[str]]:
    """sha256 over the weights files of a local directory (*.safetensors, *.bin, sorted by name).

    The name of each file goes into the hash with its bytes, so a renamed shard changes it too.
    """
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin"))
    if not files:
        return None, []
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest(), [f.name for f in files]


@dataclass(frozen=True, kw_only=True)
class HFModel:
    """Fields shared by the transformers adapters; subclasses choose the Auto class."""

    path: str
    revision: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    def _tokenizer(self):
        import transformers

        return _pretrained(transformers.AutoTokenizer, self)

    def _module(self, auto_class: Any):
        module = _pretrained(auto_class, self, dtype=DTYPES[self.dtype])
        return module.eval().to(self.device)

    def provenance(self) -> dict:
        import transformers

        config = _pretrained(transformers.AutoConfig, self)
        out = {"path": self.path, "revision": self.revision,
               "commit": getattr(config, "_commit_hash", None), "weights_sha256": None}
        path = Path(self.path).expanduser()
        if path.is_dir():
            out["weights_sha256"], out["weights_files"] = weights_sha256(path)
        return out


@MODELS.register("hf_masked")
@dataclass(frozen=True, kw_only=True)
class HFMasked(HFModel):
    """A transformers masked LM (BERT, ModernBERT, ...) as a one-step masked denoiser."""

    def load(self) -> HFDenoiser:
        import transformers

        tok = self._tokenizer()  # checked before the (larger) weights are read
        if tok.mask_token_id is None:
            raise HarnessError(f"model {self.path!r}: the tokenizer has no mask token, so it "
                               "cannot serve as a masked denoiser (use hf_causal for causal LMs)")
        # The completion's end marker: BERT-style models end a segment with [SEP].
        eos = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        if eos is None:
            raise HarnessError(f"model {self.path!r}: the tokenizer has neither a sep nor an eos "
                               "token to end completions with")
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        module = self._module(transformers.AutoModelForMaskedLM)
        model_type = getattr(module.config, "model_type", "")
        positions = _accepts(module, "position_ids") and model_type not in _SELF_POSITIONED
        return HFDenoiser(module, HFTokenizer(tok, eos), mask_id=tok.mask_token_id, eos_id=eos,
                          pad_id=pad, position_ids=positions)


@MODELS.register("hf_causal")
@dataclass(frozen=True, kw_only=True)
class HFCausal(HFModel):
    """A transformers causal LM (GPT-2, Llama, Qwen, ...): the autoregressive baseline."""

    # No mask token and no noise: only components that declare `noise = "causal"` apply (checked when
    # a suite is planned, config.py `_check_noise`; `dlm-harness show` lists the same).
    noise: ClassVar[str] = "causal"
    applies: ClassVar[str] = "noise: causal (no mask token); estimators: autoregressive only; samplers: none"
    provides: ClassVar[tuple[str, ...]] = ("shifted_logits",)  # next-token logits: column k predicts k + 1

    def load(self) -> HFCausalDenoiser:
        import transformers

        tok = self._tokenizer()
        if tok.eos_token_id is None:
            raise HarnessError(f"model {self.path!r}: the tokenizer has no eos token")
        eos = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        module = self._module(transformers.AutoModelForCausalLM)
        return HFCausalDenoiser(module, HFTokenizer(tok, eos), mask_id=None, eos_id=eos, pad_id=pad,
                                position_ids=_accepts(module, "position_ids"))
