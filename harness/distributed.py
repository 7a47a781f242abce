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
- budgets: each rank's meter gets the cell's remaining budget divided by WORLD_SIZE (floored for
  counts), so the ranks together never spend more than the cell's budget; the plan-time NFE check
  (config._check_budget) still covers the whole cell.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
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
def shard_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / f"records.rank{rank}.jsonl"


def shard_paths(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob("records.rank*.jsonl"), key=lambda p: int(p.name.split(".")[1][4:]))


class ShardWriter(RecordWriter):
    """RecordWriter appending to one rank's shard, records.rank<k>.jsonl (torn tail repaired first)."""

    def __init__(self, run_dir: Path, rank: int):  # not super().__init__: that opens records.jsonl
        self.path = shard_path(run_dir, rank)
        self._repair()
        self._fh = open(self.path, "a", encoding="utf-8")


def read_all(run_dir: Path, check: bool = False) -> list[dict]:
    """records.jsonl then every shard, all attempts, in file order; with `check`, each record is
    checked as the report checks it (records.check_record: a malformed line is an error naming it)."""
    out = read_lines(Path(run_dir) / RECORDS, check=check)
    for p in shard_paths(run_dir):
        out += read_lines(p, check=check)
    return out


def merge(run_dir: Path, order: dict) -> int:
    """Merge records.jsonl and the shards into records.jsonl in canonical order (`order`: unit key
    -> position in a single-process run; a key not there takes the position of (cell_id, None, None)
    if given, else goes last); remove the shards. -> the number of records."""
    run_dir = Path(run_dir)
    shards = shard_paths(run_dir)
    records = read_all(run_dir)
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
