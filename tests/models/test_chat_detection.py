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


SUITE = """
suite: chat-plan
models:
  llada: {name: llada, params: {preset: tiny, device: cpu, dtype: float32, chat: true}}
tasks:
  add: {name: addition, params: {n_digits: 2}, split: test, n_items: 4}
studies:
  - id: gen
    kind: generate
    model: llada
    task: add
    sampler: {name: low_confidence, params: {steps: 2}}
    batch_size: 4
    max_tokens: MAXTOK
"""


def test_max_tokens_plans_the_tokens_fed_after_the_chat_template(tmp_path, monkeypatch):
    """The chat template adds 18 characters ("user: ", "\\nassistant: ") to each 6-character prompt:
    batches are planned from the tokens fed, so no pass exceeds max_tokens."""
    from harness.runner import Runner
    from tests.helpers import Recorder, write_suite

    seen = []
    real_model = Runner.model

    def recording_model(self, cell):
        rec = Recorder(real_model(self, cell))
        seen.append(rec)
        return rec

    monkeypatch.setattr(Runner, "model", recording_model)
    probe = MODELS.build("llada", {"preset": "tiny", "device": "cpu", "dtype": "float32", "chat": True}).load()
    fed = len(prompt_ids(probe, "12+34="))
    assert fed == len(probe.tokenizer.encode("12+34=")) + 18
    from harness.registry import TASKS

    gen_length = TASKS.build("addition", {"n_digits": 2}).gen_length
    cap = 2 * (fed + gen_length)  # two units per pass when counted as fed; four when counted raw
    Runner(write_suite(tmp_path, SUITE.replace("MAXTOK", str(cap))), results=tmp_path / "r", progress=False).run()
    inputs = [x for rec in seen for x in rec.inputs]
    assert inputs and all(x.shape[0] * x.shape[1] <= cap for x in inputs)
    assert max(x.shape[0] for x in inputs) == 2
