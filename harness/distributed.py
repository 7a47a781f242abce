"""Running one suite on several processes (`torchrun --nproc_per_node=N -m harness.cli run SUITE`).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `from_env` joins the
process group (NCCL when CUDA is available, each rank on cuda:LOCAL_RANK; gloo on CPU). Then:

- one run: rank 0 creates the run directory and manifest and broadcasts them;
- sharding: every cell's planned units (item x replicate, in the single-process order) are cut
  into WORLD_SIZE contiguous, near-equal slices; rank k runs slice k (contiguous slices keep an
  item's replicates together for the item-major kinds). Seeds come from derive_seed per unit, so
  which rank runs a unit changes no number;
- shards: rank k appends its records to records.rank<k>.jsonl (the same append-only writer with
  torn-tail repair as records.jsonl);
- merge: after a barrier, rank 0 merges records.jsonl (if any) and every shard into records.jsonl
  in the order a single-process run writes (cells in plan order, units in planned order; several
  attempts of one unit keep their order, so readers still keep the last), written atomically; the
  shards are removed only once the merged file is in place;
- resume: every rank reads records.jsonl and all shards before anyone writes (a barrier), skips
  the units recorded "ok", and runs the rest of its slice (a killed rank's shard is repaired and
  appended to); a different WORLD_SIZE on resume is fine, since slices cover the planned units;
- cells across ranks (`place`): a cell too small to give every rank a full batch runs whole on one
  rank (cells dealt by planned cost, largest first, to the least loaded rank), so a suite of many
  small cells keeps every rank busy and a rank loads only the models of the cells it runs; an rl
  cell trains data-parallel over all ranks (harness/algorithms/loop.py) unless the run has at least
  as many rl cells as ranks, when each rank trains whole cells;
- cells across jobs (`select`): `run --shard i/N` takes the i-th of N balanced, deterministic
  shares of the planned cells (by planned cost), `--cells PATTERN` the cells whose id matches.
  Such a part of a run writes records.part-<name>[.rank<k>].jsonl under its own lock
  (.lock.part-<name>), so parts of one run directory run concurrently on any hosts that share the
  file system; the run's own lock (.lock) is held only while a part starts (manifest, reading the
  records) and ends (merging every part no longer running into records.jsonl, in the canonical
  order). A part killed mid-run leaves its file; the next part to end, or its resume, merges it;
- budgets: each rank's meter gets the cell's remaining budget divided by WORLD_SIZE (floored for
  counts), so the ranks together never spend more than the cell's budget; the plan-time NFE check
  (config._check_budget) still covers the whole cell.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import json
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.records import RECORDS, RecordWriter, read_lines, unit_key
from harness.types import Budget, HarnessError

TIMEOUT = dt.timedelta(hours=12)  # a barrier waits for the slowest rank's whole share of the suite


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """The process's place in a torchrun launch (joining the process group), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as td

    try:
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    except KeyError as exc:
        raise HarnessError(f"WORLD_SIZE={world} but {exc.args[0]} is not set; launch with torchrun") from None
    if not td.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)  # "cuda" / "auto" devices now mean cuda:LOCAL_RANK
        td.init_process_group(backend=backend, timeout=TIMEOUT)
    return Dist(rank=rank, world_size=world, local_rank=local, backend=td.get_backend())


