"""`any_order` (d2-AnyOrder) conforms to kuleshov-group/d2 diffu-grpo-ao/diffu_grpo_trainer_ao.py, class
d2AnyOrderTrainer. The harness keeps tokens in their natural columns and derives the attention pattern
from the order; the references below build the reference's physically permuted layout:
- `ref_generate_layout` replays `generate`'s swap bookkeeping (lines 772-794) for a given sequence of
  decoded pairs: select_index_1/2 = min/max of the two chosen columns (772-773), curr_seq_len += 2
  (778), then token 1 swapped with column curr_seq_len − 2 and token 2 with curr_seq_len − 1, position
  ids and tokens alike (782-794);
- `ref_get_logits` is `get_logits` (798-827) with the attention bias as a bool pattern on the tiny
  model's `logits_pattern` (the reference's model takes attention_bias + position_ids, SFT_AO/custom_llada.py);
- `ref_per_token_logps` is `_get_per_token_logps` (844-853): the last L logits against the last L tokens.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.estimators.any_order import decode_slots
from harness.registry import ESTIMATORS
from harness.types import HarnessError
from tests.algorithms.conformance.fixture import toy_rollout


def ref_generate_layout(prompt, completion, commit_step):
    """One row: the reference's final (x, position_ids) after `generate` decoded `completion` in the pairs
    given by commit_step (two positions per step)."""
    P, L = len(prompt), len(completion)
    x = torch.cat([prompt, torch.full((L,), -1)])  # -1: still masked
    position_ids = torch.arange(P + L)
    curr_seq_len = P
    for step in range(L // 2):
        chosen = (commit_step == step).nonzero()[:, 0]  # natural positions decoded at this step
        cols = [int((position_ids == P + int(k)).nonzero()[0, 0]) for k in chosen]  # their current columns
        x[cols] = completion[chosen]  # x[transfer_index] = x0[transfer_index]
        idx1, idx2 = min(cols), max(cols)  # select_index_1, select_index_2
        curr_seq_len += 2
        for idx, slot in ((idx1, curr_seq_len - 2), (idx2, curr_seq_len - 1)):  # token 1, then token 2
            position_ids[idx], position_ids[slot] = position_ids[slot].clone(), position_ids[idx].clone()
            x[idx], x[slot] = x[slot].clone(), x[idx].clone()
    return x, position_ids


def ref_get_logits(den, x, position_ids, gen_length, mask_id):
    batch_size = x.shape[0]
    prompt_len = x.shape[1] - gen_length
    mask_delta = torch.full((batch_size, gen_length), mask_id)
    x_2L = torch.cat([x, mask_delta], dim=1)
    mask_position_ids = position_ids.clone()[:, -gen_length:]
    position_ids_2L = torch.cat([position_ids, mask_position_ids], dim=1)
    S = x_2L.shape[1]
    bias = torch.zeros(batch_size, 1, S, S, dtype=torch.bool)
    bias[..., :prompt_len] = True
    bias[..., prompt_len:prompt_len + gen_length, prompt_len:prompt_len + gen_length] = torch.tril(
        torch.ones(gen_length, gen_length, dtype=torch.bool))
    pair_rows = torch.arange(gen_length) // 2
    pair_cols = torch.arange(gen_length) // 2
    pair_mask = pair_rows[:, None] > pair_cols[None, :]
    bias[..., prompt_len + gen_length:prompt_len + 2 * gen_length, prompt_len:prompt_len + gen_length] = pair_mask
    diag = prompt_len + gen_length + torch.arange(gen_length)
    bias[..., diag, diag] = True
    return den.logits_pattern(x_2L, bias, position_ids_2L)


def ref_per_token_logps(den, inputs, position_ids, logits_to_keep):
    logits = ref_get_logits(den, inputs, position_ids, logits_to_keep, den.mask_id)
    completion_logits = logits[:, -logits_to_keep:, :]
    completion_targets = inputs[:, -logits_to_keep:]
    loss = F.cross_entropy(completion_logits.reshape(-1, completion_logits.size(-1)),
                           completion_targets.reshape(-1), reduction="none")
    return -loss.view(inputs.shape[0], logits_to_keep)


def pair_orders(n, L, seed):
    """[n, L] commit steps: a random order of each row's positions, two per step."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(L, generator=g) // 2 for _ in range(n)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_natural_columns_equal_the_reference_permuted_layout(seed):
    den, prompt, pmask, completion, cmask = toy_rollout(seed=seed, P=3, L=6)
    n, L = completion.shape
    commit = pair_orders(n, L, seed + 10)
    est = ESTIMATORS.build("any_order")
    out = est(den, prompt, completion, cmask, prompt_mask=pmask, draws={"commit_step": commit})
    ref = torch.zeros(n, L, dtype=torch.float64)
    with torch.no_grad():
        for b in range(n):
            x, pos = ref_generate_layout(prompt[b], completion[b], commit[b])
            lp = ref_per_token_logps(den, x[None], pos[None], L)[0]  # in decoding order
            natural = pos[-L:] - prompt.shape[1]  # the completion position of each decoded column
            ref[b, natural] = lp.double()
    ref = torch.where(cmask, ref, torch.zeros_like(ref))
    torch.testing.assert_close(out.per_token, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.sequence, ref.sum(1), rtol=0, atol=1e-10)
    assert float(ref.abs().sum()) > 0


