"""Trusted comparison for the code tasks: the verdict never comes from the program under test.

A completion is scored in sandboxed runs (`run_check`); every item takes this path (there is no
one-process fallback), and the functions under test are named by the dataset (HumanEval's entry
point; for MBPP the functions of the reference solution that the asserts call), never found in
the completion's text.
1. (HumanEval) The planning run, trusted: the dataset's prompt and reference solution with the
   problem's test, its asserts reduced to their calls (`reduce_asserts`); the function under test
   is a stub that reports each call's arguments (`_codec._dlmh_planning`). Its output depends
   only on the item, so it is computed once per item and cached.
2. The untrusted run: the completion and, for a planned check, a driver that calls the function on
   the planned arguments (`_codec._dlmh_drive`): no test code and no value the test computes is in
   that process (HumanEval 38, 50 and 151 compute expected values in the test's own variables). For
   MBPP, whose asserts may take objects built by the setup code with the program's own classes
   (MBPP 367, a tree of the completion's `Node`), the program runs with the setup code and the
   asserts reduced to their calls, and a recorder (`_codec._dlmh_recording`) reports each call.
   Results cross over only as plain values in a restricted format, on a separate file descriptor;
   the run's exit status only decides failure (an exception, a timeout, a crash), never success.
3. The trusted run: the problem's test code unchanged except that `==`/`!=` in asserts are
   type-strict (`strict_asserts`), with the functions under test replaced by stubs that return
   the recorded results (`_codec._dlmh_replay`); MBPP's reference code provides the classes and
   helpers its setup code needs. No code from the completion runs there, so an object whose
   `__eq__` always answers True, a patched `AssertionError` or `sys.modules`, a forged success line
   or a recovered builtin in the first run cannot reach the verdict. A pass needs every assert of
   the trusted run to hold.
Anything the program does to its report (lines that do not decode, huge numbers, deep nesting,
unknown names, too many lines) makes its verdict "failed" with the reason in `stderr`; `run_check`
never raises for what a program did.

What remains (documented in the README's sandbox section): a program can still pass by returning
the right values without computing them, e.g. by special-casing known test inputs.
"""
from __future__ import annotations

import ast
import builtins
import functools
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("_codec.py").read_text()
SEED = "import random as _dlmh_random\n_dlmh_random.seed(20210707)\n"  # both runs draw the same random inputs
MAX_CALLS = 100_000
MAX_REPORT_CHARS = 64 << 20


@dataclass(frozen=True)
class CodeCheck:
    """The programs of one trusted check: `program` (untrusted; writes its results to fd 3),
    `checker` (trusted; the recorded calls are prepended as `_dlmh_calls`) and, for a planned
    check, `planner` (trusted; writes the calls' arguments to fd 3, which `program` then receives
    as `_dlmh_plan`)."""

    program: str
    checker: str
    planner: str | None = None


def _names_called(node: ast.AST, names: frozenset) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in names for n in ast.walk(node))


