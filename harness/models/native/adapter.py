"""`impl: native | remote` for the llada and dream adapters.

`native` (the default): presets and checkpoint directories build the torch-only modules of this
package; a checkpoint is read as config.json + safetensors by name (no remote code, no transformers
in the forward pass; the tokenizer still loads through transformers, without remote code).
`remote`: the checkpoint's own code through transformers' trust_remote_code (for variants the
native code refuses); presets then build the stand-ins. Remote code written for transformers 4.x
often fails under 5.x; those failures become a HarnessError that says to use `impl: native`.
"""
from __future__ import annotations

import abc
import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from harness.models._hf_common import DiffusionModel, _Where, resolve_device, resolve_dtype
from harness.models.hf import _pretrained, weights_sha256
from harness.types import HarnessError

# What transformers 5 raises on remote code written for 4.x (measured on LLaDA's and Dream's files):
# AttributeError 'all_tied_weights_keys', TypeError tie_weights(recompute_mapping=...) and
# validate(user_set_attributes=...), KeyError 'default' (RoPE init), ImportError of removed names.
REMOTE_FAILURES = (AttributeError, TypeError, KeyError, ImportError, NameError)


@dataclass(frozen=True, kw_only=True)
class NativeOrRemote(DiffusionModel):
    """DiffusionModel fields plus `impl`; subclasses name their native module and config classes."""

    impl: Literal["native", "remote"] = "native"

    preset_base: ClassVar[dict] = {}  # config.json keys a preset adds to its dims (model_type ...)
    known_mask: ClassVar[int | None] = None  # the family's mask id, for a config.json without one
    model_types: ClassVar[tuple[str, ...]] = ()  # config.json model_type values of the family (remote too)

    # -- native ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def native_classes(self) -> tuple[type, type]:
        """(the native module class, its config class with `from_json`)."""

    def checkpoint_dir(self) -> Path:
        from harness.models.native.checkpoint import resolve_dir

        return resolve_dir(self.path, self.revision)

    def native_config_dict(self) -> dict:
        """The config.json keys of the model to build (a preset's, or the checkpoint's)."""
        from harness.models.native.checkpoint import read_config

        if self.preset is not None:
            return {**self.preset_base, **self.resolved_config()}
        return read_config(self.checkpoint_dir())

    def build_module(self):
        if self.impl == "remote":
            return self._build_remote()
        from harness.models.native.checkpoint import load_weights
        from harness.models.native.common import DefaultedKeyWarning, meta_build, seeded_init

        dev = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, dev)
        module_cls, config_cls = self.native_classes()
        if self.preset is not None:
            with warnings.catch_warnings():  # a preset is the harness's own config: its defaults are chosen
                warnings.simplefilter("ignore", DefaultedKeyWarning)
                cfg = config_cls.from_json(self.native_config_dict(), f"model preset {self.preset!r}")
            module = meta_build(module_cls, cfg, self.attn).to_empty(device=dev).to(dtype)  # no global RNG use
            seeded_init(module, getattr(cfg, "init_std", getattr(cfg, "initializer_range", 0.02)), self.seed, dev)
            tok = self._load_tokenizer() if self.tokenizer else self.preset_tokenizer(cfg)
        else:
            where = self.checkpoint_dir()
            cfg = config_cls.from_json(self.native_config_dict(), str(where / "config.json"))
            tok = self._native_tokenizer(where)  # checked before the (larger) weights are read
            module = load_weights(meta_build(module_cls, cfg, self.attn), where, dtype=dtype, device=dev)
        return module.eval(), tok

    def _native_tokenizer(self, where: Path):
        import transformers

        spec = _Where(path=self.tokenizer or str(where), revision=None, trust_remote_code=False)
        return _pretrained(transformers.AutoTokenizer, spec)

    # -- remote ----------------------------------------------------------------------------------
    def _check_family(self, model_type, where: str) -> None:
        """Remote code still has to be this family's: another architecture (a GPT-2 directory) loads
        through AutoModel as a headless encoder and fails later with an AttributeError."""
        if self.model_types and model_type not in self.model_types:
            name = getattr(type(self), "registry_name", type(self).__name__)
            raise HarnessError(f"{where}: model_type {model_type!r} is not {name}'s ({' or '.join(self.model_types)}); "
                               f"impl: remote runs a {name} checkpoint's own code, not another architecture (use the "
                               "model kind of that architecture)")

    def remote_head(self, module):
        """The output head of a module built by the checkpoint's own code (None: the code built a
        backbone without one, as when auto_map names the base class)."""
        return module.get_output_embeddings()

    def _build_remote(self):
        import transformers

        local = Path(self.path).expanduser() if self.path is not None else None
        if local is not None and local.is_dir():  # checked before any remote code or weights are read
            from harness.models.native.checkpoint import read_config

            self._check_family(read_config(local).get("model_type"), str(local / "config.json"))
        with isolated_auto_registry():
            try:
                module, tok = super().build_module()
            except REMOTE_FAILURES as exc:
                first = str(exc).splitlines()[0][:200] if str(exc) else ""
                raise HarnessError(
                    f"model {self.path or self.preset!r}: the checkpoint's remote code does not run under the "
                    f"installed transformers {transformers.__version__} ({type(exc).__name__}: {first}); use "
                    "impl: native (LLaDA and Dream architectures load without remote code), or a transformers "
                    "version the code was written for") from None
        self._check_family(getattr(module.config, "model_type", None), f"model {self.path or self.preset!r}")
        if self.remote_head(module) is None:
            raise HarnessError(f"model {self.path or self.preset!r}: the remote code built {type(module).__name__}, "
                               "which has no output head (logits); the checkpoint's auto_map must name its LM class")
        check_rope_buffers(module, self.path or self.preset)
        return module, tok

    def special_ids(self, module, tok, default_mask):
        mask, eos, pad = super().special_ids(module, tok, default_mask)
        if self.impl == "remote" and self.path is not None and Path(self.path).expanduser().is_dir():
            from harness.models.native.checkpoint import read_config

            raw = read_config(Path(self.path).expanduser())
            if "mask_token_id" not in raw:  # the remote config class would invent one (LLaDA's: 50256)
                mask = tok.mask_token_id if tok.mask_token_id is not None else self.known_mask
                if mask is None or mask >= int(module.get_output_embeddings().weight.shape[0]):
                    raise HarnessError(f"{self.path}/config.json: no 'mask_token_id' and the tokenizer names no mask "
                                       "token: add the key")
        return mask, eos, pad

    def provenance(self) -> dict:
        if self.preset is not None:
            return {**super().provenance(), "impl": self.impl}
        if self.impl == "remote":
            with isolated_auto_registry():
                return {**super().provenance(), "impl": "remote"}
        where = self.checkpoint_dir()
        commit = where.name if where.parent.name == "snapshots" else None  # a hub download: the snapshot's commit
        out = {"path": self.path, "revision": self.revision, "impl": "native", "commit": commit,
               "weights_sha256": None, "chat": self.chat_record(self._native_tokenizer(where))}
        out["weights_sha256"], out["weights_files"] = weights_sha256(where)
        return out


