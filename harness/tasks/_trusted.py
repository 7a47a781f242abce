"""Trusted comparison for the code tasks: the verdict never comes from the program under test.

A completion is scored in two sandboxed runs (`run_check`):
1. The untrusted run: the completion, then the problem's test code with every `assert`
   reduced to the calls it makes to the functions under test (`reduce_asserts`), so the
   expected values written in the asserts are not in that program. The functions under test
   are wrapped by a recorder (`_codec`) that reports each call's arguments and result in a
   restricted plain-value format on a separate file descriptor. Its own exit status only
   decides failure (an exception, a timeout, a crash), never success.
2. The trusted run: the problem's test code unchanged except that `==`/`!=` in asserts are
   type-strict (`strict_asserts`), with the functions under test replaced by stubs that return
   the recorded results (`_codec._dlmh_replay`). No code from the completion runs there, so an
   object whose `__eq__` always answers True, a patched `AssertionError` or `sys.modules`, a
   forged success line or a recovered builtin in the first run cannot reach the verdict; only
   plain values cross over. A pass needs every assert of the trusted run to hold.

What remains (documented in the README's sandbox section): a program can still pass by returning
the right values without computing them, e.g. by special-casing known test inputs, or by reading
from its caller's frame an expected value the test computes outside its asserts (HumanEval 38, 50,
151); and a problem whose test setup builds objects with the completion's own classes
(MBPP 367, a tree of the completion's `Node`) cannot be replayed: it runs in one process with
type-strict asserts (`CodeCheck.checker is None`), which stops values that merely claim equality
but not a program that patches the comparison itself.
"""
from __future__ import annotations

import ast
import builtins
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("_codec.py").read_text()
SEED = "import random as _dlmh_random\n_dlmh_random.seed(20210707)\n"  # both runs draw the same random inputs
MAX_CALLS = 100_000


@dataclass(frozen=True)
class CodeCheck:
    """The two programs of one trusted check: `program` (untrusted; writes calls to fd 3) and
    `checker` (trusted; the recorded calls are prepended as `_dlmh_calls`), or checker None for
    the one-process fallback."""

    program: str
    checker: str | None


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
    return _transform(test_code, _Reduce(frozenset(names)))


def strict_asserts(test_code: str, eq: str = "_dlmh_eq") -> str:
    return _transform(test_code, _Strict(eq))


def humaneval_check(prompt: str, solution: str, test: str, entry_point: str) -> CodeCheck:
    """HumanEval: the untrusted run is prompt + solution + reduced test; the trusted run is the
    dataset's prompt (its helpers, e.g. `poly`, `encode_cyclic`, never the completion's) + test."""
    names = [entry_point]
    params = {a.arg for node in ast.walk(_parse(test)) if isinstance(node, ast.FunctionDef) and node.name == "check"
              for a in node.args.args}  # `candidate`: how the test calls the function under test
    program = (f"{SOURCE}\n{prompt}{solution}\n\n{reduce_asserts(test, [*names, *sorted(params)])}\n\n"
               f"_dlmh_recording(globals(), {names!r})\n{SEED}check({entry_point})\n")
    checker = (f"{SOURCE}\n{prompt}\n\n{strict_asserts(test)}\n\n"
               f"_dlmh_replay(globals(), {names!r}, _dlmh_calls)\n{SEED}check({entry_point})\n")
    return CodeCheck(program, checker)


def mbpp_check(code: str, setup: str, tests: list[str]) -> CodeCheck:
    """MBPP: the functions under test are the names the asserts call that neither the setup code,
    the builtins nor the standard library provide (plus any the completion redefines)."""
    test_code = "\n".join(tests)
    free = _free_names(test_code) - _bound_names(setup)
    try:
        own = _bound_names(code, imports=False)  # what the completion defines itself
    except SyntaxError:
        own = set()
    modules = {n for n in free if n in sys.stdlib_module_names and n not in own}  # imported by the trusted run
    names = sorted((free - set(dir(builtins)) - modules) | (free & own))
    setup_needs = _free_names(setup) - _bound_names(setup) - set(dir(builtins)) - set(sys.stdlib_module_names)
    if names and not setup_needs:
        program = (f"{SOURCE}\n{code}\n\n{setup}\n_dlmh_recording(globals(), {names!r})\n{SEED}"
                   f"{reduce_asserts(test_code, names)}\n")
        imports = "".join(f"import {m}\n" for m in sorted(modules))
        checker = (f"{SOURCE}\n{imports}_dlmh_replay(globals(), {names!r}, _dlmh_calls)\n{setup}\n{SEED}"
                   f"{strict_asserts(test_code)}\n")
        return CodeCheck(program, checker)
    # The setup builds objects with the completion's classes: one process, type-strict asserts.
    return CodeCheck(f"{SOURCE}\n{code}\n\n{setup}\n{SEED}{strict_asserts(test_code, '_dlmh_eq_plain')}\n", None)


def _parse(code: str) -> ast.Module:
    with warnings.catch_warnings():  # invalid escapes like '\w' in dataset and generated code
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


def validate_calls(text: str) -> str:
    """The untrusted run's fd-3 report, checked line by line (JSON objects of the recorder's keys,
    values in the restricted format). -> the same lines; ValueError says what is wrong."""
    from harness.tasks._codec import _dlmh_decode

    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_CALLS:
        raise ValueError(f"{len(lines)} recorded calls (at most {MAX_CALLS})")
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if (type(rec) is not dict or not set(rec) <= {"n", "k", "v", "r", "u"} or type(rec.get("n")) is not str
                or type(rec.get("k")) not in (str, type(None))):
            raise ValueError(f"recorded call {i}: not a call record: {line[:120]!r}")
        if "v" in rec:
            _dlmh_decode(rec["v"])
    return "\n".join(lines)


def run_check(check: CodeCheck, *, timeout_s: float = 10, **kwargs):
    """Both runs of `check` (see the module docstring) -> a SandboxResult whose `passed` is the
    trusted run's verdict; the untrusted run's output is kept for diagnosis."""
    from dataclasses import replace

    from harness.tasks.sandbox import run_program

    first = run_program(check.program, timeout_s=timeout_s, channel=check.checker is not None, **kwargs)
    if not first.passed or check.checker is None:
        return first
    try:
        calls = validate_calls(first.channel)
    except (ValueError, RecursionError) as exc:
        return replace(first, passed=False, status="failed", channel="",
                       stderr=f"{first.stderr}\nrejected the recorded calls: {exc}"[-2000:])
    second = run_program(f"_dlmh_calls = {calls!r}\n{check.checker}", timeout_s=timeout_s, **kwargs)
    stderr = first.stderr if second.passed else f"{first.stderr}\n[trusted check] {second.stderr}"[-2000:]
    return replace(second, stdout=first.stdout, stderr=stderr, wall_s=first.wall_s + second.wall_s, channel="")


def run_checks(checks: list[CodeCheck], *, workers: int = 4, **kwargs) -> list:
    """`run_check` on each check with a small thread pool; results in input order."""
    from concurrent.futures import ThreadPoolExecutor

    if not checks:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(checks)))) as pool:
        return list(pool.map(lambda c: run_check(c, **kwargs), checks))
