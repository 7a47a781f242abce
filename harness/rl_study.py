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
"""
from __future__ import annotations

import copy
import dataclasses
import re

from harness.algorithms.loop import LoopOptions, RLLoop
from harness.seeding import derive_seed
from harness.types import Item

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
    loop = RLLoop(copy.deepcopy(model), algorithm, task, opts, seed, task.items("train"), test[:n_eval])
    ckpt = runner.run_dir / "rl" / re.sub(r"[^A-Za-z0-9_.=,-]+", "_", cell.id)
    first = loop.resume(ckpt)
    if first == 0:  # the starting checkpoint on the held-out items (greedy, deterministic)
        before = loop.meters["eval"].cost
        scores = loop.evaluate(loop.test_items)
        spent, n = loop.meters["eval"].cost.minus(before), len(scores)
        cost = {"nfe": spent.nfe / n, "nfe_full": spent.nfe / n, "nfe_cached": 0, "tokens": spent.tokens / n,
                "flops": spent.flops / n, "wall_s": spent.wall_s / n, "peak_mem": spent.peak_mem}  # per item
        for it, score in zip(loop.test_items, scores):
            item = Item(id=f"{START}{it.id}", prompt=it.prompt, reference=it.reference)  # not a unit's id
            rec = runner.record(cell, algorithm, task, item, 0, {"outcome": {"metric": "start_accuracy",
                                 "value": float(score)}}, cost, "ok", None)
            writer.write({**rec, "study": f"{cell.study}.start"})
        writer.sync()
    for step in range(first, steps):
        log, cost = loop.train_step(step)
        last = step + 1 == steps
        if opts.eval_every and ((step + 1) % opts.eval_every == 0 or last):
            log["heldout_accuracy"] = sum(loop.evaluate(loop.test_items)) / len(loop.test_items)
            log["heldout_items"] = len(loop.test_items)
        item = Item(id=f"step-{step + 1:04d}", prompt="", reference="")
        rec = runner.record(cell, algorithm, task, item, 0, {"outcome": {"metric": "train_reward",
                             "value": log["reward_mean"]}, "estimate": log}, cost, "ok", None)
        writer.write({**rec, "study": f"{cell.study}.steps"})
        writer.sync()
        if (step + 1) % opts.checkpoint_every == 0 or last:
            loop.save(ckpt, step + 1)
    return loop.policy
