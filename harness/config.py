"""Suite files: YAML data -> frozen, typed dataclasses -> planned cells.

A suite is data only (docs/architecture.md, convention 6): no code, no interpolation, no import strings.
`sweep:` is the only construct that expands into a grid: a mapping from a dotted key path inside a
study (`sampler.params.steps`, `estimator.params.n_mc`, `seed`, `model`, `task`) to a list of values;
the cells of a study are the cartesian product. Every error names the file, the key path and what
was expected, and planning validates every component against its registry before any compute.

    suite: default
    description: what the suite answers
    models:  {tiny: {name: tiny, params: {checkpoint: tiny-addition}}}
    tasks:   {addition: {name: addition, params: {n_digits: 3}, split: test, n_items: 200}}
    studies:
      - {id: greedy, kind: generate, model: tiny, task: addition,
         sampler: {name: low_confidence}, budget: {nfe: 100000}}
      - {id: elbo, kind: likelihood, model: tiny, task: addition,
         estimator: {name: mc_elbo, params: {n_mc: 8}}, replicates: 2,
         sweep: {estimator.params.n_mc: [1, 8]}}
    quick: {n_items: 20, replicates: 1}

Study kinds: `generate` (a sampler) and `likelihood` (an estimator), plus the estimator-study kinds
(harness/studies.py): `estimator_variance`, `exact_reference` (estimator `exact`, 1 replicate),
`gradient_variance` (its `replicates` are the R_g gradients of one unit per item) and
`t_mask_decomposition` (mc_elbo with n_mc 1; `replicates` = T values of t). Study-level
`options:` (StudyOptions) are checked against the keys the kind takes (KIND_OPTIONS).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from harness import validate
from harness.paths import safe_name
from harness.registry import MODELS, REGISTRIES, TASKS, _suggest, _type_hints, coerce
from harness.types import Budget, HarnessError

# kind -> the registry its component comes from. The estimator-study kinds are
# described in harness/studies.py; `options` below lists the study-level keys each one takes.
STUDY_KINDS = {"generate": "samplers", "likelihood": "estimators",
               "estimator_variance": "estimators", "exact_reference": "estimators",
               "gradient_variance": "estimators", "t_mask_decomposition": "estimators",
               "exact_moments": "estimators",
               "rl": "algorithms"}  # rl: options are the loop's (harness/algorithms/loop.py LoopOptions)
StudyKindName = Literal["generate", "likelihood", "estimator_variance", "exact_reference",
                    "gradient_variance", "t_mask_decomposition", "exact_moments", "rl"]
assert set(typing.get_args(StudyKindName)) == set(STUDY_KINDS)


@dataclass(frozen=True, kw_only=True)
class ComponentSpec:
    name: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    name: str
    params: dict = field(default_factory=dict)
    split: Literal["train", "test"] = "test"
    n_items: int | Literal["all"] | None = None  # None or "all": every item of the split; more is an error
    protocol: str | None = None  # scoring protocol (harness | d1 | lm-eval | strict): the task's `protocol` param


@dataclass(frozen=True, kw_only=True)
class BudgetSpec:
    nfe: int | None = None
    tokens: int | None = None
    flops: float | None = None
    wall_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class StudyOptions:
    """Study-level options of the estimator-study kinds (`options:` in a study; all optional).

    masks_per_t   t_mask_decomposition: K mask draws for each of the study's `replicates` (= T)
                  values of t; K >= 2 (the within-t variance needs two draws).
    commit_order  estimator_variance / gradient_variance: "random" draws a uniformly random reveal
                  order per unit from its generator and passes it as draws={"commit_step": ...}
                  (what the `trace` estimator scores along); "none" passes no draws.
    gradients     exact_moments: also the exact gradient moments (tr Cov, bias vs ∇ELBO), L <= 8.
    """

    masks_per_t: int | None = None
    commit_order: Literal["none", "random"] = "none"
    gradients: bool = False


# Which options each kind accepts (any other key is an error naming the kind).
KIND_OPTIONS = {"t_mask_decomposition": ("masks_per_t",),
                "estimator_variance": ("commit_order",), "gradient_variance": ("commit_order",),
                "exact_moments": ("commit_order", "gradients")}


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    id: str
    kind: StudyKindName  # one of the names; the study kinds themselves are studies.StudyKind
    model: str
    task: str
    sampler: ComponentSpec | None = None
    estimator: ComponentSpec | None = None
    algorithm: ComponentSpec | None = None  # kind rl
    replicates: int = 1
    seed: int = 0
    batch_size: int = 64
    max_tokens: int | None = None  # cap on units x padded length per batch (harness/batching.py)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    sweep: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # StudyOptions keys allowed for the kind


@dataclass(frozen=True, kw_only=True)
class QuickSpec:
    n_items: int = 20
    replicates: int = 1


@dataclass(frozen=True, kw_only=True)
class Suite:
    suite: str
    description: str = ""
    models: dict = field(default_factory=dict)  # name -> ComponentSpec
    tasks: dict = field(default_factory=dict)  # name -> TaskSpec
    studies: tuple = ()  # StudySpec, ...
    quick: QuickSpec = field(default_factory=QuickSpec)
    metrics: dict = field(default_factory=lambda: {"accuracy": "higher"})  # pre-registered for the gate
    path: str = ""
    sha256: str = ""


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One unit of planned work: a study at one sweep point."""

    id: str
    study: str
    kind: str
    model: ComponentSpec
    task: TaskSpec
    component_kind: str  # "samplers" | "estimators"
    component: ComponentSpec
    replicates: int
    seed: int
    batch_size: int
    budget: Budget
    point: dict
    options: dict = field(default_factory=dict)  # validated StudyOptions of the kind (as a dict)
    max_tokens: int | None = None  # units x padded sequence length per batch (harness/batching.py)


