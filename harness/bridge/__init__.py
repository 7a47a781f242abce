"""Bridges to other evaluation frameworks. `harness.bridge.lm_eval` is the lm-evaluation-harness
integration (the only module importing lm_eval); `harness.bridge.engine` holds its logic."""
