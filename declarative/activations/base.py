"""Activations as argmin problems: ``f(a) = argmin_z ψ(z) − aᵀz = ∇ψ*(a)``."""

from __future__ import annotations

import numbers

import torch

from ..problem import ArgminProblem
from ..solution import Solution


class ActivationProblem(ArgminProblem):
    """An activation ``z = f(a) = argmin_z ψ(z) − aᵀz`` for a strictly convex ψ (``docs/guide/problems.md``).

    Subclasses give the closed form ``activation(a)`` and its one-sided directional derivative
    ``directional_derivative(a, z, u) = lim_{t→0⁺} (f(a + t u) − f(a))/t``. Everything a gradient
    mode needs follows:

    * nudged solution ``ẑ_β = argmin ψ(z) − aᵀz + β gᵀz = f(a − βg)``;
    * ``∂_a 𝓛 = −z`` (constraints do not depend on ``a``; terms constant in z cancel in every
      contrast), so ``Contrastive`` gives ``(f(a) − f(a − βg))/β``;
    * implicit tangent ``dz = f'(a; −g)`` and gradient ``−dz`` — the one-sided limit at kinks.

    Shape:
        - a: ``(*)``, any shape (``(*, n)`` with the simplex over ``dim`` for sparsemax/softmax).
        - z: same shape as ``a``.
    """

    param_names = ("a",)
    closed_form = True

    def activation(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def directional_derivative(self, a: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def native_implicit(self, a: torch.Tensor) -> torch.Tensor | None:
        """``activation(a)`` in natively differentiable torch operations whose own backward gives
        this problem's implicit gradient bit for bit at this ``a``, for every cotangent; ``None``
        where no such form holds (the default, always). Eager layers in the ``Implicit`` mode use it
        to skip the Python ``autograd.Function``."""
        return None

    def check_input(self, a: torch.Tensor) -> None:
        """Raise for an input this activation does not accept (beyond a floating tensor, which the
        layers check); element-wise activations accept every shape."""

    # -- the ArgminProblem protocol ---------------------------------------------------------------
    def solve(self, params, warm_start=None):
        return Solution(z=self.activation(params[0]))

    def solve_nudged(self, params, g, beta, warm_start=None):
        return Solution(z=self.activation(torch.sub(params[0], g, alpha=beta)))

    def lagrangian_grads(self, solution, params, needs):
        return (-solution.z,)

    def lagrangian_grads_contrast(self, solution_1, solution_0, params, needs, denominator):
        # ((−z_1) − (−z_0))/d = (z_0 − z_1)/d bit for bit, in two ops instead of four.
        return (torch.sub(solution_0.z, solution_1.z).div_(denominator),)

    def implicit_tangent(self, solution, params, g):
        return Solution(z=self.directional_derivative(params[0], solution.z, -g))

    def lagrangian_grads_tangent(self, solution, tangent, params, needs):
        return (-tangent.z,)


class SimplexActivationProblem(ActivationProblem):
    """An ``ActivationProblem`` whose solution lies on the probability simplex along ``dim``
    (``z ≥ 0``, ``1ᵀz = 1`` over that dimension): the base of sparsemax and softmax.

    Args:
        dim: the dimension that lies on the simplex.

    Raises:
        TypeError: ``dim`` is not an int.
    """

    def __init__(self, dim: int = -1):
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
            raise TypeError(f"dim: expected an int, got {type(dim).__name__} {dim!r}")
        self.dim = int(dim)

    def check_input(self, a: torch.Tensor) -> None:
        """The input must have a dimension ``dim`` (a simplex needs one): ``ValueError`` for a 0-d
        input, ``IndexError`` (as torch's) for a ``dim`` out of range, naming ``dim`` and the
        input's number of dimensions."""
        nd = a.dim()
        if nd == 0:
            raise ValueError(f"input: expected at least one dimension (the simplex lies along "
                             f"dim={self.dim}), got a 0-d tensor; use input.reshape(1) for one value")
        if not -nd <= self.dim < nd:
            raise IndexError(f"dim: expected an int in [{-nd}, {nd - 1}] for an input with {nd} "
                             f"dimension{'s' if nd > 1 else ''} (shape {tuple(a.shape)}), got {self.dim}")
