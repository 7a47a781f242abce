"""`python -m harness.bridge ARGS`: lm-eval's CLI with the `dlm-harness` model registered first."""
from harness.bridge.lm_eval import main

main()
