"""Samplers (decoding algorithms, docs/methods.md §3). Each module registers into SAMPLERS."""
