"""`dlm-harness eval`: lm-eval's simple_evaluate through the bridge, written as a harness run.

results/<suite>/<run_id>/ gets manifest.json (versions, data source per task, model args, every
protocol knob), records.jsonl (one harness record per sample and lm-eval filter: outcome, the
generation text, the cost the meter measured for that document), lm_eval_results.json,
samples_<task>.jsonl (lm-eval's per-sample log) and side_records.jsonl (the bridge's NFE,
truncation and estimator records), so `dlm-harness report` and `dlm-harness compare` read it.

Task names: the harness ships offline YAMLs named `dlmh_<name>` (harness/tasks/lm_eval), so the
built-in lm-eval tasks keep their names. With `task_source: auto` a built-in name (gsm8k,
minerva_math500, humaneval, mbpp, ...) runs lm-eval's own task when the hub is reachable and the
harness YAML when it is not (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, or no connection);
`harness` and `lm-eval` force one side. The manifest records which one ran.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from harness import provenance, validate
from harness.paths import guarded, write_text_atomic
from harness.prompting import prompting_of, resolve_chat
from harness.records import MANIFEST, SCHEMA_VERSION, RecordWriter, make_record, write_json_atomic
from harness.seeding import derive_seed
from harness.types import HarnessError

INCLUDE_PATH = Path(__file__).parent / "tasks" / "lm_eval"
# Names a user may give -> the harness YAML task (math500 is the harness task's own name).
HARNESS_TASKS = {"gsm8k": "dlmh_gsm8k", "gsm8k_cot": "dlmh_gsm8k_cot", "minerva_math500": "dlmh_minerva_math500",
                 "math500": "dlmh_minerva_math500", "humaneval": "dlmh_humaneval", "mbpp": "dlmh_mbpp",
                 "countdown3": "dlmh_countdown3", "sudoku4": "dlmh_sudoku4"}
BUILTIN = {"math500": "minerva_math500"}  # harness-only aliases of built-in names
HARNESS_ONLY = {"countdown3", "sudoku4"}


@dataclass(frozen=True, kw_only=True)
class EvalSpec:
    """Every knob of one lm-eval run (the `eval:` block of an lm-eval suite file)."""

    model: str = "tiny"
    model_args: dict = field(default_factory=dict)
    sampler: str = "low_confidence"
    estimator: str = "mc_elbo"
    tasks: tuple = ("gsm8k",)
    limit: int | None = None
    num_fewshot: int | None = None
    protocol: str | None = None  # scoring protocol of the harness YAML tasks (harness/tasks/base.py)
    batch_size: int = 8
    seed: int = 1234
    task_source: Literal["auto", "harness", "lm-eval"] = "auto"
    bootstrap_iters: int = 1000
    # lm-eval's --apply_chat_template (None: the model's default, on for Instruct checkpoints with a
    # template; harness/prompting.py) and --fewshot_as_multiturn (few-shot examples as chat turns)
    apply_chat_template: bool | None = None
    fewshot_as_multiturn: bool = False


def hub_reachable(timeout: float = 3.0) -> bool:
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_tasks(names, source: str) -> dict[str, dict]:
    """name -> {"task": the lm-eval task to run, "source": "harness-yaml" | "lm-eval-builtin"}."""
    online = None
    out = {}
    for name in names:
        if name.startswith("dlmh_"):
            out[name] = {"task": name, "source": "harness-yaml"}
            continue
        use_harness = source == "harness" or name in HARNESS_ONLY
        if source == "auto" and not use_harness and name in HARNESS_TASKS:
            online = hub_reachable() if online is None else online
            use_harness = not online
        if use_harness:
            if name not in HARNESS_TASKS:
                known = ", ".join(HARNESS_TASKS)
                raise HarnessError(f"--tasks {name}: no harness YAML for it (harness tasks: {known})")
            out[name] = {"task": HARNESS_TASKS[name], "source": "harness-yaml"}
        else:
            out[name] = {"task": BUILTIN.get(name, name), "source": "lm-eval-builtin"}
    return out


def code_isolation(mapping: dict) -> dict:
    """lm-eval task -> where its generated code runs: the harness sandbox's level for the harness
    YAMLs (UnsafeCodeRefused without namespaces unless allowed), "lm-eval-code_eval" for lm-eval's
    own code tasks, which run completions outside the harness sandbox and so need --allow-unsafe-code
    (lm-eval also refuses every task marked unsafe_code without it: the bridge passes the flag on)."""
    from harness.tasks.sandbox import preflight, unsafe_code_allowed

    out = {}
    for name, m in mapping.items():
        if m["source"] == "harness-yaml" and m["task"] in ("dlmh_humaneval", "dlmh_mbpp"):
            out[m["task"]] = preflight(True)
        elif m["source"] == "lm-eval-builtin" and any(k in m["task"] for k in ("humaneval", "mbpp")):
            if not unsafe_code_allowed():
                raise HarnessError(f"--tasks {name}: lm-eval's own task {m['task']} runs generated code through "
                                   "lm-eval's code_eval, outside the harness sandbox; use --task-source harness, "
                                   "or pass --allow-unsafe-code to run it anyway")
            out[m["task"]] = "lm-eval-code_eval"
    return out


def check_spec(spec: EvalSpec, where: str = "eval") -> None:
    """Numbers in range, at least one task, every task known (before any run directory is made)."""
    validate.fields(spec, where, ("limit", "num_fewshot", "batch_size", "bootstrap_iters"))
    if not spec.tasks or not all(isinstance(t, str) and t for t in spec.tasks):
        raise HarnessError(f"{where} --tasks: expected one or more task names, got {validate.show(spec.tasks)}")


def _check_known(mapping: dict) -> None:
    """lm-eval's built-in names exist in its task index (the harness YAMLs always do)."""
    builtin = {n: m["task"] for n, m in mapping.items() if m["source"] == "lm-eval-builtin"}
    if not builtin:
        return
    from lm_eval.tasks import TaskManager

    known = set(TaskManager(include_path=str(INCLUDE_PATH)).all_tasks)
    unknown = [n for n, t in builtin.items() if t not in known]
    if unknown:
        raise HarnessError(f"eval --tasks: unknown task(s) {', '.join(map(repr, unknown))} (harness tasks: "
                           f"{', '.join(HARNESS_TASKS)}; or any task lm-eval lists)")


