"""The `rl` study kind's training hook: train a copy of the cell's model with its algorithm.

`train` runs inside the runner (its `train` hook) before the cell's units. Before the first step it
decodes the held-out items (the loop's eval items) greedily with the starting checkpoint and writes
one record per item (study "<study>.start", item "start/<item id>", outcome `start_accuracy`), so
the report can pair the trained policy's units with the same checkpoint before RL. RL steps resume
from the cell's checkpoint (run_dir/rl/<cell>/checkpoint.pt) and each step writes one record (study
"<study>.steps", item "step-0001"..., outcome `train_reward`, the step log under `estimate`, the
step's rollout + likelihood cost under `cost`). The units are then the held-out test items,
decoded greedily by the trained policy (`harness.studies.rl_evaluate`: outcome `accuracy`), so the
leaderboard, the regression gate and paired comparisons see ordinary records.

This module sits in the studies layer: it imports the algorithms' loop, never `harness.studies`
or the runner (the runner hands itself in and this module calls its public `record`).

The cell's budget is checked between steps against the runner's ledger (everything the cell has
spent, over every resume): the step that takes it past a limit is recorded with status
`budget_exceeded` and training stops; the runner then counts the cell as stopped (done). A step
whose log holds NaN or infinity stops training with NonFiniteError (the cell's units fail); NaN in
`kl` / `clip_frac` only means the algorithm has none, and is recorded as null. `verify` checks on
resume that the step records a checkpoint (or a finished cell) implies are all in records.jsonl.

Under torchrun a cell the runner does not place on one rank trains data-parallel on every rank
(harness/algorithms/loop.py): every rank computes the same steps and costs, rank 0 alone writes
the step records and the checkpoint. On a terminal, a progress bar counts the steps and shows the
last step's mean reward and the time left.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re

from harness import progress
from harness.algorithms.loop import LoopOptions, RLLoop
from harness.budget import NonFiniteError
from harness.seeding import derive_seed
from harness.types import HarnessError, Item

NOT_APPLICABLE = ("kl", "clip_frac")  # NaN in these step-log keys: the algorithm has no such term

START = "start/"  # item-id prefix of the starting checkpoint's held-out records


def options(cell) -> LoopOptions:
    return LoopOptions(**cell.options)


def train(runner, cell, model, task, algorithm, writer):
    """Train (or resume) the cell's policy; -> the trained denoiser (the runner's model is untouched)."""
    opts = options(cell)
    steps = opts.quick_steps if runner.quick else opts.steps
    if runner.quick and opts.quick_prompts:
        opts = dataclasses.replace(opts, prompts=opts.quick_prompts)
    suite = runner.suite.suite

    def seed(item: str, replicate: int, stream: str) -> int:
        return derive_seed(suite, cell.id, item, replicate, f"{stream}/{cell.seed}")

    test = task.items("test")
    n_eval = min(opts.eval_items, cell.task.n_items or opts.eval_items)  # never more than the cell's units
    dist = getattr(runner, "dist", None)
    parallel = dist is not None and dist.active and getattr(runner, "owner", {}).get(cell.id) is None
    loop = RLLoop(copy.deepcopy(model), algorithm, task, opts, seed, task.items("train"), test[:n_eval],
                  dist=dist if parallel else None)
    main = not parallel or dist.main  # the one rank that writes records and checkpoints
    ckpt = checkpoint_dir(runner, cell)
    ledger = getattr(runner, "ledgers", {}).get(cell.id)
    first = loop.resume(ckpt)
    # Records already written for this cell: after a checkpoint was lost (a failed save), the steps
    # past the last checkpoint are retrained (the same seeds give the same state) but not recorded or
    # counted again, so records.jsonl holds each step once and the ledger counts it once.
    recorded = {r["item_id"] for r in getattr(runner, "existing", ()) if r["cell_id"] == cell.id
                and r["status"] == "ok"}
    started = all(f"{START}{it.id}" in recorded for it in loop.test_items)
    if first == 0 and not started:  # the starting checkpoint on the held-out items (greedy, deterministic)
        scores, spent = loop.evaluate_counted(loop.test_items)  # every rank's share, data-parallel
        n = len(scores)
        cost = {"nfe": spent.nfe / n, "nfe_full": spent.nfe / n, "nfe_cached": 0, "tokens": spent.tokens / n,
                "flops": spent.flops / n, "wall_s": spent.wall_s / n, "peak_mem": spent.peak_mem}  # per item
        for it, score in zip(loop.test_items, scores):
            item = Item(id=f"{START}{it.id}", prompt=it.prompt, reference=it.reference)  # not a unit's id
            rec = runner.record(cell, algorithm, task, item, 0, {"outcome": {"metric": "start_accuracy",
                                 "value": float(score)}}, cost, "ok", None)
            if main:
                writer.write({**rec, "study": f"{cell.study}.start"})
            if ledger is not None:
                ledger.add(cost)
        if main:
            writer.sync()
    bar = progress.bar(total=steps - first, desc=f"{cell.id} steps", leave=False,
                       disable=not (getattr(runner, "progress", False) and main))
    for step in range(first, steps):
        log, cost = loop.train_step(step)
        log = _strict_log(log, step + 1)
        bar.set_postfix(reward=f"{log['reward_mean']:.3f}")
        bar.update(1)
        last = step + 1 == steps
        if f"step-{step + 1:04d}" in recorded:  # retrained after a lost checkpoint: on record (and in the ledger)
            if main and ((step + 1) % opts.checkpoint_every == 0 or last):
                loop.save(ckpt, step + 1)
            continue
        if opts.eval_every and ((step + 1) % opts.eval_every == 0 or last):
            log["heldout_accuracy"] = sum(loop.evaluate(loop.test_items)) / len(loop.test_items)
            log["heldout_items"] = len(loop.test_items)
        item = Item(id=f"step-{step + 1:04d}", prompt="", reference="")
        over = None
        if ledger is not None:
            ledger.add(cost)
            over = ledger.exceeded()
        rec = runner.record(cell, algorithm, task, item, 0, {"outcome": {"metric": "train_reward",
                             "value": log["reward_mean"]}, "estimate": log}, cost,
                             "ok" if over is None else "budget_exceeded", None if over is None else str(over))
        if main:
            writer.write({**rec, "study": f"{cell.study}.steps"})
            writer.sync()
        if over is not None:
            bar.close()
            raise over
        if main and ((step + 1) % opts.checkpoint_every == 0 or last):
            loop.save(ckpt, step + 1)
    bar.close()
    return loop.policy


def checkpoint_dir(runner, cell):
    return runner.run_dir / "rl" / re.sub(r"[^A-Za-z0-9_.=,-]+", "_", cell.id)


def _strict_log(log: dict, step: int) -> dict:
    out = {}
    for k, v in log.items():
        if isinstance(v, float) and not math.isfinite(v):
            if k in NOT_APPLICABLE and math.isnan(v):
                out[k] = None
                continue
            raise NonFiniteError(f"non-finite {k} ({v}) in the log of RL step {step}")
        out[k] = v
    return out


def verify(runner, cell) -> None:
    """On resume: every step record that the cell's checkpoint (or its evaluated units, written only
    after training ends) implies must be in the run's records with status ok. A gap means
    records.jsonl lost lines; resuming past it would leave the steps missing for good."""
    import torch

    ok = {r["item_id"] for r in runner.existing if r["cell_id"] == cell.id and r["status"] == "ok"}
    opts = options(cell)
    done = 0
    file = checkpoint_dir(runner, cell) / "checkpoint.pt"
    if file.exists():
        try:
            done = int(torch.load(file, map_location="cpu", weights_only=False)["step"])
        except Exception as exc:  # a torn or foreign file: say which
            raise HarnessError(f"{file}: cannot read the RL checkpoint ({type(exc).__name__}: {exc})") from None
    if any(not i.startswith(("step-", START)) for i in ok):  # held-out units exist: training had finished
        done = max(done, opts.quick_steps if runner.quick else opts.steps)
    missing = [f"step-{k:04d}" for k in range(1, done + 1) if f"step-{k:04d}" not in ok]
    if missing:
        shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise HarnessError(
            f"{runner.run_dir}: cell {cell.id!r} has trained {done} steps, but records.jsonl lacks the step "
            f"records {shown}: the file lost lines. Restore records.jsonl, or delete {file.parent} and the "
            "cell's records to retrain it.")

