"""Model adapters. Each module registers a model spec whose `load()` returns a Denoiser."""
