"""`dlm-harness`: list | run | report | compare | train | eval | score | reproduce | show-sample.

Exit status: 0 on success, 1 when a run finished with failed units (or `compare` finds a regression),
2 on bad usage, bad input or a failed file operation (the message names the file, key or value, or
the operation and the path; no traceback), 128 + the signal's number on SIGINT, SIGTERM or SIGHUP.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from harness.types import HarnessError


def _kind(name: str) -> str:
    """A registry kind from a plural or singular word (`estimators`, `estimator`); HarnessError otherwise."""
    from harness.registry import REGISTRIES

    for kind in REGISTRIES:
        if name in (kind, kind[:-1]):
            return kind
    raise HarnessError(f"unknown kind {name!r} (known: {', '.join(REGISTRIES)}, or each in the singular)")


def _table(rows: list[tuple[str, ...]], indent: str = "") -> str:
    """Left-aligned columns; the last column runs free."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join((indent + "".join(c.ljust(w + 2) for c, w in zip(r, widths)) + r[-1]).rstrip() for r in rows)


def _field_help(cls) -> dict[str, str]:
    """Each parameter's help: the comment on its line in the class body (the class that declares it, or
    a subclass that redeclares it), read from the source with tokenize."""
    import inspect
    import io
    import re
    import tokenize

    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        comments = {}
        try:
            for tok in tokenize.generate_tokens(io.StringIO(src).readline):
                if tok.type == tokenize.COMMENT:
                    comments[tok.start[0]] = tok.string.lstrip("#").strip()
        except (tokenize.TokenError, IndentationError):
            continue
        lines = src.splitlines()
        start = next((i for i, x in enumerate(lines) if x.lstrip().startswith("class ")), 0)
        body = next((len(x) - len(x.lstrip()) for x in lines[start + 1:] if x.strip()), 4)
        for i, line in enumerate(lines, 1):
            m = re.match(rf"^ {{{body}}}(\w+)\s*:", line)
            if m and i in comments and "ClassVar" not in line:
                out[m.group(1)] = comments[i]
    return out


def _describe(kind: str, name: str) -> dict:
    """What `list` and `show` print about one component, from the live registry."""
    import dataclasses
    import inspect
    import re
    import sys as _sys

    from harness.registry import MODELS, REGISTRIES, type_name

    reg = REGISTRIES[kind]
    cls = reg.get(name)
    helps = _field_help(cls)
    prose = " ".join([inspect.getdoc(_sys.modules[cls.__module__]) or "", cls.__doc__ or ""]).split()
    sentences = [x.strip() for x in re.split(r"(?<=[.;])\s+", " ".join(prose)) if x.strip()]
    for f in reg.fields(name):  # no comment on the field: the docstring's first sentence that names it
        if not helps.get(f):
            helps[f] = next((x for x in sentences if f"`{f}`" in x), "")
    fields = [[f, type_name(tp), "required" if d is dataclasses.MISSING else f"default {d!r}", helps.get(f, "")]
              for f, (tp, d) in reg.fields(name).items()]
    applies = ""
    if kind in ("estimators", "samplers"):
        from harness.config import missing_capabilities

        noise = getattr(cls, "noise", "masked")
        fits = [m for m in MODELS.names() if getattr(MODELS.get(m), "noise", "masked") == noise
                and not missing_capabilities(MODELS.get(m), cls)]
        who = "causal LMs" if noise == "causal" else f"{noise}-noise models"
        if getattr(cls, "requires", ()):
            who += f" that provide {', '.join(cls.requires)}"
        applies = f"applies to: {who} ({', '.join(fits) or 'none registered'}; enforced when a suite is planned)"
    elif kind == "models" and getattr(cls, "applies", ""):
        applies = f"applies: {cls.applies}"
    return {"summary": reg.summary(name), "note": getattr(cls, "applies", "") if kind == "models" else "",
            "where": f"{cls.__module__}.{cls.__qualname__}", "doc": inspect.cleandoc(cls.__doc__ or "(no docstring)"),
            "module_doc": inspect.getdoc(_sys.modules[cls.__module__]) or "", "fields": fields, "applies": applies}


