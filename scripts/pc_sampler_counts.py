"""Write a pc_sampler background count file (NEUIR/PC-Sampler's `data/baseline` format) for a model and task.

    python scripts/pc_sampler_counts.py --model tiny --model-params '{"checkpoint": "tiny-addition-c16"}' \\
        --task addition --task-params '{"n_digits": 3, "canvas": 16}' --split train \\
        --out suites/data/tiny-addition-c16-counts.json

Counts the tokens of each item's prompt and reference completion (followed by EOS padding to the
task's `gen_length`: the canvas the model learned to fill) with the model's tokenizer; the reference
counts a large text corpus the same way (`utils/calculate_p_baseline.py`). Never uses test items
unless asked to.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.paths import write_text_atomic  # noqa: E402
from harness.registry import MODELS, TASKS  # noqa: E402
from harness.samplers.pc_sampler import token_counts  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--model-params", default="{}", help="JSON object")
    ap.add_argument("--task", required=True)
    ap.add_argument("--task-params", default="{}", help="JSON object")
    ap.add_argument("--split", default="train")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    den = MODELS.build(args.model, json.loads(args.model_params)).load()
    task = TASKS.build(args.task, json.loads(args.task_params))
    items = task.items(args.split)
    canvas = int(getattr(task, "gen_length", 0) or 0)
    data = token_counts(den.tokenizer, [(it.prompt, it.reference) for it in items], den.eos_id, canvas)
    data["source"] = {"model": args.model, "model_params": json.loads(args.model_params), "task": args.task,
                      "task_params": json.loads(args.task_params), "split": args.split, "items": len(items)}
    write_text_atomic(args.out, json.dumps(data, indent=1) + "\n")
    print(f"{args.out}: {data['num_token']} tokens, {len(data['p_baseline_dict'])} distinct ids")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
