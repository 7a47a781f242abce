"""Suite -> cells -> resumable execution -> records (docs/architecture.md, "The flow of data").

Every cell runs its units (item x replicate) in batches. Randomness comes from one generator per
unit, seeded by derive_seed(suite, cell, item, replicate), so batch composition does not change
any number and a resumed run writes exactly the records a clean run would have written. Units
already recorded with status "ok" are skipped on resume. Study kinds with `inner_replicates`
(gradient_variance, t_mask_decomposition) have one unit per item, recorded as replicate 0; the
unit gets one generator per inner replicate r, seeded by derive_seed(suite, cell, item, r).

Batches follow the cell's batch_size and max_tokens; a batch that runs out of memory is halved
and retried (harness/batching.py). Under torchrun the units are sharded across ranks and the
shards merged into one records.jsonl (harness/distributed.py).

A cell's budget is a ledger (harness/budget.py Ledger): every record's cost counts on resume,
including units stopped by the budget, and a cell that was stopped by its budget is done. A unit
whose model pass or result holds NaN or infinity is an error naming the first offending value.
The run directory is locked while a runner writes it (harness/lock.py); it is made only after the
suite is planned and the manifest assembled, and a run that fails is marked `failed`.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import traceback
from collections import deque
from pathlib import Path

from harness import distributed, progress, provenance, validate
from harness.batching import Backoff, free_memory, is_oom, logits_capped, plan_batches, reset_peak, split, unit_length
from harness.budget import Ledger, Meter, NonFiniteError
from harness.config import Cell, cell_to_dict, load_suite, plan
from harness.lock import RunLock, running_parts
from harness.paths import guarded, safe_name
from harness.records import (
    MANIFEST,
    SCHEMA_VERSION,
    RecordWriter,
    dedupe,
    first_non_finite,
    make_record,
    read_manifest,
    rewrite_in_place,
    unit_key,
    write_json_atomic,
)
from harness.registry import MODELS, REGISTRIES, TASKS, params_of
from harness.seeding import derive_seed, torch_generator
from harness.studies import STUDIES, Batch, StudyKind
from harness.tasks.base import item_hash
from harness.tasks.sandbox import preflight
from harness.types import Budget, BudgetExceeded, Cost, HarnessError

PART_WAIT_S = 1800.0  # how long a part waits for the run's lock (held by other parts only to start and merge)


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
    return Ledger(Budget(), records).as_cost()


class Runner:
    def __init__(self, suite_path: str | Path, results: str | Path = "results", resume: str | Path | None = None,
                 quick: bool = False, progress: bool = True, argv: list[str] | None = None,
                 shard: str | tuple[int, int] | None = None, cells: str | None = None, run_id: str | None = None):
        self.suite = load_suite(suite_path)
        self.cells = plan(self.suite, quick=quick)  # every error surfaces here, before compute
        # A part of the run (--shard, --cells) runs some cells; the run's order and manifest cover all.
        if isinstance(shard, str):
            shard = distributed.parse_shard(shard)
        self.mine = distributed.select(self.cells, STUDIES, shard, cells, quick)
        self.part = distributed.part_name(shard, cells)
        self.part_lock: RunLock | None = None
        self.sandbox = preflight(any(getattr(TASKS.get(c.task.name), "runs_code", False) for c in self.mine))
        for key, m in self.suite.models.items():  # the devices asked for exist on this machine
            if isinstance(m.params.get("device"), str):
                validate.device(m.params["device"], f"{self.suite.path}.models.{key}.params.device")
        self.quick = quick
        self.dist = distributed.from_env()
        self.progress = progress and self.dist.main
        self._models: dict = {}
        self.backoff_events: list[dict] = []
        self.ledgers: dict[str, Ledger] = {}  # cell id -> what it has spent (all records, this run included)
        self.lock: RunLock | None = None
        command = " ".join(argv or sys.argv)
        if run_id is not None and resume is not None:
            raise HarnessError("--run-id and --resume both name the run directory; give one of them")
        target = Path(resume) if resume is not None else None
        if run_id is not None:
            target = Path(results) / self.suite.suite / safe_name(run_id, "--run-id", "a run id")
        joining = resume is not None or (target is not None and (target / MANIFEST).is_file())
        if self.part is not None:
            if self.dist.main:
                self._start_part(target, results, argv, command, must_exist=resume is not None)
            self.run_dir, self.manifest = distributed.broadcast(self.dist, (self.run_dir if self.dist.main else None,
                                                                            getattr(self, "manifest", None)))
            return
        if joining:
            self.run_dir = target
            if self.dist.main:  # one writer per run directory; the lock is held until run() ends
                self.lock = RunLock(self.run_dir, command).acquire()
                running = running_parts(self.run_dir)
                if running:
                    self.close()
                    raise HarnessError(f"{self.run_dir}: parts of this run are running ({', '.join(running)}); "
                                       "resume the whole run once they have ended, or run the missing cells as "
                                       "parts (--shard / --cells)")
            try:
                manifest = self._joined_manifest(suite_path, quick)
                # Every record is checked before anything is written: a malformed line is an error
                # naming it, and the manifest (a complete run stays complete) is left as it was.
                self._every = distributed.read_all(self.run_dir, check=True)
            except HarnessError:
                self.close()
                raise
            self.manifest = manifest
            self.manifest.setdefault("resumed_at", []).append(_now())
        elif self.dist.main:
            run_id = target.name if target is not None else new_run_id(self.suite.sha256)
            self.manifest = self._new_manifest(run_id, argv)  # checks every model and task: no empty run dirs
            self.run_dir = Path(results) / self.suite.suite / run_id
            with guarded("make the run directory", self.run_dir):
                self.run_dir.mkdir(parents=True, exist_ok=False)
            self.lock = RunLock(self.run_dir, command).acquire()
        if self.lock is not None and self.lock.stale:
            st = self.lock.stale
            print(f"note: {self.run_dir}: took over the lock of pid {st.get('pid')} on host {st.get('host')}, "
                  "which ended without releasing it (a killed run)", file=sys.stderr)
        ranks = distributed.gather(self.dist, distributed.rank_info(self.dist))
        if self.dist.main:
            self.manifest["distributed"] = {"world_size": self.dist.world_size, "backend": self.dist.backend,
                                            "ranks": ranks}
            try:
                write_json_atomic(self.run_dir / MANIFEST, self.manifest)
            except HarnessError:
                self.close()
                if not joining:  # nothing was run: leave no run directory without a manifest behind
                    _remove_empty_run_dir(self.run_dir)
                raise
        if not joining:  # the run directory rank 0 made, on every rank
            self.run_dir, self.manifest = distributed.broadcast(self.dist, (getattr(self, "run_dir", None),
                                                                            getattr(self, "manifest", None)))

    def _joined_manifest(self, suite_path, quick: bool) -> dict:
        """The manifest of an existing run directory, checked to be this suite's, run the same way."""
        manifest = read_manifest(self.run_dir)
        if manifest.get("suite_sha256") != self.suite.sha256:
            raise HarnessError(
                f"{self.run_dir}: made from a different version of {suite_path} "
                f"(sha256 {manifest.get('suite_sha256', '?')[:12]} vs {self.suite.sha256[:12]}); "
                "start a new run instead of resuming")
        if bool(manifest.get("quick")) != quick:
            raise HarnessError(f"{self.run_dir}: was run with quick={manifest.get('quick')}; resume it the same way")
        return manifest

    def _start_part(self, target: Path | None, results, argv, command: str, must_exist: bool) -> None:
        """Rank 0 of a part: make or join the run directory under the run's lock (held until every
        rank has read the records, in _run), take the part's own lock, note the part in the manifest."""
        fresh = target is None
        if fresh:
            target = Path(results) / self.suite.suite / new_run_id(self.suite.sha256)
        self.run_dir = target
        if must_exist and not (target / MANIFEST).is_file():
            raise HarnessError(f"{target}: no {MANIFEST}; expected a run directory made by `dlm-harness run`")
        manifest = None if (target / MANIFEST).is_file() else self._new_manifest(target.name, argv)
        with guarded("make the run directory", target):
            target.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(target, command, wait=PART_WAIT_S).acquire()
        try:
            self.part_lock = RunLock(target, command, part=self.part).acquire()
            if (target / MANIFEST).is_file():  # made by another part meanwhile, or joined
                manifest = self._joined_manifest(self.suite.path, self.quick)
            self._every = distributed.read_all(target, check=True)
            manifest.setdefault("planned_units", {c.id: distributed.planned_units(c, STUDIES[c.kind])
                                                  for c in self.cells})
            manifest.setdefault("parts", {})[self.part] = {
                "cells": [c.id for c in self.mine], "status": "running", "started_at": _now(),
                "command": argv or sys.argv, "world_size": self.dist.world_size, "backend": self.dist.backend}
            manifest["status"] = "running"
            manifest.pop("error", None)
            self.manifest = manifest
            write_json_atomic(target / MANIFEST, manifest)
        except BaseException:
            self.close()
            if fresh:
                _remove_empty_run_dir(target)
            raise

    def _new_manifest(self, run_id: str, argv) -> dict:
        models = {c.model.name + ":" + _short(c.model.params): c.model for c in self.cells}
        tasks = {c.task.name + ":" + _short(c.task.params): c.task for c in self.cells}
        return {
            "schema_version": SCHEMA_VERSION, "run_id": run_id, "suite": self.suite.suite,
            "suite_path": self.suite.path, "suite_sha256": self.suite.sha256, "quick": self.quick,
            "metrics": self.suite.metrics,
            "command": argv or sys.argv, "started_at": _now(), "status": "running",
            "cells": [cell_to_dict(c) for c in self.cells], "sandbox": self.sandbox,
            "planned_units": {c.id: distributed.planned_units(c, STUDIES[c.kind]) for c in self.cells},
            "seeds": sorted({c.seed for c in self.cells}),
            "models": {k: {"name": m.name, "params": m.params,
                           **self._checked(lambda m=m: MODELS.build(m.name, m.params).provenance(), "models", m)}
                       for k, m in models.items()},
            "tasks": {k: {"name": t.name, "params": t.params, "split": t.split, "n_items": t.n_items,
                          "version": TASKS.get(t.name).version,
                          "source": self._checked(lambda t=t: TASKS.build(t.name, t.params).source(), "tasks", t)}
                      for k, t in tasks.items()},
            **provenance.collect(),
        }

    def _checked(self, fn, table: str, spec):
        """fn() (a model's provenance, a task's source: both read files), its errors naming the suite key."""
        entries = getattr(self.suite, table).items()
        key = next((k for k, v in entries if v.name == spec.name and v.params == spec.params), spec.name)
        try:
            return fn()
        except HarnessError as exc:
            raise HarnessError(f"{self.suite.path}.{table}.{key}: {exc}") from None
        except OSError as exc:
            raise HarnessError(f"{self.suite.path}.{table}.{key}: cannot read {exc.filename or ''} "
                               f"({exc.strerror or exc})") from None

    @staticmethod
    def _model_key(cell: Cell) -> tuple:
        return (cell.model.name, repr(sorted(cell.model.params.items())))

    def model(self, cell: Cell):
        key = self._model_key(cell)
        if key not in self._models:
            self._models[key] = MODELS.build(cell.model.name, cell.model.params).load()
        return self._models[key]

    def close(self) -> None:
        """Release the run directory's locks (run() does this when it ends)."""
        if self.lock is not None:
            self.lock.release()
        if self.part_lock is not None:
            self.part_lock.release()

    def run(self) -> Path:
        try:
            return self._run()
        except KeyboardInterrupt as exc:  # SIGINT, SIGTERM, SIGHUP (harness/cli.py): `interrupted`, resumable
            self._mark("interrupted", f"interrupted ({getattr(exc, 'signal_name', None) or 'SIGINT'}); "
                                      f"resume with --resume {self.run_dir}")
            raise
        except Exception as exc:  # a run that stops on an error is `failed`, not left `running`
            self._mark("failed", f"{type(exc).__name__}: {str(exc)[-2000:]}")
            raise
        finally:
            self.close()

    def _mark(self, status: str, error: str) -> None:
        """Record how the run ended in its manifest, if the manifest can still be written (on a full
        disk it may not: the error that stopped the run is what the user sees either way)."""
        if not self.dist.main:
            return
        if self.part is not None:  # a part marks itself only: the other parts may still be running
            self._mark_part(status, error)
            return
        self.manifest.update(status=status, finished_at=_now(), error=error)
        try:
            write_json_atomic(self.run_dir / MANIFEST, self.manifest)
        except HarnessError as exc:
            if not rewrite_in_place(self.run_dir / MANIFEST, self.manifest):
                print(f"note: could not mark {self.run_dir / MANIFEST} {status}: {exc}", file=sys.stderr)

    def _mark_part(self, status: str, error: str) -> None:
        try:
            held = self.lock is not None and self.lock.held
            with contextlib.nullcontext() if held else RunLock(self.run_dir, "", wait=60.0):
                manifest = read_manifest(self.run_dir)
                manifest.setdefault("parts", {}).setdefault(self.part, {}).update(
                    status=status, finished_at=_now(), error=error)
                write_json_atomic(self.run_dir / MANIFEST, manifest)
                self.manifest = manifest
        except HarnessError as exc:
            print(f"note: could not mark part {self.part} of {self.run_dir} {status}: {exc}", file=sys.stderr)

    def _run(self) -> Path:
        every = getattr(self, "_every", None)  # read (and checked) at resume
        if every is None:
            every = distributed.read_all(self.run_dir, check=True)  # records.jsonl and rank shards, every line
        existing = dedupe(every)
        distributed.barrier(self.dist)  # every rank has read before any rank writes
        if self.part is not None and self.lock is not None:
            self.lock.release()  # a part holds the run's lock only to start and to merge; its own lock stays
            self.lock = None
        done = {unit_key(r) for r in existing if r["status"] == "ok"}
        self.existing = existing
        summaries = []
        rank = self.dist.rank if self.dist.active else None
        writer = distributed.ShardWriter(self.run_dir, rank, self.part) if rank is not None or self.part \
            else RecordWriter(self.run_dir)
        self.owner = distributed.place(self.mine, STUDIES, self.dist.world_size, self.quick)
        mine = [c for c in self.mine if self.owner[c.id] in (None, self.dist.rank)]  # cells this rank runs
        whole = {k: v for k, v in self.owner.items() if v is not None}
        if self.dist.active and self.part is None:
            self.manifest.setdefault("distributed", {})["whole_cells"] = whole  # cell -> the rank that ran it
        last_use = {self._model_key(c): i for i, c in enumerate(mine)}
        with writer:
            for cell in progress.bar(self.mine, desc="cells", disable=not self.progress):
                # The ledger: every line ever written for the cell (stopped and failed units too)
                # counts against its budget.
                self.ledgers[cell.id] = Ledger(cell.budget, [r for r in every if r["cell_id"] == cell.id])
                if any(r["cell_id"] == cell.id and r["status"] == "budget_exceeded" for r in existing):
                    summaries.append({"cell": cell.id, "status": "budget_exceeded", "failed_units": 0})
                    continue  # stopped by its budget: done, never re-spent
                status, n_failed = self._run_cell(cell, done, self.ledgers[cell.id].as_cost(), writer)
                summaries.append({"cell": cell.id, "status": status, "failed_units": n_failed})
                if cell in mine and last_use[self._model_key(cell)] == mine.index(cell):
                    self._models.pop(self._model_key(cell), None)  # no later cell of this rank needs it
        per_rank = distributed.gather(self.dist, (summaries, self.backoff_events))  # also a barrier
        if self.dist.main and self.part is not None:
            self._end_part(_combine([s for s, _ in per_rank]), [e for _, ev in per_rank for e in ev])
        elif self.dist.main:
            if distributed.shard_paths(self.run_dir):
                distributed.merge(self.run_dir, self._canonical_order())
            summaries = _combine([s for s, _ in per_rank])
            events = [e for _, ev in per_rank for e in ev]
            if events:
                self.manifest.setdefault("oom_backoff", []).extend(events)
            failures = sum(s["failed_units"] for s in summaries)
            self.manifest.pop("error", None)  # how an earlier attempt stopped (failed, interrupted): resumed since
            self.manifest.update(status="failed" if failures else "complete", finished_at=_now(),
                                 cell_status=summaries)
            write_json_atomic(self.run_dir / MANIFEST, self.manifest)
        self.manifest, self.part_status = distributed.broadcast(
            self.dist, (self.manifest, getattr(self, "part_status", None)))
        distributed.close(self.dist)
        return self.run_dir

    def _end_part(self, summaries: list[dict], events: list[dict]) -> None:
        """Rank 0 of a part, at its end, under the run's lock: merge every part no longer running
        (this one, and any whose process died) into records.jsonl; note the part's status, and the
        run's: complete or failed once every cell is done and no part runs, else running or incomplete."""
        lock = RunLock(self.run_dir, self.part_lock.command if self.part_lock else "", wait=PART_WAIT_S).acquire()
        try:
            running = running_parts(self.run_dir, mine=self.part)
            free = {distributed.part_of(p) for p in distributed.shard_paths(self.run_dir)} - set(running)
            distributed.merge(self.run_dir, self._canonical_order(), parts=free)
            manifest = read_manifest(self.run_dir)  # other parts may have written it since this one started
            failures = sum(s["failed_units"] for s in summaries)
            part = manifest.setdefault("parts", {}).setdefault(self.part, {})
            part.update(status="failed" if failures else "complete", finished_at=_now(), cell_status=summaries)
            if self.dist.active:
                part["whole_cells"] = {k: v for k, v in self.owner.items() if v is not None}
            if events:
                manifest.setdefault("oom_backoff", []).extend(events)
            states = cell_states(manifest, distributed.read_all(self.run_dir), running)
            if running:
                manifest["status"] = "running"
            elif all(s["state"] in ("done", "failed") for s in states):
                manifest["status"] = "failed" if any(s["state"] == "failed" for s in states) else "complete"
                manifest["finished_at"] = _now()
            else:
                manifest["status"] = "incomplete"  # a part died or was never started: run the missing cells
            manifest["cell_status"] = [{"cell": s["cell"], "status": s["state"], "failed_units": s["failed"]}
                                       for s in states]
            write_json_atomic(self.run_dir / MANIFEST, manifest)
            self.manifest = manifest
            self.part_status = part["status"]
        finally:
            lock.release()

    def _canonical_order(self) -> dict:
        """Unit key -> its position in a single-process run's records (the merge order); a cell's
        records that are not units (an rl cell's step records) go before its units."""
        order = {}
        for cell in self.cells:
            order[(cell.id, None, None)] = len(order)
            items = TASKS.build(cell.task.name, cell.task.params).items(cell.task.split)[: cell.task.n_items]
            for r, it in _units(cell, items, STUDIES[cell.kind], set()):
                order[(cell.id, it.id, r)] = len(order)
        return order

    def _run_cell(self, cell: Cell, done: set, spent: Cost, writer: RecordWriter) -> tuple[str, int]:
        task = TASKS.build(cell.task.name, cell.task.params)
        items = task.items(cell.task.split)[: cell.task.n_items]
        component = REGISTRIES[cell.component_kind].build(cell.component.name, cell.component.params)
        study = STUDIES[cell.kind]
        planned = _units(cell, items, study, set())  # the single-process order; this rank's slice of it
        owner = getattr(self, "owner", {}).get(cell.id)
        # A cell placed on one rank runs whole there; else its units are sliced over the ranks (an rl
        # cell trains data-parallel on every rank, then each rank evaluates its slice).
        mine = distributed.my_slice(len(planned), self.dist) if owner is None \
            else range(len(planned) if owner == self.dist.rank else 0)
        units = [u for u in (planned[i] for i in mine) if (cell.id, u[1].id, u[0]) not in done]
        if getattr(study, "verify", None) is not None and (self.dist.main if owner is None else bool(mine)):
            study.verify(self, cell)  # the records a finished (or checkpointed) cell implies are all there
        if study.train is not None and owner is None and self.dist.active:
            # data-parallel training: every rank trains while any rank has held-out units left
            if not any(distributed.gather(self.dist, bool(units))):
                return "complete", 0
        elif not units:
            return "complete", 0
        model = self.model(cell)
        if study.train is not None:  # an rl cell trains a copy of the model first (resumably)
            try:
                model = study.train(self, cell, model, task, component, writer)
            except BudgetExceeded:  # the step that crossed the budget is recorded as such
                return "budget_exceeded", 0
            except HarnessError:
                raise
            except Exception as exc:  # e.g. NaN logits mid-training: the cell's units fail, the run goes on
                error = str(exc) if isinstance(exc, NonFiniteError) else _short_tb(exc)
                for r, it in units:
                    writer.write(self.record(cell, component, task, it, r, {}, Cost().as_dict(), "error",
                                              f"training failed: {error}"))
                writer.sync()
                return "failed", len(units)
            spent = self.ledgers[cell.id].as_cost()  # the training steps count against the cell's budget
        ranks = self.dist.world_size if owner is None else 1  # how many ranks share the cell's budget
        meter = Meter(model, distributed.share_budget(_remaining(cell.budget, spent), ranks))
        lengths = [unit_length(model, it.prompt, task.gen_length, getattr(task, "prefill", "") or "")
                   for _, it in units] \
            if cell.max_tokens else [0] * len(units)
        cap = logits_capped(cell.max_tokens, model.vocab_size) if cell.max_tokens else None  # logits must fit too
        queue = deque(units[b.start:b.stop] for b in plan_batches(lengths, cell.batch_size, cap))
        backoff = Backoff(cap=cell.batch_size)
        failed = 0
        # Rank 0's bar counts every rank's units of a split cell (read from their record files).
        split_cell = owner is None and self.dist.active and self.progress
        total = sum((cell.id, it.id, r) not in done for r, it in planned) if split_cell else len(units)
        bar = progress.bar(total=total, desc=cell.id, leave=False, disable=not self.progress)
        peers = distributed.PeerProgress(self.run_dir, self.part, self.dist, cell.id) if split_cell else None
        while queue:
            batch = queue.popleft()
            if len(batch) > backoff.cap:  # a smaller cap since an out-of-memory error in this cell
                queue.extendleft(reversed(split(batch, backoff.cap)))
                continue
            before = meter.cost
            reset_peak(model.device)
            results, status, error = self._attempt(cell, study, meter, task, component, batch)
            if status == "oom" and len(batch) > 1:  # halve and retry; the cap stays halved
                free_memory(model.device)
                queue.extendleft(reversed(backoff.shrink(cell.id, batch, meter.cost.minus(before).as_dict(), error)))
                continue
            status = "error" if status == "oom" else status
            share = _share(meter.cost.minus(before), len(batch))
            self.ledgers.setdefault(cell.id, Ledger(cell.budget)).add(meter.cost.minus(before))
            for (r, it), res in zip(batch, results):
                bad = first_non_finite(res) if status == "ok" else None
                if bad is not None:  # this unit's result holds NaN/inf: an error naming the value
                    failed += 1
                    rec = self.record(cell, component, task, it, r, {}, share, "error",
                                       f"non-finite {bad[0]} ({bad[1]}) in the {cell.kind} result")
                else:
                    rec = self.record(cell, component, task, it, r, res, share, status, error)
                if backoff.events:
                    rec["oom_backoff"] = {"batch_size": len(batch), "planned_batch_size": cell.batch_size}
                writer.write(rec)
            writer.sync()
            bar.update(len(batch) + (peers.poll() if peers else 0))
            if status == "budget_exceeded":
                break
            failed += len(batch) if status == "error" else 0
        bar.close()
        self.backoff_events += backoff.events
        if status == "budget_exceeded":
            return "budget_exceeded", 0
        return ("failed" if failed else "complete"), failed

    def _attempt(self, cell: Cell, study: StudyKind, meter, task, component, batch: list) -> tuple:
        """Run one batch with fresh per-unit generators (a retry draws what the first try drew).
        -> (results, status "ok" | "budget_exceeded" | "error" | "oom", error text)."""
        gens = [self._generators(cell, it, r, study) for r, it in batch]
        try:
            results = study.run(meter, task, component,
                                Batch(items=[it for _, it in batch], replicates=[r for r, _ in batch],
                                      generators=gens, options=cell.options))
            return results, "ok", None
        except BudgetExceeded as exc:
            return [{} for _ in batch], "budget_exceeded", str(exc)
        except NonFiniteError as exc:  # NaN/inf logits: every unit of the batch rode that pass
            return [{} for _ in batch], "error", str(exc)
        except Exception as exc:  # one batch failing must not lose the rest of the run
            return [{} for _ in batch], ("oom" if is_oom(exc) else "error"), _short_tb(exc)

    def _generators(self, cell: Cell, item, replicate: int, study: StudyKind):
        """The unit's generator; for inner-replicate kinds one per inner replicate r = 0..R-1."""
        seed = lambda r: derive_seed(self.suite.suite, cell.id, item.id, r, str(cell.seed))  # noqa: E731
        if study.inner_replicates:
            return [torch_generator(seed(r)) for r in range(cell.replicates)]
        return torch_generator(seed(replicate))

    def record(self, cell, component, task, item, replicate, result, cost, status, error) -> dict:
        gen = result.get("generation")
        if gen and isinstance(gen.get("gen_len"), int) and (cost or {}).get("nfe", 0) > 0:
            # speed that does not depend on the machine: NFE per sequence and generated tokens per forward pass
            gen = {**gen, "nfe": cost["nfe"], "tpf": gen["gen_len"] / cost["nfe"]}
        return make_record(
            run_id=self.manifest["run_id"], suite=self.suite.suite,
            cell_id=cell.id, study=cell.study, kind=cell.kind, point=cell.point,
            model={"name": cell.model.name, "params": cell.model.params},
            component={"kind": cell.component_kind[:-1], "name": cell.component.name,
                       "params": params_of(component)},
            task={"name": cell.task.name, "version": task.version, "split": cell.task.split,
                  "params": params_of(task)},
            item_id=item.id, item_hash=item_hash(item), replicate=replicate,
            seed=derive_seed(self.suite.suite, cell.id, item.id, replicate, str(cell.seed)),
            outcome=result.get("outcome"), estimate=result.get("estimate"),
            generation=gen, cost=cost, status=status, error=error,
            sandbox=self.sandbox if getattr(task, "runs_code", False) else None)


