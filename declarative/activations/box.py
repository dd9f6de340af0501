"""Box projection: hard-tanh, hard-sigmoid and any clamp to ``[lo, hi]``."""

from __future__ import annotations

import math

import torch

from .base import ActivationProblem


class BoxProblem(ActivationProblem):
    """``z* = argmin_z ½‖z − a‖²  s.t.  lo ≤ z ≤ hi  = clamp(a, lo, hi)``.

    One-sided derivative in direction ``u``: ``u`` strictly inside, ``0`` strictly outside,
    ``max(0, u)`` at ``a = lo`` and ``min(0, u)`` at ``a = hi`` (weakly active bounds).

    Args:
        lo, hi: finite or infinite bounds with ``lo < hi``.

    Shape:
        - a, z: ``(*)``, any shape.
    """

    def __init__(self, lo: float = -1.0, hi: float = 1.0):
        for name, v in (("lo", lo), ("hi", hi)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise ValueError(f"{name}: expected a float bound, got {v!r}")
        if not lo < hi:
            raise ValueError(f"box bounds must satisfy lo < hi, got lo={lo}, hi={hi}")
        self.lo, self.hi = float(lo), float(hi)

    def activation(self, a):
        return torch.clamp(a, self.lo, self.hi)

    def directional_derivative(self, a, z, u):
        zero = torch.zeros_like(u)
        inside = (a > self.lo) & (a < self.hi)
        d = torch.where(inside, u, zero)
        d = torch.where(a == self.lo, torch.clamp(u, min=0), d)
        return torch.where(a == self.hi, torch.clamp(u, max=0), d)
