"""Softmax as the entropic projection onto the probability simplex."""

from __future__ import annotations

import torch

from .base import SimplexActivationProblem


class SoftmaxProblem(SimplexActivationProblem):
    """``z* = argmin_z Σ_i z_i log z_i − aᵀz  s.t.  1ᵀz = 1  = softmax(a)`` over ``dim``.

    Smooth everywhere: the derivative in direction ``u`` is ``z ⊙ (u − ⟨u, z⟩)``. NaN and ``±inf``
    inputs behave as in ``torch.softmax`` (NaN propagates to the row).

    Args:
        dim: the dimension that lies on the simplex (default ``-1``).

    Shape:
        - a, z: ``(*, n, *)``, the simplex over ``dim``.
    """

    def activation(self, a):
        self.check_input(a)
        return torch.softmax(a, dim=self.dim)

    def directional_derivative(self, a, z, u):
        return z * (u - (u * z).sum(dim=self.dim, keepdim=True))