@contextlib.contextmanager
def isolated_auto_registry():
    """Load remote code with no remote-code class registered in transformers' Auto mappings, and
    leave the mappings as they were afterwards.

    LLaDA's files call AutoConfig.register("llada", ...) and AutoModel.register(...) at import, and
    transformers 5 prefers such a registered class to a directory's own `auto_map`: once one LLaDA
    directory's code is imported, every later "llada" directory loads into that code (a size-mismatch
    error, or silently the wrong code). Registrations of remote-code classes (module
    `transformers_modules.*`) are set aside for the load and restored after it."""
    from transformers.models.auto import auto_factory, configuration_auto, modeling_auto

    maps = [configuration_auto.CONFIG_MAPPING] + [m for m in vars(modeling_auto).values()
                                                  if isinstance(m, auto_factory._LazyAutoMapping)]
    saved = [dict(m._extra_content) for m in maps]

    def remote(obj) -> bool:
        return getattr(obj, "__module__", "").startswith("transformers_modules")

    for m in maps:
        for key in [k for k, v in m._extra_content.items() if remote(k) or remote(v)]:
            del m._extra_content[key]
    try:
        yield
    finally:
        for m, s in zip(maps, saved):
            m._extra_content.clear()
            m._extra_content.update(s)


def check_rope_buffers(module, where) -> None:
    """Remote code whose rotary `inv_freq` is a non-persistent buffer (Dream's) relies on transformers
    to recompute it after loading; transformers 5 leaves it uninitialised (wrong, load-dependent
    logits). Refuse such a model rather than compute with it."""
    for name, mod in module.named_modules():
        inv = getattr(mod, "inv_freq", None)
        if not isinstance(inv, torch.Tensor) or inv.dim() != 1:
            continue
        cfg = getattr(mod, "config", None) or module.config
        theta = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta")
        if theta is None or getattr(mod, "rope_type", "default") != "default":
            continue
        dim = 2 * inv.numel()
        want = 1.0 / (float(theta) ** (torch.arange(0, dim, 2, dtype=torch.float32, device=inv.device) / dim))
        if not torch.allclose(inv.float(), want, rtol=1e-5, atol=0.0):
            raise HarnessError(f"model {where!r}: the remote code's rotary buffer {name}.inv_freq was not initialised "
                               "by this transformers version (logits would be wrong and change per load); use impl: "
                               "native")


def config_block_size(spec) -> int | None:
    """A block-diffusion model spec's block size known before loading, for plan-time budgets
    (harness/config.py): its `block_size` field, else the preset's (with `config` overrides), else a
    local checkpoint directory's config.json; None when only loading can tell (a hub id)."""
    if getattr(spec, "block_size", None):
        return int(spec.block_size)
    try:
        if spec.preset is not None:
            return spec.native_config_dict().get("block_size")
        p = Path(spec.path).expanduser() if spec.path else None
        if p is None or not (p / "config.json").is_file():
            return None
        from harness.models.native.checkpoint import read_config

        return read_config(p).get("block_size")
    except (HarnessError, OSError, ValueError):
        return None
