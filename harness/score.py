"""`dlm-harness score`: grade generations made elsewhere with a harness task; write a normal run.

Input (one file):
- JSON lines, one generation per line: the question, the generation and the reference answer
  under the first present of FIELDS' names (or `--fields question=...,generation=...,answer=...,
  id=...`). Without an answer field, the item is looked up in the task's own test split by id
  (an exact item id, or an integer index).
- lm-eval `samples_<task>.jsonl` (rows with `doc_id` and `resps`): the raw response `resps[0][0]`,
  the document's question/problem and answer (the harness YAMLs' documents carry the harness item
  itself). lm-eval writes one row per filter; the first row of a document is scored and the others
  are counted as duplicates.
- a d1 `*_generations.json` (an object whose `generations` list holds `question`, `generations`,
  `ground_truth`), so d1's own outputs can be re-scored.

Output: results/<suite>/<run_id>/ with manifest.json (input file and sha256, task, protocol, field
mapping, row counts, every bad row's line and reason) and records.jsonl: one record per row
(status ok, or error for a bad row: missing field, no reference, unreadable answer, a grading that
failed) with the generation text, the reference and the verdict. A bad row is a failure in every
accuracy (`harness.stats.denominator`; `--exclude-errors` for the graded rows only), as d1's own
scorer counts a row it cannot grade. The cell is `<task>[protocol=P]` and the seed depends only on the
item, so two systems' outputs on the same items pair up in `dlm-harness compare`.
`rescore` re-grades stored generations under another protocol (`dlm-harness report --protocol`).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
from pathlib import Path

from harness import provenance
from harness.paths import guarded, safe_name
from harness.records import MANIFEST, SCHEMA_VERSION, RecordWriter, make_record, rewrite_in_place, write_json_atomic
from harness.registry import TASKS, params_of
from harness.seeding import derive_seed
from harness.stats.denominator import summarize
from harness.tasks.base import item_hash
from harness.tasks.sandbox import preflight
from harness.types import HarnessError, Item

FIELDS = {
    "id": ("id", "item_id", "doc_id", "idx", "index"),
    "question": ("question", "problem", "prompt", "input", "puzzle"),
    "generation": ("generation", "generations", "completion", "output", "response", "text", "model_output"),
    "answer": ("answer", "ground_truth", "reference", "target", "solution", "gold"),
}
NO_COST = {"nfe": 0, "nfe_full": 0, "nfe_cached": 0, "tokens": 0, "flops": 0.0, "wall_s": 0.0, "peak_mem": 0}
MAX_LISTED = 200  # bad rows listed one by one in the manifest (all are counted)


def parse_fields(text: str | None) -> dict[str, str]:
    """`question=q,generation=out` -> {"question": "q", "generation": "out"}; unknown roles are errors."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        role, eq, name = part.partition("=")
        role, name = role.strip(), name.strip()
        if not eq or not name:
            raise HarnessError(f"--fields {part!r}: expected ROLE=FIELD (roles: {', '.join(FIELDS)})")
        if role not in FIELDS:
            raise HarnessError(f"--fields {part!r}: unknown role {role!r} (roles: {', '.join(FIELDS)})")
        out[role] = name
    return out


