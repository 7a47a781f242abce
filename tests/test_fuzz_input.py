"""Fuzz: hundreds of generated mutations of the shipped suites and of a run's records and manifest.

Every mutation goes through the CLI's main() in this process (tests/hostile.py), so the whole
campaign takes seconds. What must hold for each one: no traceback ever; a suite either plans
(`planned`, with `dlm-harness run` stopped before compute) or exits 2 naming the suite file and
leaving no run directory behind; a NaN or infinity anywhere in a suite exits 2; `report` and
`compare` on mutated run data exit 0, 1 or 2, and 2 whenever the data is structurally broken.
Mutations are drawn from a fixed random.Random seed, so a failure reproduces.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path

import pytest
import yaml

from harness.models.tiny import CHECKPOINT_DIR
from tests.helpers import ROOT, write_suite
from tests.hostile import call, cli, planning_only  # noqa: F401

SHIPPED = sorted(p for p in (ROOT / "suites").glob("*.yaml") if not p.name.startswith("lm-eval"))  # own schema
N_SUITE_MUTATIONS = 180
N_RUN_MUTATIONS = 120
HOSTILE = [math.nan, math.inf, -math.inf, -1, 0, 10**12, 1.5, -0.5, "", "x" * 300, None, [], {}, True, "all",
           [1, 2], {"a": 1}, 2**63, "1e9", "../../etc", "name\n", "/abs/path", "a/b"]


def _normalise(data: dict) -> dict:
    """Make a shipped suite plan on this machine: a built-in checkpoint, cpu (smoke and gpu-studies
    name a checkpoint and a device that exist only where they are run by hand; the real-checkpoint
    GPU suites ask for cuda)."""
    for m in (data.get("models") or {}).values():
        m.setdefault("params", {})
        m["params"].pop("device", None)
        ckpt = m["params"].get("checkpoint")
        built_in = isinstance(ckpt, str) and "/" not in ckpt and (CHECKPOINT_DIR / ckpt / "config.json").is_file()
        if m.get("name") == "tiny" and not built_in:  # a built-in checkpoint stays (the any-order one)
            m["params"]["checkpoint"] = "tiny-addition"
        if m.get("name") in ("llada", "dream", "sdar") and "path" in m["params"]:  # a hub id: no hub here
            m["params"] = {"preset": "tiny"}
    return data


def _paths(node, prefix=()):
    """Every key path into nested dicts/lists (containers and leaves)."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _get(node, path):
    for k in path:
        node = node[k]
    return node


def mutate(data, rng: random.Random) -> tuple[object, str]:
    """One mutation of a JSON/YAML tree -> (new tree, what was done)."""
    data = copy.deepcopy(data)
    paths = [p for p in _paths(data) if p]
    path = rng.choice(paths)
    parent, key = _get(data, path[:-1]), path[-1]
    op = rng.random()
    if op < 0.6:
        value = rng.choice(HOSTILE)
        parent[key] = copy.deepcopy(value)
        return data, f"set {'.'.join(map(str, path))} = {value!r:.40}"
    if op < 0.75 and isinstance(parent, dict):
        del parent[key]
        return data, f"delete {'.'.join(map(str, path))}"
    if op < 0.85 and isinstance(parent, dict):
        parent["bogus_" + str(rng.randrange(100))] = 1
        return data, f"unknown key beside {'.'.join(map(str, path))}"
    if isinstance(_get(data, path), (dict, list)):
        parent[key] = rng.choice(["scalar", 7, None])
        return data, f"container {'.'.join(map(str, path))} -> scalar"
    parent[key] = [parent[key]]
    return data, f"wrap {'.'.join(map(str, path))} in a list"


def _has_non_finite(node) -> bool:
    return any(isinstance(_get(node, p), float) and not math.isfinite(_get(node, p)) for p in _paths(node))


def _raw_mutations(text: str, rng: random.Random) -> list[tuple[str | bytes, str]]:
    """Mutations of the file's bytes rather than its tree."""
    cut = rng.randrange(1, len(text))
    return [(text[:cut], f"truncated at {cut}"),
            (text.replace(":", "", 1), "a colon removed"),
            (bytes(rng.randrange(256) for _ in range(200)), "random bytes"),
            ("\t" + text, "tab indentation"),
            (_alias_bomb() + text, "alias bomb in front")]


def _alias_bomb() -> str:
    """8 levels of 8 aliases each: about 200 bytes, 8^8 values once expanded."""
    rows = [f"b{i}: &b{i} [{', '.join(['*a' if i == 0 else f'*b{i - 1}'] * 8)}]\n" for i in range(8)]
    return "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(rows)


