"""The restricted value format of the code tasks' trusted comparison, and the two halves that use it.

This file is imported by the harness (to validate what a sandboxed program reported) and its
source is also pasted at the top of the sandboxed programs (`SOURCE`), so it is self-contained
and uses the standard library only. Names start with `_dlmh_` so they do not collide with the
code under test.

Format: a value is encoded into JSON with tags for the types JSON lacks. Only these exact types
are accepted (`type(v) is T`, which a program cannot spoof, unlike `isinstance` and `__class__`):
None, bool, int, float, str, list, and tagged {"t": tuple}, {"d": dict as pairs}, {"s": set},
{"fs": frozenset}, {"b": bytes as hex}, {"c": complex}; collections' Counter, OrderedDict and
defaultdict travel as dicts (Python compares them with dicts by content). Anything else (a subclass of int with its
own `__eq__`, a generator, an object of the program's own class) is "not a plain value" and the
call that returned it fails. Decoding builds fresh builtin objects, whose equality is Python's own.

- The planner (trusted side, `_dlmh_planning`) runs the test with the functions under test as
  stubs answering from the dataset's reference solution, and reports every call's arguments.
- The driver (untrusted side, `_dlmh_drive`) calls the program's functions on those arguments
  and reports each result; no test code runs with the program, so no expected value the test
  computes (in asserts or in its own variables) is in its process.
- The recorder (untrusted side, `_dlmh_recording`; used where the test's arguments are objects
  built with the program's own classes, e.g. MBPP 367) wraps the functions under test while the
  test's asserts, reduced to their calls, run: each call made by the test code (not the
  function's calls to itself) writes one JSON line to fd 3: the function's name, the encoded
  arguments, and the encoded result, the builtin exception it raised, or why the result could
  not be encoded.
- The replay (trusted side) gives the test code stubs that return, for each call, the recorded
  result of the call with the same name and arguments, and its asserts compare with `_dlmh_eq`:
  equal and of the same type, recursively (a tuple is not a list, a str is not bytes), numbers by
  value across bool/int/float/complex. Changes a call made to its arguments are not carried over:
  the trusted test sees its inputs as it built them, so the program cannot rewrite the test's state.
"""
import collections as _dlmh_collections
import json as _dlmh_json

_DLMH_DEPTH = 200
_DLMH_DICTS = (_dlmh_collections.Counter, _dlmh_collections.OrderedDict, _dlmh_collections.defaultdict)


class _DlmhNotPlain(Exception):
    pass


def _dlmh_encode(v, depth=0):
    if depth > _DLMH_DEPTH:
        raise _DlmhNotPlain("nested too deeply")
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    if t is list:
        return [_dlmh_encode(x, depth + 1) for x in v]
    if t is tuple:
        return {"t": [_dlmh_encode(x, depth + 1) for x in v]}
    if t is dict or t in _DLMH_DICTS:  # Counter, OrderedDict, defaultdict: compared as dicts, as Python does
        return {"d": [[_dlmh_encode(k, depth + 1), _dlmh_encode(x, depth + 1)] for k, x in v.items()]}
    if t is set or t is frozenset:
        items = sorted((_dlmh_encode(x, depth + 1) for x in v), key=lambda e: _dlmh_json.dumps(e, sort_keys=True))
        return {"s" if t is set else "fs": items}
    if t is bytes:
        return {"b": v.hex()}
    if t is complex:
        return {"c": [v.real, v.imag]}
    raise _DlmhNotPlain("a %s.%s is not a plain value" % (t.__module__, t.__qualname__))


def _dlmh_decode(o, depth=0):
    if depth > _DLMH_DEPTH + 2:
        raise ValueError("nested too deeply")
    t = type(o)
    if o is None or t is bool or t is int or t is float or t is str:
        return o
    if t is list:
        return [_dlmh_decode(x, depth + 1) for x in o]
    if t is dict and len(o) == 1:
        ((tag, x),) = o.items()
        if tag == "t" and type(x) is list:
            return tuple(_dlmh_decode(e, depth + 1) for e in x)
        if tag == "d" and type(x) is list and all(type(p) is list and len(p) == 2 for p in x):
            return {_dlmh_decode(k, depth + 1): _dlmh_decode(e, depth + 1) for k, e in x}
        if tag in ("s", "fs") and type(x) is list:
            return (set if tag == "s" else frozenset)(_dlmh_decode(e, depth + 1) for e in x)
        if tag == "b" and type(x) is str:
            return bytes.fromhex(x)
        if tag == "c" and type(x) is list and len(x) == 2 and all(type(e) in (int, float) for e in x):
            return complex(x[0], x[1])
    raise ValueError("not a recorded value: %.80r" % (o,))


def _dlmh_key(args, kwargs):
    """The arguments of a call as text (None when they are not plain values: matched by order)."""
    try:
        return _dlmh_json.dumps(_dlmh_encode([list(args), kwargs]), sort_keys=True)
    except (_DlmhNotPlain, ValueError, TypeError, RecursionError):
        return None


_DLMH_PLAIN = (type(None), bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset)
_DLMH_NUMBERS = (bool, int, float, complex)


