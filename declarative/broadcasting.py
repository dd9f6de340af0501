"""Reduction of broadcast gradients back to a parameter's own shape."""

from __future__ import annotations

import torch


def sum_to_shape(grad: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    """Sum ``grad`` over the leading dimensions that broadcasting added, and over dimensions that
    were of size 1 in ``shape``: the gradient of an unbatched parameter is the *sum* over the batch
    (autograd semantics), never the mean."""
    if grad is None or grad.shape == shape:
        return grad
    extra = grad.dim() - len(shape)
    if extra > 0:
        grad = grad.sum(dim=tuple(range(extra)))
    keep = tuple(i for i, s in enumerate(shape) if s == 1 and grad.shape[i] != 1)
    if keep:
        grad = grad.sum(dim=keep, keepdim=True)
    return grad.reshape(shape)
