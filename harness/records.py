"""Run records: `manifest.json` plus an append-only `records.jsonl` (docs/architecture.md, "Records").

One JSON line per unit of evidence (cell x task x item x replicate). Lines are written whole
(one write, flushed; fsynced once per batch of units), never rewritten. A run killed mid-write
can leave a torn last line; on reopening, the writer moves that fragment to `records.torn`
(nothing is discarded) so the next record starts on a fresh line. Readers keep the last record
per unit key.

Records are strict JSON: a NaN or infinity never reaches the file. A record that would carry one
is written with status "error" and an error `non-finite <key path> (<value>)` naming the first
offending value, which is replaced by null (`guard_finite`); records of older runs that hold a bare
NaN are read the same way, so reports count them and the regression gate sees them fail.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Iterable, TypedDict

from harness.paths import guarded, io_error, safe_name, write_text_atomic
from harness.types import HarnessError

SCHEMA_VERSION = 1
RECORDS = "records.jsonl"
MANIFEST = "manifest.json"


class Record(TypedDict, total=False):
    """One line of records.jsonl. Every writer (the runner, `eval`, `score`) builds it with
    `make_record`, so the three kinds of run share one schema; `sandbox` is present only for code
    tasks (the isolation level their programs ran under)."""

    schema_version: int
    run_id: str
    suite: str
    cell_id: str
    study: str
    kind: str
    point: dict
    model: dict  # {"name", "params"}
    component: dict  # {"kind", "name", "params"} (+ "estimator" for eval runs)
    task: dict  # {"name", "version", "split", "params"}
    item_id: str
    item_hash: str
    replicate: int
    seed: int
    outcome: dict | None  # {"metric", "value", "protocol", ...}
    estimate: dict | None
    generation: dict | None
    cost: dict  # {"nfe", "nfe_full", "nfe_cached", "tokens", "flops", "wall_s", "peak_mem"}
    status: str  # "ok", "error", "budget_exceeded", ...
    error: str | None
    sandbox: str


REQUIRED = ("run_id", "suite", "cell_id", "study", "kind", "point", "model", "component", "task", "item_id",
            "item_hash", "replicate", "seed", "cost", "status")


def make_record(*, sandbox: str | None = None, outcome=None, estimate=None, generation=None, error=None,
                **fields) -> Record:
    """The one record builder: the schema's keys in one order, `schema_version` filled in. A missing
    or unknown key is a programming error, raised here rather than written to a run."""
    missing = [k for k in REQUIRED if k not in fields]
    unknown = [k for k in fields if k not in Record.__annotations__]
    if missing or unknown:
        raise TypeError(f"make_record: missing {missing}, unknown {unknown}")
    rec: Record = {"schema_version": SCHEMA_VERSION, **{k: fields[k] for k in REQUIRED[:11]},
                   "replicate": fields["replicate"], "seed": fields["seed"], "outcome": outcome,
                   "estimate": estimate, "generation": generation, "cost": fields["cost"],
                   "status": fields["status"], "error": error}
    if sandbox is not None:
        rec["sandbox"] = sandbox
    return rec


def unit_key(record: dict) -> tuple:
    return (record["cell_id"], record["item_id"], record["replicate"])


def first_non_finite(obj, path: str = "") -> tuple[str, float] | None:
    """(key path, value) of the first NaN or infinity inside nested dicts/lists, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (path or "value", obj)
    if isinstance(obj, dict):
        for k, v in obj.items():
            hit = first_non_finite(v, f"{path}.{k}" if path else str(k))
            if hit:
                return hit
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            hit = first_non_finite(v, f"{path}[{i}]")
            if hit:
                return hit
    return None