def run_eval(spec: EvalSpec, results: str | Path = "results", suite: str = "lm-eval", argv=None,
             suite_path: str = "", metrics: dict | None = None, exclude_errors: bool = False) -> Path:
    """Under torchrun (lm-eval's data parallelism) every rank evaluates its share of the documents;
    rank 0 alone makes the run directory, merges the other ranks' costs and side records, and
    writes the run; every rank returns its path. Bad input fails before the run directory exists;
    a run that fails after is marked `failed` in its manifest."""
    from harness.bridge.lm_eval import rank_and_world, share_from_rank0
    from harness.runner import new_run_id

    check_spec(spec)
    protocol = json.dumps(asdict(spec), sort_keys=True, default=list)
    sha = hashlib.sha256(protocol.encode()).hexdigest()
    mapping = resolve_tasks(spec.tasks, spec.task_source)
    _check_known(mapping)
    sandbox = code_isolation(mapping)  # refused here, before any compute, unless allowed
    rank, world = rank_and_world()
    run_dir = Path(results) / suite / new_run_id(sha)
    if rank == 0:
        with guarded("make the run directory", run_dir):
            run_dir.mkdir(parents=True, exist_ok=False)
    run_dir = Path(share_from_rank0(str(run_dir)))
    side = run_dir / ("side_records.jsonl" if rank == 0 else f"side_records.rank{rank}.jsonl")
    model_args = {"model": spec.model, "sampler": spec.sampler, "estimator": spec.estimator,
                  "batch_size": spec.batch_size, "seed": spec.seed, **spec.model_args, "records": str(side)}
    manifest = {"schema_version": SCHEMA_VERSION, "run_id": run_dir.name, "suite": suite, "suite_path": suite_path,
                "suite_sha256": sha, "quick": False, "kind": "lm_eval", "status": "running",
                "command": argv or sys.argv, "started_at": _now(), "protocol": asdict(spec), "tasks": mapping,
                "model_args": {k: v for k, v in model_args.items() if k != "records"}, "world_size": world,
                "sandbox": sandbox, "exclude_errors": exclude_errors, **provenance.collect()}
    try:
        if rank == 0:
            write_json_atomic(run_dir / MANIFEST, manifest)
        return _evaluate(spec, run_dir, manifest, model_args, mapping, metrics, rank, world)
    except BaseException as exc:
        if rank == 0:
            _stopped(run_dir, manifest, exc)
        raise


def _stopped(run_dir: Path, manifest: dict, exc: BaseException) -> None:
    """An eval that stopped: refused (bad input found once the model loaded) before any record, its run
    directory is removed; otherwise it is marked `failed` (best effort: a full disk may refuse that)."""
    import shutil

    from harness.records import RECORDS

    records = [p for p in run_dir.glob("*records*.jsonl") if p.stat().st_size > 0]
    if isinstance(exc, HarnessError) and not records and not (run_dir / RECORDS).exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    manifest.update(status="failed", finished_at=_now(), error=f"{type(exc).__name__}: {str(exc)[-2000:]}")
    try:
        write_json_atomic(run_dir / MANIFEST, manifest)
    except HarnessError:
        pass


