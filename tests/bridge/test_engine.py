"""The bridge's engine on the tiny model: model_args, `until`, batching, likelihood, greedy check,
truncation. No lm_eval import here (tests/bridge/test_lm_eval.py covers the LM class)."""
from __future__ import annotations

import json

import pytest
import torch

from harness.bridge.engine import Engine, Request, split_model_args, truncate_at_stop
from harness.registry import ESTIMATORS, MODELS
from harness.types import HarnessError


@pytest.fixture(scope="module")
def denoiser():
    return MODELS.build("tiny", {}).load()


def engine(denoiser, tmp_path=None, **args) -> Engine:
    if tmp_path is not None:
        args["records"] = str(tmp_path / "side_records.jsonl")
    return Engine.from_args(args, denoiser=denoiser)


def side(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "side_records.jsonl").read_text().splitlines()]


# -- model_args ----------------------------------------------------------------------------------------
def test_model_args_are_split_by_registry_fields():
    parts = split_model_args({"model": "tiny", "checkpoint": "tiny-addition", "sampler": "low_confidence",
                              "steps": 4, "block_length": 2, "estimator": "mc_elbo", "n_mc": 16,
                              "batch_size": 3, "greedy_check": False, "seed": 7})
    assert parts["model"] == {"checkpoint": "tiny-addition"}
    assert parts["sampler"] == {"steps": 4, "block_length": 2}
    assert parts["estimator"] == {"n_mc": 16}
    assert parts["bridge"]["batch_size"] == 3 and parts["bridge"]["greedy_check"] is False
    assert parts["bridge"]["seed"] == 7


def test_unknown_model_arg_names_the_key_and_lists_valid_ones():
    with pytest.raises(HarnessError) as err:
        split_model_args({"stepz": 4})
    msg = str(err.value)
    assert "'stepz'" in msg and "sampler.steps" in msg and "estimator.n_mc" in msg and "greedy_check" in msg


def test_prefixed_keys_and_bad_values():
    assert split_model_args({"sampler.temperature": 0.5})["sampler"] == {"temperature": 0.5}
    with pytest.raises(HarnessError, match=r"params.steps: expected int or null, got .many."):
        split_model_args({"steps": "many"})
    with pytest.raises(HarnessError, match="unknown sampler 'nope'"):
        split_model_args({"sampler": "nope"})


# -- generate_until ------------------------------------------------------------------------------------
def test_truncate_at_stop_cuts_at_the_earliest_stop_string():
    assert truncate_at_stop("12+34=46\nQuestion: x", ["Question:", "\n"]) == "12+34=46"
    assert truncate_at_stop("abc", ["zz", ""]) == "abc"
    assert truncate_at_stop("a;b;c", [";"]) == "a"
    assert truncate_at_stop("abc", None) == "abc"


PROMPTS = ["123+456=", "010+202=", "999+001=", "500+500=", "321+123=", "007+070="]


def _reqs(kw):
    return [(p, dict(kw), Request(task="t", doc_id=i)) for i, p in enumerate(PROMPTS)]


def test_until_truncates_generations(denoiser):
    eng = engine(denoiser)
    kw = {"max_gen_toks": 5, "temperature": 0.0}
    plain = eng.generate(_reqs(kw))
    assert all(plain), plain
    stop = plain[0][1]  # the second character of the first completion
    cut = eng.generate(_reqs({**kw, "until": [stop]}))
    assert cut == [t[: t.index(stop)] if stop in t else t for t in plain]
    assert cut[0] == plain[0][:1]


def test_batch_one_and_four_give_identical_generations(denoiser):
    kw = {"max_gen_toks": 5, "temperature": 1.0}  # sampled: every row draws from its own generator
    one = engine(denoiser, batch_size=1).generate(_reqs(kw))
    four = engine(denoiser, batch_size=4).generate(_reqs(kw))
    assert one == four
    again = engine(denoiser, batch_size=4, seed=99).generate(_reqs(kw))
    assert again != four  # the seed matters (6 sampled completions all equal by chance is negligible)


def test_temperature_zero_is_greedy_and_gen_length_is_capped(denoiser, tmp_path):
    eng = engine(denoiser, tmp_path)
    long_prompt = "1" * 40 + "+2="
    with pytest.warns(UserWarning):
        out = eng.generate([(long_prompt, {"max_gen_toks": 64, "temperature": 0}, Request(task="t", doc_id=0))])
    assert isinstance(out[0], str)
    rec = [r for r in side(tmp_path) if r["type"] == "generate_until"][0]
    assert rec["gen_length"] == 12 and rec["gen_length_asked"] == 64 and rec["gen_length_capped"]
    assert rec["prompt_tokens"] == 1 and rec["truncated_tokens"] == len(long_prompt) - 1
    assert rec["sampler"]["params"]["temperature"] == 0.0
    assert rec["cost"]["nfe"] == 12  # one token per step: 12 forward passes


