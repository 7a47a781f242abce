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