def _evaluate(spec: EvalSpec, run_dir: Path, manifest: dict, model_args: dict, mapping: dict, metrics,
              rank: int, world: int) -> Path:
    from harness.bridge.lm_eval import DLMHarnessLM, simple_evaluate
    from harness.records import read_records

    lm = DLMHarnessLM(**model_args)
    chat = resolve_chat(lm.engine.denoiser, spec.apply_chat_template)
    if spec.fewshot_as_multiturn and not chat:
        raise HarnessError("eval.fewshot_as_multiturn needs the chat template (apply_chat_template: true)")
    manifest["prompting"] = {**prompting_of(lm.engine.denoiser), "apply_chat_template": chat,
                             "fewshot_as_multiturn": spec.fewshot_as_multiturn,
                             "stop_ids": list(getattr(lm.engine.denoiser, "stop_ids", ()) or ())}
    if rank == 0:
        write_json_atomic(run_dir / MANIFEST, manifest)
    metadata = {"fewshot": spec.num_fewshot} if spec.num_fewshot is not None else {}
    if spec.protocol is not None:
        _check_protocol(spec.protocol, mapping)
        metadata["protocol"] = spec.protocol
    out = simple_evaluate(lm, [m["task"] for m in mapping.values()], include_path=str(INCLUDE_PATH),
                          metadata=metadata, limit=spec.limit, num_fewshot=spec.num_fewshot, seed=spec.seed,
                          bootstrap_iters=spec.bootstrap_iters, apply_chat_template=chat,
                          fewshot_as_multiturn=spec.fewshot_as_multiturn)
    if world > 1:  # every rank has written its side records by now: the gather waits for all of them
        costs = lm.gather_object(lm.engine.costs, dst=0)
        if rank != 0:
            return run_dir
        for other in costs[1:]:
            lm.engine.costs.update(other)
        _merge_side_records(run_dir, world)
    samples = out.pop("samples", {})
    write_text_atomic(run_dir / "lm_eval_results.json", json.dumps(out, indent=1, sort_keys=True, default=str) + "\n")
    found = {}
    with RecordWriter(run_dir) as writer:
        for task, rows in samples.items():
            text = "".join(json.dumps(s, sort_keys=True, default=str) + "\n" for s in rows)
            write_text_atomic(run_dir / f"samples_{task}.jsonl", text)
            for rec in _records(task, rows, lm, manifest, out):
                found[rec["outcome"]["metric"]] = out.get("higher_is_better", {}).get(task, {}).get(
                    rec["outcome"]["metric"], True)
                writer.write(rec)
    from harness.stats.denominator import summarize

    records = read_records(run_dir)
    metrics = metrics or {m: ("higher" if hib in (True, None) else "lower") for m, hib in found.items()}
    manifest.update(status="complete", finished_at=_now(), n_records=len(records),
                    data_sources=_sources(samples, mapping), metrics=metrics,
                    # samples lm-eval gave no value count as failures (unless exclude_errors)
                    accuracy=summarize(records, metrics, exclude_errors=manifest["exclude_errors"]),
                    lm_eval_versions=out.get("versions"), lm_eval_configs=out.get("configs"))
    write_json_atomic(run_dir / MANIFEST, manifest)
    return run_dir


def _check_protocol(protocol: str, mapping: dict) -> None:
    """`--protocol` applies to the harness YAML tasks; lm-eval's built-in tasks score with their own
    metrics (protocol "lm-eval")."""
    from harness.registry import TASKS

    for name, m in mapping.items():
        if m["source"] == "lm-eval-builtin":
            if protocol != "lm-eval":
                raise HarnessError(f"--protocol {protocol}: lm-eval's built-in task {m['task']!r} scores with its "
                                   "own metrics (protocol lm-eval); add --task-source harness to score it with "
                                   f"the harness task under {protocol!r}")
            continue
        harness_task = m["task"].removeprefix("dlmh_").replace("minerva_", "")
        if harness_task in TASKS.names():
            TASKS.get(harness_task).check_protocol(protocol, f"--protocol (task {name})")


