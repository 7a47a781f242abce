"""Likelihood estimators (METHODS.md §1). Each module registers into ESTIMATORS."""
