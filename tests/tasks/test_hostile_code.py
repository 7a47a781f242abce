"""Completions that try to pass the code tasks' tests without solving them, or to escape the
sandbox's Python-level guard, under every isolation level this machine provides: each is scored
as failed and leaves no trace (no file written or deleted outside its folder, no secret read, no
process left behind). The honest control passes at every level, so the checks can fail."""
from __future__ import annotations

import os
import time

import pytest

from harness.registry import TASKS
from harness.tasks._trusted import humaneval_check, mbpp_check, run_check, run_checks
from harness.types import Item
from tests.tasks.conftest import fresh_uid_processes

SECRET = "DLM_HOSTILE_TEST_SECRET"
PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
TEST = ("def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(0, 0) == 0\n"
        "    assert abs(candidate(1.5, 1) - 2.5) < 1e-9\n    assert candidate('a', 'b') == 'ab'\n")
MBPP_TESTS = ["assert add(2, 3) == 5", "assert add(0, 0) == 0", "assert add([1], [2]) == [1, 2]"]

# -- the always-equal family: values that claim to equal anything -------------------------------
ALWAYS_EQUAL = {
    "int_subclass": "class E(int):\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
                    "    __hash__ = int.__hash__\n    def __lt__(self, o): return True\n"
                    "    def __sub__(self, o): return E(0)\n    def __abs__(self): return E(0)\n"
                    "def add(a, b):\n    return E(0)\n",
    "str_subclass": "class S(str):\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
                    "    __hash__ = str.__hash__\ndef add(a, b):\n    return S('')\n",
    "list_subclass": "class L(list):\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
                     "def add(a, b):\n    return L()\n",
    "class_spoofing": "class Any:\n    __class__ = property(lambda self: int)\n    def __eq__(self, o): return True\n"
                      "    def __ne__(self, o): return False\n    def __hash__(self): return 0\n"
                      "    def __sub__(self, o): return self\n    def __abs__(self): return 0\n"
                      "def add(a, b):\n    return Any()\n",
    "sys_modules_patching": "import sys, builtins, math\nclass Yes:\n    def __getattr__(self, n):\n"
                            "        return lambda *a, **k: True\nsys.modules['math'] = Yes()\n"
                            "builtins.abs = lambda x: 0\n"
                            "sys.modules['__main__'].__dict__['_dlmh_eq'] = lambda a, b: True\n"
                            "sys.modules['__main__'].__dict__['check'] = lambda c: None\n"
                            "def add(a, b):\n    return None\n",
    "patch_assertion_error": "import builtins\nclass Never(BaseException):\n    pass\n"
                             "builtins.AssertionError = Never\ndef add(a, b):\n    return None\n",
    "exit_before_asserts_with_forged_token": (
        "import os, sys\ntok = None\nf = sys._getframe()\nwhile f is not None:\n"
        "    tok = f.f_locals.get('token', tok)\n    f = f.f_back\n"
        "os.write(1, b'\\n' + tok + b'\\n')\nos._exit(0)\n"),
    "forged_token_and_garbage_records": (
        "import os, sys\ntok = None\nf = sys._getframe()\nwhile f is not None:\n"
        "    tok = f.f_locals.get('token', tok)\n    f = f.f_back\n"
        "os.write(3, b'{\"n\": \"add\", \"k\": null, \"v\": {\"obj\": 1}}\\n')\n"
        "os.write(1, b'\\n' + tok + b'\\n')\nos._exit(0)\n"),
    "atexit_exit_zero": "import atexit, os\natexit.register(lambda: os._exit(0))\ndef add(a, b):\n    return None\n",
}