def _merge_side_records(run_dir: Path, world: int) -> None:
    """Append ranks 1.. side records (less their duplicate settings line) to rank 0's file."""
    with open(run_dir / "side_records.jsonl", "a", encoding="utf-8") as out:
        for r in range(1, world):
            part = run_dir / f"side_records.rank{r}.jsonl"
            if not part.is_file():
                continue
            for line in part.read_text(encoding="utf-8").splitlines():
                if line and json.loads(line).get("type") != "settings":
                    out.write(line + "\n")
            part.unlink()


def _sources(samples: dict, mapping: dict) -> dict:
    """Where each task's documents came from: the harness task's source(), or lm-eval's dataset."""
    out = {}
    for name, m in mapping.items():
        rows = samples.get(m["task"]) or []
        doc = rows[0]["doc"] if rows else {}
        out[name] = {"task": m["task"], "via": m["source"],
                     "data": doc.get("source") if isinstance(doc, dict) and "source" in doc else "lm-eval dataset_path"}
    return out


def _records(task: str, rows: list[dict], lm, manifest: dict, out: dict):
    """One harness record per (sample, lm-eval filter): outcome = the sample's first metric."""
    filters = sorted({s.get("filter", "none") for s in rows})
    e = lm.engine
    b = e.bridge
    for s in rows:
        metric = (s.get("metrics") or ["?"])[0]
        value = s.get(metric)
        if isinstance(value, (list, tuple)):  # e.g. (loglikelihood, words) pairs
            value = value[0]
        cell = task if len(filters) == 1 else f"{task}:{s.get('filter')}"
        doc_id = s["doc_id"]
        cost = e.costs.get((task, doc_id), {"nfe": 0, "nfe_full": 0, "nfe_cached": 0, "tokens": 0, "flops": 0.0,
                                            "wall_s": 0.0, "peak_mem": 0})
        resps = s.get("resps") or []
        text = resps[0][0] if resps and resps[0] and isinstance(resps[0][0], str) else None
        yield make_record(
            run_id=manifest["run_id"], suite=manifest["suite"],
            cell_id=cell, study="lm-eval", kind="lm_eval", point={"task": task},
            model={"name": b["model"], "params": e.args["model"]},
            component={"kind": "sampler", "name": b["sampler"], "params": _params(e.sampler),
                       "estimator": {"name": b["estimator"], "params": _params(e.estimator)}},
            task={"name": task, "version": str(out.get("versions", {}).get(task)), "split": "test", "params": {}},
            item_id=str(doc_id), item_hash=s.get("doc_hash", "")[:16], replicate=0,
            seed=derive_seed("lm-eval", task, str(doc_id), 0, str(b["seed"])),
            outcome={"metric": metric, "value": None if value is None else float(value),
                     "protocol": _protocol_of(task, s)},
            generation={"text": text, "filtered": s.get("filtered_resps"), "filter": s.get("filter")},
            cost=cost, status="ok" if value is not None else "error",
            error=None if value is not None else f"lm-eval reported no value for {metric}",
            sandbox=manifest.get("sandbox", {}).get(task))


def _protocol_of(task: str, sample: dict) -> str:
    """lm-eval's built-in tasks score with lm-eval's metrics; the harness YAMLs with the harness
    task's protocol (its `protocol` param, default harness)."""
    doc = sample.get("doc") if isinstance(sample.get("doc"), dict) else {}
    if not task.startswith("dlmh_") or "task_params" not in doc:
        return "lm-eval"
    return json.loads(doc.get("task_params") or "{}").get("protocol", "harness")


def _params(component) -> dict:
    from harness.registry import params_of

    return params_of(component)


def load_eval_suite(path: str | Path) -> tuple[str, EvalSpec, dict | None, str]:
    """An lm-eval suite file: `suite`, `description`, `eval` (EvalSpec keys), optional `metrics`."""
    from harness.config import _from_mapping
    from harness.paths import safe_name

    p = Path(path)
    try:
        raw = p.read_bytes()
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{p}: cannot read an lm-eval suite ({exc})") from None
    data = validate.load_yaml(raw, str(p))  # bounded: an alias bomb is an error, not a hang
    if not isinstance(data, dict) or set(data) - {"suite", "description", "eval", "metrics"} or "eval" not in data:
        raise HarnessError(f"{p}: expected a mapping with keys suite, description, eval, metrics (eval required), "
                           f"got {sorted(data) if isinstance(data, dict) else data!r}")
    suite = safe_name(data.get("suite", "lm-eval"), f"{p}.suite")  # results/<suite>/...: never a path
    spec = _from_mapping(EvalSpec, data["eval"], f"{p}.eval")
    return suite, spec, data.get("metrics"), hashlib.sha256(raw).hexdigest()


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
