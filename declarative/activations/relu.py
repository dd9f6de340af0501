"""ReLU as the projection onto the non-negative orthant."""

from __future__ import annotations

import torch

from .base import ActivationProblem


class ReLUProblem(ActivationProblem):
    """``z* = argmin_z ½‖z − a‖²  s.t.  z ≥ 0  = max(0, a)``.

    One-sided derivative in direction ``u``: ``u`` where ``a > 0``, ``0`` where ``a < 0`` and, at the
    kink ``a = 0``, ``max(0, u)`` (the constraint may be left, not crossed). With ``u = −g`` the
    implicit gradient passes ``g`` at ``a = 0`` iff ``g < 0``.

    Shape:
        - a, z: ``(*)``, any shape.
    """

    def activation(self, a):
        return torch.relu(a)

    def directional_derivative(self, a, z, u):
        return torch.where(a > 0, u, torch.where(a == 0, torch.relu(u), torch.zeros_like(u)))

    def native_implicit(self, a):
        """``torch.relu(a)`` where no entry of ``a`` is 0 or NaN (on CPU), else ``None``.

        There ``implicit_vjp``'s pass condition, ``sign(a) − sign(g)/2 > 0`` (``sign(NaN) = 0``),
        is ``a > 0`` for every cotangent (±inf, NaN and −0 included): the condition of
        ``torch.relu``'s own backward ``threshold_backward(g, relu(a), 0)``, the same kernel, so the
        gradients are the same bits. At ``a = 0`` (the one-sided rule) and at ``a = NaN`` (a kink
        for the rule: ``sign(NaN) = 0``) they differ, and ``min |a| > 0`` excludes both. The check
        reads one value on the host, so it is made for CPU tensors only (on an accelerator it would
        synchronise every call).
        """
        if (not a.is_cpu or a.numel() == 0 or type(self) is not ReLUProblem or vars(self)
                or not a.abs().amin().item() > 0):
            return None   # (subclasses and instances with overrides may redefine the map or the rule)
        return torch.relu(a)

    def implicit_vjp(self, solution, params, g, needs):
        # Fused form of −directional_derivative(a, z, −g): g where a > 0 or (a == 0 and g < 0),
        # else 0. With s = sign(a) − sign(g)/2 the pass condition is exactly s > 0 (|sign(g)/2| < 1
        # cannot flip sign(a) ≠ 0; at a = 0, s = −sign(g)/2), so it is one threshold_backward:
        # four float ops, no boolean masks (which are several times slower on CPU).
        # Out of place: under jacrev the backward is vmapped over g but not over a, and an in-place
        # update of sign(a) by a batched sign(g) is refused.
        key = torch.sub(torch.sign(params[0]), torch.sign(g), alpha=0.5)
        return (torch.ops.aten.threshold_backward(g, key, 0),)
