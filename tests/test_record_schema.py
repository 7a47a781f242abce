"""One record schema for every writer: the runner, `eval` and `score` all build records with
`records.make_record`, which fills the schema version and refuses a missing or unknown key."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.records import REQUIRED, SCHEMA_VERSION, Record, make_record

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(run_id="r", suite="s", cell_id="c", study="c", kind="generate", point={}, model={"name": "m", "params": {}},
            component={"kind": "sampler", "name": "x", "params": {}}, task={"name": "t", "version": "1",
                                                                          "split": "test", "params": {}},
            item_id="i", item_hash="h", replicate=0, seed=1, cost={"nfe": 1}, status="ok")


def test_make_record_fills_the_schema():
    rec = make_record(**BASE, outcome={"metric": "accuracy", "value": 1.0})
    assert rec["schema_version"] == SCHEMA_VERSION
    assert list(rec) == ["schema_version", *REQUIRED[:11], "replicate", "seed", "outcome", "estimate",
                         "generation", "cost", "status", "error"]
    assert set(rec) <= set(Record.__annotations__) and "sandbox" not in rec
    assert make_record(**BASE, sandbox="root-ns")["sandbox"] == "root-ns"


@pytest.mark.parametrize("change", [{"drop": "seed"}, {"add": ("colour", "red")}])
def test_missing_or_unknown_key_is_refused(change):
    fields = dict(BASE)
    if "drop" in change:
        fields.pop(change["drop"])
    else:
        fields[change["add"][0]] = change["add"][1]
    with pytest.raises(TypeError, match="make_record"):
        make_record(**fields)


def test_no_writer_builds_a_record_by_hand():
    """A dict literal with a "schema_version" key and a "cell_id" key is a record built by hand."""
    offenders = []
    for path in (ROOT / "harness").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if {"schema_version", "cell_id"} <= keys:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"records built without make_record: {offenders}"