def test_fuzz_shipped_suites(tmp_path, planning_only):  # noqa: F811
    rng = random.Random(17)
    results = tmp_path / "res"
    t0 = time.perf_counter()
    bases = {p.name: _normalise(yaml.safe_load(p.read_text())) for p in SHIPPED}
    for name, data in bases.items():  # each base plans, so mutations test what they change
        rc, err = cli(["run", write_suite(tmp_path, yaml.safe_dump(data), name), "--results", results, "--no-progress"])
        assert rc == "planned", f"{name}: {err}"
    cases = []
    per_suite = N_SUITE_MUTATIONS // len(bases)
    for name, data in bases.items():
        cases += [(name,) + mutate(data, rng) for _ in range(per_suite)]
        cases += [(name, raw, what) for raw, what in _raw_mutations(yaml.safe_dump(data), rng)]
    counts = {"planned": 0, 2: 0}
    for i, (name, data, what) in enumerate(cases):
        path = tmp_path / f"m{i}-{name}"
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
        before = set(results.rglob("manifest.json"))
        rc, err = cli(["run", path, "--results", results, "--no-progress"])
        assert rc in counts, f"{name}: {what}: exit {rc}: {err}"
        counts[rc] += 1
        if rc == 2:
            assert err.startswith("error: ") and str(path) in err, f"{name}: {what}: {err}"
            assert set(results.rglob("manifest.json")) == before, f"{name}: {what}: left a run directory"
            assert len(err) < 4000, f"{name}: {what}: a {len(err)}-character message"
        if not isinstance(data, (str, bytes)) and _has_non_finite(data):
            assert rc == 2, f"{name}: {what}: a NaN/inf was accepted"
    assert len(cases) >= N_SUITE_MUTATIONS and counts[2] > len(cases) // 3, counts
    assert time.perf_counter() - t0 < 45


SUITE = """\
suite: fz
models: {tiny: {name: tiny, params: {checkpoint: CKPT}}}
tasks: {add: {name: addition, params: {n_digits: 2, n_test: 4}, n_items: 4}}
metrics: {elbo: higher}
studies:
  - {id: elbo, kind: likelihood, model: tiny, task: add, estimator: {name: mc_elbo, params: {n_mc: 1}},
     batch_size: 4, replicates: 2}
"""


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, tiny_ckpt) -> Path:
    tmp = tmp_path_factory.mktemp("fuzz-base")
    path = write_suite(tmp, SUITE.replace("CKPT", str(tiny_ckpt)))
    rc, out, err = call(["run", path, "--results", tmp / "res", "--no-progress"])
    assert rc == 0, err
    return Path(out.strip().splitlines()[-1])


BROKEN_LINES = ["[1, 2]", "42", '"text"', "null", "{", "\x00\x01\x02", '{"schema_version": 1}']


def test_fuzz_records_and_manifest(tmp_path, base_run):
    rng = random.Random(1717)
    records = [json.loads(x) for x in (base_run / "records.jsonl").read_text().splitlines()]
    manifest = json.loads((base_run / "manifest.json").read_text())
    t0 = time.perf_counter()
    counts = {0: 0, 1: 0, 2: 0}
    for i in range(N_RUN_MUTATIONS):
        recs, man, broken = copy.deepcopy(records), copy.deepcopy(manifest), False
        kind = rng.random()
        if kind < 0.45:  # one field of one record
            j = rng.randrange(len(recs))
            recs[j], what = mutate(recs[j], rng)
            lines = [json.dumps(r) for r in recs]
        elif kind < 0.65:  # a line that is not a record (not the last: a torn tail is tolerated)
            lines = [json.dumps(r) for r in recs]
            bad = rng.choice(BROKEN_LINES)
            lines.insert(rng.randrange(len(lines)), bad)
            what, broken = f"line {bad!r}", True
        elif kind < 0.85:  # one field of the manifest
            man, what = mutate(man, rng)
            lines = [json.dumps(r) for r in recs]
        else:  # the whole manifest
            choice = rng.choice(["{}", "[]", "\xff\xfe", "", "null", json.dumps({"run_id": 1, "suite": "fz"})])
            lines = [json.dumps(r) for r in recs]
            what, broken, man = f"manifest {choice!r}", True, choice
        d = tmp_path / f"run{i}"
        d.mkdir()
        (d / "records.jsonl").write_text("\n".join(lines) + "\n")
        (d / "manifest.json").write_bytes(man.encode("utf-8", "surrogateescape") if isinstance(man, str)
                                          else json.dumps(man).encode())
        outside = set(tmp_path.parent.iterdir())
        for argv in (["report", d, "--out", tmp_path / "reports"], ["compare", base_run, d]):
            rc, _, err = call(argv)
            assert rc in counts, f"{what}: {argv[0]} exit {rc}: {err}"
            counts[rc] += 1
            if broken:
                assert rc == 2 and str(d) in err, f"{what}: {argv[0]} exit {rc}: {err}"
        # nothing written beside the output folder (a manifest's suite or run_id is never a path)
        assert {p for p in tmp_path.iterdir() if p.name not in ("reports", d.name)} <= \
            {tmp_path / f"run{j}" for j in range(i)} | {tmp_path / "f", tmp_path / "dirs"}, what
        assert set(tmp_path.parent.iterdir()) == outside, what
        assert not Path("/abs").exists(), what
    # a file where a directory belongs, a directory where a file belongs
    (tmp_path / "f").write_text("x")
    assert call(["report", base_run, "--out", tmp_path / "f"])[0] == 2
    d = tmp_path / "dirs"
    (d / "records.jsonl").mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert call(["report", d])[0] == 2 and call(["compare", base_run, d])[0] == 2
    assert counts[2] >= N_RUN_MUTATIONS // 4, counts
    assert time.perf_counter() - t0 < 45