def test_characters_outside_the_alphabet_are_dropped_and_counted(denoiser, tmp_path):
    eng = engine(denoiser, tmp_path)
    with pytest.warns(UserWarning, match="dropped"):
        ids, dropped = eng.encode("What is 12+3?")
    assert dropped == len("Whatis?") and denoiser.tokenizer.decode(ids) == "  12+3"


# -- loglikelihood -------------------------------------------------------------------------------------
def test_loglikelihood_equals_the_estimator_called_directly(denoiser):
    eng = engine(denoiser, n_mc=16, greedy_check=False)
    tok = denoiser.tokenizer
    ctx, cont = tok.encode("123+456="), tok.encode("579")
    req = Request(task="t", doc_id=3)
    (value, greedy), = eng.score([(ctx, cont, req)])
    est = ESTIMATORS.build("mc_elbo", {"n_mc": 16, "t_law": "count_stratified"})  # the bridge's default law
    g = eng.generator(req, json.dumps([ctx, cont]))
    with torch.no_grad():
        direct = est(denoiser, torch.tensor([ctx]), torch.tensor([cont]), torch.ones(1, 3, dtype=torch.bool),
                     generator=[g], prompt_mask=torch.ones(1, len(ctx), dtype=torch.bool))
    assert value == float(direct.sequence[0])
    assert greedy is False  # the check is off
    # In a batch with other lengths and contexts the value is the same (one generator per request).
    other = (tok.encode("1+2="), tok.encode("3"), Request(task="t", doc_id=4))
    mixed = eng.score([other, (ctx, cont, req), (tok.encode("9+9="), tok.encode("18"), Request(task="t", doc_id=5))])
    assert mixed[1][0] == value


def test_is_greedy_on_a_constructed_case(denoiser, tmp_path):
    tok = denoiser.tokenizer
    ctx = tok.encode("123+456=")
    x = torch.tensor([ctx + [denoiser.mask_id] * 3])
    logits = denoiser.logits(x)[0, len(ctx):]  # [3, V]
    logits[:, denoiser.mask_id] = -torch.inf
    argmax = logits.argmax(-1).tolist()  # the one-pass greedy continuation
    wrong = list(argmax)
    wrong[1] = tok.encode("7")[0] if argmax[1] != tok.encode("7")[0] else tok.encode("8")[0]
    eng = engine(denoiser, tmp_path, n_mc=2)
    res = eng.score([(ctx, argmax, Request(task="t", doc_id=0)), (ctx, wrong, Request(task="t", doc_id=1))])
    assert [r[1] for r in res] == [True, False]
    recs = [r for r in side(tmp_path) if r["type"] == "loglikelihood"]
    assert [r["is_greedy"] for r in recs] == [True, False]
    assert all(r["estimator_n"] == 2 for r in recs)
    # n_mc = 2 passes per request plus one greedy pass each (batch of 2: 6 in all, 3 per request)
    assert [r["cost"]["nfe"] for r in recs] == [3.0, 3.0]
    off = engine(denoiser, n_mc=2, greedy_check=False)
    assert [r[1] for r in off.score([(ctx, argmax, Request(task="t", doc_id=0))])] == [False]
    assert off.meter.cost.nfe == 2


def test_long_context_is_left_truncated_not_a_crash(denoiser, tmp_path):
    tok = denoiser.tokenizer
    eng = engine(denoiser, tmp_path, n_mc=2)
    ctx = tok.encode("1234567890+1234567890=")
    with pytest.warns(UserWarning, match="left-truncated"):
        (value, _), = eng.score([(ctx, tok.encode("42"), Request(task="t", doc_id=0))])
    rec = side(tmp_path)[-1]
    assert rec["context_tokens"] == 11 and rec["truncated_tokens"] == len(ctx) - 11
    assert value < 0


# -- defaults that reproduce the model's own evaluation ----------------------------------------------
def test_default_likelihood_is_llada_evals_count_law_with_128_draws(denoiser):
    """ML-GSAI/LLaDA eval_llada.py: mc_num 128, exact masked counts (systematic per batch of 32), weight L/l."""
    from harness.registry import params_of

    params = params_of(engine(denoiser).estimator)
    assert (params["t_law"], params["n_mc"], params["group"]) == ("count_stratified", 128, 32)
    assert params_of(engine(denoiser, n_mc=8, t_law="iid").estimator)["t_law"] == "iid"  # model_args win


def test_contexts_start_with_the_declared_bos_once():
    den = MODELS.build("tiny", {}).load()
    tok = den.tokenizer
    assert engine(den).encode_context("12+3=")[0] == tok.encode("12+3=")  # nothing declared: plain text
    den.prompting = {"add_bos": True, "bos_id": 9, "chat": False}
    ids, _ = engine(den).encode_context("12+3=")
    assert ids == [9, *tok.encode("12+3=")]
    from harness.prompting import with_bos

    assert with_bos([9, 4, 5], den) == [9, 4, 5]  # a context that starts with it (a chat template's) is kept
    assert engine(den, add_bos=False).encode_context("12+3=")[0] == tok.encode("12+3=")
    with pytest.raises(HarnessError, match="add_bos"):
        engine(den, add_bos="yes")