# -- parsing --------------------------------------------------------------------------------------
def _from_mapping(cls, data: Any, where: str):
    """Build dataclass `cls` from a YAML mapping: unknown keys, missing keys, wrong types are errors."""
    if not isinstance(data, Mapping):
        raise HarnessError(f"{where}: expected a mapping with keys {_keys(cls)}, got {validate.show(data)}")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("path", "sha256")}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            hint = _suggest(str(key), list(fields))
            raise HarnessError(f"{where}.{key}: unknown key{hint} (expected keys: {_keys(cls)})")
        kwargs[key] = validate.field(cls, key, _value(hints[key], value, f"{where}.{key}"), f"{where}.{key}")
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise HarnessError(f"{where}: missing required key {name!r}")
    return cls(**kwargs)


def _keys(cls) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls) if f.name not in ("path", "sha256"))


def _value(tp, value, where):
    """Nested dataclasses parse recursively; everything else goes through registry.coerce."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    inner = args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else tp
    if dataclasses.is_dataclass(inner):
        if value is None and type(None) in typing.get_args(tp):  # null only where the field is optional
            return None
        return _from_mapping(inner, value, where)
    return coerce(value, tp, where)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file (structure only; `plan` checks the components)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read suite file ({exc.strerror or exc})") from None
    except ValueError as exc:  # a path too long or with a NUL byte
        raise HarnessError(f"{validate.show(str(path))}: cannot read suite file ({exc})") from None
    data = validate.load_yaml(raw, str(path))  # bounded: an alias bomb is an error, not a hang
    return parse_suite(data, str(path), hashlib.sha256(raw).hexdigest())


def parse_suite(data: Any, where: str, sha256: str = "") -> Suite:
    suite = _from_mapping(Suite, data, where)
    safe_name(suite.suite, f"{where}.suite")  # results/<suite>/...: never a path
    models = {k: _from_mapping(ComponentSpec, v, f"{where}.models.{k}") for k, v in suite.models.items()}
    tasks = {k: _from_mapping(TaskSpec, v, f"{where}.tasks.{k}") for k, v in suite.tasks.items()}
    tasks = {k: dataclasses.replace(t, n_items=None) if t.n_items == "all" else t for k, t in tasks.items()}
    tasks = {k: _with_protocol(t, f"{where}.tasks.{k}") for k, t in tasks.items()}
    for k, t in tasks.items():
        if t.n_items is not None and t.n_items < 1:
            raise HarnessError(f"{where}.tasks.{k}.n_items: expected an integer >= 1 (or null for all items), "
                               f"got {t.n_items}")
    for key in ("n_items", "replicates"):
        if getattr(suite.quick, key) < 1:
            raise HarnessError(f"{where}.quick.{key}: expected an integer >= 1, got {getattr(suite.quick, key)}")
    for name, direction in suite.metrics.items():
        if direction not in ("higher", "lower"):
            raise HarnessError(f"{where}.metrics.{name}: expected 'higher' or 'lower' (the better direction), "
                               f"got {direction!r}")
    if not suite.studies:
        raise HarnessError(f"{where}.studies: expected at least one study")
    studies = tuple(_from_mapping(StudySpec, s, f"{where}.studies[{i}]") for i, s in enumerate(suite.studies))
    seen: dict[str, int] = {}
    for i, s in enumerate(studies):
        safe_name(s.id, f"{where}.studies[{i}].id", "a unique name")
        if s.id in seen:
            raise HarnessError(f"{where}.studies[{i}].id: expected a unique name, got {s.id!r} "
                               f"(already the id of studies[{seen[s.id]}])")
        seen[s.id] = i
    return dataclasses.replace(suite, models=models, tasks=tasks, studies=studies, path=where, sha256=sha256)


def _with_protocol(task: TaskSpec, where: str) -> TaskSpec:
    """`protocol:` beside a task's params becomes its `protocol` param (checked against the
    protocols the task offers; a different `params.protocol` is a conflict)."""
    if task.protocol is None:
        return task
    cls = TASKS.get(task.name, f"{where}.name")
    cls.check_protocol(task.protocol, f"{where}.protocol")
    given = task.params.get("protocol")
    if given is not None and given != task.protocol:
        raise HarnessError(f"{where}.protocol: {task.protocol!r} conflicts with params.protocol {given!r}")
    if "protocol" not in TASKS.fields(task.name):  # a single-protocol task: "harness" is all it has
        return dataclasses.replace(task, protocol=None)
    return dataclasses.replace(task, params={**task.params, "protocol": task.protocol}, protocol=None)


# -- planning -------------------------------------------------------------------------------------
def _set_path(d: dict, dotted: str, value, where: str) -> None:
    keys = dotted.split(".")
    node = d
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {} if node.get(k) is None else node[k]
            if not isinstance(node[k], dict):
                raise HarnessError(f"{where}: {dotted!r} does not lead to a mapping at {k!r}")
        node = node[k]
    node[keys[-1]] = value


def _sweep_points(study: StudySpec, where: str) -> list[dict]:
    allowed_roots = ("sampler", "estimator", "algorithm", "seed", "model", "task", "replicates", "batch_size",
                     "max_tokens", "options")
    for key, values in study.sweep.items():
        if not isinstance(key, str):
            raise HarnessError(f"{where}.sweep: expected dotted key paths such as 'sampler.params.steps' as keys, "
                               f"got {key!r}")
        if key.split(".")[0] not in allowed_roots:
            raise HarnessError(f"{where}.sweep.{key}: can only sweep {', '.join(allowed_roots)} (or paths under them)")
        if not isinstance(values, (list, tuple)) or not values:
            raise HarnessError(f"{where}.sweep.{key}: expected a non-empty list of values, got {values!r}")
    _check_replaced(study, where)
    keys = list(study.sweep)
    n_points = 1
    for k in keys:
        n_points *= len(study.sweep[k])
    if n_points > validate.SIZE_LIMITS["cells"]:
        raise HarnessError(f"{where}.sweep: {n_points} sweep points; at most {validate.SIZE_LIMITS['cells']} "
                           "cells per suite")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(study.sweep[k] for k in keys))]


PLAN_PROGRESS = 2000  # sweeps of this many points or more report planning progress on stderr


def _check_replaced(study: StudySpec, where: str) -> None:
    """A component parameter that the sweep replaces (`sampler.params.steps` swept while the study
    also sets `sampler: {params: {steps: ...}}`) is still checked: a bad value is an error even
    though no cell uses it, so a typo in the study's own value never passes silently."""
    for key in study.sweep:
        parts = key.split(".") if isinstance(key, str) else []
        if len(parts) != 3 or parts[1] != "params" or parts[0] not in ("sampler", "estimator", "algorithm"):
            continue
        comp = getattr(study, parts[0])
        if comp is None or parts[2] not in comp.params:
            continue
        reg = REGISTRIES[parts[0] + "s"]
        fields = reg.fields(comp.name) if comp.name in reg.names() else {}
        if parts[2] in fields:
            at = f"{where}.{parts[0]}.params.{parts[2]}"
            value = coerce(comp.params[parts[2]], fields[parts[2]][0], at)
            validate.field(reg.get(comp.name), parts[2], value, f"{at} (the value the sweep replaces)")


