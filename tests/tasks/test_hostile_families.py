"""The families of programs that passed, or broke the harness, before the sandbox got its minimal
filesystem view, its dataset-declared functions under test and its strict reports: each fails
(never passes, never raises, never leaves a trace) at every isolation level this machine offers,
through the sandbox API and through `dlm-harness score`. The honest controls pass, so the checks
can fail. The corpus is `tests/hostile.py: code_families`."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import time

import pytest

from harness.tasks import sandbox
from harness.tasks._trusted import humaneval_check, mbpp_check, run_check, run_checks
from harness.tasks.data import data_dir
from tests.hostile import FORGE, FORGE_END, call, code_families
from tests.tasks.conftest import fresh_uid_processes

PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
CANONICAL = "    return a + b\n"
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
HONEST = "def add(a, b):\n    return a + b\n"
# Readable by the sandbox's uid: only the filesystem view keeps them out of reach.
READABLE_ONLY_WITHOUT_A_VIEW = {"dataset_read", "record_read"}


def _answers(tmp_path) -> tuple[str, str]:
    """A dataset copy and an earlier run's records, both holding the canonical solution, world-readable."""
    folder = tmp_path / "shared"
    folder.mkdir()
    data = folder / "HumanEval.jsonl.gz"
    with gzip.open(data, "wt") as f:
        f.write(json.dumps({"task_id": "X/0", "prompt": PROMPT, "entry_point": "add", "canonical_solution": CANONICAL,
                            "test": TEST}) + "\n")
    records = folder / "records.jsonl"
    records.write_text(json.dumps({"generation": {"item": {"prompt": PROMPT, "reference": "", "meta": {
        "entry_point": "add", "canonical_solution": CANONICAL, "test": TEST}}}}) + "\n")
    for p in (tmp_path, folder):
        os.chmod(p, 0o755)
    for p in (data, records):
        os.chmod(p, 0o644)
    return str(data), str(records)


def _ww_dir(marker: str) -> str:
    """/tmp/<marker>_parent (not world-writable) / ww (world-writable)."""
    parent = f"{marker}_parent"
    os.makedirs(f"/tmp/{parent}/ww")
    os.chmod(f"/tmp/{parent}", 0o755)
    os.chmod(f"/tmp/{parent}/ww", 0o777)
    return f"/tmp/{parent}/ww"


def _left(marker: str) -> list[str]:
    out = []
    for d in ("/tmp", "/var/tmp", "/dev/shm", f"/tmp/{marker}_parent/ww"):
        try:
            out += [os.path.join(d, n) for n in os.listdir(d) if n.startswith(marker) and not n.endswith("_parent")]
        except OSError:
            pass
    return out


def test_every_family_fails_and_leaves_no_trace(sandbox_level, tmp_path):
    marker = f"dlmh_hostile_{os.getpid()}_{sandbox_level}"
    data, records = _answers(tmp_path)
    ww = _ww_dir(marker)
    try:
        corpus = code_families("add", data_file=data, records_file=records, marker=marker, ww_dir=ww)
        programs = {"honest": HONEST, **corpus}
        checks = [humaneval_check(PROMPT, src, TEST, "add", reference=CANONICAL) for src in programs.values()]
        results = dict(zip(programs, run_checks(checks, workers=4, timeout_s=20, level=sandbox_level)))
        viewless = sandbox_level in sandbox.UNSAFE_LEVELS
        for name, res in results.items():
            assert res.status != "error", (name, res)
            if name == "honest" or (viewless and name in READABLE_ONLY_WITHOUT_A_VIEW):
                continue  # below: the documented hole of the levels without a view
            assert not res.passed, (name, res)
        assert results["honest"].passed, results["honest"]
        if not viewless:  # without a view, whatever the uid may read is readable: why those levels need consent
            for name in READABLE_ONLY_WITHOUT_A_VIEW:
                assert "No such file or directory" in results[name].stderr, results[name]
        for name in ("forged_undecodable_set", "forged_huge_complex", "forged_huge_int", "forged_deep",
                     "forged_not_json"):
            assert "rejected the program's report" in results[name].stderr, (name, results[name].stderr)
        # The standard library is read-only for the program: in the view the mount refuses even a
        # new file in its folder (EROFS, 30: so also where the harness's user owns the interpreter);
        # without a view, the kernel's permissions refuse a fresh uid (EACCES, 13).
        new_file, existing = json.loads(results["stdlib_patching"].stdout.splitlines()[0])
        assert new_file == (13 if viewless else 30) and existing in (13, 30), (new_file, existing)
        # It did write its files (in the view: its private /tmp and /dev/shm; the folder below /tmp
        # does not exist there), and none is left.
        made = results["files_left_behind"].stdout.splitlines()[0]
        assert made == ("[2000, 2000, 1]" if viewless else "[2000, 2000, 0]"), made
        assert results["deep_dirs"].stdout.splitlines()[:2] == ["deep .", "deep /tmp"], results["deep_dirs"]
        later = sandbox.run_program("import dlmh_patched", timeout_s=20, level=sandbox_level)
        assert not later.passed and "ModuleNotFoundError" in later.stderr
        # Nothing is left: no file in /tmp, /dev/shm or the world-writable folder, no deep chain,
        # no process of a fresh uid.
        assert _left(marker) == []
        for _ in range(50):
            if not fresh_uid_processes():
                break
            time.sleep(0.1)
        assert fresh_uid_processes() == []
    finally:
        shutil.rmtree(f"/tmp/{marker}_parent", ignore_errors=True)


