"""The sandbox: ordinary programs pass or fail honestly; a corpus of hostile programs is contained,
scored as failed, and leaves the parent process, the host's files and the working tree untouched."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from harness.evaluate import code_isolation
from harness.registry import TASKS
from harness.tasks import sandbox
from harness.tasks.data import REPO_ROOT
from harness.tasks.sandbox import FIRST_UID, UnsafeCodeRefused, preflight, run_many, run_program
from harness.types import HarnessError, Item
from tests.tasks.conftest import fresh_uid_processes

SECRET = "DLM_SANDBOX_TEST_SECRET"
HE_ITEM = Item(id="t", prompt='def add(a, b):\n    """Return a + b."""\n', reference="", meta={
    "entry_point": "add", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"})


def test_honest_programs():
    ok = run_program("import math, re, collections\nassert math.gcd(12, 18) == 6\nprint('done')", timeout_s=20)
    assert ok.passed and ok.status == "passed" and ok.returncode == 0 and ok.stdout == "done"
    bad = run_program("def f(x):\n    return x + 1\nassert f(1) == 3", timeout_s=20)
    assert not bad.passed and bad.status == "failed" and "AssertionError" in bad.stderr
    syntax = run_program("def f(:\n", timeout_s=20)
    assert syntax.status == "failed" and "SyntaxError" in syntax.stderr
    # The program may use its own temporary folder freely.
    files = run_program("import os, tempfile\nopen('a.txt', 'w').write('x')\nos.remove('a.txt')\n"
                        "with tempfile.NamedTemporaryFile() as f: f.write(b'y')", timeout_s=20)
    assert files.passed, files.stderr


def hostile(canary_file: str, canary_dir: str, parent: int) -> dict[str, str]:
    readme = str(REPO_ROOT / "README.md")
    return {
        "fork_bomb": "import os\nfor _ in range(200):\n    if os.fork() == 0:\n        import time; time.sleep(60)\n",
        "posix_fork": "import posix\nwhile True:\n    posix.fork()\n",
        "subprocess_bomb": "import subprocess\nfor _ in range(100):\n    subprocess.Popen(['sleep', '60'])\n",
        "os_system": "import os\nassert os.system('touch /tmp/dlm_sandbox_pwned') == 0\n",
        "memory_bomb": "x = []\nwhile True:\n    x.append(bytearray(50 << 20))\n",
        "infinite_loop": "while True:\n    pass\n",
        "busy_cpu_ignoring_sigxcpu": "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
                                     "while True:\n    pass\n",
        "sleep_ignoring_signals": "import signal, time\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
                                  "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    time.sleep(1)\n",
        "kill_parent": f"import os, signal\nos.kill({parent}, signal.SIGKILL)\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "killpg_parent": f"import os, signal\nos.killpg(os.getpgid({parent}), signal.SIGKILL)\n",
        "kill_everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\n",
        "delete_canary": f"import os\nos.remove({canary_file!r})\n",
        "rmtree_canary_dir": f"import shutil\nshutil.rmtree({canary_dir!r})\n",
        "overwrite_canary": f"open({canary_file!r}, 'w').write('pwned')\n",
        "rename_canary": f"import os\nos.rename({canary_file!r}, 'stolen.txt')\n",
        "append_working_tree": f"with open({readme!r}, 'a') as f:\n    f.write('pwned')\n",
        "socket_connect": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n",
        "raw_socket": "import _socket\ns = _socket.socket()\ns.connect(('1.1.1.1', 80))\n",
        "read_secret": f"import os\nassert os.environ[{SECRET!r}] == 'hunter2'\n",
        "read_secret_proc": f"assert b'hunter2' in open('/proc/{parent}/environ', 'rb').read()\n",
        "exit_before_tests": "import sys\nsys.exit(0)\nassert False\n",
        "os_exit_before_tests": "import os\nos._exit(0)\nassert False\n",
        "patch_assertion_error": "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
                                 "try:\n    assert 1 == 2\nexcept builtins.AssertionError:\n    pass\n"
                                 "assert 1 == 2\n",
        "atexit_exit_zero": "import atexit, os\natexit.register(lambda: os._exit(0))\nassert False\n",
        "output_flood": "while True:\n    print('x' * 100000)\n",
        "huge_file": "with open('big.bin', 'wb') as f:\n    while True:\n        f.write(b'0' * (1 << 20))\n",
        "recursion_bomb": "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)\n",
        "raise_limits": "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n",
        "setsid_escape": "import os\nos.setsid()\n",
        "signal_self_then_exit": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    }


@pytest.mark.slow
def test_hostile_corpus_is_contained(tmp_path, monkeypatch, sandbox_level):
    canary_dir = tmp_path / "canary"
    canary_dir.mkdir()
    canary = canary_dir / "canary.txt"
    canary.write_text("intact")
    monkeypatch.setenv(SECRET, "hunter2")
    parent, cwd, env = os.getpid(), os.getcwd(), dict(os.environ)
    git = ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=all"]
    tree_before = subprocess.run(git, capture_output=True, text=True).stdout
    readme_before = (REPO_ROOT / "README.md").read_bytes()
    mine = os.path.join(tempfile.gettempdir(), f"dlm-sandbox-{os.getpid()}-*")  # other processes' come and go
    tmp_before = set(glob.glob(mine))

    corpus = hostile(str(canary), str(canary_dir), parent)
    results = run_many(list(corpus.values()), workers=4, timeout_s=4, cpu_s=2, memory_mb=512, max_output_mb=4,
                       level=sandbox_level)
    for (name, _), res in zip(corpus.items(), results):
        assert not res.passed and res.status != "passed", (name, res)
        assert len(res.stdout) <= 2000 and len(res.stderr) <= 2000, name
    by_name = dict(zip(corpus, results))
    assert by_name["infinite_loop"].status in ("timeout", "killed")
    assert by_name["sleep_ignoring_signals"].status == "timeout"

    # The host is untouched: this process, its environment and cwd, the canaries, the working tree.
    assert os.getpid() == parent and os.getcwd() == cwd and dict(os.environ) == env
    assert canary.read_text() == "intact" and sorted(p.name for p in canary_dir.iterdir()) == ["canary.txt"]
    assert not os.path.exists("/tmp/dlm_sandbox_pwned")
    assert (REPO_ROOT / "README.md").read_bytes() == readme_before
    assert subprocess.run(git, capture_output=True, text=True).stdout == tree_before
    assert set(glob.glob(mine)) <= tmp_before  # folders removed
    if sandbox_level != "unsafe":  # every process the corpus started is gone (SIGKILL lands within ~1 s)
        for _ in range(50):
            left = fresh_uid_processes()
            if not left:
                break
            time.sleep(0.1)
        assert left == [], left


def test_environment_is_empty_and_cwd_is_a_fresh_folder(monkeypatch):
    monkeypatch.setenv(SECRET, "hunter2")
    res = run_program("import os\nprint(sorted(os.environ))\nprint(os.getcwd())", timeout_s=20)
    assert res.passed
    names, cwd = res.stdout.splitlines()
    assert SECRET not in names and "PATH" in names and len(eval(names)) <= 8
    assert os.path.basename(cwd).startswith("dlm-sandbox-") and not os.path.exists(cwd)


def test_cpu_limit_kill_is_reported_as_killed():
    """A busy loop reaches the CPU limit long before the wall timeout and is SIGKILLed. In the
    namespaced levels unshare loses that signal from its exit status; the sandbox still says so."""
    res = run_program("while True:\n    pass\n", timeout_s=20, cpu_s=1)
    assert res.status == "killed" and not res.passed and res.wall_s < 15


def test_fresh_proc_and_unprivileged_uid(sandbox_level):
    """In the namespaced levels the program sees a fresh /proc holding only the launcher (PID 1)
    and itself (no host process visible); as root every level runs it as a fresh unprivileged uid."""
    res = run_program("import os\nprint(sorted(p for p in os.listdir('/proc') if p.isdigit()))\nprint(os.getuid())",
                      timeout_s=20, level=sandbox_level)
    assert res.passed and res.level == sandbox_level, res
    pids, uid = res.stdout.splitlines()
    if sandbox_level.endswith("-ns"):
        assert eval(pids) == ["1", "2"]
    else:
        assert len(eval(pids)) > 1  # the unsafe levels see the host's processes: why they need consent
    if os.geteuid() == 0:
        assert int(uid) >= FIRST_UID


def test_without_namespaces_generated_code_is_refused_unless_allowed(monkeypatch):
    """Simulated machine without namespaces: code tasks refuse to run generated code, early and
    with a message naming the flag; once allowed, code runs at the weaker level, as a fresh uid."""
    real = sandbox.probe
    monkeypatch.setattr(sandbox, "probe", lambda level: None if level in sandbox.LEVELS else real(level))
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    with pytest.raises(UnsafeCodeRefused, match="--allow-unsafe-code"):
        run_program("print(1)")
    with pytest.raises(UnsafeCodeRefused):
        TASKS.build("humaneval").score(HE_ITEM, "    return a + b\n")
    with pytest.raises(UnsafeCodeRefused):
        preflight(True)
    assert preflight(False) is None and sandbox.level_name() == "refused"
    with pytest.raises(UnsafeCodeRefused):
        code_isolation({"humaneval": {"task": "dlmh_humaneval", "source": "harness-yaml"}})
    with pytest.raises(HarnessError, match="--allow-unsafe-code"):  # lm-eval's own code_eval: never unasked
        code_isolation({"humaneval": {"task": "humaneval", "source": "lm-eval-builtin"}})
    assert code_isolation({"gsm8k": {"task": "dlmh_gsm8k", "source": "harness-yaml"}}) == {}

    sandbox.allow_unsafe_code()  # what --allow-unsafe-code does
    weak = "unsafe-uid" if os.geteuid() == 0 else "unsafe"
    assert preflight(True) == weak and sandbox.level_name() == weak
    assert TASKS.build("humaneval").score(HE_ITEM, "    return a + b\n") == 1.0
    res = run_program("import os\nprint(os.getuid())", timeout_s=20)
    assert res.passed and res.level == weak and (os.geteuid() != 0 or int(res.stdout) >= FIRST_UID)
    assert code_isolation({"humaneval": {"task": "humaneval", "source": "lm-eval-builtin"}}) == {
        "humaneval": "lm-eval-code_eval"}
    sandbox.allow_unsafe_code(False)


def test_cli_flag_allows_unsafe_code(monkeypatch):
    """`--allow-unsafe-code` on run and eval sets the permission the sandbox reads."""
    from harness.cli import build_parser, main

    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    for cmd in (["run", "suite.yaml"], ["eval", "--tasks", "humaneval"]):
        assert build_parser().parse_args([*cmd, "--allow-unsafe-code"]).allow_unsafe_code
        assert not build_parser().parse_args(cmd).allow_unsafe_code
    assert main(["run", "no-such-suite.yaml", "--allow-unsafe-code"]) == 2  # fails on the suite, after the flag
    assert sandbox.unsafe_code_allowed()
    sandbox.allow_unsafe_code(False)


def test_runs_records_and_reports_name_the_level(tmp_path, tiny_ckpt, monkeypatch):
    """A suite whose task runs code: the manifest and every record carry the level, the report
    states it; on a machine without namespaces the run is refused before any compute."""
    from dataclasses import dataclass

    from harness.records import read_manifest, read_records
    from harness.report.markdown import render
    from harness.runner import Runner
    from harness.tasks.addition import Addition

    @dataclass(frozen=True, kw_only=True)
    class SandboxedAddition(Addition):  # the addition task, scored by running a program in the sandbox
        runs_code = True  # not annotated: a class attribute, not a parameter

        def score(self, item, completion):
            return float(run_program(f"x = {completion!r}\nassert isinstance(x, str)", timeout_s=20).passed)

    monkeypatch.setitem(TASKS._entries, "sandboxed_addition", SandboxedAddition)
    suite = tmp_path / "s.yaml"
    suite.write_text(f"""