def _cache_file():
    """Where the component index lives, named by a digest of every harness source file's path, size and
    mtime: any edit gives a new name, so the index never outlives the code it describes."""
    import hashlib
    import os

    root = Path(__file__).resolve().parent
    h = hashlib.sha256(f"{sys.version}\n{root}\n".encode())
    for path in sorted(root.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    base = os.environ.get("DLM_HARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dlm-harness")
    return Path(base) / f"components-{h.hexdigest()[:16]}.json"


def component_index() -> dict:
    """{kind: {name: what list/show print}} for every registered component.

    Building it imports every component module (torch included, seconds); `list` and `show` then read
    it from a cache file keyed by the source files (see `_cache_file`), so later calls import nothing
    heavy. A process whose registries are already loaded (a test that registered a component) gets the
    live registries, never the file."""
    import json

    from harness.registry import REGISTRIES

    live = any(reg._loaded for reg in REGISTRIES.values())
    path = None if live else _cache_file()
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # a torn or foreign file: rebuild
    index = {kind: {name: _describe(kind, name) for name in reg.names()} for kind, reg in REGISTRIES.items()}
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(index))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home: the index is only a speed-up
    return index


def _lookup(index: dict, kind: str, name: str) -> dict:
    from harness.registry import _suggest

    entries = index[kind]
    if name not in entries:
        known = sorted(entries)
        raise HarnessError(f"unknown {kind[:-1]} {name!r}{_suggest(name, known)} (known: {', '.join(known)})")
    return entries[name]


def cmd_list(args) -> int:
    index = component_index()
    kinds = [_kind(args.kind)] if args.kind else list(index)
    for kind in kinds:
        if len(kinds) > 1:
            print(f"{kind}:")
        rows = [(name, e["summary"] + (f"  [{e['note']}]" if e["note"] else ""))
                for name, e in sorted(index[kind].items())]
        print(_table(rows, indent="  " if len(kinds) > 1 else ""))
    if not args.kind:
        print("\ndetails of one: dlm-harness show KIND NAME")
    return 0


def cmd_show(args) -> int:
    kind = _kind(args.kind)
    e = _lookup(component_index(), kind, args.name)
    print(f"{kind[:-1]} {args.name}  ({e['where']})\n")
    if e["module_doc"]:  # the method, its maths and its source
        print(e["module_doc"] + "\n")
    print(e["doc"] + "\n")
    if e["fields"]:
        print("parameters:")
        print(_table([tuple(f) for f in e["fields"]], indent="  "))
    else:
        print("parameters: none")
    if e["applies"]:
        print("\n" + e["applies"])
    return 0


def components_markdown() -> str:
    """A reference of every registered component: summary, module docstring (the method and its
    source), parameters with types and defaults. `dlm-harness docs` writes it to docs/components.md."""
    import dataclasses
    import inspect
    import sys as _sys

    from harness.registry import REGISTRIES, type_name

    out = ["# Components\n",
           "Every registered model, estimator, sampler, algorithm and task, generated from the code by "
           "`dlm-harness docs` (do not edit by hand). `dlm-harness show KIND NAME` prints one entry.\n"]
    for kind, reg in REGISTRIES.items():
        out.append(f"## {kind.capitalize()}\n")
        for name in reg.names():
            cls = reg.get(name)
            out.append(f"### `{name}`\n")
            out.append(f"{reg.summary(name)} (`{cls.__module__}`)\n")
            doc = inspect.getdoc(_sys.modules[cls.__module__]) or ""
            if doc:
                out.append("\n".join("> " + line if line else ">" for line in doc.splitlines()) + "\n")
            fields = reg.fields(name)
            if fields:
                out.append("| parameter | type | default |\n|---|---|---|")
                for f, (tp, d) in fields.items():
                    default = "required" if d is dataclasses.MISSING else f"`{d!r}`"
                    out.append(f"| `{f}` | {type_name(tp).replace('|', '/')} | {default.replace('|', '/')} |")
                out.append("")
    return "\n".join(out) + "\n"


def cmd_docs(args) -> int:
    text = components_markdown()
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise HarnessError(f"docs --out {out}: is a directory, expected a markdown file path")
    from harness.paths import guarded, write_text_atomic

    with guarded("write the component reference", out):
        out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text, "write the component reference")
    print(out)
    return 0


