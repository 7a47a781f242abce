"""The block samplers on hand-built denoisers whose distributions are known (docs/methods.md §3)."""
from __future__ import annotations

import math

import pytest
import torch

from harness.registry import SAMPLERS
from tests.samplers.toys import EOS, MASK, TableDenoiser, valid_order

# Four completion positions (prompt of 1): distributions over tokens 3, 4, ...
TABLE = [[0.5, 0.5], [0.45, 0.10, 0.10, 0.10, 0.10, 0.15], [0.7, 0.3], [0.4, 0.2, 0.2, 0.2]]
PROMPT = torch.tensor([[5]])
BLOCK_SAMPLERS = ["low_confidence", "margin", "entropy", "random", "threshold", "entropy_bound"]
ALL = BLOCK_SAMPLERS + ["remdm"]


def entropy(p):
    return -sum(q * math.log(q) for q in p)


def run(name, params=None, table=TABLE, generator=None, **kw):
    den = TableDenoiser(table, prompt_len=1, **kw)
    gen = SAMPLERS.build(name, params or {})(den, PROMPT, generator=generator, gen_length=len(table))
    return gen, den


def order_to_steps(order):
    return [order.index(k) for k in range(len(order))]


@pytest.mark.parametrize("name, key", [
    ("low_confidence", lambda p: max(p)),
    ("margin", lambda p: sorted(p)[-1] - sorted(p)[-2]),
    ("entropy", lambda p: -entropy(p)),
])
def test_one_token_per_step_follows_the_hand_computed_order(name, key):
    order = sorted(range(4), key=lambda k: -key(TABLE[k]))
    expected = {"low_confidence": [2, 0, 1, 3], "margin": [2, 1, 3, 0], "entropy": [2, 0, 3, 1]}[name]
    assert order == expected  # the three confidences disagree on this table
    gen, _ = run(name)
    assert gen.commit_step[0].tolist() == order_to_steps(order)
    assert gen.tokens[0].tolist() == [3, 3, 3, 3] and gen.steps == 4


def test_entropy_alg_temp_samples_positions_and_tends_to_the_top_k():
    steps = []
    for seed in range(40):
        gen, _ = run("entropy", {"alg_temp": 0.05}, generator=torch.Generator().manual_seed(seed))
        steps.append(tuple(gen.commit_step[0].tolist()))
    assert len(set(steps)) > 1  # sampled, not the fixed top-k order
    greedy = tuple(order_to_steps([2, 0, 3, 1]))
    assert max(set(steps), key=steps.count) == greedy  # the low-entropy order is the most frequent
    cold = [run("entropy", {"alg_temp": 1e-4}, generator=torch.Generator().manual_seed(s))[0] for s in range(5)]
    assert all(tuple(g.commit_step[0].tolist()) == greedy for g in cold)


def test_threshold_one_degenerates_to_one_token_per_step():
    gen, den = run("threshold", {"tau": 1.0})  # no confidence reaches 1 here: only the best commits
    assert gen.commit_step[0].tolist() == order_to_steps([2, 0, 1, 3])  # low-confidence order
    assert gen.steps == 4 and len(den.calls) == 4


def test_threshold_zero_finishes_each_block_in_one_step():
    gen, den = run("threshold", {"tau": 0.0})
    assert gen.commit_step[0].tolist() == [0, 0, 0, 0] and len(den.calls) == 1
    gen, den = run("threshold", {"tau": 0.0, "block_length": 2})
    assert gen.commit_step[0].tolist() == [0, 0, 1, 1] and len(den.calls) == 2


def test_threshold_commits_everything_above_tau_and_the_best():
    gen, den = run("threshold", {"tau": 0.44})  # p(x0): .5, .45, .7, .4 -> step 0 takes 0, 1, 2
    assert gen.commit_step[0].tolist() == [0, 0, 0, 1] and len(den.calls) == 2
    gen, den = run("threshold", {"tau": 0.44, "max_steps": 1})  # the cap commits the rest
    assert gen.commit_step[0].tolist() == [0, 0, 0, 0] and len(den.calls) == 1


@pytest.mark.parametrize("bound, steps", [(0.0, [1, 3, 0, 2]), (0.7, [0, 2, 0, 1]), (1.5, [0, 1, 0, 0]),
                                          (100.0, [0, 0, 0, 0])])
def test_entropy_bound_accepts_the_hand_computed_prefix(bound, steps):
    # entropies: pos2 .611 < pos0 .693 < pos3 1.332 < pos1 1.565; a prefix is accepted while the
    # sum of the entropies before its last element stays <= bound.
    h = [entropy(p) for p in TABLE]
    assert [round(v, 3) for v in h] == [0.693, 1.565, 0.611, 1.332]
    gen, den = run("entropy_bound", {"bound": bound})
    assert gen.commit_step[0].tolist() == steps
    assert len(den.calls) == max(steps) + 1


