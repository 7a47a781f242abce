"""Calling the CLI in-process as a hostile user would, and checking what comes back.

`cli(argv)` runs `harness.cli.main(argv)` in this process (no interpreter start per call, so a fuzz
test can make hundreds of calls) and returns (exit status, stderr). Any exception that escapes
main() (a traceback the user would see) fails the test with that traceback.
"""
from __future__ import annotations

import contextlib
import io
import json
import traceback
from pathlib import Path

import pytest
import torch

from harness import cli as cli_mod


class Planned(Exception):
    """Raised in place of Runner.run by `planning_only`: planning and run-directory set-up succeeded."""


def cli(argv: list[str]) -> tuple[int | str, str]:
    rc, _, err = call(argv)
    return rc, err


def call(argv: list[str]) -> tuple[int | str, str, str]:
    """-> (exit status, stdout, stderr)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = cli_mod.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code
        except Planned:
            rc = "planned"
        except Exception:
            pytest.fail(f"dlm-harness {' '.join(map(str, argv))[:300]} raised instead of exiting 2:\n"
                        f"{traceback.format_exc()}")
    text = err.getvalue()
    assert "Traceback" not in text, text
    return rc, out.getvalue(), text


def bad_input(argv: list[str], *fragments: str) -> str:
    """`argv` exits 2 with an `error:` message containing every fragment."""
    rc, err = cli(argv)
    assert rc == 2, f"exit {rc} for {argv}: {err}"
    for f in fragments:
        assert f in err, f"{f!r} not in {err!r}"
    return err


@pytest.fixture
def planning_only(monkeypatch):
    """`dlm-harness run` plans, checks the machine and makes the run directory, then stops."""
    from harness import runner

    def stop(self):
        self.close()
        raise Planned

    monkeypatch.setattr(runner.Runner, "run", stop)


def strict_json_lines(path: Path) -> list[dict]:
    """Every line of a JSONL file as strict JSON (a bare NaN or Infinity is an error)."""
    def refuse(name):
        raise AssertionError(f"{path}: bare {name} in a record (not valid JSON)")

    return [json.loads(line, parse_constant=refuse) for line in Path(path).read_text().splitlines() if line]


def nan_checkpoint(src: Path, dst: Path) -> Path:
    """A copy of checkpoint `src` with one NaN in the first attention weight: every logit becomes NaN."""
    import shutil

    shutil.copytree(src, dst)
    state = torch.load(dst / "model.pt", weights_only=True)
    key = next(k for k in state if k.endswith("qkv.weight"))
    state[key].view(-1)[0] = float("nan")
    torch.save(state, dst / "model.pt")
    return dst


# -- generated code that tries to pass without solving, or to break the harness --------------------
RAW = ("import os, _io\n"
       "def raw(fn, name):  # the function the sandbox's Python-level guard wrapped\n"
       "    for c in (getattr(fn, '__closure__', None) or ()):\n"
       "        if callable(c.cell_contents) and getattr(c.cell_contents, '__name__', '') == name:\n"
       "            return c.cell_contents\n"
       "    return fn\n"
       "mkdir, chmod, unlink = raw(os.mkdir, 'mkdir'), raw(os.chmod, 'chmod'), raw(os.unlink, 'unlink')\n")
FORGE = ("import os, sys\ntok = None\nf = sys._getframe()\nwhile f is not None:\n"
         "    tok = f.f_locals.get('token', tok)\n    f = f.f_back\n")
FORGE_END = "os.write(1, b'\\n' + tok + b'\\n')\nos._exit(0)\n"


def forged(line: str) -> str:
    """A program that writes `line` as its report on fd 3, then forges the success token."""
    return FORGE + f"os.write(3, {line!r}.encode() + b'\\n')\n" + FORGE_END


def code_families(entry: str, *, data_file: str, records_file: str, marker: str, ww_dir: str) -> dict[str, str]:
    """Completions (whole definitions of `entry`) of every family that must fail, whatever the
    level: reading the answers from the dataset copy or an earlier run's records, forged reports
    that do not decode, huge numbers, deep folders, deep expressions, tampering with the harness's
    files and descriptors, patching the standard library, leaving files behind. `marker` prefixes
    every file they try to leave in /tmp or /dev/shm; `ww_dir` is a world-writable folder below a
    folder that is not."""
    wrong = f"def {entry}(*args):\n    return None\n"
    return {
        "dataset_read": (
            f"import gzip, json\nopener = gzip.open if {data_file!r}.endswith('.gz') else open\n"
            f"rows = [json.loads(x) for x in opener({data_file!r}, 'rt')]\n"
            f"row = next(r for r in rows if r.get('entry_point') == {entry!r})\n"
            "exec(row['prompt'] + row['canonical_solution'], globals())\n"),
        "record_read": (
            "import json\n"
            f"recs = [json.loads(x) for x in open({records_file!r})]\n"
            f"meta = next(r['generation']['item']['meta'] for r in recs if r['generation']['item']['meta'].get("
            f"'entry_point') == {entry!r})\n"
            "exec(recs[0]['generation']['item']['prompt'] + meta['canonical_solution'], globals())\n"),
        "forged_undecodable_set": forged('{"i": 0, "v": {"s": [[1]]}}'),
        "forged_recorder_set": forged('{"n": "%s", "k": null, "v": {"s": [[1]]}}' % entry),
        "forged_huge_complex": forged('{"i": 0, "v": {"c": [%s, 0]}}' % ("9" * 400)),
        "forged_huge_int": forged('{"i": 0, "v": %s}' % ("9" * 5000)),
        "forged_deep": forged('{"i": 0, "v": %s1%s}' % ("[" * 50_000, "]" * 50_000)),
        "forged_not_json": forged("\xff{not json"),
        "returns_huge_int": f"def {entry}(*args):\n    return 10 ** 5000\n",
        "deep_dirs": (
            RAW + "for base in ('.', '/tmp'):\n    os.chdir(base)\n"
            f"    mkdir({marker!r} + '_deep')\n    os.chdir({marker!r} + '_deep')\n"
            "    for i in range(1400):\n        mkdir('d')\n        os.chdir('d')\n"
            "    open('f', 'w').write('x') if base == '.' else None\n    chmod('.', 0)\n    print('deep', base)\n"
            + wrong),
        "deep_expression_3000": f"def {entry}(*args):\n    return " + "-" * 3000 + "1\n",
        "deep_expression_8000": f"def {entry}(*args):\n    return " + "-" * 8000 + "1\n",
        "deep_sum_100000": f"def {entry}(*args):\n    return " + "1+" * 100_000 + "1\n",
        "log_tampering": (
            RAW + "for d in ('/tmp', '/var/tmp', '/dev/shm'):\n    try:\n        names = os.listdir(d)\n"
            "    except OSError:\n        continue\n    for n in names:\n        if n.startswith('dlm-sandbox'):\n"
            "            for p in (os.path.join(d, n), os.path.join(d, n, 'stdout')):\n                try:\n"
            "                    chmod(p, 0)\n                    unlink(p)\n                except OSError:\n"
            "                    pass\nfor fd in (1, 2, 3):\n    try:\n        os.close(fd)\n    except OSError:\n"
            "        pass\n" + wrong),
        "stdlib_patching": (
            "import os, _io, json\nerrs = []\n"
            "for p in (os.path.join(os.path.dirname(os.__file__), 'dlmh_patched.py'), os.__file__):\n    try:\n"
            "        _io.open(p, 'a').write('\\nraise SystemExit(0)\\n')\n        errs.append('wrote ' + p)\n"
            "    except OSError as e:\n        errs.append(e.errno)\nprint(json.dumps(errs))\n" + wrong),
        "files_left_behind": (
            RAW + f"made = []\nfor d in ('/tmp', '/dev/shm', {ww_dir!r}):\n    made.append(0)\n"
            f"    for i in range(2000 if d != {ww_dir!r} else 1):\n"
            f"        try:\n            _io.open(os.path.join(d, {marker!r} + '_%d' % i), 'w').close()\n"
            "            made[-1] += 1\n        except OSError:\n            break\nprint(made)\n" + wrong),
        "token_then_exit": FORGE + FORGE_END,
    }