def cmd_run(args) -> int:
    from harness.runner import Runner

    runner = Runner(args.suite, results=args.results, resume=args.resume, quick=args.quick,
                    progress=not args.no_progress, argv=["dlm-harness", *sys.argv[1:]],
                    shard=args.shard, cells=args.cells, run_id=args.run_id)
    say = runner.dist.main  # under torchrun only rank 0 prints, so the last stdout line stays the run directory
    if say:
        print(f"run directory: {runner.run_dir}", file=sys.stderr)
    try:
        run_dir = runner.run()
    except KeyboardInterrupt as exc:  # the hint names this run's directory
        part = (f" --shard {args.shard}" if args.shard else "") + (f" --cells '{args.cells}'" if args.cells else "")
        exc.resume = f"dlm-harness run {args.suite} --resume {runner.run_dir}{part}"
        raise
    status = runner.manifest["status"]
    if runner.part is not None:  # a part succeeds when its own cells are done; `status RUN` shows the rest
        if say:
            print(f"part {runner.part}: {runner.part_status}; run: {status}; "
                  f"what is done, running and missing: dlm-harness status {run_dir}", file=sys.stderr)
            print(run_dir)
        return 0 if runner.part_status == "complete" else 1
    if say:
        from harness.report.markdown import results_table

        print(results_table(run_dir), file=sys.stderr)
        print(f"status: {status}; full report: dlm-harness report {run_dir}", file=sys.stderr)
        print(run_dir)
    return 0 if status == "complete" else 1


def cmd_status(args) -> int:
    """What a run has done, is running and lacks, per cell (read-only: takes no lock)."""
    from harness import distributed
    from harness.lock import is_held, running_parts
    from harness.records import read_manifest
    from harness.runner import cell_states

    run_dir = Path(args.run_dir)
    manifest = read_manifest(run_dir)
    running = running_parts(run_dir)
    whole = is_held(run_dir)  # a whole run, or a part starting or merging
    whole_running = whole and not manifest.get("parts")
    states = cell_states(manifest, distributed.read_all(run_dir, check=True), running, whole_running)
    rows = [("cell", "state", "units ok", "failed", "planned")]
    rows += [(s["cell"], s["state"], str(s["ok"]), str(s["failed"]), str(s["planned"])) for s in states]
    print(_table(rows))
    count = {k: sum(s["state"] == k for s in states) for k in ("done", "running", "failed", "missing")}
    print(f"\n{run_dir}: manifest status {manifest.get('status')!r}; cells: " +
          ", ".join(f"{v} {k}" for k, v in count.items()))
    for name, part in sorted((manifest.get("parts") or {}).items()):
        live = "running" if name in running else part.get("status", "?")
        if live == "running" and name not in running:
            live = "stopped without finishing (its process is gone; run it again to finish its cells)"
        print(f"part {name}: {live} ({len(part.get('cells', []))} cells)")
    missing = [s["cell"] for s in states if s["state"] in ("missing", "failed")]
    if missing and not running and not whole:
        print(f"missing: resume with `dlm-harness run SUITE --resume {run_dir}` (or the same --shard/--run-id)")
    return 0 if all(s["state"] == "done" for s in states) else 1


def cmd_report(args) -> int:
    from harness.paths import guarded
    from harness.report.markdown import write_report

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise HarnessError(f"report --out {out}: exists and is not a directory")
    for d in args.run_dirs:
        if not Path(d).is_dir():
            raise HarnessError(f"report {d}: not a run directory (expected a directory with manifest.json "
                               "and records.jsonl)")
    # Runs of one suite combine into one report; each report is index.md plus a self-contained index.html.
    with guarded("write the report", out):  # an OSError names the file it touched
        paths = write_report([Path(d) for d in args.run_dirs], out, protocol=args.protocol,
                             exclude_errors=args.exclude_errors)
    print(*paths, sep="\n")
    return 0


