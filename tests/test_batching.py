"""Max-tokens batching and out-of-memory back-off change batches, never values."""
from __future__ import annotations

import json

import pytest
import torch

from harness.batching import InjectedOOM, halves, is_oom, plan_batches, split
from harness.records import read_manifest, read_records
from harness.runner import Runner
from harness.types import HarnessError
from tests.helpers import Recorder, write_suite
from tests.test_runner import SUITE, stable


def values(records):
    return {(r["cell_id"], r["item_id"], r["replicate"]): (r["status"], r["outcome"], r["estimate"], r["generation"])
            for r in records}


def test_plan_batches_by_hand():
    # batch_size only: consecutive runs of 3
    assert [list(r) for r in plan_batches([5] * 7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    # max_tokens 12: lengths 4,4,4 fit (3 x 4 = 12); adding 6 would make 4 x 6 = 24 > 12; 6,6 = 12 fits;
    # the 13-token unit is longer than the cap on its own and runs alone; then 2, 2.
    lengths = [4, 4, 4, 6, 6, 13, 2, 2]
    assert [list(r) for r in plan_batches(lengths, 64, 12)] == [[0, 1, 2], [3, 4], [5], [6, 7]]
    # width is the batch's longest row: [2, 5] -> 2 x 5 = 10 <= 10, then 3 x 5 = 15 > 10
    assert [list(r) for r in plan_batches([2, 5, 1, 1], 64, 10)] == [[0, 1], [2, 3]]
    assert [list(r) for r in plan_batches([3, 3, 3, 3], 2, 100)] == [[0, 1], [2, 3]]
    assert plan_batches([], 4, 10) == []
    with pytest.raises(ValueError, match="max_tokens"):
        plan_batches([1], 4, 0)
    assert split(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert halves([1, 2, 3]) == [[1, 2], [3]] and halves([1, 2]) == [[1], [2]]


def test_is_oom():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(torch.cuda.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("MPS backend out of memory"))
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("out of memory"))


def _suite(tmp_path, ckpt, batch, name, extra_study=""):
    text = SUITE.format(ckpt=ckpt, n_items=5, batch=batch, extra="")
    return write_suite(tmp_path, text.replace("    replicates: 2\n", "    replicates: 2\n" + extra_study), name)


def test_max_tokens_splits_batches_and_changes_no_value(tmp_path, tiny_ckpt, monkeypatch):
    plain = read_records(Runner(_suite(tmp_path, tiny_ckpt, 8, "a.yaml"), results=tmp_path / "a",
                                progress=False).run())
    seen = []
    real_model = Runner.model

    def recording_model(self, cell):
        rec = Recorder(real_model(self, cell))
        seen.append((cell.id, rec))
        return rec

    monkeypatch.setattr(Runner, "model", recording_model)
    # the generate cell: 2-digit addition, prompt "ab+cd=" 6 characters + a gen_length-token canvas
    path = _suite(tmp_path, tiny_ckpt, 8, "b.yaml", extra_study="    max_tokens: 30\n")
    run = Runner(path, results=tmp_path / "b", progress=False).run()
    capped = read_records(run)
    gen_inputs = [x for cid, rec in seen if cid == "gen" for x in rec.inputs]
    width = gen_inputs[0].shape[1]
    assert width * 8 > 30  # batch_size alone would exceed the cap
    assert max(x.shape[0] for x in gen_inputs) == 30 // width  # as many rows as the cap allows, no more
    assert all(x.shape[0] * x.shape[1] <= 30 for x in gen_inputs)
    assert len(capped) == 5 * 2 + 5 * 2 and values(capped) == values(plain)
    assert {c["id"]: c["max_tokens"] for c in read_manifest(run)["cells"]}["gen"] == 30


def test_max_tokens_is_validated(tmp_path, tiny_ckpt):
    with pytest.raises(HarnessError, match=r"studies\[0\]\.max_tokens: expected an integer in \[1, \d+\], got 0"):
        Runner(_suite(tmp_path, tiny_ckpt, 4, "c.yaml", extra_study="    max_tokens: 0\n"), results=tmp_path / "c")


def _with_oom(monkeypatch, max_rows):
    real_model = Runner.model
    wrappers = []

    def oom_model(self, cell):
        w = InjectedOOM(real_model(self, cell), max_rows)
        wrappers.append(w)
        return w

    monkeypatch.setattr(Runner, "model", oom_model)
    return wrappers


def test_oom_backoff_halves_and_records_it(tmp_path, tiny_ckpt, monkeypatch):
    path = _suite(tmp_path, tiny_ckpt, 4, "d.yaml")
    clean = read_records(Runner(path, results=tmp_path / "clean", progress=False).run())
    # gen: 1 row per unit, 4 > 3 -> halved to 2. ll: mc_elbo n_mc 3 = 3 rows per unit: 12 -> 6 -> 3.
    wrappers = _with_oom(monkeypatch, max_rows=3)
    run = Runner(path, results=tmp_path / "oom", progress=False).run()
    recs = read_records(run)
    assert sum(w.raised for w in wrappers) >= 3
    assert values(recs) == values(clean)  # the retried units drew exactly what they draw unsplit
    strip = lambda rs: [json.loads(s) for s in stable(rs)]  # noqa: E731
    assert [{k: v for k, v in r.items() if k not in ("oom_backoff", "cost")} for r in strip(recs)] == \
        [{k: v for k, v in r.items() if k != "cost"} for r in strip(clean)]
    m = read_manifest(run)
    assert m["status"] == "complete"
    events = [(e["cell"], e["batch_size"], e["retry_batch_size"]) for e in m["oom_backoff"]]
    # gen: 10 units in batches [4, 4, 2] -> the first 4 fails, the cap drops to 2 for the cell.
    # ll (each cell): 5 units in [4, 1] -> 4 fails (12 rows), then 2 (6 rows), then 1 fits (3 rows).
    assert events == [("gen", 4, 2), ("ll[t_law=iid]", 4, 2), ("ll[t_law=iid]", 2, 1),
                      ("ll[t_law=antithetic]", 4, 2), ("ll[t_law=antithetic]", 2, 1)]
    assert all("out of memory" in e["error"] and e["wasted_cost"]["nfe"] >= 0 for e in m["oom_backoff"])
    assert {json.dumps(r["oom_backoff"]) for r in recs if r["cell_id"] == "gen"} == \
        {json.dumps({"batch_size": 2, "planned_batch_size": 4})}
    assert {r["oom_backoff"]["batch_size"] for r in recs if r["cell_id"].startswith("ll")} == {1}
    assert "oom_backoff" not in clean[0]


def test_oom_of_a_single_unit_is_an_error(tmp_path, tiny_ckpt, monkeypatch):
    path = _suite(tmp_path, tiny_ckpt, 4, "e.yaml")
    _with_oom(monkeypatch, max_rows=2)  # one ll unit alone needs 3 rows: it can never fit
    run = Runner(path, results=tmp_path / "oom1", progress=False).run()
    recs = read_records(run)
    ll = [r for r in recs if r["cell_id"].startswith("ll")]
    assert ll and all(r["status"] == "error" and "out of memory" in r["error"] for r in ll)
    assert all(r["status"] == "ok" for r in recs if r["cell_id"] == "gen")
    assert read_manifest(run)["status"] == "failed"


def test_token_caps_account_for_the_logits_vocabulary():
    """65,536 tokens of LLaDA's 126,464-way logits are 33 GB in float32: the cap drops to what 8 GiB holds."""
    from harness.batching import LOGITS_BYTES, logits_capped

    assert 65536 * 126464 * 4 > 33e9
    assert logits_capped(65536, 126464) == 16980 and logits_capped(65536, 152064) == 14122
    assert logits_capped(65536, 126464) * 126464 * 4 <= LOGITS_BYTES
    assert logits_capped(65536, 128) == 65536 and logits_capped(100, None) == 100  # small vocab: unchanged


def test_estimator_chunks_fit_the_vocabulary_cap():
    """completion_logprobs passes at most logits_capped(max_tokens, V) tokens per forward."""
    import torch

    from harness.estimators._common import completion_logprobs

    class Wide:
        vocab_size, shift_logits = 4 * 2**20, False  # 4M-way logits: 512 tokens per 8 GiB

        def __init__(self):
            self.rows = []

        def logits(self, x, attention_mask=None):
            self.rows.append(x.shape[0])
            return torch.zeros(*x.shape, 8)  # the values do not matter here

    den = Wide()
    prompt, completion = torch.zeros(1, 60, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)
    completion_logprobs(den, prompt, None, completion, completion[:, None].expand(1, 20, 4), 65536)
    assert max(den.rows) * 64 <= 512 and sum(den.rows) == 20  # 8 rows of 64 tokens per pass