suite: sb
models:
  tiny: {{name: tiny, params: {{checkpoint: {tiny_ckpt}}}}}
tasks:
  add: {{name: sandboxed_addition, params: {{n_digits: 2}}, split: test, n_items: 2}}
studies:
  - id: gen
    kind: generate
    model: tiny
    task: add
    sampler: {{name: low_confidence, params: {{}}}}
""")
    run_dir = Runner(suite, results=tmp_path / "r", progress=False).run()
    level = sandbox.level_name()
    records = read_records(run_dir)
    assert len(records) == 2 and {r["sandbox"] for r in records} == {level} and level != "refused"
    assert all(r["outcome"]["value"] == 1.0 for r in records)
    assert read_manifest(run_dir)["sandbox"] == level
    assert f"isolation level `{level}` (2 records)" in render(run_dir)

    real = sandbox.probe
    monkeypatch.setattr(sandbox, "probe", lambda lv: None if lv in sandbox.LEVELS else real(lv))
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    with pytest.raises(UnsafeCodeRefused):
        Runner(suite, results=tmp_path / "r2", progress=False)
    assert not (tmp_path / "r2").exists()


LADDER_SCRIPT = """
import json, os
from harness.tasks import sandbox
if os.environ.get("DLMH_LADDER_NO_NS"):  # a machine without namespaces, simulated
    real = sandbox.probe
    sandbox.probe = lambda lv: None if lv in sandbox.LEVELS else real(lv)
