"""The result of a batch of zero problems (``B = 0``), which every batched entry point returns
without calling a solver (its reductions have no identity on an empty batch)."""

from __future__ import annotations

from typing import Sequence

import torch

from .solution import Solution

__all__ = ["empty_batch_solution"]


def empty_batch_solution(z_shape: Sequence[int], like: torch.Tensor, params: Sequence, *,
                         duals: dict[str, int] | None = None,
                         residuals: Sequence[str] = ()) -> Solution:
    """A ``Solution`` for ``B = 0`` problems: ``z`` of shape ``z_shape`` (its first entry is 0),
    multipliers ``(0, size)`` by name, empty ``status``/``iterations`` and residuals.

    ``z`` is connected to every parameter that requires a gradient, so that a loss of it
    back-propagates as for any other batch: a batched parameter receives an empty gradient and an
    unbatched one a zero gradient (the sum over no batch elements).

    Shape:
        - z: ``z_shape`` = ``(0, *event)``; duals: ``(0, size)``; status, iterations, residuals: ``(0,)``.
    """
    opts = {"dtype": like.dtype, "device": like.device}
    z = torch.zeros(tuple(z_shape), **opts)
    for p in params:
        if isinstance(p, torch.Tensor) and p.requires_grad and torch.is_grad_enabled():
            z = z + (p.sum() * 0).to(like.dtype)
    return Solution(z=z, duals={k: torch.zeros(0, size, **opts) for k, size in (duals or {}).items()},
                    status=torch.zeros(0, dtype=torch.int64, device=like.device),
                    iterations=torch.zeros(0, dtype=torch.int64, device=like.device),
                    residuals={k: torch.zeros(0, **opts) for k in residuals})