@pytest.mark.parametrize("name", BLOCK_SAMPLERS)
def test_semi_ar_blocks_never_commit_outside_the_current_block(name):
    table = [[0.4, 0.6], [0.5, 0.5], [0.99, 0.01], [0.98, 0.02], [0.97, 0.03], [0.96, 0.04]]
    gen, den = run(name, {"block_length": 2}, table=table, generator=torch.Generator().manual_seed(0))
    steps = gen.commit_step[0].tolist()
    assert max(steps[:2]) < min(steps[2:4]) and max(steps[2:4]) < min(steps[4:])
    for x in den.calls:  # every pass: nothing committed past the block being decoded
        done = (x[0, 1:] != MASK).tolist()
        first_open = next((i for i, d in enumerate(done) if not d), 6)
        block_end = (first_open // 2 + 1) * 2
        assert not any(done[block_end:])


@pytest.mark.parametrize("name", BLOCK_SAMPLERS)
def test_commit_steps_are_a_valid_order(name, tiny_addition, addition_prompts):
    ids, mask = addition_prompts
    params = {"temperature": 1.0} if name != "random" else {}
    gens = [torch.Generator().manual_seed(i) for i in range(len(ids))]
    gen = SAMPLERS.build(name, params)(tiny_addition, ids, generator=gens, prompt_mask=mask, gen_length=5)
    assert valid_order(gen.commit_step)
    assert gen.steps == int(gen.commit_step.max()) + 1


@pytest.mark.parametrize("name, params", [("random", {}), ("entropy", {"alg_temp": 0.5}),
                                          ("low_confidence", {"temperature": 1.0}),
                                          ("threshold", {"temperature": 1.0, "tau": 0.7}),
                                          ("entropy_bound", {"temperature": 1.0}), ("remdm", {"eta": 0.5}),
                                          ("margin", {"temperature": 1.0})])
def test_same_seed_same_output(name, params):
    from tests.helpers import make_tiny

    den = make_tiny()
    prompt = torch.tensor([[3, 4, 5, 6]] * 3)
    sampler = SAMPLERS.build(name, params)
    out = [sampler(den, prompt, generator=torch.Generator().manual_seed(s), gen_length=6) for s in (7, 7, 8)]
    assert torch.equal(out[0].tokens, out[1].tokens) and torch.equal(out[0].commit_step, out[1].commit_step)
    assert not (torch.equal(out[0].tokens, out[2].tokens) and torch.equal(out[0].commit_step, out[2].commit_step))


@pytest.mark.parametrize("name", ["threshold", "entropy_bound", "low_confidence"])
def test_rows_do_not_depend_on_their_batch(name, tiny_addition, addition_prompts):
    """Per-row generators: a row decodes the same alone or in a batch, although adaptive samplers
    drop finished rows from later passes."""
    ids, mask = addition_prompts
    sampler = SAMPLERS.build(name, {"temperature": 1.0})
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(len(ids))]  # noqa: E731
    batch = sampler(tiny_addition, ids, generator=gens(), prompt_mask=mask, gen_length=5)
    for i, g in enumerate(gens()):
        alone = sampler(tiny_addition, ids[i:i + 1], generator=[g], prompt_mask=mask[i:i + 1], gen_length=5)
        assert torch.equal(alone.tokens[0], batch.tokens[i])
        assert torch.equal(alone.commit_step[0], batch.commit_step[i])


@pytest.mark.parametrize("name", ALL)
def test_min_length_suppresses_eos(name):
    table = [[0.5, 0.5]] * 4
    eos = [0.9] * 4  # EOS is by far the most probable token everywhere
    g = torch.Generator().manual_seed(0)
    gen, _ = run(name, {}, table=table, eos=eos, generator=g)
    assert gen.gen_len.tolist() == [1] and gen.text == [""]
    gen, _ = run(name, {"min_length": 2}, table=table, eos=eos, generator=torch.Generator().manual_seed(0))
    assert EOS not in gen.tokens[0, :2].tolist()
    assert gen.gen_len.tolist() == [3] and gen.tokens[0, 2:].tolist() == [EOS, EOS]


def test_tokens_after_the_first_eos_are_padding():
    table = [[0.9], [0.9], [0.9], [0.9]]
    eos = [0.0, 0.95, 0.0, 0.0]  # position 1 says EOS, the later ones would not
    gen, _ = run("low_confidence", table=table, eos=eos)
    assert gen.tokens[0].tolist() == [3, EOS, EOS, EOS] and gen.gen_len.tolist() == [2] and gen.text == ["3"]


def test_every_sampler_is_listed(capsys):
    from harness.cli import main

    assert main(["list", "samplers"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert set(ALL) <= listed


def test_bad_parameters_fail_early():
    from harness.types import HarnessError

    for name, params in [("threshold", {"tau": -1}), ("entropy", {"alg_temp": -0.1}),
                         ("entropy_bound", {"bound": -1}), ("low_confidence", {"cache": "dual", "cfg_scale": 1.0}),
                         ("low_confidence", {"cache": "full"}), ("remdm", {"eta": 2.0}),
                         ("remdm", {"t_on": 0.1, "t_off": 0.5}), ("threshold", {"max_steps": 0})]:
        with pytest.raises(HarnessError):
            SAMPLERS.build(name, params)
    with pytest.raises(ValueError, match="max_steps 3 is not a multiple"):
        SAMPLERS.build("threshold", {"max_steps": 3, "block_length": 2}).max_nfe_per_sequence(4)
