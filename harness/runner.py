"""Suite -> cells -> resumable execution -> records (DESIGN.md, "The flow of data").

Every cell runs its units (item x replicate) in batches. Randomness comes from one generator per
unit, seeded by derive_seed(suite, cell, item, replicate), so batch composition does not change
any number and a resumed run writes exactly the records a clean run would have written. Units
already recorded with status "ok" are skipped on resume. Study kinds with `inner_replicates`
(gradient_variance, t_mask_decomposition) have one unit per item, recorded as replicate 0; the
unit gets one generator per inner replicate r, seeded by derive_seed(suite, cell, item, r).
"""
from __future__ import annotations

import datetime as dt
import os
import sys
import traceback
from pathlib import Path

from harness import provenance
from harness.budget import Meter
from harness.config import Cell, cell_to_dict, load_suite, plan
from harness.records import (
    MANIFEST,
    SCHEMA_VERSION,
    RecordWriter,
    read_manifest,
    read_records,
    unit_key,
    write_json_atomic,
)
from harness.registry import MODELS, REGISTRIES, TASKS, params_of
from harness.seeding import derive_seed, torch_generator
from harness.studies import STUDIES, Batch, StudyKind
from harness.tasks.base import item_hash
from harness.types import Budget, BudgetExceeded, Cost, HarnessError


