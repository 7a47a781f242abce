"""`exact` (docs/methods.md §4): the subset DP and the exact ELBO against values computed by hand,
by brute force over orders, on a factorised model where everything is known, and by autograd."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from harness.budget import Meter
from harness.estimators.exact import exact_terms
from harness.registry import ESTIMATORS
from harness.types import ArchInfo, HarnessError
from tests.helpers import make_tiny

MASK = 1


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny single-row passes gain nothing from threads, and on a busy 2-core machine intra-op
    threads make each of them ~100x slower; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Factorised:
    """Logits at each position depend only on the position, never on the context: every
    conditional p(o_j | o_R, c) = p_j, so log p = ELBO = Σ_j log p_j exactly."""

    mask_id, eos_id, pad_id, shift_logits = MASK, 2, 0, False
    vocab_size = 7
    tokenizer = None
    device = torch.device("cpu")
    arch = ArchInfo(n_params=1, n_layers=1, d_model=1)

    def __init__(self, T: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(T, self.vocab_size, generator=g, dtype=torch.float64) * 2  # [T, V]

    def logits(self, x, attention_mask=None):
        N, T = x.shape
        return self.table[:T].expand(N, T, self.vocab_size)


def sharp_tiny(seed: int = 0):
    """A tiny random model in float64 with weights large enough that conditionals depend
    visibly on the context (so log p − ELBO is not negligible)."""
    den = make_tiny(seed=seed, max_len=16, d_model=16)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in den.module.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5, generator=g)
    den.module.double()
    return den


def batch(B: int, P: int, L: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, 26, (B, P), generator=g)
    completion = torch.randint(3, 26, (B, L), generator=g)
    return prompt, completion


def cond_logp(den, prompt, completion, revealed, j):
    """log p(o_j | o_revealed, c) for one row by one direct forward pass (same float32 log-softmax
    as `completion_logprobs`). revealed: positions left clean; every other completion position is masked."""
    x = completion.clone()
    hide = [k for k in range(len(completion)) if k not in revealed]
    x[hide] = MASK
    logits = den.logits(torch.cat([prompt, x])[None])[0, len(prompt):]  # [L, V]
    return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)[j, completion[j]].double()


def brute_force_log_p(den, prompt, completion):
    """(1/n!) Σ over all orders σ of Π_i p(o_σi | o_σ<i, c), by explicit enumeration."""
    n = len(completion)
    cache = {}  # one conditional per (revealed set, position): n!·n products, 2^n·n passes

    def cond(revealed, j):
        key = (frozenset(revealed), j)
        if key not in cache:
            cache[key] = cond_logp(den, prompt, completion, revealed, j)
        return cache[key]

    total = []
    for order in itertools.permutations(range(n)):
        total.append(sum(cond(set(order[:i]), order[i]) for i in range(n)))
    return torch.logsumexp(torch.stack(total), 0) - math.lgamma(n + 1)


def full_mask(completion):
    return torch.ones_like(completion, dtype=torch.bool)


# -- values ---------------------------------------------------------------------------------------

def test_factorised_model_log_p_equals_elbo_equals_sum_of_marginals():
    P, L = 3, 6
    den = Factorised(P + L)
    prompt, completion = batch(2, P, L)
    completion = completion % den.vocab_size
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1]], dtype=torch.bool)
    out = exact_terms(den, prompt, completion, mask)
    logp = F.log_softmax(den.table[P:].to(torch.promote_types(
        den.table.dtype, torch.float32)), -1).double()  # [L, V], as the estimator reads it
    marg = torch.gather(logp.expand(2, L, -1), -1, completion[..., None]).squeeze(-1) * mask  # [B, L]
    torch.testing.assert_close(out["log_p"], marg.sum(1), atol=1e-10, rtol=0)
    torch.testing.assert_close(out["elbo"], marg.sum(1), atol=1e-10, rtol=0)
    torch.testing.assert_close(out["elbo_per_token"], marg, atol=1e-10, rtol=0)


def test_log_p_bounds_elbo_on_tiny_model():
    den = sharp_tiny()
    with torch.no_grad():
        for L in range(2, 7):
            prompt, completion = batch(2, 3, L, seed=L)
            out = exact_terms(den, prompt, completion, full_mask(completion))
            assert (out["log_p"] >= out["elbo"]).all()
            assert (out["log_p"] - out["elbo"]).max() > 1e-4  # the model is not factorised
            torch.testing.assert_close(out["elbo_per_token"].sum(1), out["elbo"])


def test_hand_computed_values_for_two_tokens():
    den = sharp_tiny(seed=1)
    prompt, completion = batch(1, 4, 2, seed=3)
    c, o = prompt[0], completion[0]
    with torch.no_grad():
        out = exact_terms(den, prompt, completion, full_mask(completion))
        a0, b0 = cond_logp(den, c, o, set(), 0), cond_logp(den, c, o, set(), 1)
        b_a, a_b = cond_logp(den, c, o, {0}, 1), cond_logp(den, c, o, {1}, 0)
    # log p = log(½[p(a)p(b|a) + p(b)p(a|b)])
    log_p = torch.log(0.5 * (torch.exp(a0 + b_a) + torch.exp(b0 + a_b)))
    # weights: R=∅ 1/(C(2,0)·2) = ½ on a and b; R={a} and R={b} 1/(C(2,1)·1) = ½ each
    elbo = 0.5 * (a0 + b0) + 0.5 * b_a + 0.5 * a_b
    torch.testing.assert_close(out["log_p"][0], log_p, atol=1e-9, rtol=0)
    torch.testing.assert_close(out["elbo"][0], elbo, atol=1e-9, rtol=0)
    torch.testing.assert_close(out["elbo_per_token"][0], torch.stack([0.5 * (a0 + a_b), 0.5 * (b0 + b_a)]),
                               atol=1e-9, rtol=0)


@pytest.mark.parametrize("L", [3, 4])
def test_dp_matches_brute_force_over_orders(L):
    den = sharp_tiny(seed=2)
    prompt, completion = batch(1, 3, L, seed=10 + L)
    with torch.no_grad():
        out = exact_terms(den, prompt, completion, full_mask(completion))
        ref = brute_force_log_p(den, prompt[0], completion[0])
    torch.testing.assert_close(out["log_p"][0], ref, atol=1e-9, rtol=0)


# -- invariance and cost --------------------------------------------------------------------------

def test_batch_invariance_and_unscored_positions_stay_clean():
    den = sharp_tiny(seed=3)
    seen = []

    class Spy:
        def __getattr__(self, name):
            return getattr(den, name)

        def logits(self, x, attention_mask=None):
            seen.append(x.clone())
            return den.logits(x, attention_mask)

    prompt, completion = batch(3, 3, 5, seed=4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 0, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        together = exact_terms(Spy(), prompt, completion, mask, max_tokens=64)  # several chunks
        alone = [exact_terms(den, prompt[b:b + 1], completion[b:b + 1], mask[b:b + 1]) for b in range(3)]
    for key in ("log_p", "elbo", "elbo_per_token"):
        torch.testing.assert_close(together[key], torch.cat([a[key] for a in alone]), atol=1e-6, rtol=0)
    assert (together["elbo_per_token"][~mask] == 0).all()
    # Every input: the prompt untouched, unscored completion positions as given, never masked.
    x = torch.cat(seen)  # [N_total, P + L]
    rows = torch.repeat_interleave(torch.arange(3), torch.tensor([2**5 - 1, 2**3 - 1, 2**1 - 1]))
    assert x.shape[0] == len(rows)
    assert torch.equal(x[:, :3], prompt[rows])
    off = ~mask[rows]
    assert torch.equal(x[:, 3:][off], completion[rows][off])


def test_meter_counts_one_pass_per_proper_reveal_set():
    den = make_tiny()
    meter = Meter(den)
    prompt, completion = batch(3, 2, 6, seed=5)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, 1:3] = True  # row 2 has nothing to score: no passes
    with torch.no_grad():
        out = exact_terms(meter, prompt, completion, mask, max_tokens=50)
    assert out["n_passes"] == (2**4 - 1) + (2**2 - 1)
    assert meter.cost.nfe == out["n_passes"]
    assert out["log_p"][2] == 0 and out["elbo"][2] == 0


# -- gradients ------------------------------------------------------------------------------------

def test_gradients_match_manual_enumeration_for_two_tokens():
    den = sharp_tiny(seed=4)
    prompt, completion = batch(1, 3, 2, seed=6)
    c, o = prompt[0], completion[0]
    params = list(den.module.parameters())
    out = exact_terms(den, prompt, completion, full_mask(completion))
    g_elbo = torch.autograd.grad(out["elbo"].sum(), params, retain_graph=True)
    g_logp = torch.autograd.grad(out["log_p"].sum(), params)
    a0, b0 = cond_logp(den, c, o, set(), 0), cond_logp(den, c, o, set(), 1)
    b_a, a_b = cond_logp(den, c, o, {0}, 1), cond_logp(den, c, o, {1}, 0)
    elbo = 0.5 * (a0 + b0 + b_a + a_b)
    log_p = torch.logsumexp(torch.stack([a0 + b_a, b0 + a_b]), 0) - math.log(2)
    for got, ref in ((g_elbo, torch.autograd.grad(elbo, params, retain_graph=True)),
                     (g_logp, torch.autograd.grad(log_p, params))):
        for gp, rp in zip(got, ref):
            torch.testing.assert_close(gp, rp, atol=1e-6, rtol=1e-5)
    assert sum(float(g.abs().sum()) for g in g_elbo) > 0


def test_gradients_match_finite_differences_on_one_parameter():
    den = sharp_tiny(seed=4)
    prompt, completion = batch(1, 3, 3, seed=7)
    W = den.module.blocks[0].fc1.weight
    out = exact_terms(den, prompt, completion, full_mask(completion))
    grads = {key: torch.autograd.grad(out[key].sum(), W, retain_graph=True)[0] for key in ("elbo", "log_p")}
    eps = 1e-2  # central differences: O(eps²) error, well above the float32 log-softmax noise
    for key, g in grads.items():
        i, j = divmod(int(g.abs().argmax()), W.shape[1])
        vals = []
        with torch.no_grad():
            for s in (1, -1):
                W[i, j] += s * eps
                vals.append(exact_terms(den, prompt, completion, full_mask(completion))[key][0])
                W[i, j] -= s * eps
        assert abs(float(g[i, j])) > 1e-2
        torch.testing.assert_close(g[i, j], (vals[0] - vals[1]) / (2 * eps), atol=1e-5, rtol=1e-3)


# -- refusal and the registered estimator ---------------------------------------------------------

def test_refuses_completions_longer_than_max_len():
    den = make_tiny()
    prompt, completion = batch(1, 2, 5, seed=8)
    with pytest.raises(HarnessError, match="max_len=4"):
        exact_terms(den, prompt, completion, full_mask(completion), max_len=4)
    est = ESTIMATORS.build("exact", {"max_len": 4})
    with pytest.raises(HarnessError, match="max_len"):
        est(den, prompt, completion, full_mask(completion), generator=None)


@pytest.mark.parametrize("target", ["elbo", "log_p"])
def test_estimator_returns_the_chosen_target(target):
    den = sharp_tiny(seed=5)
    prompt, completion = batch(2, 3, 4, seed=9)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    est = ESTIMATORS.build("exact", {"target": target})
    assert est.metric == f"exact_{target}"
    assert not hasattr(est, "nfe_for_batch")
    with torch.no_grad():
        out = est(den, prompt, completion, mask, generator=torch.Generator().manual_seed(0))
        terms = exact_terms(den, prompt, completion, mask)
    torch.testing.assert_close(out.sequence, terms[target])
    torch.testing.assert_close(out.per_token.sum(1), out.sequence)
    assert (out.per_token[~mask] == 0).all()
    assert out.draws == {} and out.n == 1