class _Reduce(ast.NodeTransformer):
    """`assert E, msg` -> `E'`: only the sub-expressions of E that call the functions under test,
    in evaluation order, comparisons and their constant sides dropped; no candidate call -> pass."""

    def __init__(self, names: frozenset):
        self.names = names

    def visit_Assert(self, node: ast.Assert):
        if not _names_called(node.test, self.names):
            return ast.copy_location(ast.Pass(), node)
        return ast.copy_location(ast.Expr(self.keep(node.test)), node)

    def keep(self, e: ast.expr) -> ast.expr:
        if isinstance(e, ast.Call) and isinstance(e.func, ast.Name) and e.func.id in self.names:
            return e  # the call itself: its arguments are the test's inputs
        if isinstance(e, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            elt = ast.Tuple([self.keep(e.key), self.keep(e.value)], ast.Load()) if isinstance(e, ast.DictComp) \
                else self.keep(e.elt)
            return ast.ListComp(elt=elt, generators=e.generators)
        if isinstance(e, (ast.Lambda, ast.NamedExpr)):
            return e
        parts = [c for c in ast.iter_child_nodes(e) if isinstance(c, ast.expr) and _names_called(c, self.names)]
        return ast.Tuple([self.keep(c) for c in parts], ast.Load())


class _Strict(ast.NodeTransformer):
    """In asserts, `a == b` -> `eq(a, b)` and `a != b` -> `not eq(a, b)`."""

    def __init__(self, eq: str):
        self.eq = eq

    def visit_Assert(self, node: ast.Assert):
        node.test = _StrictCompare(self.eq).visit(node.test)
        return node


class _StrictCompare(ast.NodeTransformer):
    def __init__(self, eq: str):
        self.eq = eq

    def visit_Compare(self, node: ast.Compare):
        self.generic_visit(node)
        if len(node.ops) != 1 or not isinstance(node.ops[0], (ast.Eq, ast.NotEq)):
            return node
        call = ast.Call(ast.Name(self.eq, ast.Load()), [node.left, node.comparators[0]], [])
        return call if isinstance(node.ops[0], ast.Eq) else ast.UnaryOp(ast.Not(), call)


def _transform(code: str, transformer: ast.NodeTransformer) -> str:
    tree = transformer.visit(_parse(code))
    return ast.unparse(ast.fix_missing_locations(tree))


def reduce_asserts(test_code: str, names) -> str:
    """Dataset test code (trusted) with each assert reduced to its calls of `names`."""
    return _transform(test_code, _Reduce(frozenset(names)))


def strict_asserts(test_code: str, eq: str = "_dlmh_eq") -> str:
    """Dataset test code (trusted) with type-strict `==`/`!=` in its asserts."""
    return _transform(test_code, _Strict(eq))


def humaneval_check(prompt: str, solution: str, test: str, entry_point: str,
                    reference: str | None = None) -> CodeCheck:
    """HumanEval: planned from the dataset's prompt + `reference` (its canonical solution; without
    one the planning stub answers None) + test; the untrusted run is prompt + solution + the driver;
    the trusted run is the dataset's prompt (its helpers, e.g. `poly`, `encode_cyclic`, never the
    completion's) + test."""
    names = [entry_point]
    params = {a.arg for node in ast.walk(_parse(test)) if isinstance(node, ast.FunctionDef) and node.name == "check"
              for a in node.args.args}  # `candidate`: how the test calls the function under test
    planner = (f"{SOURCE}\n{prompt}{reference or ''}\n\n{reduce_asserts(test, [*names, *sorted(params)])}\n\n"
               f"_dlmh_planning(globals(), {names!r}, {reference is not None})\n{SEED}check({entry_point})\n")
    program = f"{SOURCE}\n{prompt}{solution}\n\n_dlmh_drive(globals(), _dlmh_plan)\n"
    checker = (f"{SOURCE}\n{prompt}\n\n{strict_asserts(test)}\n\n"
               f"_dlmh_replay(globals(), {names!r}, _dlmh_calls)\n{SEED}check({entry_point})\n")
    return CodeCheck(program, checker, planner)


def mbpp_names(tests: list[str], setup: str = "", reference: str | None = None) -> list[str]:
    """MBPP's functions under test, from the dataset alone: the names the asserts call that the
    reference solution defines (MBPP 126's is called `sum`); without a reference that defines any,
    the names they call that neither the setup code, the builtins nor the standard library provide."""
    called = {n.func.id for n in ast.walk(_parse("\n".join(tests)))
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    declared = called & _bound_names(reference, imports=False) if reference else set()
    if declared:
        return sorted(declared)
    # No reference (or one that defines none of them): still nothing from the completion; a name
    # the builtins provide is then not replayed, so a program cannot pass by defining it.
    return sorted(called - _bound_names(setup) - set(dir(builtins)) - set(sys.stdlib_module_names))


def mbpp_check(code: str, setup: str, tests: list[str], reference: str | None = None) -> CodeCheck:
    """MBPP: the untrusted run is the completion + setup + the asserts reduced to their calls, with
    the functions under test (`mbpp_names`) recorded; the trusted run is the reference solution
    (for the classes and helpers the setup needs) + setup + the strict asserts, with those
    functions replayed. Standard modules the asserts name are imported there."""
    test_code = "\n".join(tests)
    names = mbpp_names(tests, setup, reference)
    free = _free_names(test_code) - _bound_names(setup)
    modules = sorted(n for n in free if n in sys.stdlib_module_names and n not in names)
    program = (f"{SOURCE}\n{code}\n\n{setup}\n_dlmh_recording(globals(), {names!r})\n{SEED}"
               f"{reduce_asserts(test_code, names)}\n")
    imports = "".join(f"import {m}\n" for m in modules)
    checker = (f"{SOURCE}\n{imports}{reference or ''}\n\n{setup}\n_dlmh_replay(globals(), {names!r}, _dlmh_calls)\n"
               f"{SEED}{strict_asserts(test_code)}\n")
    return CodeCheck(program, checker)


def _parse(code: str) -> ast.Module:
    """Parse dataset code (trusted: never a completion's text)."""
    with warnings.catch_warnings():  # invalid escapes like '\w' in dataset code
        warnings.simplefilter("ignore")
        return ast.parse(code)


def _free_names(code: str) -> set[str]:
    return {n.id for n in ast.walk(_parse(code)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _bound_names(code: str, imports: bool = True) -> set[str]:
    out = set()
    for node in _parse(code).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if not imports:
                continue
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
        else:
            out |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return out


class RejectedReport(ValueError):
    """What the untrusted run reported is not a well-formed report: the program fails."""


def _lines(text: str) -> list[str]:
    if len(text) > MAX_REPORT_CHARS:
        raise RejectedReport(f"{len(text)} characters reported (at most {MAX_REPORT_CHARS})")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_CALLS:
        raise RejectedReport(f"{len(lines)} recorded calls (at most {MAX_CALLS})")
    return lines


def _record(line: str, i: int, allowed: set[str]) -> dict:
    from harness.tasks._codec import _dlmh_decode

    try:
        rec = json.loads(line)
    except (ValueError, RecursionError) as exc:  # not JSON, an int too long to read, nested too deeply
        raise RejectedReport(f"line {i}: not a JSON record ({type(exc).__name__}): {line[:120]!r}") from None
    if type(rec) is not dict or not set(rec) <= allowed:
        raise RejectedReport(f"line {i}: not a call record: {line[:120]!r}")
    results = [k for k in ("v", "r", "u") if k in rec]
    if len(results) != 1:
        raise RejectedReport(f"line {i}: a record holds exactly one of a value, an exception or a reason: "
                             f"{line[:120]!r}")
    if "r" in rec and type(rec["r"]) is not str or "u" in rec and type(rec["u"]) is not str:
        raise RejectedReport(f"line {i}: an exception or a reason is a string: {line[:120]!r}")
    if "v" in rec:
        try:
            _dlmh_decode(rec["v"])
        except Exception as exc:  # noqa: BLE001 - any value that does not decode (unhashable members, huge ints)
            raise RejectedReport(f"line {i}: value does not decode ({type(exc).__name__}: {str(exc)[:80]})") from None
    return rec


def validate_calls(text: str, names=None) -> str:
    """The recorder's fd-3 report, checked line by line (JSON objects of the recorder's keys, a
    function under test's name, argument text or null, one result that decodes). -> the same
    lines; RejectedReport (a ValueError) says what is wrong."""
    lines = _lines(text)
    for i, line in enumerate(lines):
        rec = _record(line, i, {"n", "k", "v", "r", "u"})
        if type(rec.get("n")) is not str or (names is not None and rec["n"] not in names) \
                or type(rec.get("k")) not in (str, type(None)):
            raise RejectedReport(f"line {i}: not a call of a function under test: {line[:120]!r}")
    return "\n".join(lines)


def merge_plan(plan: list[dict], text: str) -> str:
    """The driver's fd-3 report (one result per planned call, by index) joined to the plan's
    trusted names and arguments -> the replay's lines; RejectedReport says what is wrong."""
    results: dict[int, dict] = {}
    for i, line in enumerate(_lines(text)):
        rec = _record(line, i, {"i", "v", "r", "u"})
        idx = rec.get("i")
        if type(idx) is not int or not 0 <= idx < len(plan) or idx in results:
            raise RejectedReport(f"line {i}: not the result of a planned call: {line[:120]!r}")
        results[idx] = rec
    out = []
    for idx, call in enumerate(plan):
        if idx in results:  # a missing result is a call the trusted test finds unanswered
            rec = {k: v for k, v in results[idx].items() if k != "i"}
            out.append(json.dumps({"n": call["n"], "k": call["k"], **rec}, sort_keys=True))
    return "\n".join(out)


@functools.lru_cache(maxsize=256)
def _plan(planner: str, timeout_s: float, level: str | None) -> tuple[tuple[dict, ...], str | None]:
    """The planning run of a check (trusted code only; cached per item) -> (calls, error or None)."""
    from harness.tasks.sandbox import run_program

    res = run_program(planner, timeout_s=max(timeout_s, 30), channel=True, level=level)
    try:
        calls = [json.loads(line) for line in res.channel.splitlines() if line.strip()]
    except ValueError:  # cut off mid-line (a timeout)
        calls = []
    for rec in calls:
        if "x" in rec:
            return (), f"the test calls {rec['n']} with {rec['x']}"
    if not res.passed:
        return (), f"the test's planning run (reference solution) did not finish: {res.status}: {res.stderr[-500:]}"
    return tuple(calls), None


def run_check(check: CodeCheck, *, timeout_s: float = 10, **kwargs):
    """All runs of `check` (see the module docstring) -> a SandboxResult whose `passed` is the
    trusted run's verdict; the untrusted run's output is kept for diagnosis. Whatever the program
    did, the result is "passed" or a failure with a reason, never an exception (a test that cannot
    be planned at all, which no program can cause, is status "error")."""
    from dataclasses import replace

    from harness.tasks.sandbox import run_program

    program, plan = check.program, None
    if check.planner is not None:
        calls, error = _plan(check.planner, timeout_s, kwargs.get("level"))
        if error is not None:
            from harness.tasks.sandbox import SandboxResult, isolation

            return SandboxResult(passed=False, status="error", returncode=None, stdout="", stderr=error, wall_s=0.0,
                                 level=isolation(kwargs.get("level")).level)
        plan = list(calls)
        plan_text = "\n".join(json.dumps({"n": c["n"], "a": c["a"]}) for c in plan)
        program = f"_dlmh_plan = {plan_text!r}\n{program}"
    first = run_program(program, timeout_s=timeout_s, channel=True, **kwargs)
    if not first.passed:
        return replace(first, channel="")
    try:
        calls_text = merge_plan(plan, first.channel) if plan is not None else validate_calls(first.channel)
    except RejectedReport as exc:
        return replace(first, passed=False, status="failed", channel="",
                       stderr=f"{first.stderr}\nrejected the program's report: {exc}"[-2000:])
    second = run_program(f"_dlmh_calls = {calls_text!r}\n{check.checker}", timeout_s=timeout_s, **kwargs)
    stderr = first.stderr if second.passed else f"{first.stderr}\n[trusted check] {second.stderr}"[-2000:]
    return replace(second, stdout=first.stdout, stderr=stderr, wall_s=first.wall_s + second.wall_s, channel="")


def run_checks(checks: list[CodeCheck], *, workers: int = 4, **kwargs) -> list:
    """`run_check` on each check with a small thread pool; results in input order."""
    from concurrent.futures import ThreadPoolExecutor

    if not checks:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(checks)))) as pool:
        return list(pool.map(lambda c: run_check(c, **kwargs), checks))