def plan(suite: Suite, quick: bool = False) -> list[Cell]:
    """Expand sweeps into cells and validate every component against its registry."""
    from harness import progress

    cells = []
    split_sizes: dict = {}  # (task key, split) -> number of items, computed once per task
    for i, study in enumerate(suite.studies):
        where = f"{suite.path}.studies[{i}]"
        first = len(cells)
        points = _sweep_points(study, where)
        if len(cells) + len(points) > validate.SIZE_LIMITS["cells"]:
            raise HarnessError(f"{suite.path}: {len(cells) + len(points)} cells (up to {where}); at most "
                               f"{validate.SIZE_LIMITS['cells']}; split the suite")
        base = dataclasses.asdict(dataclasses.replace(study, sweep={}))  # once: not the sweep's lists per point
        base.pop("sweep")
        # A large sweep says how far planning has got (every cell's components are built and checked).
        bar = progress.bar(total=len(points), desc=f"planning {study.id}", disable=len(points) < PLAN_PROGRESS)
        for point in points:
            s = copy.deepcopy(base)
            for key, value in point.items():
                _set_path(s, key, copy.deepcopy(value), f"{where}.sweep")
            cells.append(_cell(suite, study, s, point, where, quick, split_sizes))
            bar.update(1)
        bar.close()
        if study.kind == "rl":
            _rl_baseline(study, cells[first:], where)
    seen = set()
    for c in cells:
        if c.id in seen:
            raise HarnessError(f"{suite.path}: two cells share the id {c.id!r} (duplicate sweep values?)")
        seen.add(c.id)
    return cells


