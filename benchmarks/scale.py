"""Scale-out speed-up: 2 processes over 1, on CPU with gloo (harness/distributed.py).

Three measurements, 1 process vs 2, each timed two ways: the wall time of the whole commands
(process start, imports, the process group: what a user pays), and the time inside the run
(Runner.run(): model loads, cells, merge; the slowest process counts), which is what scale-out
can shorten:

- many small cells, one torchrun job of 2 ranks: each small cell runs whole on one rank;
- the same suite as 2 concurrent jobs (`--shard 0/2`, `--shard 1/2`, one `--run-id`);
- one RL cell, data-parallel over 2 ranks (rollouts and micro-batches split, gradients all-reduced).

The speed-up printed is t(1 process) / t(2 processes); the ideal is 2.0 on 2 free cores. The load
average before and after each measurement is printed too: on a shared machine other work takes
cores, and the ratios mean little when the load is above the core count.

    python benchmarks/scale.py --quick    # small sizes, one repetition (about a minute on 2 cores)
    python benchmarks/scale.py            # larger cells and more RL steps, best of 2
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")

CELLS = """
suite: scale-cells
models: {{tiny: {{name: tiny, params: {{checkpoint: {ckpt}}}}}}}
tasks: {{add: {{name: addition, params: {{n_digits: 3}}, split: test, n_items: {items}}}}}
studies:
  - id: gen
    kind: generate
    model: tiny
    task: add
    sampler: {{name: low_confidence, params: {{temperature: 1.0}}}}
    batch_size: {items}
    sweep: {{seed: {seeds}}}
"""

RL = """
suite: scale-rl
models: {{tiny: {{name: tiny, params: {{checkpoint: {ckpt}}}}}}}
tasks: {{add: {{name: addition, params: {{n_digits: 3, n_train: 2000}}, split: test, n_items: 4}}}}
studies:
  - id: rl
    kind: rl
    model: tiny
    task: add
    algorithm: {{name: diffu_grpo}}
    options: {{steps: {steps}, prompts: {prompts}, group_size: 4, mu: 1, eval_every: 0, eval_items: 4,
               checkpoint_every: 100}}
"""


def wide_checkpoint(path: Path, width: int) -> Path:
    """A randomly initialised tiny MDLM shaped like tiny-addition but `width` wide (4 layers, d_ff 4 x
    width): the shipped 32-wide model is so small that per-pass Python overhead, the same for any
    batch size, hides what splitting rows over ranks saves; a wider model is compute-bound as real
    checkpoints are."""
    import json

    import torch

    from harness.models.tiny import CharTokenizer, TinyConfig, TinyMDLM, resolve_checkpoint, save_checkpoint

    base = json.loads((resolve_checkpoint("tiny-addition") / "config.json").read_text())
    cfg = TinyConfig(**{**base["model"], "d_model": width, "d_ff": 4 * width, "n_layers": 4, "n_heads": 4})
    extra = {k: v for k, v in base.items() if k not in ("model", "history")}
    save_checkpoint(path, TinyMDLM(cfg, generator=torch.Generator().manual_seed(0)).eval(), CharTokenizer(), extra)
    return path


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _timed(cmds: list[list[str]]) -> tuple[float, float]:
    """Run `cmds` concurrently, each to completion (a failure is an error) -> (wall time of it all,
    the longest time inside Runner.run() that any process reported)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    inside = 0.0
    for p, c in zip(procs, cmds):
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"failed ({p.returncode}): {' '.join(c)}\n{err[-3000:]}")
        inside = max([inside] + [float(line.split()[1]) for line in out.splitlines() if line.startswith("RUN_S ")])
    return time.perf_counter() - t0, inside


def _run(suite: Path, results: Path, *extra: str) -> list[str]:
    return ["-m", "benchmarks.scale", "--worker", str(suite), str(results), *extra]


def worker(suite: str, results: str, extra: list[str]) -> int:
    """One process of a measurement: a Runner as `dlm-harness run` makes it, run() timed; every
    rank prints its own time."""
    from harness.runner import Runner

    kw = dict(zip(("run_id", "shard"), extra[1::2])) if extra else {}
    runner = Runner(suite, results=results, progress=False, **kw)
    t0 = time.perf_counter()
    runner.run()
    print(f"RUN_S {time.perf_counter() - t0:.4f}", flush=True)
    return 0


def measure(name: str, suite: Path, work: Path, reps: int, shards: bool) -> list[tuple[str, float, float, tuple]]:
    rows = []
    for label, two in [("2 ranks (torchrun)", lambda k: [[str(TORCHRUN), "--standalone", "--nproc_per_node=2",
                                                          *_run(suite, work / f"r{k}")]])] + \
            ([("2 jobs (--shard)", lambda k: [[sys.executable, *_run(suite, work / f"s{k}", "run_id", "a",
                                                                      "shard", f"{i}/2")] for i in (0, 1)])]
             if shards else []):
        load0 = os.getloadavg()
        one = [_timed([[sys.executable, *_run(suite, work / f"o{label[0]}{k}")]]) for k in range(reps)]
        par = [_timed(two(k)) for k in range(reps)]
        rows.append((f"{name}, {label}", min(one), min(par), (load0, os.getloadavg())))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    ap.add_argument("--width", type=int, default=256, help="d_model of the random tiny model measured (default 256)")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)  # SUITE RESULTS [key value ...]
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.worker[2:])
    reps = 1 if args.quick else 2
    cells, items = (8, 16) if args.quick else (16, 32)
    steps, prompts = (6, 16) if args.quick else (8, 32)
    rows = []
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        work = Path(tmp)
        ckpt = wide_checkpoint(work / "wide", args.width)
        s1 = work / "cells.yaml"
        s1.write_text(CELLS.format(items=items, seeds=list(range(cells)), ckpt=ckpt))
        s2 = work / "rl.yaml"
        s2.write_text(RL.format(steps=steps, prompts=prompts, ckpt=ckpt))
        rows += measure(f"{cells} small generate cells x {items} items", s1, work, reps, shards=True)
        rows += measure(f"1 RL cell, {steps} steps x {prompts} prompts x G 4", s2, work, reps, shards=False)
    print(f"model: random tiny MDLM, d_model {args.width}, 4 layers; cores: {os.cpu_count()}; best of {reps}")
    print("'command': whole commands, start-up included; 'run': inside Runner.run(), the slowest process")
    print(f"{'measurement':<60} {'command 1p/2p s':>16} {'speed-up':>8} {'run 1p/2p s':>12} {'speed-up':>8}"
          "  load avg (1 min)")
    for name, (c1, r1), (c2, r2), (l0, l1) in rows:
        print(f"{name:<60} {c1:7.2f}/{c2:<8.2f} {c1 / c2:8.2f} {r1:5.2f}/{r2:<6.2f} {r1 / r2:8.2f}  "
              f"{l0[0]:.2f} -> {l1[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