def _dlmh_eq(a, b):
    """Type-strict equality of plain values, except that numbers compare by value across bool, int,
    float and complex (MBPP's reference solutions return 5.0 for 5 and 0 for False); other values
    (built by the trusted test itself) use ==."""
    ta, tb = type(a), type(b)
    if ta not in _DLMH_PLAIN or tb not in _DLMH_PLAIN:
        return a == b
    if ta in _DLMH_NUMBERS and tb in _DLMH_NUMBERS:
        return a == b
    if ta is not tb:
        return False
    if ta is list or ta is tuple:
        return len(a) == len(b) and all(_dlmh_eq(x, y) for x, y in zip(a, b))
    if ta is dict:
        return a.keys() == b.keys() and all(_dlmh_eq(a[k], b[k]) for k in a)
    return a == b


# -- untrusted side -------------------------------------------------------------------------------
def _dlmh_emit(record):
    import os
    os.write(3, (_dlmh_json.dumps(record, sort_keys=True) + "\n").encode())


def _dlmh_result(record, out):
    try:
        record["v"] = _dlmh_encode(out)
    except (_DlmhNotPlain, RecursionError, ValueError, TypeError) as exc:
        record["u"] = str(exc)[:200]
    return record


def _dlmh_recording(namespace, names):
    """Rebind each function `names` in `namespace` to a recorder (see the module docstring)."""
    busy = [0]

    def recorder(name, fn):
        def call(*args, **kwargs):
            if busy[0]:  # a call made by the code under test itself
                return fn(*args, **kwargs)
            key = _dlmh_key(args, kwargs)
            busy[0] += 1
            try:
                out = fn(*args, **kwargs)
            except Exception as exc:
                _dlmh_emit({"n": name, "k": key, "r": type(exc).__name__})
                raise
            finally:
                busy[0] -= 1
            _dlmh_emit(_dlmh_result({"n": name, "k": key}, out))
            return out
        return call

    for name in names:
        fn = namespace.get(name)
        if callable(fn) and not isinstance(fn, type):
            namespace[name] = recorder(name, fn)


def _dlmh_drive(namespace, plan_json):
    """The untrusted run of a planned check: call the functions under test on the planned
    arguments, in order, and report each result (or the exception it raised) by its index. No
    test code runs here, so no expected value is in this process."""
    for i, line in enumerate(plan_json.splitlines()):
        rec = _dlmh_json.loads(line)
        fn = namespace.get(rec["n"])
        if not callable(fn) or isinstance(fn, type):
            _dlmh_emit({"i": i, "u": "%s is not a function defined by the program" % rec["n"]})
            continue
        args, kwargs = _dlmh_decode(rec["a"])
        try:
            out = fn(*args, **{k: v for k, v in kwargs.items()})
        except Exception as exc:
            _dlmh_emit({"i": i, "r": type(exc).__name__})
            continue
        _dlmh_emit(_dlmh_result({"i": i}, out))


# -- trusted side ---------------------------------------------------------------------------------
def _dlmh_planning(namespace, names, reference):
    """The trusted planning run: each function `names` becomes a stub that reports its arguments
    (fd 3) and answers with the dataset's reference solution when there is one (`reference`: that
    function was defined by it; random state untouched), so the test's own computations run as
    with a correct program."""
    import random

    def planner(name, ref):
        def call(*args, **kwargs):
            try:
                _dlmh_emit({"n": name, "k": _dlmh_key(args, kwargs), "a": _dlmh_encode([list(args), kwargs])})
            except (_DlmhNotPlain, RecursionError) as exc:
                _dlmh_emit({"n": name, "x": "arguments that are not plain values: %s" % exc})
                raise SystemExit(5)
            if ref is None:
                return None
            state = random.getstate()
            try:
                return ref(*args, **kwargs)
            finally:
                random.setstate(state)
        return call

    for name in names:
        ref = namespace.get(name) if reference else None
        namespace[name] = planner(name, ref if callable(ref) else None)


# -- trusted side ---------------------------------------------------------------------------------
def _dlmh_replay(namespace, names, calls_json):
    """Bind each of `names` in `namespace` to a stub answering from the recorded calls."""
    import builtins
    pending = {}  # (name, arguments) -> its recorded calls, oldest first
    for line in calls_json.splitlines():
        if line.strip():
            rec = _dlmh_json.loads(line)
            pending.setdefault((rec.get("n"), rec.get("k")), []).append(rec)
    for recs in pending.values():
        recs.reverse()  # pop() takes the oldest

    def stub(name):
        def call(*args, **kwargs):
            key = _dlmh_key(args, kwargs)
            recs = pending.get((name, key))
            if recs:
                rec = recs.pop()
            else:
                raise AssertionError("%s was called with arguments %.200s that the program under test was "
                                     "not (it stopped early, or its calls depend on its own state)" % (name, key))
            if "r" in rec:
                exc = getattr(builtins, str(rec["r"]), None)
                if isinstance(exc, type) and issubclass(exc, Exception):
                    raise exc("raised by the program under test")
                raise AssertionError("%s raised %.80s" % (name, rec["r"]))
            if "u" in rec or "v" not in rec:
                raise AssertionError("%s returned %.200s" % (name, rec.get("u", "nothing")))
            return _dlmh_decode(rec["v"])
        call.__name__ = name
        return call

    for name in names:
        namespace[name] = stub(name)