def guard_bypass(pwn: str, canary: str, parent: int) -> dict[str, str]:
    """Programs that recover what the Python-level guard took away, then try to do damage."""
    tail = "def add(a, b):\n    return None\n"
    return {
        "io_open_recovered": f"import _io\n_io.open({pwn!r} + '_io', 'w').write('x')\n" + tail,
        "subclasses_fileio": (
            "def walk(c):\n    for s in type.__subclasses__(c):\n        yield s\n        yield from walk(s)\n"
            "F = next(c for c in walk(object) if c.__name__ == 'FileIO' and c.__module__ in ('_io', 'io'))\n"
            f"F({pwn!r} + '_sub', 'w').write(b'x')\nF('/dev/shm/' + {os.path.basename(pwn)!r}, 'w').write(b'x')\n"
            "import os\nraw = [c.cell_contents for c in os.remove.__closure__ if callable(c.cell_contents) and "
            f"getattr(c.cell_contents, '__name__', '') == 'remove'][0]\nraw({canary!r})\n" + tail),
        "gc_recovered_os_open": (
            "import gc, os\nraw = next(o for o in gc.get_objects() if callable(o) and getattr(o, '__name__', '') == "
            "'open' and getattr(o, '__module__', '') == 'posix')\n"
            f"fd = raw({pwn!r} + '_gc', os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')\n" + tail),
        "importlib_reload": (
            "import importlib, sys, os, shutil, posix\nfor m in (posix, os, shutil):\n    try:\n"
            "        importlib.reload(m)\n    except Exception:\n        pass\n"
            f"open({pwn!r} + '_reload', 'w').write('x')\nos.remove({canary!r})\n" + tail),
        "ctypes_double_fork_daemon": (
            "import sys\ndel sys.modules['ctypes']\ndel sys.modules['_ctypes']\nimport ctypes, time\n"
            "libc = ctypes.CDLL(None)\nif libc.fork() == 0:\n    libc.setsid()\n    if libc.fork() == 0:\n"
            f"        time.sleep(3)\n        import _io\n        _io.open({pwn!r} + '_daemon', 'w').write('x')\n"
            "    libc._exit(0)\n" + tail),
        "read_parent_environ": (
            f"import _io\ntry:\n    print(_io.open('/proc/{parent}/environ', 'rb').read())\nexcept OSError as e:\n"
            "    print(e)\n" + tail),
    }


def _pwned(pwn: str) -> list[str]:
    base = os.path.basename(pwn)
    return [p for d in ("/tmp", "/var/tmp", "/dev/shm") for p in (os.path.join(d, f) for f in os.listdir(d))
            if os.path.basename(p).startswith(base)]


def test_honest_and_always_equal_completions_under_every_level(sandbox_level):
    """The always-equal family fails in the trusted check, for HumanEval- and MBPP-shaped tests."""
    honest = "def add(a, b):\n    return a + b\n"
    programs = {"honest": honest, **ALWAYS_EQUAL}
    checks = [humaneval_check(PROMPT, src, TEST, "add") for src in programs.values()]
    checks += [mbpp_check(src, "", MBPP_TESTS) for src in programs.values()]
    results = run_checks(checks, workers=4, timeout_s=20, level=sandbox_level)
    names = [f"humaneval/{n}" for n in programs] + [f"mbpp/{n}" for n in programs]
    verdict = {n: r.passed for n, r in zip(names, results)}
    assert verdict == {n: n.endswith("/honest") for n in names}
    assert {r.level for r in results} == {sandbox_level}


@pytest.mark.slow
def test_guard_bypass_family_fails_and_leaves_no_trace(sandbox_level, tmp_path, monkeypatch):
    """Under namespaces or a fresh uid the kernel stops what the guard cannot; files the program
    may create in world-writable folders are deleted, its daemons killed, the parent's secrets unseen."""
    if sandbox_level == "unsafe":
        pytest.skip("as the current user nothing stops a recovered `open`: that is why the level needs consent, "
                    "and why this corpus is not run there (it would leave files behind)")
    canary = tmp_path / "canary.txt"
    canary.write_text("intact")
    os.chmod(tmp_path, 0o755)  # readable by anyone: only kernel permissions protect the canary
    monkeypatch.setenv(SECRET, "hunter2")
    pwn = f"/tmp/dlm_pwned_{os.getpid()}_{sandbox_level}"
    corpus = guard_bypass(pwn, str(canary), os.getpid())
    checks = [humaneval_check(PROMPT, src, TEST, "add") for src in corpus.values()]
    results = run_checks(checks, workers=4, timeout_s=20, level=sandbox_level)
    for name, res in zip(corpus, results):
        assert not res.passed, name
        assert "hunter2" not in res.stdout + res.stderr, name
    time.sleep(4)  # the daemon would have written by now
    assert canary.read_text() == "intact"
    assert _pwned(pwn) == []
    assert fresh_uid_processes() == []


