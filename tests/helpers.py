"""Helpers shared by the test modules (imported as ``tests.helpers``; the repository root is on
``sys.path`` through pytest's ``pythonpath``)."""

from __future__ import annotations

import torch


def seeded_randn(*shape, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``torch.randn(*shape)`` from a generator of its own seeded with ``seed`` (float64 unless
    ``dtype``): the same tensor whatever ran before."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