def _rl_baseline(study: StudySpec, cells: list[Cell], where: str) -> None:
    """The algorithm an rl study's report compares against: `options.baseline`, or else the study's
    own `algorithm.name` (the sweep varies away from it); it must be one the study runs."""
    names = sorted({c.component.name for c in cells})
    spec = dataclasses.asdict(study)
    base = (spec.get("options") or {}).get("baseline") or (spec.get("algorithm") or {}).get("name")
    if base not in names:
        raise HarnessError(f"{where}.options.baseline: {base!r} is not an algorithm this study runs "
                           f"(it runs {', '.join(names)})")
    for name in (spec.get("options") or {}).get("calibration") or ():  # the calibration pair: both run
        if name not in names:
            raise HarnessError(f"{where}.options.calibration: {name!r} is not an algorithm this study runs "
                               f"(it runs {', '.join(names)})")
    for c in cells:
        c.options["baseline"] = base


def _split_size(suite: Suite, key: str, sizes: dict) -> int:
    task = suite.tasks[key]
    if (key, task.split) not in sizes:
        built = TASKS.build(task.name, task.params, f"{suite.path}.tasks.{key}")
        try:
            sizes[(key, task.split)] = len(built.items(task.split))
        except (OSError, ValueError, KeyError) as exc:  # a data file missing or malformed
            raise HarnessError(f"{suite.path}.tasks.{key}: cannot read the {task.split!r} items of task "
                               f"{task.name!r} ({type(exc).__name__}: {validate.show(str(exc))})") from None
    return sizes[(key, task.split)]


