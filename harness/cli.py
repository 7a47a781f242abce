"""`dlm-harness`: list | run | report | compare | train | eval | score.

Exit status: 0 on success, 1 when a run finished with failed units, 2 on bad usage or bad input
(the message names the file, key or value; no traceback).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.types import HarnessError


def cmd_list(args) -> int:
    from harness.registry import REGISTRIES

    kinds = [args.kind] if args.kind else list(REGISTRIES)
    if args.kind and args.kind not in REGISTRIES:
        raise HarnessError(f"unknown kind {args.kind!r} (known: {', '.join(REGISTRIES)})")
    for kind in kinds:
        reg = REGISTRIES[kind]
        if not args.kind:
            print(f"{kind}:")
        for name in reg.names():
            note = getattr(reg.get(name), "applies", "")  # models: their noise and which estimators apply
            print(f"{'  ' if not args.kind else ''}{name}\t{reg.summary(name)}{f'  [{note}]' if note else ''}")
    return 0


def cmd_run(args) -> int:
    from harness.runner import Runner

    runner = Runner(args.suite, results=args.results, resume=args.resume, quick=args.quick,
                    progress=not args.no_progress, argv=["dlm-harness", *sys.argv[1:]])
    say = runner.dist.main  # under torchrun only rank 0 prints, so the last stdout line stays the run directory
    if say:
        print(f"run directory: {runner.run_dir}", file=sys.stderr)
    run_dir = runner.run()
    status = runner.manifest["status"]
    if say:
        print(f"status: {status}", file=sys.stderr)
        print(run_dir)
    return 0 if status == "complete" else 1


def cmd_report(args) -> int:
    from harness.report.markdown import write_report

    # Runs of one suite combine into one report; each report is index.md plus a self-contained index.html.
    print(*write_report([Path(d) for d in args.run_dirs], Path(args.out), protocol=args.protocol), sep="\n")
    return 0


def cmd_score(args) -> int:
    from harness.score import parse_fields, score_file

    run_dir, counts = score_file(args.file, args.task, protocol=args.protocol, fields=parse_fields(args.fields),
                                 results=args.results, suite=args.suite, system=args.system,
                                 argv=["dlm-harness", *sys.argv[1:]],
                                 task_params=dict(_parse_kv(p) for p in args.task_param))
    print(f"rows: {counts['rows']}, scored: {counts['scored']}, bad: {counts['bad']} (status error in the records; "
          f"lines and reasons in the manifest's bad_rows), duplicates: {counts['duplicates']}", file=sys.stderr)
    print(run_dir)
    return 0


def cmd_compare(args) -> int:
    from harness.stats.gate import format_table, gate

    metrics = None
    if args.metric:
        metrics = {}
        for m in args.metric:
            name, _, direction = m.partition(":")
            metrics[name] = direction or "higher"
    rows, notes = gate(Path(args.base), Path(args.new), metrics=metrics, alpha=args.alpha,
                       tolerance=args.tolerance, seed=args.seed)
    print(format_table(rows, notes))
    worse = [f"{cell}/{c.name.split('/', 1)[1]}" for cell, c, _, _ in rows if c.verdict == "worse"]
    if worse:
        print(f"verdict: significantly worse beyond tolerance {args.tolerance}: {', '.join(worse)}")
        return 1
    print("verdict: no significant regression")
    return 0


def cmd_train(args) -> int:
    import json

    from harness.models.train import TrainConfig, train

    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    params = tuple(_parse_kv(p) for p in args.task_param)
    cfg = TrainConfig(**{**fields, "task_params": params})
    metrics = train(cfg, Path(args.out), progress=not args.no_progress)
    print(json.dumps(metrics))
    print(args.out)
    return 0


def cmd_eval(args) -> int:
    from harness.evaluate import EvalSpec, load_eval_suite, run_eval

    argv = ["dlm-harness", *sys.argv[1:]]
    if args.suite:
        suite, spec, metrics, _ = load_eval_suite(args.suite)
        run_dir = run_eval(spec, args.results, suite=suite, argv=argv, suite_path=args.suite, metrics=metrics)
    else:
        if not args.tasks:
            raise HarnessError("eval: give --tasks (e.g. gsm8k,minerva_math500) or --suite FILE")
        model_args = dict(_parse_kv(p, "--model-args") for p in args.model_args.split(",") if p)
        spec = EvalSpec(model=args.model, model_args=model_args, sampler=args.sampler, estimator=args.estimator,
                        tasks=tuple(t for t in args.tasks.split(",") if t), limit=args.limit,
                        num_fewshot=args.num_fewshot, batch_size=args.batch_size, seed=args.seed,
                        task_source=args.task_source, protocol=args.protocol)
        run_dir = run_eval(spec, args.results, argv=argv)
    print(run_dir)
    return 0


def _parse_kv(text: str, flag: str = "--task-param"):
    import yaml

    if "=" not in text:
        raise HarnessError(f"{flag} {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    return key, yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlm-harness", description="Benchmark and evaluation harness for diffusion LMs.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list registered components",
                       description="List registered names, one per line, then a summary.")
    s.add_argument("kind", nargs="?", help="models | estimators | samplers | algorithms | tasks")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("run", help="run a suite", description="Plan and run a suite; prints the run directory last.")
    s.add_argument("suite", help="suite YAML file (e.g. suites/default.yaml)")
    s.add_argument("--results", default="results", help="results root (default: results)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run in RUN_DIR")
    s.add_argument("--quick", action="store_true", help="the suite's quick variant (fewer items and replicates)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("report", help="write a report from run directories",
                       description="Write index.md and index.html under reports/<suite>/ (runs of one suite combined).")
    s.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    s.add_argument("--out", default="reports", help="reports root (default: reports)")
    s.add_argument("--protocol", choices=("harness", "d1", "lm-eval", "strict"),
                   help="re-score the stored generations under this scoring protocol (nothing is re-generated)")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("score", help="score generations made elsewhere (JSONL, lm-eval samples, d1 JSON)",
                       description="Grade a file of generations with a harness task and write a run directory "
                                   "(prints it last) that report and compare read.")
    s.add_argument("file", help="JSONL of generations, an lm-eval samples_<task>.jsonl, or d1's *_generations.json")
    s.add_argument("--task", required=True, help="a registered task: gsm8k, math500, countdown3, sudoku4")
    s.add_argument("--protocol", choices=("harness", "d1", "lm-eval", "strict"), default=None,
                   help="scoring protocol (default: the task's, harness)")
    s.add_argument("--fields", default="", metavar="ROLE=FIELD,...",
                   help="field names of question, generation, answer, id (default: common names)")
    s.add_argument("--task-param", action="append", default=[], metavar="KEY=VALUE", help="task parameter (repeatable)")
    s.add_argument("--system", default=None, help="name of the system that made the generations (default: file stem)")
    s.add_argument("--suite", default=None, help="suite name of the run (default: score-<task>)")
    s.add_argument("--results", default="results", help="results root (default: results)")
    s.set_defaults(fn=cmd_score)

    s = sub.add_parser("compare", help="regression gate: is NEW_RUN significantly worse than BASE_RUN?",
                       description="Pair records by (cell, item, seed) and test each pre-registered metric; "
                                   "exit 1 only when one is significantly worse beyond the tolerance.")
    s.add_argument("base", metavar="BASE_RUN")
    s.add_argument("new", metavar="NEW_RUN")
    s.add_argument("--metric", action="append", metavar="NAME[:higher|lower]",
                   help="metric to gate on (repeatable; default: the suite's pre-registered metrics)")
    s.add_argument("--alpha", type=float, default=0.05, help="level of the paired tests, Holm-corrected")
    s.add_argument("--tolerance", type=float, default=0.02, help="changes smaller than this never fail")
    s.add_argument("--seed", type=int, default=0, help="seed of the permutation tests")
    s.set_defaults(fn=cmd_compare)

    s = sub.add_parser("train", help="train the tiny MDLM on a synthetic task",
                       description="Train the built-in tiny MDLM and write a checkpoint directory.")
    s.add_argument("--task", required=True, help="a registered task, e.g. addition")
    s.add_argument("--task-param", action="append", default=[], metavar="KEY=VALUE", help="task parameter (repeatable)")
    s.add_argument("--out", required=True, help="checkpoint directory to write")
    for name, typ in (("steps", int), ("batch_size", int), ("lr", float), ("d_model", int), ("n_layers", int),
                      ("n_heads", int), ("d_ff", int), ("seed", int), ("eval_every", int), ("eval_items", int),
                      ("threads", int)):
        s.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None)
    s.add_argument("--device", default=None, help="cpu (default) or cuda")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("eval", help="lm-evaluation-harness tasks through the bridge",
                       description="Run lm-eval's simple_evaluate with the dlm-harness model; write a harness run "
                                   "directory (records, manifest, lm-eval results and samples).")
    s.add_argument("--model", default="tiny", help="a registered model (default: tiny)")
    s.add_argument("--model-args", default="", metavar="K=V,...",
                   help="model / sampler / estimator parameters and bridge keys (greedy_check, max_gen_toks, ...)")
    s.add_argument("--sampler", default="low_confidence")
    s.add_argument("--estimator", default="mc_elbo")
    s.add_argument("--tasks", help="comma-separated: gsm8k, gsm8k_cot, minerva_math500 (math500), humaneval, mbpp, "
                                   "countdown3, sudoku4, dlmh_* or any lm-eval task")
    s.add_argument("--limit", type=int, default=None, help="documents per task")
    s.add_argument("--num-fewshot", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--seed", type=int, default=1234)
    s.add_argument("--task-source", choices=("auto", "harness", "lm-eval"), default="auto",
                   help="auto: lm-eval's built-in task when the hub is reachable, else the harness YAML")
    s.add_argument("--protocol", choices=("harness", "d1", "lm-eval", "strict"), default=None,
                   help="scoring protocol of the harness tasks (lm-eval's built-in tasks always score as lm-eval)")
    s.add_argument("--suite", help="an lm-eval suite file (suites/lm-eval.yaml); replaces the options above")
    s.add_argument("--results", default="results", help="results root (default: results)")
    s.set_defaults(fn=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
