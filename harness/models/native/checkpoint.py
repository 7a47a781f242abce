"""Checkpoint directories for the native models: config.json + safetensors weights.

A directory holds `config.json` and either one `model.safetensors` or shards listed by
`model.safetensors.index.json` (its `weight_map`: parameter name -> file). Tensors are matched to
the module by name (the official layouts: LLaDA `model.transformer.*`, Dream `model.*` + `lm_head`);
a missing or unexpected name is an error naming the file and the key, and so is a name found in
two files (without an index every `*.safetensors` of the directory is read: a stray export beside
the weights must not silently replace a tensor). The module is built on the
meta device and takes the loaded tensors as they are (`assign=True`), so an 8B model is held once.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.types import HarnessError

INDEX = "model.safetensors.index.json"
ALLOW = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "tokenizer*"]  # what a hub download fetches


def resolve_dir(path: str, revision: str | None = None) -> Path:
    """A local checkpoint directory, or a hub id downloaded (config, weights, tokenizer; no code)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    local = p.exists() or p.is_absolute() or path.startswith((".", "~")) or path.count("/") != 1
    if local:
        raise HarnessError(f"model {path!r}: not an existing directory (offline machines need a local directory "
                           "holding config.json, the safetensors weights and the tokenizer)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, revision=revision, allow_patterns=ALLOW))
    except Exception as exc:  # offline, unknown id, gated repository
        raise HarnessError(f"model {path!r}: not a local directory and not downloadable from the Hugging Face hub "
                           f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
                           ) from None


def read_config(path: Path) -> dict:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise HarnessError(f"model {str(path)!r}: no config.json in the directory")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{f}: not valid JSON ({exc})") from None


def generation_eos(path: Path) -> tuple[int, ...]:
    """The stop ids a checkpoint's generation_config.json declares (`eos_token_id`, an id or a list);
    () when the file or the key is absent."""
    f = Path(path) / "generation_config.json"
    if not f.is_file():
        return ()
    try:
        eos = json.loads(f.read_text()).get("eos_token_id")
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{f}: not valid JSON ({exc})") from None
    if eos is None:
        return ()
    ids = eos if isinstance(eos, list) else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise HarnessError(f"{f}: eos_token_id = {eos!r}, expected an id or a list of ids")
    return tuple(ids)


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (the index's shards, or *.safetensors)."""
    path = Path(path)
    index = path / INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise HarnessError(f"{index}: lists shard(s) {missing} that are not in the directory")
        return [path / s for s in shards]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        bins = sorted(p.name for p in path.glob("*.bin"))
        extra = f" (found {bins}: convert them to safetensors, or use impl: remote)" if bins else ""
        raise HarnessError(f"model {str(path)!r}: no *.safetensors weights in the directory{extra}")
    return files


def load_weights(module: torch.nn.Module, path: Path, *, dtype: torch.dtype, device: torch.device,
                 optional: tuple[str, ...] = ()) -> torch.nn.Module:
    """Fill `module` (built on the meta device) with the directory's tensors, by name, in `dtype`
    on `device`. Names in `optional` may be absent (a tied output head); every other name of the
    module must be present and every name in the files must belong to the module."""
    from safetensors.torch import load_file

    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    wanted = set(shapes)
    state, origin = {}, {}
    for f in weight_files(path):
        for name, t in load_file(str(f), device=str(device)).items():
            if name in origin:  # a stray export beside the weights would silently replace the tensor
                raise HarnessError(f"model {str(path)!r}: tensor {name!r} is in both {origin[name]} and {f.name}; "
                                   "remove the file that does not belong to the checkpoint (or list the shards in "
                                   f"{INDEX})")
            state[name] = t.to(dtype) if t.is_floating_point() else t
            origin[name] = f.name
    unexpected = sorted(set(state) - wanted)
    missing = sorted(wanted - set(state) - set(optional))
    if unexpected:
        k = unexpected[0]
        raise HarnessError(f"{Path(path) / origin[k]}: tensor {k!r} (and {len(unexpected) - 1} more) has no place in "
                           f"the native {type(module).__name__}; the checkpoint is not the architecture its "
                           "config.json names (use impl: remote for other code)")
    if missing:
        raise HarnessError(f"model {str(path)!r}: the weights lack {missing[:3]} ({len(missing)} missing tensor(s)) "
                           f"that the native {type(module).__name__} needs")
    for name, t in state.items():
        if tuple(t.shape) != shapes[name]:
            raise HarnessError(f"{Path(path) / origin[name]}: tensor {name!r} has shape {tuple(t.shape)}, "
                               f"config.json implies {shapes[name]}")
    module.load_state_dict(state, strict=False, assign=True)
    return module


def save_checkpoint(module: torch.nn.Module, config: dict, path: Path) -> Path:
    """Write `config` as config.json and the module's tensors as model.safetensors (tied tensors once)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    seen, state = set(), {}
    for name, t in module.state_dict().items():
        if t.data_ptr() in seen:
            continue  # a tied head: stored once, under the embedding's name
        seen.add(t.data_ptr())
        state[name] = t.detach().contiguous().cpu()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path
