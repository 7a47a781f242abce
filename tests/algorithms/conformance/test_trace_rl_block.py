"""trace_rl on a block model conforms to TraceRL's block-model code (Gen-Verse/dLLM-RL 10b4fd1,
train/rl_trado.py, method "TraceRL"; byte-identical to rl_sdar.py), run for real by the fixture's
`tracerl_reference.TraceRL` (../shared/fixtures/real-code/block/sdar): its nested functions
`collapse_k_unique`, `one_round_vectorized`, `collect_training_data` (rows, p_mask, noisy copies,
position ids), `make_basic_block_attention` + `process_pad` (the [prompt ; clean ; noisy] pattern),
`compute_logp_old_tok_parallel` and `forward_process` (the loss), on the fixture's SDAR checkpoint
(build_sdar.py --code dllm_rl: dLLM-RL's own modeling_sdar.py, loaded by tf5_sdar.load).

The harness side scores the same rollout through `TraceRL.terms` with a test-only Denoiser around
that same real model (its `logits_pattern` calls the model with the 4-D 0/1 mask and position ids
as forward_process does), so equality is a statement about the data construction and the loss:
  * every row's p_mask equals the harness's rounds, and every p_mask token's log-prob equals the
    reference's (eval mode, bit for bit);
  * the loss and its gradient on the model's parameters equal forward_process's, off-policy
    (π_old = the reference's old log-probs plus noise) and on-policy (−mean_rows(A·|p_mask|/L1)).

The harness's own SDAR (`sdar` impl native, harness/models/native/sdar.py) loaded from the same
checkpoint is then put in the real model's place: its `logits_pattern` equals the real model's
forward under the same pattern and position ids, and its trace_rl log-probs, loss and gradients
(parameter by parameter, by checkpoint name) equal forward_process's on the real model.
"""
from __future__ import annotations

import sys

import pytest
import torch

from harness.budget import Meter
from harness.registry import ALGORITHMS
from harness.types import ArchInfo, Estimate
from tests.models._real_code import real_code_dir

PROMPTS = ["12+34=", "7*8=?", "a"]
RESPONSES = ["46", "56 is it<|endoftext|>", "bcdefghij"]  # the second holds EOS = pad: dropped from p_mask
ADV = [1.0, -0.5, 0.25]


