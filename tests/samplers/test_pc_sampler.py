"""`pc_sampler` against PC-Sampler's own decoder, token for token.

Reference: NEUIR/PC-Sampler (commit 8b106b0), `src/generate.py`: `generate_with_pc_sampler`
(L262-335), `pc_sampler_function` (L31-52), `load_baseline` (L80-101) and `get_num_transfer_tokens`
(L117-135). `reference_pc` transcribes them line by line for the greedy path and runs in CI;
`test_the_reference_itself` runs the repository's own function when $DLM_HARNESS_PC_SAMPLER_SRC
names a checkout (skipped otherwise), against both the harness and the transcription.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.registry import SAMPLERS
from harness.samplers.pc_sampler import load_background, pc_scores
from harness.types import HarnessError
from tests.samplers._reference import ContextDenoiser, RefModel, cut, reference_module
from tests.samplers.toys import TableDenoiser

torch.set_num_threads(1)


# -- the transcription ----------------------------------------------------------------------------
def ref_background(path) -> torch.Tensor:
    """`load_baseline` L80-101: counts / num_token, 1 / num_token for unlisted ids, float32, 126464 ids."""
    data = json.loads(open(path).read())
    n = data["num_token"]  # L85
    freq = {int(k): v / n for k, v in data["p_baseline_dict"].items()}  # L86-95
    table = torch.full((126464,), 1 / n, dtype=torch.float32)  # L96
    keys = torch.tensor(list(freq), dtype=torch.long)  # L97
    values = torch.tensor(list(freq.values()), dtype=torch.float32)  # L98
    return table.scatter_(0, keys, values)  # L99


def ref_transfer(block_mask, steps):
    """`get_num_transfer_tokens` L117-135 (LLaDA's linear counts)."""
    mask_num = block_mask.sum(dim=1, keepdim=True)
    out = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + mask_num // steps
    for i in range(mask_num.size(0)):
        out[i, :mask_num[i] % steps] += 1
    return out


def ref_scores(probabilities, token_ids, lambda_val, alpha, bg):
    """`pc_sampler_function` L31-52."""
    f_bg = bg[token_ids]  # L44
    ce = torch.clamp(-probabilities * torch.log(f_bg + 1e-9), max=alpha)  # L45-47
    positions = torch.arange(probabilities.shape[1], dtype=torch.float32)  # L48
    return torch.exp(-lambda_val * positions) * ce  # L49-50


def reference_pc(model, prompt, steps, gen_length, block_length, lambd, alpha, bg, mask_id):
    """`generate_with_pc_sampler` L262-335 at temperature 0, no guidance, one sequence."""
    P = prompt.shape[1]
    x = torch.full((1, P + gen_length), mask_id, dtype=torch.long)  # L272
    x[:, :P] = prompt.clone()  # L273
    num_blocks = gen_length // block_length  # L278
    steps = steps // num_blocks  # L281
    for nb in range(num_blocks):  # L283
        lo, hi = P + nb * block_length, P + (nb + 1) * block_length
        counts = ref_transfer(x[:, lo:hi] == mask_id, steps)  # L285-286
        for i in range(steps):  # L287
            mask_index = x == mask_id  # L288
            logits = model(x).logits  # L297
            x0 = torch.argmax(logits, dim=-1)  # L299-300 (no noise at temperature 0)
            p = F.softmax(logits, dim=-1)  # L303
            x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)  # L304-305
            x0_p[:, hi:] = -np.inf  # L311
            x0 = torch.where(mask_index, x0, x)  # L313
            scores = ref_scores(x0_p[:, lo:hi], x0[:, lo:hi], lambd, alpha, bg)  # L315-321
            confidence = torch.where(mask_index[:, lo:hi], scores, -np.inf)  # L323
            transfer = torch.zeros_like(x0, dtype=torch.bool)  # L324
            _, select = torch.topk(confidence[0], k=counts[0, i])  # L326
            transfer[0, select + lo] = True  # L327
            x[transfer] = x0[transfer]  # L332
    return x[:, P:]


# -- fixtures ---------------------------------------------------------------------------------------
def write_counts(path, seed=0, vocab=24):
    """A count file in the reference's format: some ids with counts (zeros included), others unlisted."""
    g = torch.Generator().manual_seed(seed)
    counts = {str(i): int(torch.randint(0, 5000, (1,), generator=g)) for i in range(3, vocab) if i % 5}
    counts["4"] = 0  # f = 0: -log(1e-9) ~ 20.7, clipped at alpha
    path.write_text(json.dumps({"num_token": 40000, "p_baseline_dict": counts}))
    return path


def prompts(n=6, P=5):
    return torch.randint(3, 24, (n, P), generator=torch.Generator().manual_seed(11))


