"""Run records: `manifest.json` plus an append-only `records.jsonl` (DESIGN.md, "Records").

One JSON line per unit of evidence (cell x task x item x replicate). Lines are written whole
(one write, flushed; fsynced once per batch of units), never rewritten. A run killed mid-write
can leave a torn last line; on reopening, the writer moves that fragment to `records.torn`
(nothing is discarded) so the next record starts on a fresh line. Readers keep the last record
per unit key.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from harness.types import HarnessError

SCHEMA_VERSION = 1
RECORDS = "records.jsonl"
MANIFEST = "manifest.json"


def unit_key(record: dict) -> tuple:
    return (record["cell_id"], record["item_id"], record["replicate"])


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temporary file and rename: readers never see a half-written manifest."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{path}: no manifest; expected a run directory made by `dlm-harness run`") from None
    except json.JSONDecodeError as exc:
        raise HarnessError(f"{path}: not valid JSON ({exc})") from None


class RecordWriter:
    """Appends records to `run_dir/records.jsonl`, repairing a torn tail first."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / RECORDS
        self._repair()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        with open(self.path.with_name("records.torn"), "ab") as torn:
            torn.write(data[cut:] + b"\n")
        with open(self.path, "r+b") as fh:
            fh.truncate(cut)

    def write(self, record: dict) -> None:
        """Append one whole line and flush it to the OS (a killed process loses nothing written)."""
        line = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str) + "\n"
        self._fh.write(line)
        self._fh.flush()

    def sync(self) -> None:
        """fsync: what was written survives a machine crash too. The runner calls it once per batch
        (an fsync per record cost ~2 ms each, minutes over a study's 10^5 records)."""
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_records(run_dir: Path, latest: bool = True) -> list[dict]:
    """All records of a run (the last one per unit when `latest`). A torn final line is skipped."""
    path = Path(run_dir) / RECORDS
    if not path.exists():
        raise HarnessError(f"{path}: no records file; expected a run directory made by `dlm-harness run`")
    out = read_lines(path)
    return dedupe(out) if latest else out


def read_lines(path: Path) -> list[dict]:
    """Every record of one JSONL file in file order ([] when absent); a torn final line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # torn tail of a killed run
                continue
            raise HarnessError(f"{path}:{n}: not a JSON record") from None
        if rec.get("schema_version") != SCHEMA_VERSION:
            raise HarnessError(
                f"{path}:{n}: schema_version {rec.get('schema_version')!r}, this harness reads {SCHEMA_VERSION}"
            )
        out.append(rec)
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