def _cell(suite: Suite, study: StudySpec, s: dict, point: dict, where: str, quick: bool,
          split_sizes: dict | None = None) -> Cell:
    ckind = STUDY_KINDS[s["kind"]]
    ckey = ckind[:-1]  # "sampler" | "estimator"
    if s.get(ckey) is None:
        raise HarnessError(f"{where}: a {s['kind']!r} study needs a {ckey!r} component")
    other = "estimator" if ckey == "sampler" else "sampler"
    if s.get(other) is not None:
        raise HarnessError(f"{where}.{other}: a {s['kind']!r} study takes a {ckey!r}, not a {other!r}")
    for key, table in (("model", suite.models), ("task", suite.tasks)):
        if not isinstance(s[key], str) or s[key] not in table:
            defined = ", ".join(table) or "none"
            raise HarnessError(f"{where}.{key}: {s[key]!r} is not defined under {key}s: (defined: {defined})")
    model, task = suite.models[s["model"]], suite.tasks[s["task"]]
    mspec = MODELS.build(model.name, model.params, f"{suite.path}.models.{s['model']}")  # a spec only; nothing loads
    TASKS.build(task.name, task.params, f"{suite.path}.tasks.{s['task']}")
    comp = _from_mapping(ComponentSpec, s[ckey], f"{where}.{ckey}")
    built = REGISTRIES[ckind].build(comp.name, comp.params, f"{where}.{ckey}")
    _check_noise(model.name, ckind, comp.name, where, mspec, built)
    for key in ("replicates", "batch_size"):  # swept values were not parsed with the study
        s[key] = validate.field(StudySpec, key, coerce(s[key], int, f"{where}.{key}"), f"{where}.{key}")
    s["seed"] = coerce(s["seed"], int, f"{where}.seed")
    if s.get("max_tokens") is not None:
        s["max_tokens"] = validate.field(StudySpec, "max_tokens", coerce(s["max_tokens"], int, f"{where}.max_tokens"),
                                         f"{where}.max_tokens")
    n_split = _split_size(suite, s["task"], {} if split_sizes is None else split_sizes)
    if task.n_items is not None and task.n_items > n_split:
        raise HarnessError(f"{suite.path}.tasks.{s['task']}.n_items: {task.n_items} items asked for, but the "
                           f"{task.split!r} split of {task.name!r} has {n_split} (use n_items: all for every item)")
    budget = Budget(**_from_mapping(BudgetSpec, s["budget"], f"{where}.budget").__dict__)
    options = _options(s["kind"], s.get("options"), f"{where}.options")
    if quick:
        task = dataclasses.replace(task, n_items=min(task.n_items or n_split, suite.quick.n_items, n_split))
        s["replicates"] = min(s["replicates"], suite.quick.replicates)
    _check_kind(s["kind"], comp, built, s["replicates"], options, where, quick)
    units = min(task.n_items or n_split, n_split) * s["replicates"]
    if units > validate.SIZE_LIMITS["units_per_cell"]:
        raise HarnessError(f"{where}: {units} units (items x replicates) in one cell; at most "
                           f"{validate.SIZE_LIMITS['units_per_cell']}")
    label = ",".join(f"{k.split('.')[-1]}={point[k]}" for k in point)
    cell = Cell(id=study.id + (f"[{label}]" if label else ""), study=study.id, kind=s["kind"],
                model=model, task=task, component_kind=ckind,
                component=ComponentSpec(name=comp.name, params=dict(comp.params)),
                replicates=s["replicates"], seed=s["seed"], batch_size=s["batch_size"], budget=budget,
                point=point, options=options, max_tokens=s.get("max_tokens"))
    if ckind == "samplers":
        _check_schedule(cell, built, where)
    _check_budget(cell, built, where)
    if s["kind"] == "rl":
        _check_rl_budget(cell, where, n_split)
    return cell


def _check_rl_budget(cell: Cell, where: str, n_split: int) -> None:
    """An rl cell first evaluates its starting checkpoint on the held-out items (greedy, a fixed number
    of passes per item); a budget.nfe below that is spent before the first check between steps could
    stop it, so it is refused here, naming what the evaluation alone needs."""
    if cell.budget.nfe is None:
        return
    from harness.algorithms.loop import LoopOptions

    opts = LoopOptions(**{k: v for k, v in cell.options.items() if k in LoopOptions.__dataclass_fields__})
    n_eval = min(opts.eval_items, cell.task.n_items or opts.eval_items, n_split)
    try:
        per_item = _sampler_max_nfe(LoopOptions.build_eval_sampler(opts.eval_sampler), _gen_length(cell.task),
                                    _block_size(cell))
    except (ValueError, HarnessError) as exc:
        raise HarnessError(f"{where}: the greedy evaluation of the starting checkpoint: {exc}") from None
    need = n_eval * per_item
    if cell.budget.nfe < need:
        raise HarnessError(f"{where}.budget.nfe: cell {cell.id!r} has {cell.budget.nfe} NFE, but the evaluation "
                           f"of the starting checkpoint alone takes {need} ({n_eval} held-out items x {per_item} "
                           "greedy passes) before the first RL step")