def cmd_score(args) -> int:
    from harness.paths import safe_name
    from harness.score import parse_fields, score_file

    if args.suite is not None:  # results/<suite>/<run id>: a name, never a path
        safe_name(args.suite, "score --suite")

    run_dir, counts = score_file(args.file, args.task, protocol=args.protocol, fields=parse_fields(args.fields),
                                 results=args.results, suite=args.suite, system=args.system,
                                 argv=["dlm-harness", *sys.argv[1:]],
                                 task_params=dict(_parse_kv(p) for p in args.task_param),
                                 exclude_errors=args.exclude_errors)
    print(f"rows: {counts['rows']}, scored: {counts['scored']}, bad: {counts['bad']} (status error in the records; "
          f"lines and reasons in the manifest's bad_rows), duplicates: {counts['duplicates']}", file=sys.stderr)
    _print_scores(run_dir, args.exclude_errors)
    print(run_dir)
    return 0


def cmd_reproduce(args) -> int:
    from harness import reproduce

    root = Path(args.dir) if args.dir else None
    index = component_index()  # what the registries can express: a row's missing names the rest
    if args.list or not args.name:
        ts = reproduce.tables(root, index) if not args.name else [reproduce.find(args.name, root, index)]
        print(reproduce.list_text(ts))
        return 0
    table = reproduce.find(args.name, root, index)
    rows = [r for part in args.rows for r in part.split(",") if r] if args.rows else None
    argv = ["dlm-harness", *sys.argv[1:]]
    if args.dry_run:
        print(reproduce.plan_text(table, reproduce.plan_rows(table, reproduce.select(table, rows))))
        return 0
    if args.generations:
        path = reproduce.score_generations(table, rows, args.generations, results=args.results, argv=argv)
    else:
        model_params = dict(_parse_kv(p, "--model-param") for p in args.model_param)
        path = reproduce.run_rows(table, rows, results=args.results, model_params=model_params, n_items=args.n_items,
                                  progress=not args.no_progress, argv=argv, resume=args.resume)
    print(path.read_text(), file=sys.stderr)
    print(path)
    return 0


def cmd_show_sample(args) -> int:
    from harness.traces import sample_records, sample_text

    if not Path(args.run_dir).is_dir():
        raise HarnessError(f"show-sample {args.run_dir}: not a run directory")
    print("\n\n".join(sample_text(r) for r in sample_records(Path(args.run_dir), args.item, args.cell)))
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
                       tolerance=args.tolerance, seed=args.seed, allow_missing=args.allow_missing)
    print(format_table(rows, notes))
    worse = [f"{cell}/{c.name.split('/', 1)[1]}" for cell, c, _, _ in rows if c.verdict == "worse"]
    if worse:
        print(f"verdict: worse (significantly beyond tolerance {args.tolerance}, more failed units, a "
              f"metric without a finite value, or cells/units of the base run missing): {', '.join(worse)}")
        return 1
    print("verdict: no significant regression")
    return 0


def cmd_train(args) -> int:
    import json

    from harness.models.train import TrainConfig, train
    from harness.paths import failed_torch_write

    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    params = tuple(_parse_kv(p) for p in args.task_param)
    cfg = TrainConfig(**{**fields, "task_params": params})
    _check_train_memory(cfg)
    out = Path(args.out)
    made = _writable_out(out)  # a read-only or unwritable --out fails now, not after training
    try:
        metrics = train(cfg, out, progress=not args.no_progress, overwrite=args.overwrite)
    except BaseException as exc:
        if made:  # leave no directory of ours behind (nor a half-written model.pt in it)
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        if failed_torch_write(exc):  # torch.save on a full disk or past the file-size limit
            why = f"{exc.__context__}; {exc}" if exc.__context__ else str(exc)
            raise HarnessError(f"train --out {out}: cannot write the checkpoint (disk full or a file-size limit? "
                               f"torch: {why[:300]})") from None
        raise
    print(json.dumps(metrics))
    print(args.out)
    return 0


def _writable_out(out: Path) -> bool:
    """Make `out` if absent and check that a file can be written in it (-> whether it was made here)."""
    import os
    import tempfile

    from harness.paths import guarded

    made = False
    if not out.exists():
        with guarded("make the checkpoint directory", out):
            out.mkdir(parents=True)
        made = True
    if not out.is_dir():
        return made  # train() says what is wrong with it
    with guarded("write a file in the checkpoint directory", out):
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    return made