def test_decode_slots_replays_the_reference_swaps():
    """decode_slots is the column each position ends in after `generate`'s swaps (its final position_ids)."""
    L, P = 8, 2
    for seed in range(5):
        commit = pair_orders(1, L, seed)
        _, pos = ref_generate_layout(torch.zeros(P, dtype=torch.long), torch.zeros(L, dtype=torch.long), commit[0])
        expect = torch.argsort(pos[P:] - P)  # the column holding each natural position
        assert decode_slots(commit)[0].tolist() == expect.tolist()


def test_within_pair_order_changes_later_scores():
    """The order inside a pair is the reference's (lowest current column first), and it matters: the
    second token of a pair sees the first through the clean tokens' causal attention, which later pairs read."""
    den, prompt, pmask, completion, cmask = toy_rollout(seed=3, P=3, L=6)
    cmask = torch.ones_like(cmask)
    est = ESTIMATORS.build("any_order")
    a = torch.tensor([[0, 0, 1, 1, 2, 2]] * len(prompt))
    out = est(den, prompt, completion, cmask, prompt_mask=pmask, draws={"commit_step": a})
    # the first pair's scores depend only on the prompt: the same for any order inside later pairs
    b = torch.tensor([[0, 0, 2, 1, 2, 1]] * len(prompt))
    out_b = est(den, prompt, completion, cmask, prompt_mask=pmask, draws={"commit_step": b})
    torch.testing.assert_close(out.per_token[:, :2], out_b.per_token[:, :2], rtol=0, atol=1e-12)
    assert not torch.allclose(out.per_token[:, 2:], out_b.per_token[:, 2:])


def test_prompt_padding_and_given_positions():
    """Left pads are invisible (the row scores as it does unpadded); a never-masked position (commit −1)
    is context for every token and is not scored."""
    den, prompt, pmask, completion, cmask = toy_rollout(seed=5, n=2, P=3, L=6)
    cmask = torch.ones_like(cmask)
    est = ESTIMATORS.build("any_order")
    commit = pair_orders(2, 6, 1)
    base = est(den, prompt[:, 1:], completion, cmask, draws={"commit_step": commit})
    padded = torch.cat([torch.zeros(2, 1, dtype=torch.long), prompt[:, 1:]], 1)
    pm = torch.tensor([[False, True, True]] * 2)
    got = est(den, padded, completion, cmask, prompt_mask=pm, draws={"commit_step": commit})
    torch.testing.assert_close(got.per_token, base.per_token, rtol=0, atol=1e-10)
    given = commit.clone()
    given[:, 0] = -1
    out = est(den, prompt, completion, cmask, prompt_mask=pmask, draws={"commit_step": given})
    assert (out.per_token[:, 0] == 0).all() and (out.per_token[:, 1:] != 0).all()


def test_one_metered_pass_per_sequence_and_errors():
    from harness.budget import Meter

    den, prompt, pmask, completion, cmask = toy_rollout(seed=1, n=3)
    meter = Meter(den)
    est = ESTIMATORS.build("any_order")
    est(meter, prompt, completion, cmask, prompt_mask=pmask, draws={"commit_step": pair_orders(3, 6, 0)})
    assert meter.cost.nfe == est.nfe_for_batch(3) == 3
    with pytest.raises(HarnessError, match="commit steps"):
        est(den, prompt, completion, cmask, prompt_mask=pmask)
    with pytest.raises(HarnessError, match="shape"):
        est(den, prompt, completion, cmask, draws={"commit_step": torch.zeros(3, 5, dtype=torch.long)})


def test_plan_refuses_any_order_on_a_model_not_trained_for_it(tmp_path):
    from harness.config import load_suite, plan
    from tests.helpers import write_suite

    suite = """
suite: ao
models: {m: {name: tiny, params: {checkpoint: tiny-addition-c16}}}
tasks: {t: {name: addition, params: {n_digits: 3, canvas: 16}, split: test, n_items: 2}}
studies:
  - {id: e, kind: estimator_variance, model: m, task: t, estimator: {name: any_order}, replicates: 2}
"""
    with pytest.raises(HarnessError, match="estimator 'any_order' needs the model's any_order_causal"):
        plan(load_suite(write_suite(tmp_path, suite)))


def test_natural_columns_equal_the_permuted_layout_on_native_llada():
    """The same equality on the native LLaDA (rotary position ids, the reference's model family)."""
    from harness.registry import MODELS

    den = MODELS.build("llada", {"preset": "tiny", "dtype": "float32"}).load()
    g = torch.Generator().manual_seed(0)
    n, P, L = 3, 4, 6
    prompt = torch.randint(0, 100, (n, P), generator=g)
    completion = torch.randint(0, 100, (n, L), generator=g)
    commit = pair_orders(n, L, 3)
    out = ESTIMATORS.build("any_order")(den, prompt, completion, torch.ones(n, L, dtype=torch.bool),
                                        draws={"commit_step": commit})
    ref = torch.zeros(n, L, dtype=torch.float64)
    with torch.no_grad():
        for b in range(n):
            x, pos = ref_generate_layout(prompt[b], completion[b], commit[b])
            ref[b, pos[-L:] - P] = ref_per_token_logps(den, x[None], pos[None], L)[0].double()
    torch.testing.assert_close(out.per_token, ref, rtol=0, atol=1e-5)  # float32 (measured: 4.8e-7)
