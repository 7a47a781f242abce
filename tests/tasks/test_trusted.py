"""The pieces of the trusted comparison, checked by hand: the restricted value format, type-strict
equality, how asserts are reduced for the untrusted run and made strict for the trusted one, how
MBPP's functions under test are found, and that malformed reports are rejected."""
from __future__ import annotations

import json
import math
from collections import Counter, OrderedDict, defaultdict

import pytest

from harness.tasks._codec import _dlmh_decode, _dlmh_encode, _dlmh_eq, _dlmh_key, _DlmhNotPlain
from harness.tasks._trusted import (
    RejectedReport,
    humaneval_check,
    mbpp_check,
    mbpp_names,
    merge_plan,
    reduce_asserts,
    strict_asserts,
    validate_calls,
)


@pytest.mark.parametrize("value", [None, True, 0, -7, 10**40, 1.5, -0.0, math.inf, "s", b"\x00b", 2 - 3j, [1, [2]],
                                   (1, (2.0, "x")), {1: "a", (2, 3): [4]}, {1, 2}, frozenset({"a"}), [], (), {}, set()])
def test_plain_values_round_trip_with_their_types(value):
    back = _dlmh_decode(json.loads(json.dumps(_dlmh_encode(value))))
    assert type(back) is type(value) and _dlmh_eq(back, value) and repr(back) == repr(value)


def test_nan_round_trips():
    assert math.isnan(_dlmh_decode(json.loads(json.dumps(_dlmh_encode(math.nan)))))


def test_collections_dicts_travel_as_dicts_and_nothing_else_passes():
    for d in (Counter("aab"), OrderedDict(a=1), defaultdict(int, a=1)):
        assert _dlmh_decode(_dlmh_encode(d)) == dict(d) and type(_dlmh_decode(_dlmh_encode(d))) is dict

    class Liar(int):
        def __eq__(self, other):
            return True

    class Spoof:
        __class__ = property(lambda self: int)

    for bad in (Liar(1), Spoof(), [Liar(1)], {"k": Spoof()}, (x for x in ()), print, object(), range(3)):
        with pytest.raises(_DlmhNotPlain):
            _dlmh_encode(bad)
    nested = []
    for _ in range(300):
        nested = [nested]
    with pytest.raises(_DlmhNotPlain, match="deeply"):
        _dlmh_encode(nested)


@pytest.mark.parametrize("bad", [{"x": 1}, {"t": 1}, {"d": [[1]]}, {"b": 3}, {"c": ["1", 2]}, {"t": [], "s": []}])
def test_decode_rejects_what_the_encoder_never_writes(bad):
    with pytest.raises(ValueError):
        _dlmh_decode(bad)


def test_type_strict_equality():
    assert _dlmh_eq([1, (2, "a")], [1, (2, "a")]) and _dlmh_eq({"a": [1]}, {"a": [1]})
    assert not _dlmh_eq([1, 2], (1, 2)) and not _dlmh_eq("ab", b"ab") and not _dlmh_eq([[1]], [(1,)])
    assert not _dlmh_eq({"a": (1,)}, {"a": [1]}) and not _dlmh_eq(None, 0) and not _dlmh_eq({1}, [1])
    assert _dlmh_eq(5.0, 5) and _dlmh_eq(False, 0) and _dlmh_eq([1.0], [1])  # numbers compare by value
    assert not _dlmh_eq(math.nan, math.nan)
    assert _dlmh_eq(Counter("ab"), {"a": 1, "b": 1})  # values the trusted test builds itself: plain ==


def test_call_keys():
    assert _dlmh_key((1, "a"), {}) == _dlmh_key((1, "a"), {}) != _dlmh_key(("1", "a"), {})
    assert _dlmh_key((object(),), {}) is None  # not plain: matched by order


def test_reduce_asserts_keeps_only_the_calls():
    names = ["candidate"]
    assert reduce_asserts("assert candidate(1) == 2", names) == "(candidate(1),)"
    assert reduce_asserts("assert True, 'msg'\nassert x == 3", names) == "pass\npass"
    assert reduce_asserts("assert abs(candidate(1.5) - 0.5) < 1e-6, candidate(9)", names) == "(((candidate(1.5),),),)"
    assert reduce_asserts("assert candidate(candidate(1)) == [2, 3]", names) == "(candidate(candidate(1)),)"
    assert reduce_asserts("assert all(candidate(x) == y for x, y in pairs)", names) == \
        "([(candidate(x),) for x, y in pairs],)"
    assert reduce_asserts("r = candidate(2)\nassert r == 'secret'", names) == "r = candidate(2)\npass"
    assert "secret" not in reduce_asserts("assert candidate('in') == 'secret' and candidate(2) != 'secret2'", names)