def test_setup_with_the_completions_classes_is_checked_by_the_trusted_run(sandbox_level):
    """A problem whose setup builds objects with the completion's own class (MBPP 367's tree of
    `Node`) is replayed like every other: the trusted run builds them with the reference's class,
    so a value that only claims equality, or a program that rebinds the comparison, fails."""
    setup = "box = Box(2)"
    tests = ["assert unbox(box) == 2"]
    honest = "class Box:\n    def __init__(self, v): self.v = v\ndef unbox(b):\n    return b.v\n"
    liar = ("class Box:\n    def __init__(self, v): self.v = v\nclass E(int):\n    def __eq__(self, o): return True\n"
            "    __hash__ = int.__hash__\ndef unbox(b):\n    return E(5)\n")
    rebinder = ("class Box:\n    def __init__(self, v): self.v = v\ndef unbox(b):\n    return 5\n"
                "globals()['_dlmh_eq'] = lambda a, b: True\nimport builtins\nbuiltins.AssertionError = KeyError\n")
    checks = [mbpp_check(src, setup, tests, reference=honest) for src in (honest, liar, rebinder)]
    assert all(c.checker for c in checks)
    results = run_checks(checks, workers=3, timeout_s=20, level=sandbox_level)
    assert [r.passed for r in results] == [True, False, False]


def test_task_scorers_use_the_trusted_check():
    """`score` of the real task classes goes through the two runs (an always-equal int fails)."""
    he = Item(id="t", prompt=PROMPT, reference="", meta={"entry_point": "add", "test": TEST})
    mb = Item(id="m", prompt="", reference="", meta={"test_list": MBPP_TESTS, "test_setup_code": ""})
    liar = "```python\n" + ALWAYS_EQUAL["int_subclass"] + "```"
    assert TASKS.build("humaneval").score(he, liar) == 0.0
    assert TASKS.build("mbpp").score(mb, liar + "\n[DONE]") == 0.0
    assert TASKS.build("humaneval").score(he, "    return a + b\n") == 1.0
    # The trusted run, not the untrusted one, holds the verdict: the untrusted run alone "passes".
    check = mbpp_check(ALWAYS_EQUAL["int_subclass"], "", MBPP_TESTS)
    from harness.tasks.sandbox import run_program

    assert run_program(check.program, timeout_s=20, channel=True).passed
    assert not run_check(check, timeout_s=20).passed


def test_changing_the_arguments_does_not_reach_the_trusted_test():
    """A test whose expected side reads the argument after the call: emptying the argument passes
    in one process (Python's own semantics), not in the trusted check, which never sees the change."""
    test = "def check(candidate):\n    x = [3, 1, 2]\n    assert candidate(x) == sorted(x)\n"
    prompt = "def sort(l):\n    pass\n"
    honest, cheat = "def sort(l):\n    return sorted(l)\n", "def sort(l):\n    l.clear()\n    return []\n"
    from harness.tasks.sandbox import run_program

    assert run_program(f"{prompt}{cheat}\n{test}\ncheck(sort)\n", timeout_s=20).passed  # the hole, in one process
    results = run_checks([humaneval_check(prompt, src, test, "sort") for src in (honest, cheat)], timeout_s=20)
    assert [r.passed for r in results] == [True, False]
