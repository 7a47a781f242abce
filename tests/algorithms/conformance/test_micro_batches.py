"""Each algorithm's loss at the parameters suites/rl.yaml runs, over several micro-batches, against
its reference trainer's loss averaged over the reference config's micro-batches (HF gradient
accumulation). The micro-batch structure is part of each algorithm's declared defaults:
  diffu_grpo, grpo  d1 diffu-grpo/slurm_scripts/train.yaml (per_device_train_batch_size 6 =
                    num_generations 6), DiffuGRPOTrainer.compute_loss: Σ/Σmask per micro-batch
  wd1               xiaohangt/wd1 wd1/train.yaml (6 = 6), RevDiffuGRPOTrainer.compute_loss: softmax over
                    the micro-batch's rows
  spg               facebookresearch/SPG spg/slurm_scripts/train.yaml (6 = 6), SPGTrainer.compute_loss:
                    Σ|o|-weighted per micro-batch
  igpo              facebookresearch/igpo run_igpo.sh (8 = 8), IGPOTrainer.compute_loss: Σ/Σ token_mask
  coupled_grpo      apple/ml-diffucoder recipes/config_coupled_code.yaml (5 of 10: half a group),
                    src/open_r1/coupled_grpo.py DiffuGRPOTrainer.compute_loss: Σ/Σmask per micro-batch
  uni_grpo          Gen-Verse/dLLM-RL configs/rl_mmada_v.yaml (batch_size_lm 2 rows), train/rl_mmada.py
                    forward_process: a mean over rows, so the harness's one micro-batch equals the
                    reference's average over micro-batches of 2 rows
  espo              ML-GSAI/ESPO recipes/run_countdown_llada.sh (3 rows of 6 generations: half a
                    group), ESPOTrainer.compute_loss: a mean over rows, so one micro-batch is the same
  gdpo              no code (the paper only): its loss is a mean over rows, checked here to be the same
                    whether the buffer is one micro-batch or micro-batches of 2 rows
trace_rl (a mean over trace rows, rows per sequence varying) is checked on one buffer in test_trace_rl.py.
The fixture has groups of G = 4, so "one group" is 4 rows and half a group 2."""
from __future__ import annotations

import pytest
import torch

from harness.algorithms.spg import Bounds
from harness.registry import ALGORITHMS
from tests.algorithms.conformance.fixture import (
    SEEDS,
    B,
    G,
    T,
    assert_conforms,
    estimate,
    fixture,
    micro_harness_loss,
    suite_params,
)
from tests.algorithms.conformance.refs import (
    d1_loss,
    espo_loss,
    gdpo_paper_loss,
    gradient_accumulation,
    igpo_gspo_loss,
    spg_loss,
    trace_rl_loss,
)
from tests.algorithms.conformance.refs import wd1_loss as wd1_ref

