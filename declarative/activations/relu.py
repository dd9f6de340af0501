"""ReLU as the projection onto the non-negative orthant."""

from __future__ import annotations

import torch

from .base import ActivationProblem


class ReLUProblem(ActivationProblem):
    """``z* = argmin_z ½‖z − a‖²  s.t.  z ≥ 0  = max(0, a)``.

    One-sided derivative in direction ``u``: ``u`` where ``a > 0``, ``0`` where ``a < 0`` and, at the
    kink ``a = 0``, ``max(0, u)`` (the constraint may be left, not crossed). With ``u = −g`` the
    implicit gradient passes ``g`` at ``a = 0`` iff ``g < 0``.
    """

    def activation(self, a):
        return torch.relu(a)

    def directional_derivative(self, a, z, u):
        return torch.where(a > 0, u, torch.where(a == 0, torch.relu(u), torch.zeros_like(u)))

    def implicit_vjp(self, solution, params, g, needs):
        # Fused form of −directional_derivative(a, z, −g): g where a > 0, plus min(g, 0) where
        # a == 0 — written with threshold_backward, ~3x cheaper than the boolean-mask form.
        a = params[0]
        g_neg = torch.clamp(g, max=0)
        at_kink = g_neg - torch.ops.aten.threshold_backward(g_neg, a.abs(), 0)
        return (torch.ops.aten.threshold_backward(g, a, 0) + at_kink,)
