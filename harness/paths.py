"""Names that become paths, and file-system errors that become messages.

`safe_name` is the one check for every name that the harness turns into a path component: a suite
name (from a suite file, a manifest, `score --suite`, an eval suite), a run id (from a manifest),
a study id. A name is 1 to `MAX_NAME` characters of letters, digits, `_`, `-` and `.`, starting
with a letter or digit: no separator, no `..`, no absolute path, no newline (the whole string must
match, not a prefix up to a final newline), nothing a shell or a file system treats specially. So
`reports/<suite>/<run_id>/` and `results/<suite>/<run_id>/` always stay inside their root.

`io_error` turns an OSError (disk full, `ulimit -f`, a read-only or unwritable folder, a file where
a folder belongs, a name too long) into a HarnessError naming the operation and the path;
`guarded(op, path)` is the context manager that does it around one file operation, and
`write_text_atomic` the one way a whole file (a manifest, a report page) is written: through a
temporary file and a rename, the temporary file removed when the write fails. `failed_torch_write`
recognises torch.save failing on a full disk (torch says so with a RuntimeError, not an OSError).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import Any

from harness.types import HarnessError

MAX_NAME = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def safe_name(value: Any, where: str, what: str = "a name") -> str:
    """`value` if it is a name that is safe as one path component; HarnessError naming `where` otherwise
    (`what`: how the message calls it, e.g. "a unique name")."""
    if not isinstance(value, str):
        raise HarnessError(f"{where}: expected {what} (a string), got {type(value).__name__}")
    if len(value) > MAX_NAME:
        raise HarnessError(f"{where}: expected {what} of at most {MAX_NAME} characters, got {len(value)} "
                           f"characters ({value[:40]!r}...)")
    if not _NAME.fullmatch(value) or ".." in value:
        raise HarnessError(f"{where}: expected {what} of letters, digits, '_', '-', '.' (starting with a letter "
                           f"or digit, no '..', no path separator), got {value!r}")
    return value


# What an errno means to a user, where strerror alone is cryptic.
_HINTS = {
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EFBIG: "file too large (the file-size limit, `ulimit -f`, or the file system's)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a file is where a folder is expected",
    errno.EISDIR: "a folder is where a file is expected",
    errno.ENAMETOOLONG: "a file name is too long",
    errno.EDQUOT: "disk quota exceeded",
    errno.ELOOP: "too many symbolic links (or a symbolic link refused)",
}


def describe(exc: OSError) -> str:
    """The reason of an OSError in words (its errno's hint, else its strerror)."""
    return _HINTS.get(exc.errno, exc.strerror or str(exc) or type(exc).__name__)


class IOFailure(HarnessError):
    """A file operation failed (the message names the operation and the path)."""


def io_error(exc: OSError, op: str, path: Path | str | None = None) -> IOFailure:
    """An IOFailure for `exc`: "cannot <op> <path>: <reason>". The OSError's own file name wins
    over `path` (it is the file the call actually touched)."""
    target = exc.filename if exc.filename is not None else path
    shown = f" {target}" if target is not None else ""
    return IOFailure(f"cannot {op}{shown}: {describe(exc)}")


@contextlib.contextmanager
def guarded(op: str, path: Path | str | None = None):
    """`with guarded("write the manifest", p): ...`: an OSError inside becomes an IOFailure."""
    try:
        yield
    except OSError as exc:
        raise io_error(exc, op, path) from None
    except ValueError as exc:  # a NUL byte in a path
        if "null" not in str(exc).lower() and "embedded" not in str(exc).lower():
            raise
        raise HarnessError(f"cannot {op} {path!r}: {exc}") from None


def write_text_atomic(path: Path | str, text: str, what: str = "write") -> Path:
    """Write `text` to `path` through a temporary file and a rename: a reader never sees half a file,
    and a failed write (disk full, a read-only folder) removes the temporary file and raises an
    IOFailure naming `path`; the file at `path` is then unchanged."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):  # named by the file meant, not by its temporary file
            raise IOFailure(f"cannot {what} {path}: {describe(exc)}") from None
        raise
    return path


def failed_torch_write(exc: BaseException) -> bool:
    """Whether `exc` is torch.save failing to write (torch reports a full disk or a file-size limit as a
    RuntimeError from its zip writer, "iostream error" or "unexpected pos", not as an OSError)."""
    import traceback

    if not isinstance(exc, RuntimeError):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return any(f.filename.replace("\\", "/").endswith("torch/serialization.py") for f in frames)