def read_rows(path: Path) -> tuple[str, list[tuple[int, dict]]]:
    """-> (format, [(line number, row)]): "jsonl", "lm-eval-samples" or "d1-json". A malformed
    file is a HarnessError naming the line (the CLI exits 2)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{path}: cannot read ({exc})") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HarnessError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise HarnessError(f"{path}: the JSON nests too deeply to read") from None
        rows = data.get("generations") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise HarnessError(f"{path}: expected a list of objects or d1's {{\"generations\": [...]}}")
        return "d1-json" if isinstance(data, dict) else "json", [(i + 1, r) for i, r in enumerate(rows)]
    rows = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HarnessError(f"{path}:{n}: not a JSON line ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise HarnessError(f"{path}:{n}: the JSON line nests too deeply to read") from None
        if not isinstance(row, dict):
            raise HarnessError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append((n, row))
    if not rows:
        raise HarnessError(f"{path}: no rows")
    kind = "lm-eval-samples" if all("doc_id" in r and "resps" in r for _, r in rows) else "jsonl"
    return kind, rows


def _pick(row: dict, role: str, fields: dict) -> tuple[str | None, object]:
    names = (fields[role],) if role in fields else FIELDS[role]
    for name in names:
        if name in row:
            return name, row[name]
    return None, None


def _lm_eval_row(task, row: dict) -> tuple[str, str | None, Item]:
    """(item id, generation, item) of one lm-eval sample row."""
    resps = row.get("resps") or []
    gen = resps[0][0] if resps and isinstance(resps[0], list) and resps[0] else None
    if not isinstance(gen, str):
        raise ValueError("no response text in resps[0][0]")
    doc = row.get("doc") or {}
    if {"id", "prompt", "reference", "meta"} <= set(doc):  # a harness YAML document: the item itself
        return str(doc["id"]), gen, Item(id=str(doc["id"]), prompt=doc["prompt"], reference=doc["reference"],
                                         meta=json.loads(doc["meta"]))
    item_id = str(row["doc_id"])
    question = next((doc[k] for k in FIELDS["question"] if k in doc), "")
    answer = next((doc[k] for k in ("answer", "ground_truth", "solution") if k in doc), row.get("target"))
    meta = {"solution": doc["solution"]} if "solution" in doc else {}
    return item_id, gen, task.item_from_answer(item_id, str(question), answer, meta)


def _dataset_items(task) -> dict[str, Item]:
    items = task.items("test")
    return {**{str(i): it for i, it in enumerate(items)}, **{it.id: it for it in items}}


def _row(task, kind: str, n: int, row: dict, fields: dict, lookup) -> tuple[str, str, Item]:
    """(item id, generation, item) of one row; ValueError says why the row is bad."""
    if kind == "lm-eval-samples":
        return _lm_eval_row(task, row)
    _, gen = _pick(row, "generation", fields)
    if gen is None:
        raise ValueError(f"no generation field ({fields.get('generation') or ', '.join(FIELDS['generation'])})")
    if isinstance(gen, list) and len(gen) == 1:
        gen = gen[0]
    if not isinstance(gen, str):
        raise ValueError(f"generation is a {type(gen).__name__}, not text")
    _, rid = _pick(row, "id", fields)
    item_id = str(rid) if rid is not None else str(n)
    _, question = _pick(row, "question", fields)
    name, answer = _pick(row, "answer", fields)
    if name is None:
        item = lookup().get(item_id)
        if item is None:
            raise ValueError(f"no answer field and no test item with id {item_id!r}")
        return item.id, gen, item
    meta = {k: row[k] for k in ("solution", "puzzle") if k in row and k != name}
    return item_id, gen, task.item_from_answer(item_id, str(question or ""), answer, meta)


def _record(run_id: str, suite: str, cell: str, task, task_name: str, system: str, source: dict,
            n: int, item_id: str, item: Item | None, gen, verdict, error: str | None) -> dict:
    outcome = None if verdict is None else verdict.outcome()
    return make_record(
        run_id=run_id, suite=suite, cell_id=cell, study="score",
        kind="score", point={"protocol": task.default_protocol}, model={"name": system, "params": {}},
        component={"kind": "source", "name": system, "params": source},
        task={"name": task_name, "version": task.version, "split": "test", "params": params_of(task)},
        item_id=item_id, item_hash=item_hash(item) if item else "", replicate=0,
        seed=derive_seed("score", task_name, item_id, 0, "0"), outcome=outcome,
        generation={"text": gen if isinstance(gen, str) else None, "line": n,
                    "item": None if item is None else {"prompt": item.prompt, "reference": item.reference,
                                                       "meta": item.meta}},
        cost=dict(NO_COST), status="ok" if error is None else "error", error=error)


def score_file(path, task_name: str, protocol: str | None = None, fields: dict | None = None,
               results="results", suite: str | None = None, system: str | None = None, argv=None,
               task_params: dict | None = None, exclude_errors: bool = False) -> tuple[Path, dict]:
    """Grade every row of `path`; -> (run directory, counts). See the module docstring. The
    manifest's `accuracy` follows `harness.stats.denominator`: bad rows
    count as failures unless `exclude_errors`."""
    from harness.runner import new_run_id

    path, fields = Path(path), dict(fields or {})
    params = dict(task_params or {})
    if protocol is not None:
        TASKS.get(task_name, "--task").check_protocol(protocol, "--protocol")
        if "protocol" in TASKS.fields(task_name):
            params["protocol"] = protocol
    task = TASKS.build(task_name, params, "--task")
    sandbox = preflight(getattr(task, "runs_code", False))  # code tasks: refused without namespaces unless allowed
    protocol = task.default_protocol
    kind, rows = read_rows(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    suite = safe_name(suite or f"score-{task_name}", "score --suite")  # results/<suite>/...: never a path
    system = system or path.stem
    run_dir = Path(results) / suite / new_run_id(sha)
    with guarded("make the run directory", run_dir):
        run_dir.mkdir(parents=True, exist_ok=False)
    try:
        return _score_rows(run_dir, path, rows, kind, sha, task, task_name, suite, system, fields, sandbox, argv,
                           exclude_errors)
    except BaseException as exc:  # a refusal, a failed write, an interrupt
        _abandon(run_dir, f"{type(exc).__name__}: {str(exc)[-2000:]}")
        raise


def _abandon(run_dir: Path, error: str) -> None:
    """A score that stopped: a run directory holding no record is removed (a refusal or a failed
    write leaves nothing behind); one with records is marked `failed` (best effort: on a full disk
    the manifest may not be writable)."""
    import contextlib
    import shutil

    from harness.records import RECORDS

    rec = run_dir / RECORDS
    if not rec.exists() or rec.stat().st_size == 0:
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # the suite folder, if this run made it and it is empty
        return
    manifest = run_dir / MANIFEST
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return
    data.update(status="failed", finished_at=_now(), error=error)
    try:
        write_json_atomic(manifest, data)
    except HarnessError:
        rewrite_in_place(manifest, data)  # a full disk: within the file's own blocks, if it fits


def _score_rows(run_dir: Path, path: Path, rows, kind: str, sha: str, task, task_name: str, suite: str,
                system: str, fields: dict, sandbox, argv, exclude_errors: bool = False) -> tuple[Path, dict]:
    protocol = task.default_protocol
    cell = f"{task_name}[protocol={protocol}]"
    source = {"path": str(path), "sha256": sha, "format": kind}
    manifest = {"schema_version": SCHEMA_VERSION, "run_id": run_dir.name, "suite": suite, "suite_path": str(path),
                "suite_sha256": sha, "quick": False, "kind": "score", "status": "running",
                "command": argv or sys.argv, "started_at": _now(), "source": source, "system": system,
                "task": {"name": task_name, "params": params_of(task), "version": task.version},
                "protocol": protocol, "fields": fields, "sandbox": sandbox, **provenance.collect()}
    write_json_atomic(run_dir / MANIFEST, manifest)
    cache: dict = {}
    lookup = lambda: cache.setdefault("items", _dataset_items(task))  # noqa: E731 - read only when needed
    counts = {"rows": len(rows), "scored": 0, "bad": 0, "duplicates": 0}
    bad, seen, metrics = [], set(), {}
    written: list[dict] = []
    with RecordWriter(run_dir) as out:
        writer = _Tagged(out, {"sandbox": sandbox} if sandbox else {}, written)
        for n, row in rows:
            item = gen = None
            rid = row.get("doc_id") if kind == "lm-eval-samples" else _pick(row, "id", fields)[1]
            item_id = str(n) if rid is None else str(rid)
            try:
                item_id, gen, item = _row(task, kind, n, row, fields, lookup)
                if item_id in seen:
                    counts["duplicates"] += 1
                    if kind == "lm-eval-samples":
                        continue  # another filter's copy of the same response (counted above)
                    raise ValueError(f"item id {item_id!r} repeats an earlier row")
                verdict = task.grade(item, gen)
            except HarnessError:
                raise  # the harness or machine cannot grade at all (e.g. generated code refused): stop
            except Exception as exc:  # noqa: BLE001 - a row that cannot be graded is an error row, not a crash
                counts["bad"] += 1
                reason = str(exc) if isinstance(exc, (ValueError, KeyError, TypeError)) and str(exc) else \
                    f"{type(exc).__name__}: {exc}"[:500]
                if len(bad) < MAX_LISTED:
                    bad.append({"line": n, "item_id": item_id, "reason": reason})
                writer.write(_record(run_dir.name, suite, cell, task, task_name, system, source, n, item_id, item,
                                     gen, None, f"bad row (line {n}): {reason}"))
                continue
            seen.add(item_id)
            counts["scored"] += 1
            metrics[verdict.metric] = "higher"
            writer.write(_record(run_dir.name, suite, cell, task, task_name, system, source, n, item_id, item, gen,
                                 verdict, None))
    metrics = metrics or {"accuracy": "higher"}
    manifest.update(status="complete", finished_at=_now(), counts=counts, bad_rows=bad, metrics=metrics,
                    accuracy=summarize(written, metrics, exclude_errors=exclude_errors))
    write_json_atomic(run_dir / MANIFEST, manifest)
    return run_dir, counts


class _Tagged:
    """A record writer that adds `extra` (the sandbox level of code tasks) to every record."""

    def __init__(self, writer, extra: dict, written: list | None = None):
        self.writer, self.extra, self.written = writer, extra, written

    def write(self, record: dict) -> None:
        record = {**record, **self.extra}
        self.writer.write(record)
        if self.written is not None:
            self.written.append({k: record[k] for k in ("cell_id", "status", "outcome", "item_id")})


def rescore(records: list[dict], protocol: str) -> tuple[list[dict], dict[str, str]]:
    """Records with their generations re-graded under `protocol` (no generation is redone);
    records without a generation text (likelihood studies, bad rows) and `eval` records (scored by
    lm-eval itself; re-score their samples file with `score`) pass unchanged.
    -> (records, {metric: "higher"} of the new outcomes)."""
    tasks: dict = {}
    items: dict = {}
    out, metrics = [], {}
    for r in records:
        gen = r.get("generation") or {}
        text, spec = gen.get("text"), r.get("task") or {}
        if r.get("status") != "ok" or not isinstance(text, str) or r.get("kind") == "lm_eval":
            if r.get("kind") == "score":  # a bad row stays in its (relabelled) cell, still counted
                r = {**r, "cell_id": f"{spec.get('name')}[protocol={protocol}]"}
            out.append(r)
            continue
        key = (spec.get("name"), json.dumps(spec.get("params") or {}, sort_keys=True, default=str))
        if key not in tasks:
            cls = TASKS.get(spec.get("name"), f"record {r.get('cell_id')}")
            cls.check_protocol(protocol, "--protocol")
            params = {**(spec.get("params") or {})}
            if "protocol" in TASKS.fields(spec["name"]):
                params["protocol"] = protocol
            tasks[key] = TASKS.build(spec["name"], params)
        task = tasks[key]
        stored = gen.get("item")
        if stored:
            item = Item(id=r["item_id"], prompt=stored["prompt"], reference=stored["reference"], meta=stored["meta"])
        else:
            if key not in items:
                items[key] = {it.id: it for it in task.items(spec.get("split") or "test")}
            item = items[key].get(r["item_id"])
            if item is None:
                raise HarnessError(f"record {r['cell_id']}/{r['item_id']}: no such item in task {spec['name']!r}")
        v = task.grade(item, text, protocol)
        metrics[v.metric] = "higher"
        cell = f"{spec['name']}[protocol={protocol}]" if r.get("kind") == "score" else r["cell_id"]
        out.append({**r, "cell_id": cell, "point": {**(r.get("point") or {}), "protocol": protocol},
                    "outcome": v.outcome()})
    return out, metrics


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