def broadcast(dist: Dist, obj):
    """Rank 0's `obj` on every rank."""
    if not dist.active:
        return obj
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def gather(dist: Dist, obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (also a barrier)."""
    if not dist.active:
        return [obj]
    import torch.distributed as td

    out = [None] * dist.world_size
    td.all_gather_object(out, obj)
    return out


def barrier(dist: Dist) -> None:
    gather(dist, None)  # an object gather works on gloo and NCCL alike, with no device bookkeeping


def close(dist: Dist) -> None:
    """A last barrier (no rank exits while another is still inside a collective), then leave the
    process group: one run per torchrun process."""
    if not dist.active:
        return
    import torch.distributed as td

    barrier(dist)
    td.destroy_process_group()


def launched() -> bool:
    """Whether this process is one rank of a multi-process launch (torchrun sets WORLD_SIZE)."""
    return os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1")


def leave(rc: int):
    """End a rank's process with exit code `rc` once its command has returned (records written and
    closed): leave the process group if the command did not, flush, and os._exit, skipping interpreter
    finalization. Finalization tears down the process group's C++ threads in no fixed order, and a
    rare race there aborts a rank that finished its work (SIGABRT, "terminate called without an
    active exception"), which torchrun reports as a failed launch. A single process exits normally."""
    if not launched():
        sys.exit(rc)
    import torch.distributed as td

    try:
        if rc == 0 and td.is_available() and td.is_initialized():  # a failed rank's peers may be mid-collective
            td.destroy_process_group()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(rc)


def rank_info(dist: Dist) -> dict:
    """Where this rank runs: host and device (recorded per rank in the manifest)."""
    if torch.cuda.is_available():
        idx = dist.local_rank if dist.active else torch.cuda.current_device()
        device = f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
    else:
        device = "cpu"
    return {"rank": dist.rank, "local_rank": dist.local_rank, "host": socket.gethostname(), "device": device}


def my_slice(n: int, dist: Dist) -> range:
    """Rank k's contiguous slice of n planned units (sizes differ by at most one)."""
    base, extra = divmod(n, dist.world_size)
    lo = dist.rank * base + min(dist.rank, extra)
    return range(lo, lo + base + (dist.rank < extra))


def share_budget(budget: Budget, world_size: int) -> Budget:
    """One rank's part of a cell's budget: an equal split, floored for the integer counters."""
    if world_size == 1:
        return budget

    def part(limit, integer):
        if limit is None:
            return None
        return limit // world_size if integer else limit / world_size

    return Budget(nfe=part(budget.nfe, True), tokens=part(budget.tokens, True),
                  flops=part(budget.flops, False), wall_s=part(budget.wall_s, False))


# -- shards ---------------------------------------------------------------------------------------
PART_RE = re.compile(r"^records\.(?:part-([A-Za-z0-9_.=,-]+?)\.)?(?:rank(\d+)\.)?jsonl$")


def shard_path(run_dir: Path, rank: int | None, part: str | None = None) -> Path:
    """The file one writer appends to: records.[part-<part>.][rank<k>.]jsonl."""
    name = "records." + (f"part-{part}." if part else "") + ("" if rank is None else f"rank{rank}.") + "jsonl"
    return Path(run_dir) / name


def _file_key(p: Path) -> tuple:
    part, rank = PART_RE.match(p.name).groups()
    return (part or "", int(rank) if rank is not None else -1)


def shard_paths(run_dir: Path, parts: set | None = None) -> list[Path]:
    """Every shard file (rank files and parts' files; records.jsonl itself excluded), in a fixed order;
    with `parts`, only the files of those parts ("" for the rank files of the whole run)."""
    out = [p for p in Path(run_dir).glob("records.*.jsonl") if PART_RE.match(p.name) and p.name != "records.jsonl"]
    if parts is not None:
        out = [p for p in out if _file_key(p)[0] in parts]
    return sorted(out, key=_file_key)


def part_of(path: Path) -> str:
    return _file_key(path)[0]


class ShardWriter(RecordWriter):
    """RecordWriter appending to one shard file (torn tail repaired first): a rank's, a part's, or a
    part's rank's."""

    def __init__(self, run_dir: Path, rank: int | None, part: str | None = None):  # not super().__init__
        self.path = shard_path(run_dir, rank, part)
        self._repair()
        self._fh = open(self.path, "a", encoding="utf-8")


def read_all(run_dir: Path, check: bool = False) -> list[dict]:
    """records.jsonl then every shard, all attempts, in file order; with `check`, each record is
    checked as the report checks it (records.check_record: a malformed line is an error naming it)."""
    out = read_lines(Path(run_dir) / RECORDS, check=check)
    for p in shard_paths(run_dir):
        out += read_lines(p, check=check)
    return out


def merge(run_dir: Path, order: dict, parts: set | None = None) -> int:
    """Merge records.jsonl and the shards (with `parts`, only those parts' files) into records.jsonl
    in canonical order (`order`: unit key -> position in a single-process run; a key not there takes
    the position of (cell_id, None, None) if given, else goes last); remove the merged shards.
    -> the number of records. The caller holds the run's lock (the only writer of records.jsonl)."""
    run_dir = Path(run_dir)
    shards = shard_paths(run_dir, parts)
    records = read_lines(run_dir / RECORDS)
    for p in shards:
        records += read_lines(p)
    last = len(order)

    def position(r):
        return order.get(unit_key(r), order.get((r["cell_id"], None, None), last))

    records.sort(key=position)  # stable: several attempts of a unit keep their order
    tmp = run_dir / (RECORDS + ".merging")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, sort_keys=True, separators=(",", ":"), default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, run_dir / RECORDS)
    for p in shards:
        p.unlink()
    return len(records)


