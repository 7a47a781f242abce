"""RL step overhead: an RL step's wall time / its metered forward + backward time.

On the default tiny checkpoint and 3-digit addition, each algorithm runs a few warm-up steps and
then `--steps` timed steps of the shared loop (harness/algorithms/loop.py). Per step the loop
records its wall time and the model time of its passes: the meters' wall time of every forward
pass (rollouts, π_θ, π_old, π_ref) plus the measured time of loss.backward(). The ratio printed
is Σ step wall / Σ (forward + backward) over the timed steps: everything else (sampling
bookkeeping, masks, losses, advantages, the optimiser step) is the overhead. Target: <= 1.2.

    python benchmarks/rl.py            # every algorithm, 8 prompts x G 4, mu 2, 6 timed steps, 1 thread
    python benchmarks/rl.py --quick    # diffu_grpo and spg, 3 timed steps (a smoke run)
"""
from __future__ import annotations

import argparse

import torch

from harness.algorithms.loop import LoopOptions, RLLoop
from harness.registry import ALGORITHMS, MODELS, TASKS
from harness.seeding import derive_seed

TARGET = 1.2


def measure(name: str, steps: int, warmup: int, prompts: int, group: int, mu: int) -> dict:
    task = TASKS.build("addition", {"n_digits": 3, "n_train": 20000})
    model = MODELS.build("tiny", {}).load()
    opts = LoopOptions(prompts=prompts, group_size=group, mu=mu, lr=2e-5)
    loop = RLLoop(model, ALGORITHMS.build(name, {}), task, opts,
                  lambda item, r, stream: derive_seed("bench-rl", name, item, r, stream),
                  task.items("train"), task.items("test")[:10])
    for k in range(warmup):
        loop.train_step(k)
    wall = model_s = 0.0
    for k in range(warmup, warmup + steps):
        log, _ = loop.train_step(k)
        wall += log["step_wall_s"]
        model_s += log["forward_s"] + log["backward_s"]
    return {"algorithm": name, "wall_s": wall, "model_s": model_s, "ratio": wall / model_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = ["diffu_grpo", "spg"] if args.quick else ALGORITHMS.names()
    steps = args.steps or (3 if args.quick else 6)
    print(f"| algorithm | step wall s | forward+backward s | ratio (target <= {TARGET}) |\n|---|---|---|---|")
    worst = 0.0
    for name in names:
        r = measure(name, steps, warmup=2, prompts=8, group=4, mu=2)
        worst = max(worst, r["ratio"])
        print(f"| {name} | {r['wall_s']:.3f} | {r['model_s']:.3f} | {r['ratio']:.3f} |", flush=True)
    print(f"worst ratio {worst:.3f} ({'meets' if worst <= TARGET else 'misses'} the target {TARGET})")


if __name__ == "__main__":
    main()