_GEN_LENGTHS: dict = {}


def _gen_length(task: TaskSpec) -> int:
    """A task's completion length (cached by name and parameters: planning a sweep asks per cell)."""
    import json

    key = (task.name, json.dumps(task.params, sort_keys=True, default=str))
    if key not in _GEN_LENGTHS:
        _GEN_LENGTHS[key] = TASKS.build(task.name, task.params).gen_length
    return _GEN_LENGTHS[key]


def _check_schedule(cell: Cell, sampler, where: str) -> None:
    """A fixed-schedule sampler (harness/samplers/_base.py BlockSampler) commits the block's masked
    tokens over its steps; steps beyond the tokens to commit would be passes that commit nothing
    (LLaDA's schedule gives them k = 0), spent on every sequence. Refused here, at plan time, with
    the largest useful value, rather than clamped (a clamp would record a configuration other than
    the one asked for)."""
    from harness.samplers._base import BlockSampler

    if not isinstance(sampler, BlockSampler):  # adaptive samplers already cap steps at the tokens to commit
        return
    gen_length = _gen_length(cell.task)
    try:
        L, block, per_block = sampler.plan(gen_length)
    except ValueError as exc:
        raise HarnessError(f"{where}.sampler: {exc}") from None
    if per_block > block:
        raise HarnessError(f"{where}.sampler.params.steps: cell {cell.id!r} asks for {per_block * (L // block)} "
                           f"steps but has {L} tokens to commit ({L // block} block(s) of {block}); steps beyond "
                           f"the tokens would be passes that commit nothing. Use steps <= {L}")


def _check_noise(model: str, ckind: str, name: str, where: str, spec=None, component=None) -> None:
    """Masked estimators and samplers need a mask token; uniform-noise models (diffusion_gemma) have
    none and their own components (`noise = "uniform"`), and causal LMs (hf_causal) take only the
    `autoregressive` estimator (`noise = "causal"`). A component applies to the models of its own
    noise that provide what it `requires` (`dlm-harness show` lists the same); a mismatch fails here,
    before any compute. `spec`: the built model spec (its checkpoint can tell a block model);
    `component`: the built component (its settings can need more, e.g. a sampler's approximate cache).
    An algorithm declares no noise; it is checked for the capabilities it `requires` (d2_any_order: a
    model trained for its estimator's any-order causal layout)."""
    if ckind == "algorithms":
        _check_capabilities(model, ckind, name, where, spec, component)
        return
    if ckind not in ("estimators", "samplers"):
        return
    model_noise = getattr(MODELS.get(model), "noise", "masked")
    comp_noise = getattr(REGISTRIES[ckind].get(name), "noise", "masked")
    if model_noise != comp_noise:
        fits = [n for n in REGISTRIES[ckind].names()
                if getattr(REGISTRIES[ckind].get(n), "noise", "masked") == model_noise] or ["none"]
        raise HarnessError(f"{where}: {ckind[:-1]} {name!r} is for {comp_noise}-noise models, but model {model!r} "
                           f"uses {model_noise} noise (its {ckind}: {', '.join(fits)})")
    _check_capabilities(model, ckind, name, where, spec, component)


def _check_capabilities(model: str, ckind: str, name: str, where: str, spec=None, component=None) -> None:
    """A component's `requires` (CAPABILITIES) against what the model spec declares, at plan time."""
    comp = component if component is not None else REGISTRIES[ckind].get(name)
    lacking = missing_capabilities(spec if spec is not None else MODELS.get(model), comp)
    if lacking:
        able = [m for m in MODELS.names() if not missing_capabilities(MODELS.get(m), comp)]
        what = "this configuration of model" if model in able else "model"
        raise HarnessError(f"{where}: {ckind[:-1]} {name!r} needs the model's {', '.join(lacking)}, which {what} "
                           f"{model!r} does not provide (models that do, as configured by default: "
                           f"{', '.join(able) or 'none'})")