CASES = [  # steps, gen_length, block_length, lambd, alpha, tie_break
    (16, 16, 16, 0.25, 10.0, "position"),
    (8, 16, 16, 0.25, 10.0, "position"),
    (8, 16, 4, 0.5, 10.0, "position"),
    (12, 24, 8, 1.0, 1.0, "position"),
    (8, 16, 8, 0.0, 2.0, "topk"),  # lambda 0 and a low clip: many scores tie at alpha
]


@pytest.mark.parametrize("steps,gen_length,block,lambd,alpha,ties", CASES)
def test_matches_the_transcribed_reference(tmp_path, steps, gen_length, block, lambd, alpha, ties):
    den = ContextDenoiser(seed=1)
    path = write_counts(tmp_path / "counts.json")
    ids = prompts()
    params = {"steps": steps, "block_length": block, "lambd": lambd, "alpha": alpha, "baseline": str(path),
              "tie_break": ties}
    gens = [torch.Generator().manual_seed(i) for i in range(ids.shape[0])]
    out = SAMPLERS.build("pc_sampler", params)(den, ids, generator=gens, gen_length=gen_length)
    bg = ref_background(path)
    for r in range(ids.shape[0]):
        ref = reference_pc(RefModel(den), ids[r:r + 1], steps, gen_length, block, lambd, alpha, bg, den.mask_id)
        assert torch.equal(out.tokens[r:r + 1], cut(ref, den)), f"row {r}"
    assert out.steps == steps


def test_the_reference_itself(tmp_path):
    """PC-Sampler's `generate_with_pc_sampler` from a checkout, against the harness and the transcription."""
    mod = reference_module("DLM_HARNESS_PC_SAMPLER_SRC", "src/generate.py", "NEUIR/PC-Sampler")
    den = ContextDenoiser(seed=1)
    path = write_counts(tmp_path / "counts.json")
    ids = prompts()
    bg = ref_background(path)
    for steps, gen_length, block, lambd, alpha, ties in CASES:
        params = {"steps": steps, "block_length": block, "lambd": lambd, "alpha": alpha, "baseline": str(path),
                  "tie_break": ties}
        out = SAMPLERS.build("pc_sampler", params)(den, ids, generator=None, gen_length=gen_length)
        for r in range(ids.shape[0]):
            mod.BASE_LINE = None  # the reference keeps the table in a module global: read this file
            ref = mod.generate_with_pc_sampler(RefModel(den), ids[r:r + 1], steps=steps, gen_length=gen_length,
                                               block_length=block, lambd=lambd, alpha=alpha, baseline_name=str(path),
                                               temperature=0.0, mask_id=den.mask_id)
            assert torch.equal(mod.BASE_LINE, bg)
            mine = reference_pc(RefModel(den), ids[r:r + 1], steps, gen_length, block, lambd, alpha, bg, den.mask_id)
            assert torch.equal(ref[:, ids.shape[1]:], mine), (steps, gen_length, block, r)
            assert torch.equal(out.tokens[r:r + 1], cut(mine, den)), (steps, gen_length, block, r)


# -- the score, the background and the options --------------------------------------------------------
def test_the_background_table(tmp_path):
    path = write_counts(tmp_path / "counts.json")
    ours = load_background(path, 24)
    assert torch.equal(ours, ref_background(path)[:24])
    assert ours[4] == 0 and ours[5] == pytest.approx(1 / 40000)  # a zero count; an unlisted id
    alt = tmp_path / "calc.json"  # the key utils/calculate_p_baseline.py writes
    data = json.loads(path.read_text())
    alt.write_text(json.dumps({"num_token": data["num_token"], "token_frequency_dict": data["p_baseline_dict"]}))
    assert torch.equal(load_background(alt, 24), ours)