def test_frame_reading_and_name_shadowing_fail(sandbox_level):
    """HumanEval 38/50/151: the test computes the expected value in its own variable; a program
    that reads it from its caller's frame finds no test there. MBPP 126: the function under test
    is called `sum`; one defined inside `if True:` is still the function under test (the reference
    solution names it), and rebinding the comparison only changes the untrusted process."""
    prompt = "def rev(s):\n    \"\"\"s reversed.\"\"\"\n"
    test = ("def check(candidate):\n    import random\n    for _ in range(5):\n"
            "        s = ''.join(random.choice('abc') for _ in range(6))\n        enc = s[::-1]\n"
            "        assert candidate(enc) == s\n")
    frame_reader = ("def rev(x):\n    import sys\n    f = sys._getframe(1)\n    while f is not None:\n"
                    "        for v in f.f_locals.values():\n"
                    "            if type(v) is str and v != x and sorted(v) == sorted(x):\n                return v\n"
                    "        f = f.f_back\n    return x\n")
    honest_rev = "def rev(s):\n    return s[::-1]\n"
    ref126 = ("def sum(a, b):\n    total = 0\n    for i in range(1, min(a, b)):\n"
              "        if a % i == 0 and b % i == 0:\n            total += i\n    return total\n")
    tests126 = ["assert sum(10, 15) == 6", "assert sum(4, 6) == 3"]
    shadow = ("if True:\n    def sum(a, b):\n        return 0\nglobals()['_dlmh_eq'] = lambda a, b: True\n"
              "import builtins\nbuiltins.AssertionError = KeyError\n")
    honest126 = ref126
    checks = [humaneval_check(prompt, src, test, "rev", reference="    return s[::-1]\n")
              for src in (honest_rev, frame_reader, FORGE + FORGE_END)]
    checks += [mbpp_check(src, "", tests126, reference=ref126) for src in (honest126, shadow, "x = 1\n")]
    got = [r.passed for r in run_checks(checks, workers=3, timeout_s=20, level=sandbox_level)]
    assert got == [True, False, False, True, False, False]


