"""One validation layer for numeric input: suite parameters, study fields, budgets and CLI flags.

Every number a user can give passes through `check` (via registry.coerce and config parsing, or a
command's own arguments): it must be finite and inside its stated range, and the error names where
the value came from, the range and the value. Ranges are looked up by parameter name (`RANGES`), with
per-class overrides (`CLASS_RANGES`) where a name means something else; a component that needs a
range for a new parameter adds it here (one line) rather than growing its own checks.

Sizes have upper limits too (`SIZE_LIMITS`): a suite that asks for 10^9 replicates is an error at
plan time, not a hang. `load_yaml` reads YAML with a cap on the expanded size of the document, so an
alias bomb fails fast.
"""
from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import Any

from harness.paths import MAX_NAME, safe_name
from harness.types import HarnessError

_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict, _repr.maxlevel = 80, 80, 6, 6, 3


def show(value: Any) -> str:
    """A bounded repr for error messages (a huge or deeply nested value is abbreviated)."""
    return _repr.repr(value)


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval; `integer` for counts. None: unbounded on that side."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        f = (lambda v: str(int(v))) if self.integer else (lambda v: f"{v:g}")  # noqa: E731
        if self.lo is not None and self.hi is not None:
            return f"{kind} in {'(' if self.lo_open else '['}{f(self.lo)}, {f(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{kind} {'>' if self.lo_open else '>='} {f(self.lo)}"
        if self.hi is not None:
            return f"{kind} {'<' if self.hi_open else '<='} {f(self.hi)}"
        return kind

    def contains(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return False
        return True


def count(lo: int = 1, hi: int | None = None) -> Range:
    return Range(lo, hi, integer=True)


UNIT = Range(0.0, 1.0)
NONNEG = Range(0.0)
POSITIVE = Range(0.0, lo_open=True)
BIG = 10**7  # the largest count any size-like parameter may take (beyond it a run would not finish)

# Parameter name -> range, for every registered component and config dataclass that has a field of
# that name (harness/registry.py, harness/config.py). None values are left to the type check.
RANGES: dict[str, Range] = {
    # samplers
    "temperature": NONNEG, "alg_temp": NONNEG, "cfg_scale": NONNEG, "tau": UNIT,
    "bound": NONNEG, "eta": UNIT, "alpha_on": UNIT, "t_on": UNIT, "t_off": UNIT, "t_min": UNIT, "t_max": UNIT,
    "confidence": UNIT, "steps": count(1, BIG), "max_steps": count(1, BIG), "gen_length": count(1, 65536),
    "block_length": count(1, 65536), "min_length": count(0, 65536), "refresh": count(0, BIG),
    # estimators
    "n_mc": count(1, 10**6), "k_masks": count(1, 10**6), "n_nodes": count(1, 64), "m": count(1, 10**6),
    "n_iterations": count(1, 10**6), "iteration": count(0, 10**6), "max_tokens": count(1, 2**40),
    "max_len": count(1, 30), "stride": count(1, BIG), "p_prompt": UNIT, "omega": UNIT, "t_low": UNIT,
    "t_high": UNIT, "beta": NONNEG,
    # algorithms and the RL loop (LoopOptions)
    "eps_low": NONNEG, "eps_high": NONNEG, "acc_low": UNIT, "acc_high": UNIT,
    "entropy_top": Range(0.0, 1.0, lo_open=True), "hint_min": UNIT, "hint_max": UNIT, "n_hinted": count(0, BIG),
    "lr": Range(0.0, 10.0, lo_open=True),
    "grad_clip": NONNEG, "quick_steps": count(1, BIG), "prompts": count(1, 10**6), "group_size": count(2, 10**6),
    "mu": count(1, 10**6), "micro_groups": count(0, 10**6), "eval_every": count(0, BIG), "eval_items": count(1, BIG),
    "ref_refresh": count(0, BIG), "checkpoint_every": count(1, BIG),
    # tasks
    "n_test": count(1, BIG), "n_train": count(0, BIG),
    "fewshot": count(0, 64), "n_blanks": count(0, 16), "canvas": count(0, 65536), "max_number": count(1, 10**9),
    "timeout_s": Range(0.0, 3600.0, lo_open=True),
    # studies (config.StudySpec, QuickSpec, TaskSpec) and commands (train, eval)
    "replicates": count(1, 10**6), "batch_size": count(1, 10**6), "n_items": count(1, BIG),
    "masks_per_t": count(2, 10**6), "d_model": count(1, 65536), "n_layers": count(1, 1024),
    "n_heads": count(1, 1024), "d_ff": count(1, 2**20), "warmup": count(0, BIG), "weight_decay": Range(0.0, 10.0),
    "eps": Range(0.0, 1.0, lo_open=True, hi_open=True), "threads": count(1, 1024), "limit": count(1, BIG),
    "num_fewshot": count(0, 64), "bootstrap_iters": count(0, 10**6),
}

# (class name, field) -> range where a name means something else in that class.
CLASS_RANGES: dict[tuple[str, str], Range] = {
    ("TrainConfig", "steps"): count(1, BIG), ("BudgetSpec", "nfe"): count(1, 10**18),
    ("BudgetSpec", "tokens"): count(1, 10**18), ("BudgetSpec", "flops"): Range(0.0, 1e30, lo_open=True),
    ("BudgetSpec", "wall_s"): Range(0.0, 1e9, lo_open=True),
    ("Eubo", "beta"): POSITIVE, ("Mix", "beta"): POSITIVE,
    # DiffusionGemma's generate accepts temperatures and a confidence threshold above 1
    ("UniformEntropyBound", "t_min"): NONNEG, ("UniformEntropyBound", "t_max"): NONNEG,
    ("UniformEntropyBound", "confidence"): POSITIVE,
}

# Products that would not finish (units of one cell, cells of one suite).
SIZE_LIMITS = {"units_per_cell": BIG, "cells": 10**5, "name_length": MAX_NAME}


def finite(value: Any, where: str) -> Any:
    """A float must be finite (NaN and ±inf are never a meaningful setting)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise HarnessError(f"{where}: expected a finite number, got {value!r}")
    return value


def check(value: Any, rng: Range | None, where: str) -> Any:
    """`value` if it is a finite number inside `rng` (None values and non-numbers pass through)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    finite(value, where)
    if rng is None:
        return value
    if rng.integer and not isinstance(value, int):
        raise HarnessError(f"{where}: expected {rng.describe()}, got {value!r}")
    if not rng.contains(value):
        raise HarnessError(f"{where}: expected {rng.describe()}, got {value!r}")
    return value


def range_for(owner: type | str | None, name: str) -> Range | None:
    cls = owner if isinstance(owner, str) else getattr(owner, "__name__", "")
    return CLASS_RANGES.get((cls, name), RANGES.get(name))


def field(owner, name: str, value: Any, where: str) -> Any:
    """Check one field of a component or config dataclass against its range (by name); a `device`
    string for its form only (whether it exists is a property of the machine: `device(present=True)`)."""
    if name == "device" and isinstance(value, str):
        return device(value, where, present=False)
    return check(value, range_for(owner, name), where)


def fields(obj, where: str, names: tuple[str, ...] | None = None) -> None:
    """Check every numeric field of a built dataclass instance (`names`: only these)."""
    import dataclasses

    for f in dataclasses.fields(obj):
        if names is None or f.name in names:
            field(type(obj), f.name, getattr(obj, f.name), f"{where}.{f.name}")


def name(value: Any, where: str) -> str:
    """A name used in paths (suite, study id): harness.paths.safe_name, the one check of such names."""
    return safe_name(value, where)


def device(value: str, where: str, present: bool = True) -> str:
    """A torch device string: cpu, cuda, cuda:N, auto, mps; with `present`, one that exists here
    (N < the number of visible GPUs)."""
    import re

    m = re.fullmatch(r"(cpu|auto|mps|cuda)(?::(\d+))?", str(value))
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise HarnessError(f"{where}: expected a device cpu, cuda, cuda:N or auto, got {show(value)}")
    if m.group(1) == "cuda" and present:
        import torch

        n = torch.cuda.device_count()
        if n == 0:
            raise HarnessError(f"{where}: {value!r} asked for, but no CUDA device is visible here (use cpu)")
        if m.group(2) is not None and int(m.group(2)) >= n:
            raise HarnessError(f"{where}: {value!r} asked for, but only {n} CUDA device(s) are visible "
                               f"(cuda:0..cuda:{n - 1})")
    return value


# -- YAML with a size limit -----------------------------------------------------------------------
MAX_YAML_NODES = 200_000


def bounded_size(data: Any, where: str, limit: int = MAX_YAML_NODES) -> None:
    """Raise when `data` expands to more than `limit` nodes (aliases count once per use: an alias
    bomb that is small on disk is huge in memory once walked)."""
    n, stack = 0, [data]
    while stack:
        node = stack.pop()
        n += 1
        if n > limit:
            raise HarnessError(f"{where}: the document expands to more than {limit} values "
                               "(YAML aliases repeated too often?); refusing to read it")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def load_yaml(raw: bytes | str, where: str) -> Any:
    """yaml.safe_load with a bounded expanded size; a syntax error names line and column."""
    import yaml

    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise HarnessError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise HarnessError(f"{where}: the YAML document nests too deeply") from None
    bounded_size(data, where)
    return data