def test_strict_asserts_rewrite_equalities_only_in_asserts():
    code = "x = a == b\nassert f(1) == 2\nassert f(1) != 2\nassert f(1) < 2\nassert 1 == f(1) == 1"
    assert strict_asserts(code) == ("x = a == b\nassert _dlmh_eq(f(1), 2)\nassert not _dlmh_eq(f(1), 2)\n"
                                    "assert f(1) < 2\nassert 1 == f(1) == 1")


def test_mbpp_functions_under_test_come_from_the_dataset():
    tests = ["assert f(1) == 1", "assert len(f([1])) == 1", "assert math.floor(f(1.5)) == 1"]
    check = mbpp_check("import math\ndef f(x):\n    return g(x)\ndef g(x):\n    return x\n", "", tests,
                       reference="def f(x):\n    return x\n")
    assert "_dlmh_recording(globals(), ['f'])" in check.program
    assert "import math\n" in check.checker and "_dlmh_replay(globals(), ['f']" in check.checker
    assert "== 1" not in check.program.split("_dlmh_recording(globals()")[-1]  # expected values stay out
    # MBPP 126's function is called `sum`: the reference says so, whatever the completion defines
    # (here inside `if True:`, which no top-level scan of the completion would see).
    assert mbpp_names(["assert sum(10, 15) == 6"], "", "def sum(a, b):\n    return 0\n") == ["sum"]
    assert mbpp_names(["assert max(f([1])) == 1"], "", "def f(x):\n    return x\n") == ["f"]
    assert mbpp_names(["assert f(1) == 1"], "") == ["f"]  # no reference: called names nothing else provides
    # The setup uses the completion's class (MBPP 367): the trusted run builds it with the reference's.
    check = mbpp_check("class Node:\n    pass\ndef h(n):\n    return 0\n", "root = Node()", ["assert h(root) == 0"],
                       reference="class Node:\n    pass\ndef h(n):\n    return 0\n")
    assert check.checker and "_dlmh_replay(globals(), ['h']" in check.checker


def test_humaneval_checks_are_planned_and_the_program_sees_no_test():
    test = "def check(candidate):\n    s = 'secret'\n    assert candidate(s[::-1]) == s\n"
    check = humaneval_check("def rev(s):\n", "    return s[::-1]\n", test, "rev", reference="    return s[::-1]\n")
    assert "secret" not in check.program and "check(" not in check.program
    assert "_dlmh_planning(globals(), ['rev'], True)" in check.planner and "_dlmh_replay" in check.checker


def test_validate_calls_rejects_malformed_reports():
    ok = '{"n": "f", "k": "[[1], {\\"d\\": []}]", "v": {"t": [1]}}\n\n'
    assert validate_calls(ok) == ok.strip()
    for bad in ("not json", '[1]', '{"n": 1}', '{"n": "f", "zz": 1}', '{"n": "f", "v": {"obj": 1}}',
                '{"n": "f", "k": [1]}', '{"n": "f", "k": null}', '{"n": "f", "v": 1, "r": "E"}',
                '{"n": "f", "k": null, "v": {"s": [[1]]}}',  # an unhashable set member
                '{"n": "f", "k": null, "v": {"c": [' + "9" * 400 + ', 0]}}',  # too large for a float
                '{"n": "f", "k": null, "v": ' + "9" * 5000 + '}',  # longer than int() reads
                '{"n": "f", "k": null, "v": ' + "[" * 100_000 + "]" * 100_000 + '}',  # nested too deeply
                '{"n": "f", "k": null, "r": 5}'):
        with pytest.raises(RejectedReport):
            validate_calls(bad)


def test_merge_plan_takes_names_and_arguments_from_the_plan_only():
    plan = [{"n": "f", "k": "[[1], {}]", "a": [[1], {}]}, {"n": "f", "k": "[[2], {}]", "a": [[2], {}]}]
    merged = merge_plan(plan, '{"i": 1, "v": 4}\n{"i": 0, "r": "ValueError"}\n')
    assert [json.loads(x) for x in merged.splitlines()] == [{"n": "f", "k": "[[1], {}]", "r": "ValueError"},
                                                           {"n": "f", "k": "[[2], {}]", "v": 4}]
    assert merge_plan(plan, "") == ""  # nothing reported: every call of the trusted test goes unanswered
    for bad in ('{"i": 2, "v": 1}', '{"i": 0, "v": 1}\n{"i": 0, "v": 1}', '{"i": "0", "v": 1}', '{"n": "f", "v": 1}',
                '{"i": 0, "v": {"s": [[1]]}}', '{"i": true, "v": 1}'):
        with pytest.raises(RejectedReport):
            merge_plan(plan, bad)