CAPABILITIES = {"logits_pattern": "an explicit attention pattern with position ids (a `logits_pattern` method)",
                "full_attention": "bidirectional attention over the whole sequence (not a block-diffusion model)",
                "logits_layerwise": "a layer-by-layer view for the approximate caches (a `logits_layerwise` method)",
                "any_order_causal": "trained with d2's any-order causal objective (its checkpoint says so), so the "
                                    "`any_order` layout scores the model's own likelihood",
                "attention_weights": "a layer-by-layer view that also returns each layer's attention weights "
                                     "(d2Cache's attention rollout; the view's `attention_weights` method)",
                "shifted_logits": "column k's token is predicted at column k - 1 (Dream's shifted logits; "
                                  "dKV-Cache's Prefill and PD variants exist for that layout only)"}


def declared_capabilities(model) -> set[str]:
    """The denoiser capabilities a model family (class: its `provides`) or spec (instance: its
    `capabilities()` when it has one, e.g. LLaDA's impl remote lacks what the native code has; else
    `provides`) declares. A spec whose checkpoint is a block model (`planned_block_size()`, read
    before loading) lacks full_attention and the layer view (a full-attention one) whatever its
    family declares. A test checks every declaration against the loaded denoiser."""
    instance = not isinstance(model, type)
    own = getattr(model, "capabilities", None) if instance else None
    provides = set(own() if callable(own) else getattr(model, "provides", ()))
    if instance and hasattr(model, "planned_block_size") and provides & {"full_attention", "logits_layerwise"}:
        if model.planned_block_size() is not None:
            provides -= {"full_attention", "logits_layerwise", "attention_weights"}
    return provides


def missing_capabilities(model, component) -> list[str]:
    """The denoiser capabilities (CAPABILITIES) a component needs that a model family (class) or spec
    (instance) does not declare (`declared_capabilities`). A component class needs its `requires`; a
    built one its `required_capabilities()` when it has one (a sampler with an approximate cache
    needs the layer view too)."""
    provides = declared_capabilities(model)
    own = None if isinstance(component, type) else getattr(component, "required_capabilities", None)
    needs = own() if callable(own) else getattr(component, "requires", ())
    return [c for c in needs if c not in provides]


