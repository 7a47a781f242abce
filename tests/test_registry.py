"""Registries: name lookup with suggestions, parameter validation and coercion, registration rules."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from harness import registry as reg
from harness.registry import ALGORITHMS, ESTIMATORS, MODELS, REGISTRIES, SAMPLERS, TASKS, Registry, coerce
from harness.types import HarnessError


def message(fn, *args, **kwargs) -> str:
    with pytest.raises(HarnessError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# -- the five registries ----------------------------------------------------------------------
def test_five_registries_exist():
    assert [r.kind for r in (MODELS, ESTIMATORS, SAMPLERS, ALGORITHMS, TASKS)] == [
        "models", "estimators", "samplers", "algorithms", "tasks"]
    assert set(REGISTRIES) == {"models", "estimators", "samplers", "algorithms", "tasks"}
    for r in (MODELS, ESTIMATORS, SAMPLERS, ALGORITHMS, TASKS):
        assert isinstance(r, Registry)
        assert REGISTRIES[r.kind] is r


@pytest.mark.parametrize("kind, expected", [
    ("models", {"tiny", "hf_masked", "hf_causal"}),
    ("estimators", {"mc_elbo"}),
    ("samplers", {"low_confidence"}),
    ("tasks", {"addition", "sudoku4", "countdown3"}),
])
def test_registries_list_their_components(kind, expected):
    names = REGISTRIES[kind].names()
    assert names, f"{kind} registry is empty"
    assert names == sorted(names)
    assert expected <= set(names)
    for name in names:
        assert name in REGISTRIES[kind]
        assert isinstance(REGISTRIES[kind].summary(name), str)
    assert list(REGISTRIES[kind]) == names


def test_summary_is_first_docstring_line():
    assert ESTIMATORS.summary("mc_elbo").startswith("Monte Carlo ELBO")


# -- unknown names ----------------------------------------------------------------------------
def test_unknown_name_suggests_closest_and_lists_known():
    msg = message(ESTIMATORS.get, "mc_elbow")
    assert "unknown estimator 'mc_elbow'" in msg
    assert "did you mean 'mc_elbo'?" in msg
    assert "known:" in msg
    for name in ESTIMATORS.names():
        assert name in msg


def test_unknown_name_without_close_match_still_lists_known():
    msg = message(TASKS.get, "zzzzzzzz")
    assert "did you mean" not in msg
    for name in ("addition", "sudoku4", "countdown3"):
        assert name in msg


def test_unknown_name_carries_where():
    msg = message(SAMPLERS.build, "low_confidance", {}, "suite.yaml.studies[0].sampler")
    assert msg.startswith("suite.yaml.studies[0].sampler: unknown sampler 'low_confidance'")
    assert "did you mean 'low_confidence'?" in msg


def test_non_string_name_is_an_error():
    msg = message(MODELS.get, 3)
    assert "unknown model 3" in msg
    assert "tiny" in msg


# -- parameters -------------------------------------------------------------------------------
def test_unknown_parameter_suggests_closest():
    msg = message(SAMPLERS.build, "low_confidence", {"step": 4})
    assert "samplers.low_confidence.params.step" in msg
    assert "unknown parameter of sampler 'low_confidence'" in msg
    assert "did you mean 'steps'?" in msg
    assert "block_length" in msg  # lists the parameters


def test_params_must_be_a_mapping():
    msg = message(ESTIMATORS.validate, "mc_elbo", [1, 2], "x")
    assert msg.startswith("x: expected a mapping of parameters")


@pytest.mark.parametrize("params, where, expected", [
    ({"n_mc": "8"}, "params.n_mc", "expected int, got '8' (str)"),
    ({"n_mc": True}, "params.n_mc", "expected int, got True (bool)"),
    ({"n_mc": 8.0}, "params.n_mc", "expected int, got 8.0 (float)"),
    ({"n_mc": None}, "params.n_mc", "expected int, got None"),
    ({"t_law": "uniform"}, "params.t_law",
     "expected one of 'iid', 'stratified', 'antithetic', 'count', 'count_stratified', 'count_systematic', "
     "got 'uniform'"),
])
def test_wrong_types_name_key_and_expected(params, where, expected):
    msg = message(ESTIMATORS.build, "mc_elbo", params, "E")
    assert msg.startswith(f"E.{where}: ")
    assert expected in msg


def test_bool_for_bool_and_str_for_bool():
    assert TASKS.build("addition", {"zero_pad": False, "n_test": 5}).zero_pad is False
    msg = message(TASKS.build, "addition", {"zero_pad": "no"})
    assert "params.zero_pad: expected bool, got 'no'" in msg


def test_int_accepted_for_float():
    s = SAMPLERS.build("low_confidence", {"temperature": 1})
    assert s.temperature == 1.0 and isinstance(s.temperature, float)
    msg = message(SAMPLERS.build, "low_confidence", {"temperature": "hot"})
    assert "params.temperature: expected float, got 'hot'" in msg


def test_optional_int_accepts_null_and_int_rejects_str():
    assert SAMPLERS.build("low_confidence", {"steps": None}).steps is None
    assert SAMPLERS.build("low_confidence", {"steps": 4}).steps == 4
    msg = message(SAMPLERS.build, "low_confidence", {"steps": "4"})
    assert "params.steps: expected int or null, got '4'" in msg


def test_coerce_lists_and_tuples():
    assert coerce([1, 2, 3], tuple[int, ...], "w") == (1, 2, 3)
    assert isinstance(coerce([1.5], list[float], "w"), tuple)
    assert coerce([1, 2], tuple[float, ...], "w") == (1.0, 2.0)
    msg = message(coerce, [1, "two", 3], tuple[int, ...], "w.xs")
    assert msg.startswith("w.xs[1]: expected int, got 'two'")
    msg = message(coerce, 5, tuple[int, ...], "w.xs")
    assert msg.startswith("w.xs: expected a list of int, got 5")
    msg = message(coerce, "abc", list[str], "w.xs")
    assert "expected a list of str" in msg


def test_coerce_literal_union_mapping():
    assert coerce("a", Literal["a", "b"], "w") == "a"
    assert "expected one of 'a', 'b', got 'c'" in message(coerce, "c", Literal["a", "b"], "w")
    assert coerce(3, int | str, "w") == 3
    assert "expected int or str, got 1.5" in message(coerce, 1.5, int | str, "w")
    assert coerce({"a": 1}, dict, "w") == {"a": 1}
    assert "w: expected a mapping, got [1]" in message(coerce, [1], dict, "w")


# A throwaway registry with a tuple field, registered without touching any package.
THINGS = Registry("things", "harness.tasks")
THINGS._loaded = True  # never import packages for this throwaway registry


@THINGS.register("widget")
@dataclass(frozen=True, kw_only=True)
class Widget:
    """A widget for tests."""

    sizes: tuple[int, ...] = (1,)
    ratio: float = 0.5
    mode: Literal["a", "b"] = "a"
    tags: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.ratio > 1:
            raise ValueError(f"ratio must be <= 1, got {self.ratio}")


def test_throwaway_registry_lists_only_its_own():
    assert THINGS.names() == ["widget"]
    assert THINGS.summary("widget") == "A widget for tests."
    assert Widget.registry_name == "widget"


def test_yaml_lists_become_tuples():
    w = THINGS.build("widget", {"sizes": [1, 2, 3], "tags": ["x", "y"]})
    assert w.sizes == (1, 2, 3) and isinstance(w.sizes, tuple)
    assert w.tags == ("x", "y")
    hash(w)  # frozen and hashable once lists are tuples
    assert reg.params_of(w) == {"sizes": [1, 2, 3], "ratio": 0.5, "mode": "a", "tags": ["x", "y"]}
    msg = message(THINGS.build, "widget", {"sizes": [1, 2.5]})
    assert msg.startswith("things.widget.params.sizes[1]: expected int, got 2.5")


def test_post_init_value_error_becomes_harness_error_with_where():
    msg = message(THINGS.build, "widget", {"ratio": 2}, "suite.yaml.studies[3].thing")
    assert msg == "suite.yaml.studies[3].thing: ratio must be <= 1, got 2.0"
    msg = message(ESTIMATORS.build, "mc_elbo", {"n_mc": 0})
    # a parameter with a declared range is refused by the validation layer first, naming the range
    assert msg == "estimators.mc_elbo.params.n_mc: expected an integer in [1, 1000000], got 0"
    msg = message(TASKS.build, "addition", {"n_digits": 0}, "T")
    assert msg.startswith("T: need 1 <= min_digits <= n_digits <= 9")


def test_missing_required_parameter():
    r = Registry("gadgets", "harness.tasks")
    r._loaded = True

    @r.register("g")
    @dataclass(frozen=True, kw_only=True)
    class G:
        size: int

    msg = message(r.build, "g", {})
    assert "gadget 'g' needs parameter(s) ['size']" in msg
    assert r.build("g", {"size": 2}).size == 2
    assert r.fields("g") == {"size": (int, dataclasses.MISSING)}


# -- registration rules -----------------------------------------------------------------------
def fresh() -> Registry:
    r = Registry("things", "harness.tasks")
    r._loaded = True
    return r


def test_register_rejects_non_dataclass():
    with pytest.raises(TypeError, match="must be a frozen dataclass"):
        fresh().register("x")(type("X", (), {}))


def test_register_rejects_non_frozen_dataclass():
    @dataclass(kw_only=True)
    class Loose:
        a: int = 1

    with pytest.raises(TypeError, match="must be a frozen dataclass"):
        fresh().register("loose")(Loose)


def test_register_rejects_positional_fields():
    @dataclass(frozen=True)
    class Positional:
        a: int = 1

    with pytest.raises(TypeError, match="must be keyword-only"):
        fresh().register("pos")(Positional)


def test_register_rejects_a_second_class_under_one_name():
    r = fresh()

    @dataclass(frozen=True, kw_only=True)
    class A:
        pass

    @dataclass(frozen=True, kw_only=True)
    class B:
        pass

    r.register("a")(A)
    r.register("a")(A)  # the same class again is harmless (module re-import)
    with pytest.raises(TypeError, match="registered twice"):
        r.register("a")(B)
    assert r.names() == ["a"]
