"""Likelihood estimators (docs/methods.md §1). Each module registers into ESTIMATORS."""