def new_run_id(sha256: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{sha256[:6]}-{os.urandom(2).hex()}"


def _remaining(budget: Budget, spent: Cost) -> Budget:
    """What is left of a cell's budget after the records already written (for resumed runs)."""
    def left(limit, used):
        return None if limit is None else max(0, limit - used)

    return Budget(nfe=left(budget.nfe, spent.nfe), tokens=left(budget.tokens, spent.tokens),
                  flops=left(budget.flops, spent.flops), wall_s=left(budget.wall_s, spent.wall_s))


def _spent(records: list[dict]) -> Cost:
    tot = {"nfe": 0, "tokens": 0, "flops": 0.0, "wall_s": 0.0}
    for r in records:
        for k in tot:
            tot[k] += r["cost"][k]
    return Cost(**tot)


class Runner:
    def __init__(self, suite_path: str | Path, results: str | Path = "results", resume: str | Path | None = None,
                 quick: bool = False, progress: bool = True, argv: list[str] | None = None):
        self.suite = load_suite(suite_path)
        self.cells = plan(self.suite, quick=quick)  # every error surfaces here, before compute
        self.quick = quick
        self.progress = progress
        self._models: dict = {}
        if resume is not None:
            self.run_dir = Path(resume)
            manifest = read_manifest(self.run_dir)
            if manifest.get("suite_sha256") != self.suite.sha256:
                raise HarnessError(
                    f"{self.run_dir}: made from a different version of {suite_path} "
                    f"(sha256 {manifest.get('suite_sha256', '?')[:12]} vs {self.suite.sha256[:12]}); "
                    "start a new run instead of resuming"
                )
            if bool(manifest.get("quick")) != quick:
                raise HarnessError(
                    f"{self.run_dir}: was run with quick={manifest.get('quick')}; resume it the same way")
            self.manifest = manifest
            self.manifest.setdefault("resumed_at", []).append(_now())
        else:
            run_id = new_run_id(self.suite.sha256)
            self.run_dir = Path(results) / self.suite.suite / run_id
            self.run_dir.mkdir(parents=True, exist_ok=False)
            self.manifest = self._new_manifest(run_id, argv)
        write_json_atomic(self.run_dir / MANIFEST, self.manifest)

    def _new_manifest(self, run_id: str, argv) -> dict:
        models = {c.model.name + ":" + _short(c.model.params): c.model for c in self.cells}
        tasks = {c.task.name + ":" + _short(c.task.params): c.task for c in self.cells}
        return {
            "schema_version": SCHEMA_VERSION, "run_id": run_id, "suite": self.suite.suite,
            "suite_path": self.suite.path, "suite_sha256": self.suite.sha256, "quick": self.quick,
            "metrics": self.suite.metrics,
            "command": argv or sys.argv, "started_at": _now(), "status": "running",
            "cells": [cell_to_dict(c) for c in self.cells],
            "seeds": sorted({c.seed for c in self.cells}),
            "models": {k: {"name": m.name, "params": m.params,
                           **MODELS.build(m.name, m.params).provenance()} for k, m in models.items()},
            "tasks": {k: {"name": t.name, "params": t.params, "split": t.split, "n_items": t.n_items,
                          "version": TASKS.get(t.name).version,
                          "source": TASKS.build(t.name, t.params).source()} for k, t in tasks.items()},
            **provenance.collect(),
        }

    def model(self, cell: Cell):
        key = (cell.model.name, repr(sorted(cell.model.params.items())))
        if key not in self._models:
            self._models[key] = MODELS.build(cell.model.name, cell.model.params).load()
        return self._models[key]

    def run(self) -> Path:
        from tqdm import tqdm

        existing = read_records(self.run_dir) if (self.run_dir / "records.jsonl").exists() else []
        done = {unit_key(r) for r in existing if r["status"] == "ok"}
        failures = 0
        summaries = []
        with RecordWriter(self.run_dir) as writer:
            for cell in tqdm(self.cells, desc="cells", disable=not self.progress, file=sys.stderr):
                cell_ok = [r for r in existing if r["cell_id"] == cell.id and r["status"] == "ok"]
                status, n_failed = self._run_cell(cell, done, _spent(cell_ok), writer)
                failures += n_failed
                summaries.append({"cell": cell.id, "status": status, "failed_units": n_failed})
        self.manifest.update(status="failed" if failures else "complete", finished_at=_now(),
                             cell_status=summaries)
        write_json_atomic(self.run_dir / MANIFEST, self.manifest)
        return self.run_dir

    def _run_cell(self, cell: Cell, done: set, spent: Cost, writer: RecordWriter) -> tuple[str, int]:
        from tqdm import tqdm

        task = TASKS.build(cell.task.name, cell.task.params)
        items = task.items(cell.task.split)[: cell.task.n_items]
        component = REGISTRIES[cell.component_kind].build(cell.component.name, cell.component.params)
        study = STUDIES[cell.kind]
        units = _units(cell, items, study, done)
        if not units:
            return "complete", 0
        meter = Meter(self.model(cell), _remaining(cell.budget, spent))
        failed = 0
        bar = tqdm(total=len(units), desc=cell.id, leave=False, disable=not self.progress, file=sys.stderr)
        for lo in range(0, len(units), cell.batch_size):
            batch = units[lo:lo + cell.batch_size]
            gens = [self._generators(cell, it, r, study) for r, it in batch]
            before = meter.cost
            try:
                results = study.run(meter, task, component,
                                    Batch(items=[it for _, it in batch], replicates=[r for r, _ in batch],
                                          generators=gens, options=cell.options))
                status, error = "ok", None
            except BudgetExceeded as exc:
                results, status, error = [{} for _ in batch], "budget_exceeded", str(exc)
            except Exception as exc:  # one batch failing must not lose the rest of the run
                results, status, error = [{} for _ in batch], "error", _short_tb(exc)
            share = _share(meter.cost.minus(before), len(batch))
            for (r, it), res in zip(batch, results):
                writer.write(self._record(cell, component, task, it, r, res, share, status, error))
            writer.sync()
            bar.update(len(batch))
            if status == "budget_exceeded":
                bar.close()
                return "budget_exceeded", 0
            failed += len(batch) if status == "error" else 0
        bar.close()
        return ("failed" if failed else "complete"), failed

    def _generators(self, cell: Cell, item, replicate: int, study: StudyKind):
        """The unit's generator; for inner-replicate kinds one per inner replicate r = 0..R-1."""
        seed = lambda r: derive_seed(self.suite.suite, cell.id, item.id, r, str(cell.seed))  # noqa: E731
        if study.inner_replicates:
            return [torch_generator(seed(r)) for r in range(cell.replicates)]
        return torch_generator(seed(replicate))

    def _record(self, cell, component, task, item, replicate, result, cost, status, error) -> dict:
        return {
            "schema_version": SCHEMA_VERSION, "run_id": self.manifest["run_id"], "suite": self.suite.suite,
            "cell_id": cell.id, "study": cell.study, "kind": cell.kind, "point": cell.point,
            "model": {"name": cell.model.name, "params": cell.model.params},
            "component": {"kind": cell.component_kind[:-1], "name": cell.component.name,
                          "params": params_of(component)},
            "task": {"name": cell.task.name, "version": task.version, "split": cell.task.split,
                     "params": params_of(task)},
            "item_id": item.id, "item_hash": item_hash(item), "replicate": replicate,
            "seed": derive_seed(self.suite.suite, cell.id, item.id, replicate, str(cell.seed)),
            "outcome": result.get("outcome"), "estimate": result.get("estimate"),
            "generation": result.get("generation"), "cost": cost,
            "status": status, "error": error,
        }


def _units(cell: Cell, items: list, study: StudyKind, done: set) -> list[tuple]:
    """The (replicate, item) units still to run, in execution order. Values never depend on the
    order (one generator per unit); the order only decides which units share a batch."""
    if study.inner_replicates:  # one unit per item; its replicates run inside the unit
        units = [(0, it) for it in items]
    elif study.item_major:  # an item's replicates together: one prompt per batch, fewer shapes
        units = [(r, it) for it in items for r in range(cell.replicates)]
    else:
        units = [(r, it) for r in range(cell.replicates) for it in items]
    return [(r, it) for r, it in units if (cell.id, it.id, r) not in done]


def _share(cost: Cost, n: int) -> dict:
    """One unit's share of a batch's cost: the batch's cost split evenly. Exact for fixed-schedule
    components (each row rides every pass); for adaptive samplers, whose rows leave the batch
    when done, it is the batch's mean per unit."""
    d = cost.as_dict()
    return {k: (v if k == "peak_mem" else v / n) for k, v in d.items()}


def _short(params: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(params.items()))


def _short_tb(exc: Exception) -> str:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "".join(tb[-3:])[-2000:]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