def _sdar_dir():
    base = real_code_dir()
    d = None if base is None else base / "block" / "sdar"
    if d is None or not (d / "tracerl_reference.py").is_file():
        pytest.skip("../shared/fixtures/real-code/block/sdar (dLLM-RL's TraceRL and SDAR code) is absent")
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))
    return d


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    torch.set_num_threads(1)
    import subprocess

    d = _sdar_dir()
    out = tmp_path_factory.mktemp("sdar") / "ckpt"
    res = subprocess.run([sys.executable, str(d / "build_sdar.py"), str(out), "--code", "dllm_rl"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    import tf5_sdar
    import transformers

    model, _ = tf5_sdar.load(out, "dllm_rl")
    model.config.fuse_cross_entropy = False  # rl_trado.py L171: train-mode forwards return logits
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    return model, tok, out


class RealSDAR:
    """Test-only Denoiser around dLLM-RL's SDARForCausalLM: the block model's explicit-pattern forward,
    called as rl_trado.py's forward_process calls the model."""

    shift_logits = False

    def __init__(self, model, tok):
        self.model, self.tokenizer = model, tok
        self.mask_id, self.pad_id, self.eos_id = tok.mask_token_id, tok.pad_token_id, tok.eos_token_id
        self.block_size = 4
        self.vocab_size = model.config.vocab_size
        self.arch = ArchInfo(n_params=sum(p.numel() for p in model.parameters()), n_layers=2, d_model=64)

    @property
    def device(self):
        return torch.device("cpu")

    def logits_pattern(self, x, allowed, position_ids):
        return self.model(input_ids=x, attention_mask=allowed.long(), position_ids=position_ids).logits


def _setup(real, shrink, seed):
    from tracerl_reference import TraceRL

    model, tok, _ = real
    g = torch.Generator().manual_seed(seed)
    lengths = [len(tok(r)["input_ids"]) for r in RESPONSES]
    # a rollout's step maps: several tokens may share a step (dynamic decoding commits many at once)
    step_maps = [torch.randint(0, 5, (n,), generator=g).cumsum(0).tolist() for n in lengths]
    ref = TraceRL(model, tok, block_size=4, shrink=shrink)
    batch = ref.make_batch(PROMPTS, RESPONSES, ADV, [list(s) for s in step_maps])
    L0, L1 = batch["L0"], batch["L1"]
    ids = batch["input_ids_lm"]
    prompt, completion = ids[:, :L0], ids[:, L0:]
    cmask = torch.arange(L1)[None, :] < torch.tensor(lengths)[:, None]
    commit = torch.full((len(PROMPTS), L1), 99)  # outside the completion: replaced by the row's max + 1
    for i, s in enumerate(step_maps):
        commit[i, :len(s)] = torch.tensor(s)
    return ref, batch, prompt, completion, cmask, commit, L0, L1


@pytest.mark.parametrize("shrink, seed", [(1, 0), (2, 1)])
def test_rows_logprobs_loss_and_gradient_match_rl_trado(real, shrink, seed):
    model, tok, _ = real
    ref, batch, prompt, completion, cmask, commit, L0, L1 = _setup(real, shrink, seed)
    algo = ALGORITHMS.build("trace_rl", {"block_shrink": shrink})
    den = Meter(RealSDAR(model, tok))
    pmask = prompt != tok.pad_token_id
    model.eval()
    with torch.no_grad():
        pol0 = algo.terms(den, prompt, pmask, completion, cmask, generator=None, draws={"commit_step": commit},
                          iteration=0, n_iterations=1)
        old_ref = ref.logp_old(batch)  # [R, L0 + L1] the reference's log-probs (eval mode)
    rounds = pol0.draws["round"]
    keys = sorted({(b, int(rounds[b, k])) for b, k in (rounds >= 0).nonzero().tolist()})
    assert len(keys) == batch["p_mask"].shape[0] and den.cost.nfe == len(keys)  # one row, one pass
    for j, (b, r) in enumerate(keys):  # the reference's rows are ordered by sequence, then round
        own = rounds[b] == r
        assert torch.equal(batch["p_mask"][j, L0:], own) and not batch["p_mask"][j, :L0].any(), (j, b, r)
        assert torch.equal(pol0.per_token[b][own], old_ref[j, L0:][own]), (j, b, r)
    eos_row = 1  # its EOS (= pad) is in the completion but in no p_mask (post_num 0)
    assert cmask[eos_row].sum() > (rounds[eos_row] >= 0).sum()

    g = torch.Generator().manual_seed(seed + 10)
    old_noisy = old_ref + 0.3 * torch.randn(old_ref.shape, generator=g)
    old_tok = torch.zeros(completion.shape)
    for j, (b, r) in enumerate(keys):
        own = rounds[b] == r
        old_tok[b, own] = old_noisy[j, L0:][own]
    olds = Estimate(per_token=old_tok, sequence=old_tok.sum(1), draws=pol0.draws, n=1)
    adv = torch.tensor(ADV, dtype=torch.float64)
    hb = {"mask": cmask, "completion_mask": cmask, "group": torch.zeros(3, dtype=torch.long), "n_seq": 3,
          "n_tok": int(cmask.sum()), "n_groups": 1, "length": L1}
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(loss):
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g_ is None else g_ for p, g_ in zip(params, gs)]

    for old_h, old_r in ((olds, old_noisy), (None, old_ref)):  # off-policy, then on-policy
        model.train()  # forward_process runs the model in train mode (dropout 0 here)
        pol = algo.terms(den, prompt, pmask, completion, cmask, generator=None, draws=pol0.draws,
                         iteration=0, n_iterations=1)
        old_h = old_h or Estimate(per_token=pol.per_token.detach(), sequence=pol.sequence.detach(),
                                  draws=pol.draws, n=1)
        loss_h, metrics = algo.loss(hb, pol, old_h, None, adv)
        loss_r = ref.loss(batch, old_r)
        assert metrics["trace_rows"] == len(keys)
        torch.testing.assert_close(loss_h.float(), loss_r, rtol=1e-6, atol=1e-7)
        g_h, g_r = grads(loss_h), grads(loss_r)
        print(f"shrink {shrink}: rows {len(keys)} loss harness {loss_h.item():.8f} rl_trado {loss_r.item():.8f} "
              f"max|grad diff| {max(float((a - b).abs().max()) for a, b in zip(g_h, g_r)):.2e}")
        for gh, gr in zip(g_h, g_r):
            torch.testing.assert_close(gh, gr, rtol=1e-5, atol=1e-7)
        assert sum(float(gr.abs().sum()) for gr in g_r) > 0
    # on-policy: −mean_rows(A · |p_mask| / L1) exactly (README of the fixture: the check.py identity)
    a = torch.tensor([ADV[b] for b, _ in keys], dtype=torch.float64)
    sizes = torch.tensor([float((rounds[b] == r).sum()) for b, r in keys], dtype=torch.float64)
    torch.testing.assert_close(loss_h.double(), -(a * sizes / L1).mean() + 0 * loss_h.double(), rtol=1e-6, atol=1e-7)
    model.eval()


def test_native_sdar_logits_pattern_logprobs_loss_and_gradients_equal_rl_trado(real):
    from harness.algorithms.trace_rl import training_pattern
    from harness.registry import MODELS

    model, tok, out = real
    ref, batch, prompt, completion, cmask, commit, L0, L1 = _setup(real, 1, 3)
    nat = MODELS.build("sdar", {"path": str(out), "device": "cpu", "dtype": "float32"}).load()
    assert nat.block_size == 4 and nat.pad_id == tok.pad_token_id and nat.mask_id == tok.mask_token_id
    algo = ALGORITHMS.build("trace_rl", {})
    pmask = prompt != tok.pad_token_id
    model.eval()
    with torch.no_grad():
        # the explicit pattern itself: TraceRL's rows, every sequence at its first round's noisy copy
        noisy = torch.where(torch.arange(L1)[None] >= 1, nat.mask_id, completion)
        ids = torch.cat([prompt, completion, noisy], 1)
        allowed, pos = training_pattern(ids, L0, L1, 4, nat.pad_id)
        got = nat.logits_pattern(ids, allowed, pos)
        want = model(input_ids=ids, attention_mask=allowed.long(), position_ids=pos).logits
        real_rows = allowed[:, 0].any(-1)  # [R, N] (columns that see nothing are never read)
        print(f"native vs dLLM-RL SDAR logits_pattern max|diff| {(got - want)[real_rows].abs().max():.2e}")
        assert torch.equal(got[real_rows], want[real_rows])
        pol0 = algo.terms(Meter(nat), prompt, pmask, completion, cmask, generator=None,
                          draws={"commit_step": commit}, iteration=0, n_iterations=1)
        old_ref = ref.logp_old(batch)
    rounds = pol0.draws["round"]
    keys = sorted({(b, int(rounds[b, k])) for b, k in (rounds >= 0).nonzero().tolist()})
    assert len(keys) == batch["p_mask"].shape[0]
    for j, (b, r) in enumerate(keys):
        own = rounds[b] == r
        assert torch.equal(batch["p_mask"][j, L0:], own)
        assert torch.equal(pol0.per_token[b][own], old_ref[j, L0:][own]), (j, b, r)
    g = torch.Generator().manual_seed(13)
    old_noisy = old_ref + 0.3 * torch.randn(old_ref.shape, generator=g)
    old_tok = torch.zeros(completion.shape)
    for j, (b, r) in enumerate(keys):
        own = rounds[b] == r
        old_tok[b, own] = old_noisy[j, L0:][own]
    olds = Estimate(per_token=old_tok, sequence=old_tok.sum(1), draws=pol0.draws, n=1)
    hb = {"mask": cmask, "completion_mask": cmask, "group": torch.zeros(3, dtype=torch.long), "n_seq": 3,
          "n_tok": int(cmask.sum()), "n_groups": 1, "length": L1}
    nat.module.train()
    pol = algo.terms(Meter(nat), prompt, pmask, completion, cmask, generator=None, draws=pol0.draws,
                     iteration=0, n_iterations=1)
    loss_h, _ = algo.loss(hb, pol, olds, None, torch.tensor(ADV, dtype=torch.float64))
    loss_r = ref.loss(batch, old_noisy)
    print(f"native SDAR trace_rl loss {loss_h.item():.8f} rl_trado {loss_r.item():.8f}")
    torch.testing.assert_close(loss_h.float(), loss_r, rtol=1e-6, atol=1e-7)
    names = dict(model.named_parameters())
    mine = [(n, p) for n, p in nat.module.named_parameters() if n in names]
    assert len(mine) == len(names)  # every parameter of the real model has its namesake here
    g_h = torch.autograd.grad(loss_h, [p for _, p in mine], allow_unused=True)
    g_r = torch.autograd.grad(loss_r, [names[n] for n, _ in mine], allow_unused=True)
    worst = 0.0
    for (n, p), a, b in zip(mine, g_h, g_r):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        worst = max(worst, float((a - b).abs().max()))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=n)
    print(f"native SDAR vs rl_trado max|grad diff| {worst:.2e}")
    assert sum(float(p.abs().sum()) for p in g_r if p is not None) > 0
    nat.module.eval()