def _check_train_memory(cfg) -> None:
    """Refuse a model whose training state cannot fit: parameters, gradients and AdamW's two moments
    take 16 bytes per parameter (float32), a lower bound on what training needs, against the memory
    available (MemAvailable on the CPU, free memory on a GPU)."""
    from harness.models.tiny import CharTokenizer

    vocab, d, ff, layers = len(CharTokenizer()), cfg.d_model, cfg.d_ff, cfg.n_layers
    max_len = 64  # positions of the tiny tasks (prompt + completion); a lower bound is all this needs
    n_params = 2 * vocab * d + max_len * d + layers * (4 * d * d + 2 * d * ff + 9 * d + ff)
    need = 16 * n_params
    have = _available_memory(cfg.device)
    if have is not None and need > have:
        raise HarnessError(f"train: a model of {n_params / 1e9:.2f}B parameters (d_model {d}, n_layers {layers}, "
                           f"d_ff {ff}) needs at least {need / 2**30:.1f} GiB for its weights, gradients and AdamW "
                           f"state, but {have / 2**30:.1f} GiB is available on {cfg.device}")


def _available_memory(device: str) -> int | None:
    """Bytes available for training on `device` (None when unknown)."""
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cmd_eval(args) -> int:
    from harness.evaluate import EvalSpec, load_eval_suite, run_eval

    argv = ["dlm-harness", *sys.argv[1:]]
    if args.suite:
        suite, spec, metrics, _ = load_eval_suite(args.suite)
        run_dir = run_eval(spec, args.results, suite=suite, argv=argv, suite_path=args.suite, metrics=metrics,
                           exclude_errors=args.exclude_errors)
    else:
        if not args.tasks:
            raise HarnessError("eval: give --tasks (e.g. gsm8k,minerva_math500) or --suite FILE")
        model_args = dict(_parse_kv(p, "--model-args") for p in args.model_args.split(",") if p)
        spec = EvalSpec(model=args.model, model_args=model_args, sampler=args.sampler, estimator=args.estimator,
                        tasks=tuple(t for t in args.tasks.split(",") if t), limit=args.limit,
                        num_fewshot=args.num_fewshot, batch_size=args.batch_size, seed=args.seed,
                        task_source=args.task_source, protocol=args.protocol,
                        apply_chat_template=args.apply_chat_template, fewshot_as_multiturn=args.fewshot_as_multiturn)
        run_dir = run_eval(spec, args.results, argv=argv, exclude_errors=args.exclude_errors)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 holds the records
        _print_scores(run_dir, args.exclude_errors)
    print(run_dir)
    return 0


def _print_scores(run_dir, exclude_errors: bool = False) -> None:
    """The run's results as lm-evaluation-harness prints them (one row per filter, with the interval, n
    and protocol), then each cell's accuracy with its error rows counted as failures unless
    --exclude-errors (harness/stats/denominator.py); on stderr: stdout's last line stays the run
    directory for scripts."""
    from harness.records import read_manifest
    from harness.report.markdown import lm_eval_table
    from harness.stats.denominator import format_summary

    print(lm_eval_table(Path(run_dir), exclude_errors), file=sys.stderr)
    for line in format_summary(read_manifest(run_dir).get("accuracy") or []):
        print(line, file=sys.stderr)