def _options(kind: str, raw, where: str) -> dict:
    """Validate a study's `options:` against the keys its kind accepts -> a plain dict."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise HarnessError(f"{where}: expected a mapping, got {raw!r}")
    if kind == "rl":  # the RL loop's options, checked (and its rollout sampler built) at plan time
        from harness.algorithms.loop import LoopOptions

        try:
            opts = _from_mapping(LoopOptions, raw, where)
        except (ValueError, TypeError) as exc:
            raise HarnessError(f"{where}: {exc}") from None
        for key in ("sampler", "eval_sampler"):
            sampler = getattr(opts, key)
            REGISTRIES["samplers"].build(sampler["name"], sampler.get("params") or {}, f"{where}.{key}")
        return dataclasses.asdict(opts)
    allowed = KIND_OPTIONS.get(kind, ())
    for key in raw:
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise HarnessError(f"{where}.{key}: not an option of a {kind!r} study (its options: {known})")
    opts = _from_mapping(StudyOptions, raw, where)
    return {k: getattr(opts, k) for k in allowed}


def _check_kind(kind: str, comp: ComponentSpec, built, replicates: int, options: dict, where: str,
                quick: bool) -> None:
    """What the estimator-study kinds need of their estimator and replicates (plan time)."""
    capped = " (after the quick variant's replicates cap)" if quick else ""
    if kind == "exact_reference":
        if comp.name != "exact":
            raise HarnessError(f"{where}.estimator: an 'exact_reference' study enumerates every reveal set; "
                               f"its estimator must be 'exact', got {comp.name!r}")
        if replicates != 1:
            raise HarnessError(f"{where}.replicates: an 'exact_reference' study is deterministic; "
                               f"expected 1 replicate, got {replicates}")
    elif kind == "t_mask_decomposition":
        if comp.name != "mc_elbo" or built.n_mc != 1 or built.t_law not in ("iid", "count"):
            raise HarnessError(f"{where}.estimator: a 't_mask_decomposition' study needs mc_elbo with n_mc: 1 "
                               f"and t_law iid or count, got {comp.name!r} {dict(comp.params)}")
        k = options.get("masks_per_t")
        if k is None or k < 2:
            raise HarnessError(f"{where}.options.masks_per_t: a 't_mask_decomposition' study needs K >= 2 mask "
                               f"draws per value of t, got {k!r}")
        if replicates < 2:
            raise HarnessError(f"{where}.replicates: a 't_mask_decomposition' study needs T >= 2 values of t "
                               f"(its replicates), got {replicates}{capped}")
    elif kind == "gradient_variance":
        if comp.name == "exact":
            raise HarnessError(f"{where}.estimator: 'exact' has no sampling variance; a 'gradient_variance' "
                               "study compares an estimator's gradients with the exact one")
        if replicates < 2:
            raise HarnessError(f"{where}.replicates: a 'gradient_variance' study needs R_g >= 2 gradient "
                               f"replicates per item (its replicates), got {replicates}{capped}")
    elif kind == "estimator_variance" and comp.name == "exact":
        raise HarnessError(f"{where}.estimator: 'exact' is deterministic; use an 'exact_reference' study")
    elif kind == "exact_moments":  # every estimator parameter must be covered, checked here
        from harness.estimators.moments import check_covered

        try:
            check_covered(built, options)
        except HarnessError as exc:
            raise HarnessError(f"{where}.estimator: {exc}") from None
        if replicates != 1:
            raise HarnessError(f"{where}.replicates: an 'exact_moments' study is deterministic; "
                               f"expected 1 replicate, got {replicates}")
    if comp.name == "trace" and kind in ("estimator_variance", "gradient_variance", "exact_moments") \
            and options.get("commit_order") != "random":
        raise HarnessError(f"{where}.options.commit_order: the trace estimator scores along a decoding order; "
                           "with no sampler in this study set options: {commit_order: random}")


def _block_size(cell: Cell) -> int | None:
    """The cell's model's block size when the spec knows it before loading (`planned_block_size`:
    a block-diffusion model's block_size from its field, preset or local config.json); None for
    full-attention models and for specs that cannot say without loading (a hub id not yet on disk):
    their plan-time bound is then the full-attention count, which can undercount a block model, and
    the meter's runtime check (every pass counted before it runs, harness/budget.py) is the exact one."""
    spec = MODELS.build(cell.model.name, cell.model.params, cell.id)
    known = getattr(spec, "planned_block_size", None)
    return known() if callable(known) else None


def _sampler_max_nfe(sampler, gen_length: int, block_size: int | None):
    """A sampler's plan-time bound on passes per sequence, on a block model when the block size is
    known and the sampler decodes block models (its bound takes `block_size`)."""
    import inspect

    if block_size is not None and "block_size" in inspect.signature(sampler.max_nfe_per_sequence).parameters:
        return sampler.max_nfe_per_sequence(gen_length, block_size=block_size)
    return sampler.max_nfe_per_sequence(gen_length)


def _check_budget(cell: Cell, component, where: str) -> None:
    """Fail at plan time when a cell's NFE is known in advance and exceeds its budget.

    Computing the per-item NFE also checks that the component fits the task (e.g. a sampler's
    block_length divides the task's length), so such mismatches surface here, not mid-run."""
    if not hasattr(component, "max_nfe_per_sequence") and not hasattr(component, "nfe_for_batch"):
        return
    try:
        if cell.kind == "generate":  # a sampler: passes per sequence, at most
            per_item = _sampler_max_nfe(component, _gen_length(cell.task), _block_size(cell))
        else:
            per_item = component.nfe_for_batch(1)  # an estimator: passes for a batch of one
    except (ValueError, HarnessError) as exc:  # HarnessError: a sampler's blocks that are not the block model's
        raise HarnessError(f"{where}.{cell.component_kind[:-1]}: {exc}") from None
    if per_item is None:  # known only once the model loads (a knob left to its generation_config.json)
        return
    # K masks per value of t; gradient studies also spend the exact passes (not known here).
    per_item *= cell.options.get("masks_per_t") or 1
    if cell.budget.nfe is None or cell.task.n_items is None:
        return
    need = per_item * cell.task.n_items * cell.replicates
    if need > cell.budget.nfe:
        raise HarnessError(
            f"{where}.budget.nfe: cell {cell.id!r} needs {need} NFE ({per_item} per item x "
            f"{cell.task.n_items} items x {cell.replicates} replicates) but its budget is {cell.budget.nfe}"
        )


def cell_to_dict(cell: Cell) -> dict:
    return dataclasses.asdict(cell)