def test_memory_is_capped_for_the_whole_run_not_per_process(sandbox_level):
    """Three forked children each hold 300 MB under a 512 MB budget: with a cgroup, not all three
    hold it at once (the run's memory is capped); with rlimits alone, each process is capped."""
    if sandbox.limits_name() == "rlimit" or not sandbox.probe(sandbox_level).fresh_uid:
        pytest.skip("no writable cgroup hierarchy with memory and pids controllers here (rlimits per process only)")
    program = ("import sys, os, time\ndel sys.modules['ctypes'], sys.modules['_ctypes']\nimport ctypes\n"
               "libc = ctypes.CDLL(None)\nr, w = os.pipe()\nkids = []\nfor _ in range(3):\n    pid = libc.fork()\n"
               "    if pid == 0:\n        b = bytearray(300 << 20)\n"
               "        b[::4096] = b'\\x01' * len(range(0, len(b), 4096))\n"
               "        os.write(w, b'1')\n        time.sleep(1.5)\n        libc._exit(0)\n    kids.append(pid)\n"
               "time.sleep(2.5)\nos.close(w)\nprint(len(os.read(r, 100)))\n")
    res = sandbox.run_program(program, timeout_s=20, memory_mb=512, level=sandbox_level)
    assert res.passed, res
    assert int(res.stdout.split()[-1]) < 3, res.stdout


@pytest.mark.skipif(not (data_dir() / "humaneval" / "HumanEval.jsonl.gz").is_file()
                    or not (data_dir() / "mbpp" / "mbpp.jsonl").is_file(),
                    reason="offline HumanEval and MBPP copies (../shared/data) absent")