REFERENCE_ROWS = {"diffu_grpo": G, "grpo": G, "wd1": G, "spg": G, "igpo": G, "coupled_grpo": G // 2, "uni_grpo": 2,
                  "espo": G // 2, "gdpo": 2}


def _parts(rows: int):
    return [torch.arange(lo, lo + rows) for lo in range(0, B, rows)]


def _case(name: str, fx: dict, seed: int):
    """-> (harness terms (pol, old, ref), counted mask, reference loss of one micro-batch's rows)."""
    cm, logp, old, ref = fx["completion_mask"], fx["logp"], fx["old"], fx["ref"]
    if name in ("diffu_grpo", "grpo", "coupled_grpo"):
        beta = 0.01 if name == "coupled_grpo" else 0.04
        terms = tuple(estimate(x, cm) for x in (logp, old, ref))
        return terms, cm, lambda a, r: d1_loss(logp[r], old[r], ref[r], a[r], cm[r], eps=0.5, beta=beta)
    if name == "wd1":
        return (estimate(logp, cm), None, None), cm, lambda a, r: wd1_ref(logp[r], a[r], cm[r])
    if name == "igpo":  # every canvas position scored; counted: all but some dropped hint tokens
        canvas = torch.ones_like(cm)
        counted = ~(cm & (torch.rand(B, T, generator=torch.Generator().manual_seed(90 + seed)) < 0.3))
        terms = tuple(estimate(x, canvas) for x in (logp, old, ref))
        return terms, counted, lambda a, r: igpo_gspo_loss(logp[r], old[r], ref[r], a[r], counted[r], 0.2, 0.2, 0.01)
    if name == "spg":
        lower = torch.where(cm, logp, 0 * logp)
        upper = 0.5 * lower.sum(1) + 0.5 * (torch.exp(logp) * cm).sum(1)
        terms = (Bounds(per_token=lower, sequence=lower.sum(1), upper=upper, draws={}, n=2), None, None)
        return terms, cm, lambda a, r: spg_loss(a[r], lower.sum(1)[r], upper[r], cm[r])
    if name == "uni_grpo":
        g = torch.Generator().manual_seed(70 + seed)
        m = cm & (torch.rand(B, T, generator=g) < 0.5)
        m[:, 0] = True
        count = m.sum(1, keepdim=True).double()
        terms = tuple(estimate(x / count, m, {"masks": m[:, None, :]}) for x in (logp, old, ref))  # ℓ/|M|
        rows = [(logp[i], old[i], m[i]) for i in range(B)]  # raw log-probs, KL to π_old
        return terms, cm, lambda a, r: trace_rl_loss([rows[i] for i in r.tolist()], a[r], eps=0.2, beta=0.01)
    if name == "espo":  # the ELBO of the whole canvas
        canvas = torch.ones_like(cm)
        terms = tuple(estimate(x, canvas) for x in (logp, old, ref))
        s_, so, sr = (x.sum(1) for x in (logp, old, ref))
        return terms, canvas, lambda a, r: espo_loss(s_[r], so[r], sr[r], a[r], T)
    if name == "gdpo":
        terms = tuple(estimate(x, cm) for x in (logp, old, ref))
        s_, so, sr = ((x * cm).sum(1) for x in (logp, old, ref))
        n = cm.sum(1).double()
        return terms, cm, lambda a, r: gdpo_paper_loss(s_[r], so[r], sr[r], a[r], n[r])
    raise AssertionError(name)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(REFERENCE_ROWS))
def test_several_micro_batches_match_the_reference_gradient_accumulation(name, seed):
    params = suite_params()[name]
    algo = ALGORITHMS.build(name, params)
    fx = fixture(seed)
    adv = algo.advantages(fx["rewards"], fx["group"])  # over the whole buffer, as the trainers do
    terms, mask, ref_of = _case(name, fx, seed)
    loss, parts = micro_harness_loss(algo, fx, adv, terms, mask)
    ref_parts = _parts(REFERENCE_ROWS[name])
    if algo.micro_batch > 0:  # the harness splits the buffer exactly as the reference config does
        assert [p.tolist() for p in parts] == [p.tolist() for p in ref_parts] and len(parts) > 1
    else:
        assert len(parts) == 1  # a mean over rows: one micro-batch is the same loss
    assert_conforms(loss, gradient_accumulation(lambda r: ref_of(adv, r), ref_parts), fx["logp"])


@pytest.mark.parametrize("name", ["diffu_grpo", "wd1", "spg", "igpo", "coupled_grpo"])
def test_the_micro_batch_structure_changes_the_loss(name):
    """Where the normaliser depends on the batch, the buffer-wide loss is another number: the
    declared structure is what makes the loss the reference's."""
    algo = ALGORITHMS.build(name, suite_params()[name])
    whole = ALGORITHMS.build(name, {**suite_params()[name], "micro_batch": 0})
    diffs = []
    for seed in SEEDS:
        fx = fixture(seed)
        adv = algo.advantages(fx["rewards"], fx["group"])
        terms, mask, _ = _case(name, fx, seed)
        diffs.append(abs(float(micro_harness_loss(algo, fx, adv, terms, mask)[0].detach())
                         - float(micro_harness_loss(whole, fx, adv, terms, mask)[0].detach())))
    assert max(diffs) > 1e-4, diffs


def test_grpo_defaults_and_diffu_grpo_are_one_objective():
    """The RL study's calibration pair: grpo with its defaults and diffu_grpo build the same
    estimator, normalisation and micro-batches, so their runs differ by training noise only."""
    a, b = ALGORITHMS.build("grpo"), ALGORITHMS.build("diffu_grpo")
    fx = fixture(3)
    adv = a.advantages(fx["rewards"], fx["group"])
    terms, mask, _ = _case("grpo", fx, 3)
    torch.testing.assert_close(micro_harness_loss(a, fx, adv, terms, mask)[0],
                               micro_harness_loss(b, fx, adv, terms, mask)[0], rtol=0, atol=0)
    assert a.build_estimator(0, 1) == b.build_estimator(0, 1)
