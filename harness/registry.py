"""One registry per component kind: MODELS, ESTIMATORS, SAMPLERS, ALGORITHMS, TASKS.

A component is a frozen, keyword-only dataclass registered under a name. Adding a variant means
adding one file to the kind's package with `@REGISTRY.register("name")`; the package's modules are
imported lazily the first time the registry is read, so `import harness` stays cheap.

`Registry.build(name, params, where=...)` is the only way the runner makes components: it rejects
unknown names (listing the known ones and the closest match) and unknown or mistyped parameters
(naming the key and the expected type) before any compute is spent.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import types
import typing
from typing import Any, Callable, Iterator, Literal, Mapping, TypeVar, Union

from harness import validate
from harness.types import HarnessError

T = TypeVar("T")


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def first_paragraph(doc: str) -> str:
    """A docstring's summary: its first paragraph on one line (never cut inside a sentence)."""
    lines = []
    for line in doc.strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines)


def type_name(tp: Any) -> str:
    """A readable name for a type annotation, for error messages."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        inner = type_name(args[0]) if args else "value"
        return f"a list of {inner}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if tp in (tuple, list):
        return "a list"
    if tp is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against annotation `tp` and return it in canonical form.

    YAML lists become tuples (components are frozen and hashable); ints are accepted for floats.
    Raises HarnessError naming `where` and the expected type.
    """
    origin = typing.get_origin(tp)
    validate.finite(value, where)  # NaN and infinity are never a setting, whatever the type allows
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return coerce(value, option, where)
            except HarnessError:
                continue
        raise HarnessError(f"{where}: expected {type_name(tp)}, got {validate.show(value)}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise HarnessError(f"{where}: expected {type_name(tp)}, got {validate.show(value)}")
    if tp is type(None):
        if value is None:
            return None
        raise HarnessError(f"{where}: expected null, got {validate.show(value)}")
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise HarnessError(f"{where}: expected {type_name(tp)}, got {validate.show(value)}")
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = args[0] if args else Any
        return tuple(coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise HarnessError(f"{where}: expected a mapping, got {validate.show(value)}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return validate.finite(float(value), where)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise HarnessError(f"{where}: expected {type_name(tp)}, got {validate.show(value)} ({type(value).__name__})")


class Registry:
    """Named components of one kind."""

    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.package = package
        self._entries: dict[str, type] = {}
        self._summaries: dict[str, str] = {}
        self._loaded = False

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, summary: str | None = None) -> Callable[[type[T]], type[T]]:
        """Class decorator: register a frozen keyword-only dataclass under `name`."""

        def decorate(cls: type[T]) -> type[T]:
            params = getattr(cls, "__dataclass_params__", None)
            if params is None or not params.frozen:
                raise TypeError(f"{self.kind} {name!r}: {cls.__name__} must be a frozen dataclass")
            if not all(f.kw_only for f in dataclasses.fields(cls)):
                raise TypeError(f"{self.kind} {name!r}: {cls.__name__} must be keyword-only")
            if name in self._entries and self._entries[name] is not cls:
                raise TypeError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = cls
            self._summaries[name] = summary or first_paragraph(cls.__doc__ or "")
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorate

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")

    # -- lookup -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def summary(self, name: str) -> str:
        self.get(name)
        return self._summaries[name]

    def get(self, name: str, where: str | None = None) -> type:
        self._load()
        if not isinstance(name, str) or name not in self._entries:
            known = ", ".join(self.names())
            hint = _suggest(name, self.names()) if isinstance(name, str) else ""
            prefix = f"{where}: " if where else ""
            raise HarnessError(f"{prefix}unknown {self.kind[:-1]} {name!r}{hint} (known: {known})")
        return self._entries[name]

    def fields(self, name: str) -> dict[str, tuple[Any, Any]]:
        """name -> (type annotation, default or dataclasses.MISSING) for each parameter."""
        cls = self.get(name)
        hints = _type_hints(cls)
        out = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = f.default
            if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            out[f.name] = (hints[f.name], default)
        return out

    def validate(self, name: str, params: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
        """Check params against the component's fields; return them in canonical form."""
        self.get(name, where)
        params = {} if params is None else params
        if not isinstance(params, Mapping):
            raise HarnessError(f"{where}: expected a mapping of parameters, got {params!r}")
        fields = self.fields(name)
        out = {}
        for key, value in params.items():
            if key not in fields:
                hint = _suggest(str(key), list(fields))
                known = ", ".join(fields) or "none"
                raise HarnessError(
                    f"{where}.params.{key}: unknown parameter of {self.kind[:-1]} {name!r}{hint} "
                    f"(parameters: {known})"
                )
            out[key] = coerce(value, fields[key][0], f"{where}.params.{key}")
            validate.field(self._entries[name], key, out[key], f"{where}.params.{key}")  # finite, in range
        missing = [k for k, (_, d) in fields.items() if d is dataclasses.MISSING and k not in out]
        if missing:
            raise HarnessError(f"{where}: {self.kind[:-1]} {name!r} needs parameter(s) {missing}")
        return out

    def build(self, name: str, params: Mapping[str, Any] | None = None, where: str | None = None):
        """Make the component, validating everything first."""
        where = where or f"{self.kind}.{name}"
        cls = self.get(name, where)
        clean = self.validate(name, params, where)
        try:
            return cls(**clean)
        except (ValueError, TypeError) as exc:  # __post_init__ checks speak about values
            raise HarnessError(f"{where}: {exc}") from None


_HINTS: dict[type, dict] = {}


def _type_hints(cls: type) -> dict:
    """typing.get_type_hints(cls), once per class (it evaluates every annotation: planning a sweep of
    thousands of cells asked for it thousands of times)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


MODELS = Registry("models", "harness.models")
ESTIMATORS = Registry("estimators", "harness.estimators")
SAMPLERS = Registry("samplers", "harness.samplers")
ALGORITHMS = Registry("algorithms", "harness.algorithms")
TASKS = Registry("tasks", "harness.tasks")

REGISTRIES: dict[str, Registry] = {
    r.kind: r for r in (MODELS, ESTIMATORS, SAMPLERS, ALGORITHMS, TASKS)
}


def params_of(component: Any) -> dict[str, Any]:
    """The parameters of a built component, JSON-friendly (for records and manifests)."""
    out = {}
    for f in dataclasses.fields(component):
        v = getattr(component, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out