def _nulled(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nulled(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nulled(v) for v in obj]
    return obj


def guard_finite(record: dict) -> dict:
    """The record unchanged when every number in it is finite; else a copy with status "error",
    error "non-finite <path> (<value>)" (the first one) and every non-finite value set to null."""
    hit = first_non_finite(record)
    if hit is None:
        return record
    out = _nulled(record)
    if out.get("status") == "ok":
        out["status"] = "error"
        out["error"] = f"non-finite {hit[0]} ({hit[1]})"
    return out


def is_non_finite_error(record: dict) -> bool:
    return record.get("status") == "error" and str(record.get("error") or "").startswith("non-finite")


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temporary file and rename: readers never see a half-written manifest. A failed
    write (disk full, a read-only folder) removes the temporary file and raises an IOFailure naming
    the path; the file at `path` is then unchanged."""
    text = json.dumps(_nulled(data), indent=1, sort_keys=True, default=str, allow_nan=False) + "\n"
    write_text_atomic(path, text)


def rewrite_in_place(path: Path, data: dict) -> bool:
    """The last resort of a run stopped by a full disk: rewrite the manifest inside the blocks its file
    already has (a new file, as write_json_atomic makes, needs blocks the disk no longer has). Done only
    when the new text fits in those blocks, so no allocation can fail half-way. -> whether it was done."""
    path = Path(path)
    text = (json.dumps(_nulled(data), indent=1, sort_keys=True, default=str, allow_nan=False) + "\n").encode()
    try:
        st = path.stat()
        if len(text) > st.st_blocks * 512:
            return False
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.pwrite(fd, text, 0)
            os.ftruncate(fd, len(text))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


# What the readers need of a manifest and of a record (anything else is carried along unchecked).
MANIFEST_FIELDS = {"run_id": str, "suite": str}
RECORD_FIELDS = {"cell_id": str, "item_id": str, "replicate": int, "seed": int, "status": str, "study": str,
                 "kind": str}
# Optional manifest keys the report reads: absent or null is fine, anything else must have this form.
MANIFEST_OPTIONAL = {"command": "a list of str", "metrics": "an object of str", "suite_path": "a str",
                     "status": "a str", "quick": "a bool", "cells": "a list of objects"}


def _form_ok(value, form: str) -> bool:
    if value is None:
        return True
    if form == "a list of str":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if form == "an object of str":
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    if form == "a list of objects":
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)
    return isinstance(value, {"a str": str, "a bool": bool}[form])


def read_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / MANIFEST
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{path}: no manifest; expected a run directory made by `dlm-harness run`") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise HarnessError(f"{path}: not a readable JSON manifest ({why})") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for key, tp in MANIFEST_FIELDS.items():
        if not isinstance(data.get(key), tp):
            raise HarnessError(f"{path}: key {key!r} must be a {tp.__name__}, got {data.get(key)!r:.80}")
    for key, form in MANIFEST_OPTIONAL.items():
        if not _form_ok(data.get(key), form):
            raise HarnessError(f"{path}: key {key!r} must be {form}, got {data.get(key)!r:.80}")
    for key in MANIFEST_FIELDS:  # both become path components of reports and results
        safe_name(data[key], f"{path}: key {key!r}")
    return data


def check_record(rec, where: str) -> dict:
    """A record read back from a file: an object with the keys the readers use, of the right types."""
    if not isinstance(rec, dict):
        raise HarnessError(f"{where}: expected a JSON object (a record), got {type(rec).__name__}")
    for key, tp in RECORD_FIELDS.items():
        v = rec.get(key)
        if not isinstance(v, tp) or isinstance(v, bool):
            raise HarnessError(f"{where}: key {key!r} must be a {tp.__name__}, got {v!r:.80}")
    outcome = rec.get("outcome")
    if outcome is not None and not (isinstance(outcome, dict) and isinstance(outcome.get("metric"), str)
                                    and "value" in outcome
                                    and (outcome["value"] is None or _number(outcome["value"]))):
        raise HarnessError(f"{where}: key 'outcome' must be null or {{metric: str, value: number}}, "
                           f"got {outcome!r:.80}")
    if not (rec.get("error") is None or isinstance(rec.get("error"), str)):
        raise HarnessError(f"{where}: key 'error' must be null or a str, got {rec.get('error')!r:.80}")
    cost = rec.get("cost")
    if not isinstance(cost, dict) or not all(_number(cost.get(k)) for k in ("nfe", "tokens", "flops", "wall_s")):
        raise HarnessError(f"{where}: key 'cost' must be an object with numbers nfe, tokens, flops, wall_s, "
                           f"got {cost!r:.80}")
    for key in ("component", "model", "task"):
        if not isinstance(rec.get(key), dict) or not isinstance(rec[key].get("name"), str):
            raise HarnessError(f"{where}: key {key!r} must be an object with a name, got {rec.get(key)!r:.80}")
        if not isinstance(rec[key].get("params") or {}, dict):
            raise HarnessError(f"{where}: key '{key}.params' must be an object, got {rec[key]['params']!r:.80}")
    if not isinstance(rec["task"].get("split") or "", str):
        raise HarnessError(f"{where}: key 'task.split' must be a str, got {rec['task']['split']!r:.80}")
    if not isinstance(rec["component"].get("kind"), str):
        raise HarnessError(f"{where}: key 'component.kind' must be a str, got {rec['component'].get('kind')!r:.80}")
    if rec.get("status") == "ok" and (outcome is None or outcome["value"] is None):
        raise HarnessError(f"{where}: a record with status 'ok' needs an outcome with a value")
    return guard_finite(rec)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class RecordWriter:
    """Appends records to `run_dir/records.jsonl`, repairing a torn tail first.

    The file is opened without following a symbolic link (a link planted in a run directory could
    point anywhere); every failed write raises an IOFailure naming the file."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / RECORDS
        if self.path.is_symlink():
            raise HarnessError(f"{self.path}: is a symbolic link; a run's records must be a regular file "
                               "inside its run directory")
        with guarded("repair the torn last line of", self.path):
            self._repair()
        with guarded("open for appending", self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            self._fh = os.fdopen(fd, "a", encoding="utf-8")

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)  # never through a link
        with os.fdopen(os.open(self.path.with_name("records.torn"), flags, 0o644), "ab") as torn:
            torn.write(data[cut:] + b"\n")
        with open(self.path, "r+b") as fh:
            fh.truncate(cut)

    def write(self, record: dict) -> None:
        """Append one whole line and flush it to the OS (a killed process loses nothing written)."""
        line = json.dumps(guard_finite(record), sort_keys=True, separators=(",", ":"), default=str,
                          allow_nan=False) + "\n"
        try:
            self._fh.write(line)
            self._fh.flush()
        except OSError as exc:
            self._abandon()
            raise io_error(exc, "append a record to", self.path) from None

    def _abandon(self) -> None:
        """After a failed write: drop what is buffered (it cannot be written) and close the file;
        the torn tail on disk, if any, is repaired by the next writer."""
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                os.close(fh.fileno())
            with contextlib.suppress(OSError, ValueError):
                fh.close()

    def sync(self) -> None:
        """fsync: what was written survives a machine crash too. The runner calls it once per batch
        (an fsync per record cost ~2 ms each, minutes over a study's 10^5 records)."""
        if self._fh is None:
            return
        with guarded("sync", self.path):
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is None:
            return
        try:
            if not self._fh.closed:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._fh.close()
        except OSError as exc:
            self._abandon()
            raise io_error(exc, "close", self.path) from None
        self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:  # already failing: closing must not hide that error
            with contextlib.suppress(HarnessError):
                self.close()
            return
        self.close()


def read_records(run_dir: Path, latest: bool = True) -> list[dict]:
    """All records of a run (the last one per unit when `latest`). A torn final line is skipped."""
    path = Path(run_dir) / RECORDS
    if not path.is_file():
        raise HarnessError(f"{path}: no records file; expected a run directory made by `dlm-harness run`")
    out = read_lines(path, check=True)
    if not latest:
        return out
    clash = conflicts(out)
    if clash:
        cell, item, rep = clash[0]
        print(f"note: {path}: {len(clash)} unit(s) have two 'ok' records with different outcomes (a conflicting "
              f"duplicate, e.g. {cell}/{item} replicate {rep}); the last record of each is used", file=sys.stderr)
    return dedupe(out)


def read_lines(path: Path, check: bool = False) -> list[dict]:
    """Every record of one JSONL file in file order ([] when absent); a torn final line is skipped.
    Non-finite values become errors (guard_finite); with `check`, each record must also have the
    fields the readers use, of the right types (check_record)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise HarnessError(f"{path}: cannot read records ({why})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            if n == len(lines):  # torn tail of a killed run
                continue
            raise HarnessError(f"{path}:{n}: not a JSON record") from None
        if not isinstance(rec, dict) or rec.get("schema_version") != SCHEMA_VERSION:
            got = rec.get("schema_version") if isinstance(rec, dict) else type(rec).__name__
            raise HarnessError(f"{path}:{n}: schema_version {got!r}, this harness reads {SCHEMA_VERSION}")
        out.append(check_record(rec, f"{path}:{n}") if check else guard_finite(rec))
    return out


def conflicts(records: Iterable[dict]) -> list[tuple]:
    """Unit keys with two records of status ok whose outcomes differ (a resumed run rewrites a unit
    only when it had failed, so such a pair means two writers or an edited file)."""
    seen: dict[tuple, dict] = {}
    out = []
    for rec in records:
        if rec.get("status") != "ok":
            continue
        key = unit_key(rec)
        prev = seen.get(key)
        if prev is not None and prev.get("outcome") != rec.get("outcome") and key not in out:
            out.append(key)
        seen[key] = rec
    return out


def dedupe(records: Iterable[dict]) -> list[dict]:
    """The last record per unit key, in first-seen order."""
    last: dict[tuple, dict] = {}
    for rec in records:
        last[unit_key(rec)] = rec
    return list(last.values())


def to_frame(records: list[dict]):
    """Flatten records into a pandas DataFrame (one row per record; nested keys joined by '.')."""
    import pandas as pd

    return pd.json_normalize(records, sep=".")
