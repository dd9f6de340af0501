"""Small helpers shared by the iterative methods (not public API)."""

from __future__ import annotations

import torch


def spectral_norm_sq(w: torch.Tensor) -> float:
    """``‖W‖₂²`` (largest singular value squared; one host sync)."""
    return float(torch.linalg.matrix_norm(w, ord=2)) ** 2


def next_activation(net, output, k: int):
    """``f_{k+1}`` for a 1-based hidden layer ``k``: the next hidden projection, or the output's."""
    return output.f if k + 1 == net.depth else net.activations[k].f
