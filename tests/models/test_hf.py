"""Tests of the transformers adapters (hf_masked, hf_causal) and the `autoregressive` estimator.

Tiny randomly initialised BERT and GPT-2 models are built from configs and saved to a temporary
directory (no hub access): the adapters must load them like any local checkpoint.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from harness.registry import ESTIMATORS, MODELS
from harness.types import Denoiser, HarnessError

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = "the a cat dog sat on mat and ran fast slow red blue is was".split()
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 +="


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A 2-layer BERT MLM with a small WordPiece vocabulary, saved with save_pretrained."""
    root = tmp_path_factory.mktemp("bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = list(dict.fromkeys(specials + WORDS + list("abcdefghijklmnopqrstuvwxyz")))  # "a" twice
    (root / "vocab").mkdir()
    (root / "vocab" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizer.from_pretrained(str(root / "vocab"))
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config)
    path = root / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    """A 2-layer GPT-2 with a character-level tokenizer built with the `tokenizers` library."""
    vocab = {"<eos>": 0, "<pad>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = tokenizers.decoders.Fuse()  # characters concatenate back into the text
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    config = transformers.GPT2Config(
        vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    path = tmp_path_factory.mktemp("gpt2") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert(bert_dir):
    return MODELS.build("hf_masked", {"path": str(bert_dir)}).load()


@pytest.fixture(scope="module")
def gpt(gpt_dir):
    return MODELS.build("hf_causal", {"path": str(gpt_dir)}).load()


def test_import_does_not_load_transformers():
    code = "import harness.models.hf, sys; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registries_list_them():
    assert "hf_masked" in MODELS and "hf_causal" in MODELS
    assert "autoregressive" in ESTIMATORS
    assert ESTIMATORS.summary("autoregressive") == "exact chain-rule log-likelihood of a causal LM (AR baseline)"


def test_dtype_is_validated():
    with pytest.raises(HarnessError, match="dtype"):
        MODELS.build("hf_masked", {"path": "x", "dtype": "float8"})


# -- hf_masked ------------------------------------------------------------------------------------
def test_masked_attributes_and_arch(bert):
    tok = bert.tokenizer.hf
    assert isinstance(bert, Denoiser)
    assert bert.mask_id == tok.mask_token_id == 4
    assert bert.eos_id == tok.sep_token_id == 3
    assert bert.pad_id == 0 and bert.shift_logits is False
    assert bert.vocab_size == len(tok) and bert.device == torch.device("cpu")
    emb = bert.module.bert.embeddings
    n_embed = sum(m.weight.numel() for m in (emb.word_embeddings, emb.position_embeddings,
                                             emb.token_type_embeddings))
    total = sum(p.numel() for p in bert.module.parameters())
    assert bert.arch.n_params == total - n_embed
    assert (bert.arch.n_layers, bert.arch.d_model) == (2, 32)


def test_masked_logits_shape(bert):
    x = torch.randint(5, bert.vocab_size, (3, 7))
    x[:, 2] = bert.mask_id
    out = bert.logits(x)
    assert out.shape == (3, 7, bert.vocab_size) and out.dtype == torch.float32


def test_masked_encode_decode_roundtrip(bert):
    text = "the cat sat on the mat"
    ids = bert.tokenizer.encode(text)
    assert bert.eos_id not in ids and 2 not in ids  # no [CLS]/[SEP] added
    assert bert.tokenizer.decode(ids) == text
    # Stops at the first EOS and drops special tokens such as [MASK].
    assert bert.tokenizer.decode(ids[:2] + [bert.mask_id] + ids[2:3] + [bert.eos_id] + ids[3:]) == "the cat sat"
    assert bert.tokenizer.decode(ids + [bert.eos_id] + ids, stop_at_eos=False) == text + " " + text


@pytest.mark.parametrize("side", ["right", "left"])
def test_masked_padding_does_not_change_logits(bert, side):
    short = torch.tensor(bert.tokenizer.encode("the cat sat"))
    long = torch.tensor(bert.tokenizer.encode("a red dog ran fast on the mat"))
    short[1] = bert.mask_id
    pad = torch.full((len(long) - len(short),), bert.pad_id)
    row = torch.cat([short, pad]) if side == "right" else torch.cat([pad, short])
    x = torch.stack([row, long])  # [2, T]
    attn = x != bert.pad_id
    with torch.no_grad():
        batched = bert.logits(x, attn)[0][attn[0]]
        alone = bert.logits(short[None])[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_bad_path_raises_with_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(HarnessError, match="no-such-model") as err:
        MODELS.build("hf_masked", {"path": str(missing)}).load()
    assert "local directory" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HarnessError, match="empty.*local directory"):
        MODELS.build("hf_causal", {"path": str(empty)}).load()


def test_unreachable_hub_id_raises(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(HarnessError, match="some-org/some-model.*local directory"):
        MODELS.build("hf_masked", {"path": "some-org/some-model"}).load()


def test_masked_needs_a_mask_token(gpt_dir):
    with pytest.raises(HarnessError, match="no mask token"):
        MODELS.build("hf_masked", {"path": str(gpt_dir)}).load()


def test_provenance_hashes_local_weights(bert_dir):
    prov = MODELS.build("hf_masked", {"path": str(bert_dir)}).provenance()
    files = sorted(p for p in bert_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    assert files and prov["weights_files"] == [f.name for f in files]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    assert prov["weights_sha256"] == h.hexdigest()
    assert prov["path"] == str(bert_dir) and prov["revision"] is None and prov["commit"] is None


# -- hf_causal and the autoregressive estimator ----------------------------------------------------
def test_causal_attributes(gpt):
    assert gpt.shift_logits is True and gpt.mask_id is None
    assert gpt.eos_id == 0 and gpt.pad_id == 1 and gpt.vocab_size == 3 + len(CHARS)
    assert (gpt.arch.n_layers, gpt.arch.d_model) == (2, 32)
    text = "12+34=46"
    assert gpt.tokenizer.decode(gpt.tokenizer.encode(text) + [gpt.eos_id, 5]) == text


def chain_rule(gpt, prompt: list[int], completion: list[int]) -> float:
    """Σ_k log p(o_k | c, o_<k), one model call per prefix (no batching, no shift bookkeeping)."""
    total = 0.0
    for k, token in enumerate(completion):
        prefix = torch.tensor([prompt + completion[:k]])
        with torch.no_grad():
            last = gpt.module(input_ids=prefix).logits[0, -1]  # [V]: predicts the next token
        total += F.log_softmax(last.double(), -1)[token].item()
    return total


def test_autoregressive_matches_hand_chain_rule(gpt):
    est = ESTIMATORS.build("autoregressive")
    prompt, completion = gpt.tokenizer.encode("12+34="), gpt.tokenizer.encode("46")
    completion = completion + [gpt.eos_id]
    with torch.no_grad():
        out = est(gpt, torch.tensor([prompt]), torch.tensor([completion]),
                  torch.ones(1, len(completion), dtype=torch.bool))
    assert out.per_token.shape == (1, len(completion)) and out.n == 1 and out.draws == {}
    assert out.sequence.item() == pytest.approx(chain_rule(gpt, prompt, completion), abs=1e-5)


def test_autoregressive_masked_out_positions_contribute_zero(gpt):
    est = ESTIMATORS.build("autoregressive")
    prompt = torch.tensor([gpt.tokenizer.encode("7+8=")])
    completion = torch.tensor([gpt.tokenizer.encode("15") + [gpt.eos_id] * 3])  # [1, 5]
    mask = torch.tensor([[True, True, True, False, False]])
    with torch.no_grad():
        full = est(gpt, prompt, completion, torch.ones_like(mask))
        part = est(gpt, prompt, completion, mask)
    assert (part.per_token[~mask] == 0).all()
    torch.testing.assert_close(part.per_token[mask], full.per_token[mask])
    assert part.sequence.item() == pytest.approx(full.per_token[0, :3].sum().item(), abs=1e-6)


def test_autoregressive_batch_with_left_padding_matches_rows_alone(gpt):
    from harness.text import encode_prompts

    est = ESTIMATORS.build("autoregressive")
    prompts, answers = ["1+1=", "123+456="], ["2", "579"]
    L = 4
    ids, pmask = encode_prompts(gpt.tokenizer, prompts, gpt.pad_id)  # left-padded [2, P]
    completion = torch.full((2, L), gpt.eos_id)
    for i, a in enumerate(answers):
        completion[i, : len(a)] = torch.tensor(gpt.tokenizer.encode(a))
    cmask = torch.arange(L)[None, :] <= torch.tensor([len(a) for a in answers])[:, None]
    with torch.no_grad():
        batched = est(gpt, ids, completion, cmask, prompt_mask=pmask)
        for i, p in enumerate(prompts):
            alone = est(gpt, torch.tensor([gpt.tokenizer.encode(p)]), completion[i:i + 1], cmask[i:i + 1])
            torch.testing.assert_close(batched.per_token[i], alone.per_token[0], atol=1e-4, rtol=1e-4)
            n = len(answers[i]) + 1
            ref = chain_rule(gpt, gpt.tokenizer.encode(p), completion[i, :n].tolist())
            assert batched.sequence[i].item() == pytest.approx(ref, abs=1e-4)


def test_autoregressive_refuses_masked_models_and_empty_prompts(bert, gpt):
    est = ESTIMATORS.build("autoregressive")
    x = torch.tensor([[5, 6]])
    with pytest.raises(HarnessError, match="causal"):
        est(bert, x, x, torch.ones_like(x, dtype=torch.bool))
    with pytest.raises(HarnessError, match="prompt token"):
        est(gpt, x, x, torch.ones_like(x, dtype=torch.bool), prompt_mask=torch.tensor([[True, False]]))