def test_score_grades_the_families_as_failures_and_errors_count(sandbox_level, tmp_path, monkeypatch):
    """Through `dlm-harness score`: every hostile generation is an ok row with value 0 (no error
    row, no traceback, the manifest complete), a row with no reference is an error row that counts
    as a failure, and --exclude-errors gives the other denominator."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    real = sandbox.probe
    order = [*sandbox.LEVELS, *sandbox.UNSAFE_LEVELS]
    monkeypatch.setattr(sandbox, "probe", lambda lv: None if order.index(lv) < order.index(sandbox_level) else real(lv))
    if sandbox_level in sandbox.UNSAFE_LEVELS:
        monkeypatch.setenv(sandbox.ALLOW_ENV, "1")
    marker = f"dlmh_score_{os.getpid()}_{sandbox_level}"
    ww = _ww_dir(marker)
    try:
        results = tmp_path / "results"
        honest = tmp_path / "honest.jsonl"
        canonical = json.loads(gzip.open(data_dir() / "humaneval" / "HumanEval.jsonl.gz", "rt").readline())
        honest.write_text(json.dumps({"id": "HumanEval/0", "generation": canonical["canonical_solution"]}) + "\n")
        rc, out, err = call(["score", honest, "--task", "humaneval", "--results", results, "--suite", "earlier"])
        assert rc == 0, err
        earlier = next(results.glob("earlier/*/records.jsonl"))
        os.chmod(results, 0o755)
        corpus = code_families("has_close_elements", data_file=str(data_dir() / "humaneval" / "HumanEval.jsonl.gz"),
                               records_file=str(earlier), marker=marker, ww_dir=ww)
        keep = ["dataset_read", "record_read", "forged_undecodable_set", "forged_huge_complex", "forged_huge_int",
                "deep_dirs", "deep_expression_3000", "deep_expression_8000", "log_tampering", "token_then_exit"]
        rows = [{"id": "HumanEval/0", "generation": canonical["canonical_solution"]}]
        rows += [{"id": f"HumanEval/{i + 1}", "generation": corpus[k]} for i, k in enumerate(keep)]
        rows.append({"id": "HumanEval/999", "generation": "    return 1\n"})  # no such item: no reference
        gen = tmp_path / "hostile.jsonl"
        gen.write_text("".join(json.dumps(r) + "\n" for r in rows))
        rc, out, err = call(["score", gen, "--task", "humaneval", "--results", results, "--suite", "hostile"])
        assert rc == 0 and "Traceback" not in err, err
        run = next(results.glob("hostile/*"))
        manifest = json.loads((run / "manifest.json").read_text())
        recs = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]
        assert manifest["status"] == "complete" and manifest["sandbox"] == sandbox_level
        by_line = {r["generation"]["line"]: r for r in recs}
        assert by_line[1]["status"] == "ok" and by_line[1]["outcome"]["value"] == 1.0
        viewless = sandbox_level in sandbox.UNSAFE_LEVELS
        for i, name in enumerate(keep, start=2):
            r = by_line[i]
            assert r["status"] == "ok", (name, r.get("error"))
            if not (viewless and name in READABLE_ONLY_WITHOUT_A_VIEW):
                assert r["outcome"]["value"] == 0.0, name
        assert by_line[len(rows)]["status"] == "error"
        n = len(rows)
        passed = sum(r["outcome"]["value"] for r in recs if r["status"] == "ok")
        assert passed == 1 or viewless  # only the honest row, where the view hides the answers
        assert manifest["accuracy"] == [{"cell": "humaneval[protocol=harness]", "metric": "accuracy",
                                         "mean": pytest.approx(passed / n), "n": n, "errors": 1,
                                         "exclude_errors": False}]
        assert f"accuracy: {passed / n:.3f} (n = {n}, 1 error rows counted as failures)" in err
        rc, out, err = call(["score", gen, "--task", "humaneval", "--results", results, "--suite", "again",
                             "--exclude-errors"])
        assert rc == 0 and f"accuracy: {passed / (n - 1):.3f} (n = {n - 1}, 1 error rows left out" in err, err
        # MBPP 126 (`sum` inside `if True:`) and 367 (the completion's own Node) through score too.
        shadow = ("[BEGIN]\nif True:\n    def sum(a, b):\n        return 6\n"
                  "globals()['_dlmh_eq'] = lambda a, b: True\n[DONE]")
        liar = ("[BEGIN]\nclass Node:\n    def __init__(self, data):\n"
                "        self.data, self.left, self.right = data, None, None\n"
                "class E(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\n"
                "def is_tree_balanced(root):\n    return E(0)\n[DONE]")
        mb = tmp_path / "mbpp.jsonl"
        mb.write_text(json.dumps({"id": "mbpp/126", "generation": shadow}) + "\n"
                      + json.dumps({"id": "mbpp/367", "generation": liar}) + "\n")
        rc, out, err = call(["score", mb, "--task", "mbpp", "--results", results, "--suite", "mb"])
        assert rc == 0, err
        recs = [json.loads(x) for x in next(results.glob("mb/*/records.jsonl")).read_text().splitlines()]
        assert [(r["status"], r["outcome"]["value"]) for r in recs] == [("ok", 0.0), ("ok", 0.0)]
        assert _left(marker) == []
    finally:
        shutil.rmtree(f"/tmp/{marker}_parent", ignore_errors=True)


def test_a_failed_program_is_never_an_exception():
    """run_check returns a failed verdict for whatever the program reported; never raises."""
    check = humaneval_check(PROMPT, "", TEST, "add", reference=CANONICAL)
    for line in ('{"i": 0, "v": {"s": [[1]]}}', '{"i": 0, "v": {"c": [%s, 0]}}' % ("9" * 400), "[" * 10_000):
        program = "\n" + FORGE + f"os.write(3, {line!r}.encode())\n" + FORGE_END
        res = run_check(humaneval_check(PROMPT, program, TEST, "add", reference=CANONICAL), timeout_s=20)
        assert not res.passed and res.status == "failed", res
    assert not run_check(check, timeout_s=20).passed  # the prompt's stub alone returns None



def test_a_test_that_cannot_be_planned_is_an_error_not_an_exception():
    """A test whose calls take arguments the format cannot carry (no dataset item does) is the
    harness's problem, whatever the program: status "error" with the reason, never a raise."""
    prompt = 'def f(x):\n    """d"""\n'
    test = "def check(candidate):\n    assert candidate(object()) == 1\n"
    res = run_check(humaneval_check(prompt, "    return 1\n", test, "f", reference="    return 1\n"), timeout_s=20)
    assert res.status == "error" and not res.passed and "not plain values" in res.stderr


def test_removal_needs_no_recursion_and_no_long_path(tmp_path):
    """1,500 nested folders whose full path is far beyond PATH_MAX, some unreadable: gone, no raise."""
    top = tmp_path / "top"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    for i in range(1500):
        os.mkdir("d" * 60, dir_fd=fd)
        child = os.open("d" * 60, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
        if i % 500 == 0:
            os.chmod(f"/proc/self/fd/{fd}", 0o100)
    os.close(fd)
    assert sandbox.remove_tree(str(top)) is True and not top.exists()
    assert sandbox.remove_tree(str(top)) is True  # already gone
