"""Samplers (decoding algorithms, METHODS.md §3). Each module registers into SAMPLERS."""
