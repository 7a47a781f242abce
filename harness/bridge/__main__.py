"""`python -m harness.bridge ARGS`: lm-eval's CLI with the `dlm-harness` model registered first.
Under torchrun a rank leaves through `distributed.leave` once lm-eval has returned."""
import sys

from harness.bridge.lm_eval import main
from harness.distributed import leave

try:
    main()
    code = 0
except SystemExit as exc:  # lm-eval's CLI exits itself on bad arguments
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if not isinstance(exc.code, (int, type(None))):
        print(exc.code, file=sys.stderr)
leave(code)