@pytest.mark.parametrize("text,match", [
    ("{", "not JSON"),
    ('{"p_baseline_dict": {}}', "num_token"),
    ('{"num_token": 10, "p_baseline_dict": {"99": 3}}', "outside the model's vocabulary of 24"),
    ('{"num_token": 10, "p_baseline_dict": {"x": 3}}', "not an integer"),
    ('{"num_token": 10, "p_baseline_dict": {"5": -1}}', "count of token 5"),
])
def test_bad_count_files_are_named(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(HarnessError, match=match):
        load_background(path, 24)
    with pytest.raises(HarnessError, match="bad.json"):
        load_background(path, 24)


def test_missing_count_file_is_a_harness_error(tmp_path):
    den = ContextDenoiser()
    sampler = SAMPLERS.build("pc_sampler", {"baseline": str(tmp_path / "absent.json")})
    with pytest.raises(HarnessError, match="absent.json"):
        sampler(den, prompts(1), generator=None, gen_length=8)


def test_scores_by_hand():
    p = torch.tensor([[0.9, 0.5, 0.2]])
    x0 = torch.tensor([[3, 4, 5]])
    freq = torch.tensor([0, 0, 0, 0.5, 1e-3, 0.0])
    want = [0.9 * math.log(2), min(0.5 * -math.log(1e-3 + 1e-9), 3.0) * math.exp(-0.5),
            min(0.2 * -math.log(1e-9), 3.0) * math.exp(-1.0)]
    assert pc_scores(p, x0, freq, 0.5, 3.0)[0].tolist() == pytest.approx(want, rel=1e-6)


def test_frequent_tokens_wait_and_the_uniform_default_is_confidence_by_position(tmp_path):
    """Position 0 is sure (0.9) of a very frequent token, position 1 less sure (0.6) of a rare one:
    low_confidence commits position 0 first, pc_sampler with the counts commits position 1 first; with
    no counts file (uniform background) and lambda 0 it orders by confidence like low_confidence."""
    table = [[0.9, 0.1], [0.1, 0.6, 0.3]]  # tokens 3, 4, 5
    den = TableDenoiser(table, prompt_len=1)
    path = tmp_path / "counts.json"
    path.write_text(json.dumps({"num_token": 1000, "p_baseline_dict": {"3": 900, "4": 1}}))
    prompt = torch.tensor([[5]])
    low = SAMPLERS.build("low_confidence", {})(den, prompt, generator=None, gen_length=2)
    pc = SAMPLERS.build("pc_sampler", {"baseline": str(path), "lambd": 0.0})(den, prompt, generator=None,
                                                                               gen_length=2)
    flat = SAMPLERS.build("pc_sampler", {"lambd": 0.0})(den, prompt, generator=None, gen_length=2)
    assert low.commit_step[0].tolist() == [0, 1]
    assert pc.commit_step[0].tolist() == [1, 0]
    assert flat.commit_step[0].tolist() == [0, 1]
    assert pc.tokens[0].tolist() == low.tokens[0].tolist() == [3, 4]


@pytest.mark.parametrize("params", [{"lambd": -1.0}, {"alpha": 0.0}, {"steps": 0}])
def test_bad_options_are_refused(params):
    with pytest.raises(HarnessError):
        SAMPLERS.build("pc_sampler", params)


def test_token_counts_by_hand_and_the_suite_file():
    """`token_counts` (scripts/pc_sampler_counts.py) in the reference's format; the count file the sampler
    study names loads for its checkpoint's vocabulary, with EOS (the canvas padding) the most frequent."""
    from pathlib import Path

    from harness.registry import MODELS
    from harness.samplers.pc_sampler import token_counts

    class Tok:
        @staticmethod
        def encode(text):
            return [ord(c) - 96 for c in text]

    data = token_counts(Tok(), [("ab", "a"), "bc"], eos_id=9, canvas=3)
    assert data == {"num_token": 2 + 3 + 3, "p_baseline_dict": {"1": 2, "2": 2, "3": 1, "9": 3}}
    den = MODELS.build("tiny", {"checkpoint": "tiny-addition-c16"}).load()
    path = Path(__file__).resolve().parents[2] / "suites" / "data" / "tiny-addition-c16-counts.json"
    freq = load_background(path, den.vocab_size)
    assert int(freq.argmax()) == den.eos_id and freq.sum().item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("model", ["context", "sdar"])
def test_flat_background_and_no_decay_is_low_confidence(model):
    """lambda 0, a uniform background and a clip above p·log V: the score is a monotone function of
    p(x0), so pc_sampler commits what low_confidence commits, step for step, on a plain model and on a
    block-diffusion one (SDAR's block loop)."""
    from harness.registry import MODELS

    if model == "sdar":
        den = MODELS.build("sdar", {"preset": "tiny", "device": "cpu", "dtype": "float32", "seed": 3}).load()
        ids = torch.tensor([den.tokenizer.encode("12+7=")] * 2)
    else:
        den, ids = ContextDenoiser(seed=1), prompts()
    params = {"steps": 8, "tie_break": "position"}
    pc = SAMPLERS.build("pc_sampler", dict(params, lambd=0.0, alpha=1e6))(den, ids, generator=None, gen_length=8)
    low = SAMPLERS.build("low_confidence", params)(den, ids, generator=None, gen_length=8)
    assert torch.equal(pc.tokens, low.tokens) and torch.equal(pc.commit_step, low.commit_step)
    decayed = SAMPLERS.build("pc_sampler", dict(params, lambd=3.0))(den, ids, generator=None, gen_length=8)
    assert not torch.equal(decayed.commit_step, low.commit_step)  # a strong decay reorders towards the left