def _parse_kv(text: str, flag: str = "--task-param"):
    from harness import validate

    if "=" not in text:
        raise HarnessError(f"{flag} {validate.show(text)}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    return key, validate.load_yaml(value, f"{flag} {key}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlm-harness", description="Benchmark and evaluation harness for diffusion LMs.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list registered components",
                       description="List registered names with a one-line summary, as an aligned table.")
    s.add_argument("kind", nargs="?", help="models | estimators | samplers | algorithms | tasks (singular too)")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("show", help="show one component: docstring, parameters, what it applies to",
                       description="Print a registered component's docstring, its parameters with types and "
                                   "defaults, and which models it applies to.")
    s.add_argument("kind", help="models | estimators | samplers | algorithms | tasks (singular too)")
    s.add_argument("name", help="a registered name (see `dlm-harness list KIND`)")
    s.set_defaults(fn=cmd_show)

    s = sub.add_parser("docs", help="write the component reference (docs/components.md) from the code",
                       description="Generate the markdown reference of every registered component.")
    s.add_argument("--out", default="docs/components.md", help="file to write, or - for stdout "
                   "(default: docs/components.md)")
    s.set_defaults(fn=cmd_docs)

    s = sub.add_parser("run", help="run a suite", description="Plan and run a suite; prints the run directory last.")
    s.add_argument("suite", help="suite YAML file (e.g. suites/default.yaml)")
    s.add_argument("--results", default="results", help="results root (default: results)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run in RUN_DIR")
    s.add_argument("--quick", action="store_true", help="the suite's quick variant (fewer items and replicates)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--shard", metavar="I/N", default=None,
                   help="run the I-th of N balanced shares of the suite's cells (by planned cost; 0 <= I < N); "
                        "the N jobs share one run directory: give them the same --run-id")
    s.add_argument("--cells", metavar="PATTERN[,PATTERN]", default=None,
                   help="run only the cells whose id matches a shell pattern (e.g. 'gen*,ll-*')")
    s.add_argument("--run-id", dest="run_id", metavar="ID", default=None,
                   help="the run directory RESULTS/SUITE/ID: made by the first job (or part) to start, "
                        "joined by the others (e.g. $SLURM_ARRAY_JOB_ID)")
    _unsafe_flag(s)
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("status", help="what a run has done, is running and lacks, per cell",
                       description="Per cell of a run directory: done, running, failed or missing, with unit counts; "
                                   "exit 0 only when every cell is done.")
    s.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("report", help="write a report from run directories",
                       description="Write index.md and index.html under reports/<suite>/ (runs of one suite combined).")
    s.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (runs of one suite combine)")
    s.add_argument("--out", default="reports", help="reports root (default: reports)")
    s.add_argument("--protocol", choices=("harness", "d1", "lm-eval", "strict"),
                   help="re-score the stored generations under this scoring protocol (nothing is re-generated)")
    _unsafe_flag(s)
    _errors_flag(s)
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
    _unsafe_flag(s)
    _errors_flag(s)
    s.set_defaults(fn=cmd_score)

    s = sub.add_parser("reproduce", help="published numbers: list, plan, run, or re-score their generations",
                       description="Reproduce a published table (reproductions/NAME.yaml): --list shows every row "
                                   "and its status, --dry-run plans rows with a GPU-time estimate, --generations "
                                   "scores published generations under the paper's protocol; otherwise the runnable "
                                   "rows run as one suite. The report sets published beside measured (95% interval).")
    s.add_argument("name", nargs="?", help="a table (the file stem under reproductions/); omitted: list all")
    s.add_argument("--list", action="store_true", help="list rows with their source and status; nothing runs")
    s.add_argument("--rows", action="append", default=[], metavar="ID[,ID...]", help="only these rows (repeatable)")
    s.add_argument("--dry-run", action="store_true", help="plan the rows (items, NFE, estimated GPU time); no model")
    s.add_argument("--generations", metavar="FILE", help="score this file of generations (d1 JSON, lm-eval samples, "
                                                          "JSONL) under the row's protocol")
    s.add_argument("--model-param", action="append", default=[], metavar="KEY=VALUE",
                   help="model parameter for running rows (dtype=bfloat16, device=cuda, path=DIR; repeatable)")
    s.add_argument("--n-items", type=int, default=None, help="run the first N items of each task (default: all)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue a killed reproduction run (same rows and options)")
    s.add_argument("--dir", default=None, help="reproductions directory (default: the repository's reproductions/)")
    s.add_argument("--results", default="results", help="results root (default: results)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    _unsafe_flag(s)
    s.set_defaults(fn=cmd_reproduce)

    s = sub.add_parser("show-sample", help="one item's decoding trace: the step each token was committed",
                       description="Print an item's generate records from a run: outcome, text, the positions "
                                   "committed at each step and the commit step of every position.")
    s.add_argument("run_dir", metavar="RUN", help="a run directory")
    s.add_argument("item", metavar="ITEM", help="an item id (e.g. gsm8k-0)")
    s.add_argument("--cell", default=None, help="only this cell (default: every cell with the item)")
    s.set_defaults(fn=cmd_show_sample)

    s = sub.add_parser("compare", help="regression gate: is NEW_RUN significantly worse than BASE_RUN?",
                       description="Pair records by (cell, item, seed) and test each pre-registered metric; "
                                   "exit 1 only when one is significantly worse beyond the tolerance.")
    s.add_argument("base", metavar="BASE_RUN", help="the baseline run directory")
    s.add_argument("new", metavar="NEW_RUN", help="the run directory to test against the baseline")
    s.add_argument("--metric", action="append", metavar="NAME[:higher|lower]",
                   help="metric to gate on (repeatable; default: the suite's pre-registered metrics)")
    s.add_argument("--alpha", type=float, default=0.05, help="level of the paired tests, Holm-corrected")
    s.add_argument("--tolerance", type=float, default=0.02, help="changes smaller than this never fail")
    s.add_argument("--seed", type=int, default=0, help="seed of the permutation tests (0 <= seed < 2**32)")
    s.add_argument("--allow-missing", action="store_true",
                   help="cells or units of the base run absent from the new run are noted, not a regression "
                        "(default: each is a 'worse' row, so an incomplete new run fails the gate)")
    s.set_defaults(fn=cmd_compare)

    s = sub.add_parser("train", help="train the tiny MDLM on a synthetic task",
                       description="Train the built-in tiny MDLM and write a checkpoint directory.")
    s.add_argument("--task", required=True, help="a registered task, e.g. addition")
    s.add_argument("--task-param", action="append", default=[], metavar="KEY=VALUE", help="task parameter (repeatable)")
    s.add_argument("--out", required=True, help="checkpoint directory to write")
    for name, typ, text in (("steps", int, "optimiser steps"), ("batch_size", int, "sequences per step"),
                            ("lr", float, "AdamW learning rate"), ("d_model", int, "model width"),
                            ("n_layers", int, "transformer blocks"),
                            ("n_heads", int, "attention heads (divide d_model)"),
                            ("d_ff", int, "feed-forward width"), ("seed", int, "seed of init and data"),
                            ("eval_every", int, "steps between greedy evaluations"),
                            ("eval_items", int, "items per evaluation"), ("threads", int, "torch CPU threads")):
        s.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None,
                       help=f"{text} (default: the trainer's)")
    s.add_argument("--device", default=None, help="cpu (default) or cuda")
    s.add_argument("--block-size", dest="block_size", type=int, default=None,
                   help="train a block-diffusion model with blocks of this size (BD3-LM objective)")
    s.add_argument("--init-from", dest="init_from", default=None,
                   help="start from this tiny checkpoint's weights (name or directory)")
    s.add_argument("--objective", default=None, choices=("mdlm", "any_order"),
                   help="mdlm (default; BD3-LM's with --block-size) or any_order (d2's any-order causal fine-tuning)")
    s.add_argument("--ao-block-length", dest="ao_block_length", type=int, default=None,
                   help="any_order: the training order is shuffled inside chunks of this many positions (default 32)")
    s.add_argument("--overwrite", action="store_true", help="replace the checkpoint in an existing --out directory")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("eval", help="lm-evaluation-harness tasks through the bridge",
                       description="Run lm-eval's simple_evaluate with the dlm-harness model; write a harness run "
                                   "directory (records, manifest, lm-eval results and samples).")
    s.add_argument("--model", default="tiny", help="a registered model (default: tiny)")
    s.add_argument("--model-args", default="", metavar="K=V,...",
                   help="model / sampler / estimator parameters and bridge keys (greedy_check, max_gen_toks, ...)")
    s.add_argument("--sampler", default="low_confidence", help="sampler for generate_until (default: low_confidence)")
    s.add_argument("--estimator", default="mc_elbo", help="estimator for loglikelihood requests (default: mc_elbo)")
    s.add_argument("--tasks", help="comma-separated: gsm8k, gsm8k_cot, minerva_math500 (math500), humaneval, mbpp, "
                                   "countdown3, sudoku4, dlmh_* or any lm-eval task")
    s.add_argument("--limit", type=int, default=None, help="documents per task")
    s.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's)")
    s.add_argument("--batch-size", type=int, default=8, help="requests per model batch (default: 8)")
    s.add_argument("--seed", type=int, default=1234, help="seed of sampling and estimation (default: 1234)")
    s.add_argument("--task-source", choices=("auto", "harness", "lm-eval"), default="auto",
                   help="auto: lm-eval's built-in task when the hub is reachable, else the harness YAML")
    s.add_argument("--protocol", choices=("harness", "d1", "lm-eval", "strict"), default=None,
                   help="scoring protocol of the harness tasks (lm-eval's built-in tasks always score as lm-eval)")
    s.add_argument("--apply-chat-template", default=None, action=argparse.BooleanOptionalAction,
                   help="lm-eval's --apply_chat_template (default: on for Instruct checkpoints with a template)")
    s.add_argument("--fewshot-as-multiturn", action="store_true", help="lm-eval's --fewshot_as_multiturn")
    s.add_argument("--suite", help="an lm-eval suite file (suites/lm-eval.yaml); replaces the options above")
    s.add_argument("--results", default="results", help="results root (default: results)")
    _unsafe_flag(s)
    _errors_flag(s)
    s.set_defaults(fn=cmd_eval)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dlm-harness")
    except PackageNotFoundError:  # run from a source tree that was never installed
        import tomllib

        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
        return tomllib.loads(text)["project"]["version"]


