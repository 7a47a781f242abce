"""Whether prompts get the chat template: read from the checkpoint (its tokenizer's template and its
own name, never the folders above it), and one model option `chat: auto | true | false` that every
study, the RL loop and eval read through the denoiser's declared prompting, recorded in the
manifest (the model's provenance) and in every record."""
from __future__ import annotations

import json

import pytest

from harness.models._family import detect_chat
from harness.models._hf_common import char_tokenizer, save_pretrained_dir
from harness.prompting import prompt_ids, prompting_record
from harness.registry import MODELS
from harness.types import HarnessError

pytest.importorskip("transformers")


def tok(template: bool = True):
    t = char_tokenizer(eos_id=126, pad_id=125, mask_id=127)
    if not template:
        t.chat_template = None
    return t


def ckpt_dir(root, *parts, name_or_path=None):
    d = root.joinpath(*parts)
    d.mkdir(parents=True)
    cfg = {"model_type": "llada"} if name_or_path is None else {"model_type": "llada", "_name_or_path": name_or_path}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_detection_reads_the_checkpoint_not_the_folders_above_it(tmp_path):
    base_under_chat = ckpt_dir(tmp_path, "chat-experiments", "LLaDA-8B-Base")
    on, why = detect_chat(str(base_under_chat), tok())
    assert on is False and "'LLaDA-8B-Base' says Base" in why
    # a local Instruct directory with no "instruct" in its name: its tokenizer ships a template
    assert detect_chat(str(ckpt_dir(tmp_path, "models", "run-7")), tok())[0] is True
    assert detect_chat(str(ckpt_dir(tmp_path, "models", "run-8")), tok(template=False))[0] is False
    # config.json's _name_or_path names the checkpoint a directory was saved from
    assert detect_chat(str(ckpt_dir(tmp_path, "a", "ckpt", name_or_path="GSAI-ML/LLaDA-8B-Base")), tok())[0] is False
    snap = ckpt_dir(tmp_path, "hub", "models--GSAI-ML--LLaDA-8B-Instruct", "snapshots", "0123abcd")
    assert detect_chat(str(snap), tok())[0] is True
    base_snap = ckpt_dir(tmp_path, "hub", "models--Dream-org--Dream-v0-Base-7B", "snapshots", "0123abcd")
    assert detect_chat(str(base_snap), tok())[0] is False
    assert detect_chat("GSAI-ML/LLaDA-8B-Instruct", tok())[0] is True  # a hub id: its repository name
    assert detect_chat(None, tok())[0] is False  # a random-init preset


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_chat_option_auto_true_false_reaches_prompts_records_and_manifest(kind, tmp_path):
    ref = MODELS.build(kind, {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()
    base = save_pretrained_dir(ref.module, ref.tokenizer.hf, tmp_path / "chat-experiments" / f"{kind}-Base")
    sft = save_pretrained_dir(ref.module, ref.tokenizer.hf, tmp_path / "models" / "run-7")

    def build(path, chat="auto"):
        return MODELS.build(kind, {"path": str(path), "device": "cpu", "dtype": "float32", "chat": chat})

    plain, templated = list(ref.tokenizer.encode("2+2=")), list(ref.tokenizer.encode("user: 2+2=\nassistant: "))
    for path, chat, on in [(base, "auto", False), (sft, "auto", True), (base, True, True), (sft, False, False)]:
        d = build(path, chat).load()
        assert prompting_record(d)["chat"] is on, (path, chat)
        ids = prompt_ids(d, "2+2=")
        assert ids[-len(templated if on else plain):] == (templated if on else plain)
        prov = build(path, chat).provenance()["chat"]
        assert prov["option"] == chat and prov["on"] is on and prov["source"]
    nt = tmp_path / "models" / "no-template"
    save_pretrained_dir(ref.module, tok(template=False), nt)
    assert build(nt).load().prompting["chat"] is False
    with pytest.raises(HarnessError, match="chat: true, but the tokenizer has no chat template"):
        build(nt, True).load()
    with pytest.raises(HarnessError, match="chat"):
        MODELS.build(kind, {"preset": "tiny", "chat": "yes"})