def cell_states(manifest: dict, records: list[dict], running: list[str], whole_running: bool = False) -> list[dict]:
    """Per planned cell of a run: its state (done: every planned unit ok, or stopped by its budget;
    running: a running part (or the running whole run) has it; failed: every unit recorded, some
    not ok; missing: neither), with counts of units ok, failed and planned."""
    latest = dedupe(records)
    parts = manifest.get("parts") or {}
    busy = {c for p in running for c in (parts.get(p) or {}).get("cells", [])}
    planned = manifest.get("planned_units") or {}
    out = []
    for c in manifest.get("cells", []):
        units = [r for r in latest if r.get("cell_id") == c["id"] and r.get("study") == c["study"]]
        n_ok = sum(r["status"] == "ok" for r in units)
        n_bad = sum(r["status"] not in ("ok", "budget_exceeded") for r in units)
        stopped = any(r.get("cell_id") == c["id"] and r["status"] == "budget_exceeded" for r in latest)
        study = STUDIES.get(c["kind"])
        n = planned.get(c["id"])
        if n is None:  # a manifest from before planned_units was recorded
            per = 1 if study is None or study.inner_replicates or study.train is not None else c["replicates"]
            n = (c["task"].get("n_items") or 0) * per
        if stopped or (n and n_ok >= n):
            state = "done"
        elif whole_running or c["id"] in busy:
            state = "running"
        elif n and n_ok + n_bad >= n:
            state = "failed"
        else:
            state = "missing"
        out.append({"cell": c["id"], "state": state, "ok": n_ok, "failed": n_bad, "planned": n})
    return out


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


def _combine(per_rank: list[list[dict]]) -> list[dict]:
    """One status per cell from every rank's: budget_exceeded if any rank stopped on its budget,
    else failed if any unit failed; failed units add up."""
    out = []
    for parts in zip(*per_rank):
        statuses = {p["status"] for p in parts}
        failed = sum(p["failed_units"] for p in parts)
        status = "budget_exceeded" if "budget_exceeded" in statuses else ("failed" if failed else "complete")
        out.append({"cell": parts[0]["cell"], "status": status, "failed_units": failed})
    return out


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


def _remove_empty_run_dir(run_dir: Path) -> None:
    """Remove a run directory that holds nothing but its lock files (and a stray manifest .tmp)."""
    try:
        for p in run_dir.iterdir():
            if p.name not in (".lock", MANIFEST + ".tmp") and not p.name.startswith(".lock.part-"):
                return
        for p in run_dir.iterdir():
            p.unlink()
        run_dir.rmdir()
    except OSError:
        pass


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