def _errors_flag(s) -> None:
    s.add_argument("--exclude-errors", action="store_true",
                   help="accuracies over the graded units only (default: error rows count as failures, their "
                        "number shown beside n)")


def _unsafe_flag(s) -> None:
    s.add_argument("--allow-unsafe-code", action="store_true",
                   help="run generated code (humaneval, mbpp) even where the sandbox cannot use namespaces; "
                        "records then say which weaker level it ran at (README: Sandbox)")


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is so it unwinds like Ctrl-C (SIGINT): a run's
    manifest is marked `interrupted` and the command exits 128 + the signal's number."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signum)
        self.signum = signum
        self.signal_name = signal.Signals(signum).name


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals():
    """SIGTERM and SIGHUP behave like SIGINT while a command runs (handlers restored after; only in
    the main thread, where Python delivers signals)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            old[sig] = signal.signal(sig, _raise_interrupted)
        except (ValueError, OSError):  # not settable here
            pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _command(args) -> str:
    return getattr(args, "command", None) or "dlm-harness"


def main(argv: list[str] | None = None) -> int:
    """The one error boundary: bad input and failed file operations exit 2 with `error: ...` (no
    traceback); SIGINT, SIGTERM and SIGHUP exit 128 + the signal's number with a resume hint."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "allow_unsafe_code", False):
        from harness.tasks.sandbox import allow_unsafe_code

        allow_unsafe_code()  # an environment variable: the lm-eval task functions in this process read it too
    try:
        with _signals():
            return args.fn(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        import signal

        signum = getattr(exc, "signum", signal.SIGINT)
        name = getattr(exc, "signal_name", "SIGINT")
        hint = f"; resume with {exc.resume}" if getattr(exc, "resume", None) else \
            ("; resume with --resume RUN_DIR" if _command(args) == "run" else "")
        print(f"interrupted ({name}){hint}", file=sys.stderr)
        return 128 + int(signum)
    except BrokenPipeError:  # `dlm-harness list | head`: the reader left; no traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a file operation no inner layer named: disk full, permissions, a long name
        from harness.paths import io_error

        print(f"error: {_command(args)}: {io_error(exc, 'read or write')}", file=sys.stderr)
        return 2
    except RecursionError:
        print(f"error: {_command(args)}: the input nests too deeply to read", file=sys.stderr)
        return 2


def entry() -> None:
    """The process entry (console script and `python -m harness.cli`); under torchrun a rank leaves
    through `distributed.leave` (no interpreter finalization after its command returned)."""
    rc = main()
    if os.environ.get("WORLD_SIZE", "1").strip() in ("", "0", "1"):
        sys.exit(rc)
    from harness.distributed import leave

    leave(rc)


if __name__ == "__main__":
    entry()