# -- cells across jobs and ranks ------------------------------------------------------------------
def parse_shard(text: str) -> tuple[int, int]:
    """"i/N" (0 <= i < N) -> (i, N)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise HarnessError(f"--shard {text!r}: expected i/N with 0 <= i < N (e.g. 0/4 ... 3/4)")
    return int(m.group(1)), int(m.group(2))


def planned_units(cell, study) -> int:
    """How many units (item x replicate) a cell plans; for an rl cell, its held-out items."""
    n = cell.task.n_items or 0
    return n if study.inner_replicates or study.train is not None else n * cell.replicates


def planned_cost(cell, study, quick: bool = False) -> float:
    """A cell's planned cost in model passes (an estimate used only to balance work): units x the
    component's passes per unit when it declares them (else 1), plus an rl cell's training rollouts."""
    from harness.config import _gen_length
    from harness.registry import REGISTRIES

    per_unit = 1.0
    try:
        comp = REGISTRIES[cell.component_kind].build(cell.component.name, cell.component.params)
        if hasattr(comp, "max_nfe_per_sequence"):
            per_unit = float(comp.max_nfe_per_sequence(_gen_length(cell.task)) or 1)
        elif hasattr(comp, "nfe_for_batch"):
            per_unit = float(comp.nfe_for_batch(1) or 1)
    except Exception:  # an estimate only: a component that cannot say counts one pass per unit
        per_unit = 1.0
    cost = max(1, planned_units(cell, study)) * per_unit * (cell.options.get("masks_per_t") or 1)
    if study.train is not None:
        o = cell.options
        steps = o.get("quick_steps", 8) if quick else o.get("steps", 30)
        prompts = (o.get("quick_prompts") or o.get("prompts", 8)) if quick else o.get("prompts", 8)
        cost += steps * prompts * o.get("group_size", 4) * 4 * max(per_unit, 1.0)  # rollouts + likelihood passes
    return cost


def balance(costs: list[float], n: int) -> list[int]:
    """Deal items to n bins, largest cost first (ties: plan order), each to the least loaded bin (ties:
    the lowest index): the longest-processing-time rule, deterministic. -> the bin of each item."""
    load = [0.0] * n
    out = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        b = min(range(n), key=lambda k: (load[k], k))
        out[i] = b
        load[b] += costs[i]
    return out


def select(cells: list, studies: dict, shard: tuple[int, int] | None, patterns: str | None,
           quick: bool = False) -> list:
    """The planned cells a part of a run takes: those matching `patterns` (comma-separated shell
    patterns on cell ids), then shard i of N of them (balanced by planned cost); plan order kept."""
    out = list(cells)
    if patterns:
        pats = [p.strip() for p in patterns.split(",") if p.strip()]
        out = [c for c in out if any(fnmatch.fnmatchcase(c.id, p) for p in pats)]
        if not out:
            ids = ", ".join(c.id for c in cells[:8]) + (" ..." if len(cells) > 8 else "")
            raise HarnessError(f"--cells {patterns!r}: matches no cell of the suite (cells: {ids})")
    if shard is not None:
        i, n = shard
        owner = balance([planned_cost(c, studies[c.kind], quick) for c in out], n)
        out = [c for c, o in zip(out, owner) if o == i]
    return out


def part_name(shard: tuple[int, int] | None, patterns: str | None) -> str | None:
    """The name of a part of a run (None: the whole run): shard-i-of-N, cells-<hash>, or both."""
    import hashlib

    bits = []
    if shard is not None:
        bits.append(f"shard-{shard[0]}-of-{shard[1]}")
    if patterns:
        bits.append("cells-" + hashlib.sha256(patterns.encode()).hexdigest()[:8])
    return "_".join(bits) or None


def place(cells: list, studies: dict, world_size: int, quick: bool = False) -> dict:
    """Cell id -> the rank that runs it whole, or None (its units are split over every rank). A cell
    whose units cannot give every rank a full batch runs whole; rl cells train data-parallel unless
    there are at least as many rl cells as ranks (or the loop steps per micro-batch, which has no
    data-parallel form), when each runs whole on one rank. Whole cells are dealt by planned cost
    (split cells load every rank alike, so they do not change the deal)."""
    if world_size <= 1:
        return {c.id: None for c in cells}
    n_rl = sum(studies[c.kind].train is not None for c in cells)
    whole = []
    for c in cells:
        study = studies[c.kind]
        if study.train is not None:
            alone = n_rl >= world_size or c.options.get("optimizer_step") == "micro_batch"
        else:
            alone = planned_units(c, study) < world_size * max(1, c.batch_size)
        if alone:
            whole.append(c)
    owner = balance([planned_cost(c, studies[c.kind], quick) for c in whole], world_size)
    out = {c.id: None for c in cells}
    out.update({c.id: o for c, o in zip(whole, owner)})
    return out


class PeerProgress:
    """Rank 0's view of the other ranks' work on one cell, for its progress bar: the new lines that
    name the cell in their record files, counted from where the last look stopped (files on the run
    directory's shared file system; a torn last line waits for the next look)."""

    def __init__(self, run_dir: Path, part: str | None, dist: Dist, cell_id: str):
        self.paths = [shard_path(run_dir, k, part) for k in range(1, dist.world_size)] if dist.active else []
        self.offsets = {p: (p.stat().st_size if p.exists() else 0) for p in self.paths}
        self.needle = ('"cell_id":' + json.dumps(cell_id)).encode()

    def poll(self) -> int:
        n = 0
        for p in self.paths:
            try:
                with open(p, "rb") as fh:
                    fh.seek(self.offsets[p])
                    data = fh.read()
            except OSError:
                continue
            cut = data.rfind(b"\n") + 1
            self.offsets[p] += cut
            n += sum(self.needle in line for line in data[:cut].splitlines())
        return n
