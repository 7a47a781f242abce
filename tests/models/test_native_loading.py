"""Loading LLaDA/Dream checkpoints: the native reader (config.json + safetensors by name, shards,
errors that name the key), and `impl: remote` (the checkpoint's own code) with its failure modes
under transformers 5: errors that point to `impl: native`, the global "llada" registration, the
uninitialised Dream RoPE buffer, the missing mask id. The public code comes from
../shared/fixtures/real-code (see tests/models/_real_code.py); tests needing it skip without it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.registry import MODELS
from harness.types import HarnessError
from tests.models import _real_code as rc

pytest.importorskip("transformers")


def load(path, **kw):
    return MODELS.build(kw.pop("kind", "llada"), {"path": str(path), "device": "cpu", "dtype": "float32", **kw}).load()


def copy_ckpt(src: Path, dst: Path, marker: str, edit=None) -> Path:
    """A copy of a checkpoint directory (weights linked, not copied) whose code files differ by a
    comment, so transformers imports them as a module of their own (unpatched by tf5_shim)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            (dst / f.name).symlink_to(f)
        else:
            shutil.copy(f, dst / f.name)
            if f.suffix == ".py":
                (dst / f.name).chmod(0o644)
                with (dst / f.name).open("a") as fh:
                    fh.write(f"\n# {marker}\n")
    if edit:
        cfg = json.loads((dst / "config.json").read_text())
        edit(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# -- the native reader -------------------------------------------------------------------------
def test_unsupported_variants_and_missing_keys_are_named():
    from harness.models.native.dream import DreamConfig
    from harness.models.native.llada import LLaDAConfig

    base = dict(model_type="llada", block_type="llama", activation_type="silu", layer_norm_type="rms", rope=True,
                d_model=64, n_heads=4, n_layers=2, vocab_size=126464, mask_token_id=126336)
    assert LLaDAConfig.from_json(base, "x").n_kv_heads == 4
    with pytest.raises(HarnessError, match="x: block_type = 'sequential' .*llama.*impl: remote"):
        LLaDAConfig.from_json({**base, "block_type": "sequential"}, "x")
    with pytest.raises(HarnessError, match=r"rope = False \(absent: the default\)"):
        LLaDAConfig.from_json({k: v for k, v in base.items() if k != "rope"}, "x")
    with pytest.raises(HarnessError, match="no 'n_layers'"):
        LLaDAConfig.from_json({k: v for k, v in base.items() if k != "n_layers"}, "x")
    with pytest.raises(HarnessError, match="model_type 'Dream' is not LLaDA's"):
        LLaDAConfig.from_json({**base, "model_type": "Dream"}, "x")
    # no mask_token_id: LLaDA's 126336 when the vocabulary holds it (the public config class says 50256)
    no_mask = {k: v for k, v in base.items() if k != "mask_token_id"}
    assert LLaDAConfig.from_json(no_mask, "x").mask_token_id == 126336
    with pytest.raises(HarnessError, match="no 'mask_token_id'.*add the key"):
        LLaDAConfig.from_json({**no_mask, "vocab_size": 1000}, "x")
    dream = dict(model_type="Dream", vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(HarnessError, match="rope_scaling"):
        DreamConfig.from_json({**dream, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "x")
    with pytest.raises(HarnessError, match="use_sliding_window"):
        DreamConfig.from_json({**dream, "use_sliding_window": True}, "x")


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_sharded_checkpoint_loads_like_one_file(kind, tmp_path):
    """model.safetensors.index.json + shards load by name; a missing tensor or a wrong shape is an
    error naming it."""
    from safetensors.torch import load_file, save_file

    from harness.models._hf_common import save_pretrained_dir

    ref = MODELS.build(kind, {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()
    one = save_pretrained_dir(ref.module, ref.tokenizer.hf, tmp_path / "one")
    state = load_file(str(one / "model.safetensors"))
    names = sorted(state)
    sharded = tmp_path / "sharded"
    shutil.copytree(one, sharded)
    (sharded / "model.safetensors").unlink()
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for f, ks in halves.items():
        save_file({k: state[k] for k in ks}, str(sharded / f))
    index = {"weight_map": {k: f for f, ks in halves.items() for k in ks}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    x = torch.randint(0, 96, (2, 9))
    with torch.no_grad():
        assert torch.equal(load(sharded, kind=kind).logits(x), ref.logits(x))
    save_file({k: state[k] for k in halves["model-00002-of-00002.safetensors"][1:]},
              str(sharded / "model-00002-of-00002.safetensors"))
    with pytest.raises(HarnessError, match="lack .*missing tensor"):
        load(sharded, kind=kind)
    bad = dict(state)
    k = names[-1]
    bad[k] = torch.zeros(3, 3)
    save_file(bad, str(one / "model.safetensors"))
    with pytest.raises(HarnessError, match=f"tensor '{k}' has shape \\(3, 3\\)"):
        load(one, kind=kind)


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_a_mask_other_than_left_padding_is_applied_as_a_mask(kind):
    """Right padding is not the grouped fast path: the mask is applied, real positions as alone."""
    d = MODELS.build(kind, {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()
    x = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(0))
    attn = torch.ones(2, 10, dtype=torch.bool)
    attn[0, 7:] = False
    with torch.no_grad():
        full, alone = d.logits(x, attn), d.logits(x[:1, :7])
    torch.testing.assert_close(full[0, :7], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.equal(full[0, :7], d.logits(x[:1])[0, :7])  # the padded keys really were masked


@pytest.mark.slow  # builds or loads a public-code checkpoint
def test_native_forward_needs_no_transformers(llada_real_ckpt):
    """With transformers made unimportable, the native module reads the public checkpoint and runs."""
    code = f"""
import sys; sys.modules["transformers"] = None
import torch
from harness.models.native.checkpoint import load_weights, read_config
from harness.models.native.common import meta_build
from harness.models.native.llada import LLaDA, LLaDAConfig
path = {str(llada_real_ckpt)!r}
cfg = LLaDAConfig.from_json(read_config(path), path)
m = load_weights(meta_build(LLaDA, cfg, "sdpa"), path, dtype=torch.float32, device=torch.device("cpu"))
out = m(torch.tensor([[126080, 10, 11, 126336]])).logits
assert out.shape == (1, 4, 126464) and torch.isfinite(out).all()
print("ok", cfg.mask_token_id)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=rc.REPO, timeout=300)
    assert res.returncode == 0 and res.stdout.split() == ["ok", "126336"], res.stderr[-2000:]


@pytest.mark.slow  # builds or loads a public-code checkpoint
def test_real_code_checkpoint_special_ids_and_chat_template(llada_real_ckpt, dream_real_ckpt):
    la, dr = load(llada_real_ckpt), load(dream_real_ckpt, kind="dream")
    assert (la.mask_id, la.eos_id, la.pad_id, la.shift_logits, la.vocab_size) == (126336, 126081, 126081, False, 126464)
    assert (dr.mask_id, dr.eos_id, dr.pad_id, dr.shift_logits, dr.vocab_size) == (151666, 151643, 151643, True, 152064)
    assert la.tokenizer.apply_chat_template("hi").startswith("<|startoftext|><|start_header_id|>user")
    assert "<|im_start|>assistant" in dr.tokenizer.apply_chat_template("hi")


@pytest.mark.slow  # builds or loads a public-code checkpoint
# -- impl: remote ------------------------------------------------------------------------------
@pytest.mark.slow  # builds or loads a public-code checkpoint
@pytest.mark.skipif(not __import__("transformers").__version__.startswith("5."),
                    reason="the public files run unpatched under transformers 4.x")
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_remote_code_that_transformers_cannot_run_is_a_clear_error(kind, llada_real_ckpt, dream_real_ckpt,
                                                                   tmp_path):
    """The public files, unpatched, under the pinned transformers 5: a HarnessError naming the
    transformers version and `impl: native` (the native path loads the same directory)."""
    src = llada_real_ckpt if kind == "llada" else dream_real_ckpt
    path = copy_ckpt(src, tmp_path / f"{kind}-unpatched", "unpatched copy")
    with pytest.raises(HarnessError, match=r"does not run under the installed transformers .*impl: native"):
        load(path, kind=kind, impl="remote")
    assert load(path, kind=kind).mask_id in (126336, 151666)


@pytest.mark.slow  # builds or loads a public-code checkpoint
@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_remote_path_with_the_shim_equals_native(kind, llada_real_ckpt, dream_real_ckpt):
    path = llada_real_ckpt if kind == "llada" else dream_real_ckpt
    rc.real_llada(path) if kind == "llada" else rc.real_dream(path)  # tf5_shim patches the remote classes
    remote, nat = load(path, kind=kind, impl="remote"), load(path, kind=kind)
    assert type(remote.module).__module__.startswith("transformers_modules")
    x = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        assert torch.equal(remote.logits(x), nat.logits(x))


@pytest.mark.slow  # builds or loads a public-code checkpoint
def test_second_remote_llada_directory_keeps_its_own_code(llada_real_ckpt, tmp_path):
    """Importing the public LLaDA file registers "llada" with transformers' Auto classes, and
    transformers 5 then loads every "llada" directory into those classes (measured: the stand-in
    directory below got the public LLaDAModelLM). The adapter sets such registrations aside while
    it loads remote code, so a second directory keeps its own code, and restores them after."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from harness.models._hf_common import save_pretrained_dir

    first = copy_ckpt(llada_real_ckpt, tmp_path / "llada-registered", "registers globally")
    get_class_from_dynamic_module("modeling_llada.LLaDAModelLM", str(first))  # a user's import: registers
    try:
        registered = CONFIG_MAPPING._extra_content.get("llada")
        assert registered is not None and registered.__module__.startswith("transformers_modules")
        tiny = MODELS.build("llada", {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()
        other = save_pretrained_dir(tiny.module, tiny.tokenizer.hf, tmp_path / "standin", "llada_standin")
        d = load(other, impl="remote")
        assert type(d.module).__module__.split(".")[-1] == "llada_standin" and d.vocab_size == 128
        assert CONFIG_MAPPING._extra_content.get("llada") is registered  # restored
    finally:
        CONFIG_MAPPING._extra_content.pop("llada", None)


@pytest.mark.slow  # builds or loads a public-code checkpoint
def test_remote_llada_without_mask_token_id_gets_126336(llada_real_ckpt, tmp_path):
    path = copy_ckpt(llada_real_ckpt, tmp_path / "llada-nomask", "no mask id",
                     edit=lambda c: c.pop("mask_token_id"))
    rc.real_llada(path)
    remote = load(path, impl="remote")
    assert remote.module.config.mask_token_id == 50256  # what the public config class invents
    assert remote.mask_id == 126336 and load(path).mask_id == 126336


@pytest.mark.slow  # builds or loads a public-code checkpoint
def test_uninitialised_remote_rope_buffer_is_refused(dream_real_ckpt):
    from harness.models.native.adapter import check_rope_buffers

    real = rc.real_dream(dream_real_ckpt)
    check_rope_buffers(real, "dream")  # the shim recomputed it: accepted
    with torch.no_grad():
        real.model.rotary_emb.inv_freq.zero_()  # what transformers 5 can leave there
    with pytest.raises(HarnessError, match=r"rotary_emb.inv_freq was not initialised.*impl: native"):
        check_rope_buffers(real, "dream")


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_a_tensor_in_two_files_without_an_index_is_an_error_naming_both(kind, tmp_path):
    """Without an index every *.safetensors is read; a stray export that repeats a tensor name would
    silently replace the model's tensor, so a name found in two files is an error naming both."""
    from safetensors.torch import load_file, save_file

    from harness.models._hf_common import save_pretrained_dir

    ref = MODELS.build(kind, {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()
    path = save_pretrained_dir(ref.module, ref.tokenizer.hf, tmp_path / "ckpt")
    state = load_file(str(path / "model.safetensors"))
    name = sorted(state)[0]
    save_file({name: torch.zeros_like(state[name])}, str(path / "zz-partial-export.safetensors"))
    with pytest.raises(HarnessError, match=f"tensor '{name}' is in both .*model.safetensors.*"
                                           "zz-partial-export.safetensors"):
        load(path, kind=kind)


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_remote_with_another_architecture_is_a_harness_error(kind, tmp_path):
    """A GPT-2 directory under impl: remote: AutoModel would build a headless GPT2Model and the adapter
    end in an AttributeError (exit 1); it is the clear error (exit 2) that impl: native gives."""
    import transformers

    from harness.models._hf_common import char_tokenizer

    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=128, n_positions=32,
                                  bos_token_id=126, eos_token_id=126)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    char_tokenizer(eos_id=126, pad_id=125, mask_id=127).save_pretrained(tmp_path / "gpt2")
    for impl in ("native", "remote"):
        with pytest.raises(HarnessError, match=r"gpt2/config.json: model_type 'gpt2' is not"):
            load(tmp_path / "gpt2", kind=kind, impl=impl)
    from harness.cli import main

    suite = tmp_path / "s.yaml"
    suite.write_text(f"suite: s\nmodels:\n  m: {{name: {kind}, params: {{path: {tmp_path / 'gpt2'}, impl: remote, "
                     "device: cpu, dtype: float32}}\ntasks:\n  add: {name: addition, params: {}, n_items: 1}\n"
                     "studies:\n  - id: g\n    kind: generate\n    model: m\n    task: add\n"
                     "    sampler: {name: low_confidence, params: {steps: 2}}\n")
    assert main(["run", str(suite), "--results", str(tmp_path / "r")]) == 2  # the CLI's error exit, no traceback


@pytest.mark.parametrize("kind", ["llada", "dream", "sdar"])
def test_an_absent_key_that_changes_the_logits_is_warned_about(kind, tmp_path):
    """A config.json without rope_theta loads with the reference default (10000) and other logits:
    the load warns, naming the key and the value used; a complete config and a preset do not."""
    import warnings

    from harness.models._hf_common import save_pretrained_dir
    from harness.models.native.common import DefaultedKeyWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", DefaultedKeyWarning)  # a preset: no warning
        ref = MODELS.build(kind, {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()
    path = save_pretrained_dir(ref.module, ref.tokenizer.hf, tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("rope_theta") == 10000.0:  # a preset at the default itself: state another value
        (path / "config.json").write_text(json.dumps({**cfg, "rope_theta": 1e6}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DefaultedKeyWarning)  # every key stated: no warning
        full = load(path, kind=kind)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg.pop("rope_theta") != 10000.0
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(DefaultedKeyWarning, match=r"config.json has no 'rope_theta'; using the default rope_theta = "
                                                 r"10000.0"):
        defaulted = load(path, kind=kind)
    x = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(full.logits(x), defaulted.logits(x))


@pytest.mark.slow  # builds or loads a public-code checkpoint
def test_remote_llada_padded_batch_equals_single_rows(llada_real_ckpt):
    """The public modeling_llada.py builds a padding mask but calls attention with attn_mask=None, so
    left padding leaks into every row. Under impl: remote a padded batch runs one forward per distinct
    padding: each row's logits and greedy tokens are exactly those it has alone."""
    from harness.registry import SAMPLERS

    rc.real_llada(llada_real_ckpt)  # tf5_shim patches the remote classes
    d = load(llada_real_ckpt, impl="remote")
    assert type(d.module).__module__.startswith("transformers_modules")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(200, 2000, (4, 11), generator=g)
    pads = [0, 4, 2, 4]
    attn = torch.ones(4, 11, dtype=torch.bool)
    for i, n in enumerate(pads):
        attn[i, :n] = False
        x[i, :n] = d.pad_id
    with torch.no_grad():
        full = d.logits(x, attn)
        leaked = d.module(input_ids=x, attention_mask=attn.long()).logits  # the public file on its own
        for i, n in enumerate(pads):
            alone = d.logits(x[i:i + 1, n:])
            assert torch.equal(full[i, n:], alone[0])
        assert (leaked[1, 4:] - full[1, 4:]).abs().max() > 1e-3  # what the batch computed before
    sampler = SAMPLERS.build("low_confidence", {"steps": 8, "block_length": 8})
    out = sampler(d, x, generator=torch.Generator().manual_seed(0), prompt_mask=attn, gen_length=8)
    for i, n in enumerate(pads):
        one = sampler(d, x[i:i + 1, n:], generator=torch.Generator().manual_seed(0), gen_length=8)
        assert torch.equal(out.tokens[i], one.tokens[0])
    bad = attn.clone()
    bad[0, 5] = False  # padding inside a row: no span to run alone
    with pytest.raises(HarnessError, match="one non-empty contiguous span"):
        d.logits(x, bad)
