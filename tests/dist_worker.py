"""`torchrun -m tests.dist_worker ARGS...`: `dlm-harness ARGS...`, except that the rank named by
DLM_TEST_KILL_RANK dies half-way through writing its DLM_TEST_KILL_AFTER-th record (a torn line,
then os._exit), like a rank killed mid-run. Used by tests/test_distributed.py."""
from __future__ import annotations

import json
import os
import sys

from harness import distributed
from harness.cli import main


def _arm() -> None:
    rank, after = os.environ.get("DLM_TEST_KILL_RANK"), os.environ.get("DLM_TEST_KILL_AFTER")
    if rank is None or int(os.environ.get("RANK", "0")) != int(rank):
        return
    real_write = distributed.ShardWriter.write
    count = {"n": 0}

    def dying_write(self, record):
        count["n"] += 1
        if count["n"] == int(after):
            self._fh.write(json.dumps(record)[:40])
            self._fh.flush()
            os._exit(3)
        real_write(self, record)

    distributed.ShardWriter.write = dying_write


if __name__ == "__main__":
    _arm()
    sys.exit(main(sys.argv[1:]))
