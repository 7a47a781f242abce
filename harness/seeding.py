"""Seeds for every stochastic step, derived from where the step sits in a suite.

derive_seed(suite, cell, item, replicate) hashes the four coordinates into a 63-bit integer, so
seeds come from a wide space (docs/methods.md: d1 drew from 4096 values), never collide by accident
between cells, and do not depend on execution order: a resumed or sharded run draws exactly what
a clean run draws. Generators are local objects; nothing here touches global RNG state.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(suite: str, cell: str, item: str, replicate: int, stream: str = "") -> int:
    """A 63-bit seed from (suite, cell, item, replicate[, stream]); stable across runs and machines."""
    key = "\x1f".join([suite, cell, item, str(replicate), stream]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def numpy_generator(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def rand(generator, batch: int, *shape: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Uniform draws of shape [batch, *shape].

    `generator` is one torch.Generator for the whole batch, or a sequence of `batch` generators,
    one per row. With per-row generators every row's draws depend only on its own seed, so
    splitting a batch, reordering it, or resuming half-way gives the same numbers (docs/architecture.md, convention 9).
    """
    if generator is None:  # library code never falls back to the global RNG (docs/architecture.md, convention 3)
        raise ValueError("a stochastic step needs an explicit torch.Generator (or one per row), got None")
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch}")
        gen_device = generator[0].device if batch else torch.device("cpu")
        out = torch.empty(batch, *shape, dtype=dtype, device=gen_device)
        for row, g in zip(out.unbind(0), generator):
            row.uniform_(generator=g)  # the same numbers as torch.rand(shape, generator=g), in place
        return out.to(device)
    # Draw where the generator lives (the runner's are CPU generators) and move the numbers: a
    # GPU run then uses exactly the CPU run's draws, and a CPU generator never meets a CUDA tensor.
    return torch.rand((batch, *shape), generator=generator, dtype=dtype, device=generator.device).to(device)