try:
    level = sandbox.isolation().level
except sandbox.UnsafeCodeRefused:
    level = "refused"
out = {"level": level}
if level != "refused":
    res = sandbox.run_program("import os\\nprint(os.getuid(), len([p for p in os.listdir('/proc') if p.isdigit()]))")
    out.update(passed=res.passed, uid_and_procs=res.stdout)
    marker = os.environ.get("DLMH_LADDER_MARKER")
    if marker:  # files in /tmp and /dev/shm and a daemon: none may outlive the run
        import time
        res = sandbox.run_program(os.environ["DLMH_LADDER_PROGRAM"], timeout_s=20)
        time.sleep(3)
        me = f"Uid:\\t{os.getuid()}\\t"
        mine = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()
                and me in (open(f"/proc/{p}/status").read() if os.path.exists(f"/proc/{p}/status") else "")]
        left = [f"{d}/{n}" for d in ("/tmp", "/dev/shm") for n in os.listdir(d) if n.startswith(marker)]
        out.update(left_passed=res.passed, left_files=left, left_procs=mine)
print(json.dumps(out))
"""


def _leftovers(marker: str) -> str:
    """Files in /tmp and /dev/shm and a detached daemon that writes one more later."""
    return ("import _io, sys, time\nfor d in ('/tmp', '/dev/shm'):\n    for i in range(200):\n"
            f"        _io.open(d + '/{marker}_%d' % i, 'w').close()\n"
            "del sys.modules['ctypes'], sys.modules['_ctypes']\nimport ctypes\nlibc = ctypes.CDLL(None)\n"
            "if libc.fork() == 0:\n    libc.setsid()\n    time.sleep(2)\n"
            f"    _io.open('/tmp/{marker}_daemon', 'w').close()\n    libc._exit(0)\n")


def _ladder(prefix: list[str], **env) -> dict:
    import json
    import sys

    proc = subprocess.run([*prefix, sys.executable, "-c", LADDER_SCRIPT], capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # fresh interpreters importing the harness
@pytest.mark.skipif(os.geteuid() != 0 or sandbox.probe("root-ns") is None, reason="needs root with namespaces")
def test_the_ladder_on_weaker_machines(monkeypatch):
    """Real (not mocked) weaker machines: root without CAP_SYS_ADMIN (as in a default container)
    falls back to user namespaces, still as a fresh uid with a fresh /proc; a normal user gets user
    namespaces as that user, and nothing the program writes or starts outlives the run. (A machine
    with no namespaces at all is simulated by
    test_without_namespaces_generated_code_is_refused_unless_allowed.)"""
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    setpriv = shutil.which("setpriv")
    if not setpriv or sandbox.probe("user-ns") is None:
        pytest.skip("needs setpriv and user namespaces")
    out = _ladder([setpriv, "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--"])
    uid, procs = out["uid_and_procs"].split()
    assert out["level"] == "user-ns" and out["passed"] and int(uid) >= FIRST_UID and procs == "2", out
    user = FIRST_UID - 2
    marker = f"dlmh_ladder_{os.getpid()}"
    out = _ladder([setpriv, f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"], DLMH_LADDER_MARKER=marker,
                  DLMH_LADDER_PROGRAM=_leftovers(marker))
    assert out["level"] == "user-ns" and out["passed"] and out["uid_and_procs"] == f"{user} 2", out
    # As a normal user too, files in /tmp and /dev/shm and a detached daemon do not outlive the run.
    assert out["left_passed"] and out["left_files"] == [] and out["left_procs"] == [], out
    # Without namespaces a normal user is refused, then runs at "unsafe" as that user once allowed.
    as_user = [setpriv, f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"]
    assert _ladder(as_user, DLMH_LADDER_NO_NS="1") == {"level": "refused"}
    out = _ladder(as_user, DLMH_LADDER_NO_NS="1", **{sandbox.ALLOW_ENV: "1"})
    uid, procs = out["uid_and_procs"].split()
    assert out["level"] == "unsafe" and out["passed"] and int(uid) == user and int(procs) > 2, out


def test_score_files_of_code_tasks_name_the_level_and_are_refused_without_namespaces(tmp_path, monkeypatch):
    """`dlm-harness score FILE --task humaneval` runs generated code: the same floor and records."""
    import json

    from harness.records import read_manifest, read_records
    from harness.score import score_file
    from harness.tasks import data as data_mod

    if not (data_mod.data_dir() / "humaneval" / "HumanEval.jsonl.gz").is_file():
        pytest.skip("offline HumanEval copy (../shared/data/humaneval) absent")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    gen = tmp_path / "g.jsonl"
    gen.write_text(json.dumps({"id": "HumanEval/1", "generation": "    return None\n"}) + "\n")
    run_dir, counts = score_file(gen, "humaneval", results=tmp_path / "r")
    level = sandbox.level_name()
    assert counts["scored"] == 1 and read_manifest(run_dir)["sandbox"] == level
    assert [(r["outcome"]["value"], r["sandbox"]) for r in read_records(run_dir)] == [(0.0, level)]

    real = sandbox.probe
    monkeypatch.setattr(sandbox, "probe", lambda lv: None if lv in sandbox.LEVELS else real(lv))
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    with pytest.raises(UnsafeCodeRefused):
        score_file(gen, "humaneval", results=tmp_path / "r2")
    assert not (tmp_path / "r2").exists()