def test_one_rl_step_on_a_block_model_counts_its_passes():
    """The shared loop trains a block model (bd3lm's tiny preset) with trace_rl: a finite loss, its
    training rows, and every [prompt ; clean ; noisy] pass metered."""
    from harness.algorithms.loop import LoopOptions, RLLoop
    from harness.registry import MODELS
    from harness.seeding import derive_seed
    from tests.algorithms.toy import ITEMS, Sevens

    torch.set_num_threads(1)
    policy = MODELS.build("bd3lm", {"preset": "tiny", "device": "cpu", "dtype": "float32"}).load()
    algo = ALGORITHMS.build("trace_rl", {"acc_low": 0.0, "acc_high": 1.0})
    opts = LoopOptions(steps=1, prompts=2, group_size=2, mu=1, lr=1e-3, eval_items=2,
                       sampler={"name": "low_confidence", "params": {"temperature": 1.0}})
    key = lambda item, r, stream: derive_seed("test", "trace_rl_block", item, r, stream)  # noqa: E731
    loop = RLLoop(policy, algo, Sevens(), opts, key, ITEMS, ITEMS[:2])
    log, cost = loop.train_step(0)
    assert torch.isfinite(torch.tensor(log["loss"])) and log["trace_rows"] > 0
    assert loop.meters["policy"].cost.nfe >= log["trace_rows"] and cost["nfe"] > 0


def test_a_block_model_without_logits_pattern_is_refused_clearly():
    from harness.types import HarnessError

    class NoPattern:
        block_size, mask_id, pad_id, eos_id, vocab_size = 4, 9, 8, 7, 10

    algo = ALGORITHMS.build("trace_rl", {})
    z = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(HarnessError, match="logits_pattern"):
        algo.terms(NoPattern(), z, z.bool(), z, z.bool(), generator=None, draws={"commit_step": z},
                   iteration=0, n_iterations=1)
