"""``ArgminProblem``: the declaration every gradient mode works from.

A problem *declares* ``z*(θ) = argmin_z E(z; θ) s.t. z ∈ C(θ)``; it neither chooses nor implements
a way of differentiating. It exposes exactly what the gradient modes need (``docs/guide/concepts.md``):

* ``solve(params)`` – the free solution ``z*`` with its multipliers, as a ``Solution``;
* ``solve_nudged(params, g, beta, warm_start)`` – the nudged solution
  ``ẑ_β = argmin_z E(z; θ) + β⟨g, z⟩`` over the same constraints (β may be negative);
* ``lagrangian_grads(solution, params, needs)`` – ``∂_θ 𝓛(z, λ, ν; θ)`` evaluated at a solution
  with its own multipliers (``𝓛 = E`` when constraints do not depend on θ). The contrastive
  modes contrast this at two solutions (formula (C));
* ``implicit_tangent(solution, params, g)`` – the one-sided limit ``(dz, dλ, dν) =
  lim_{β→0⁺} (ŝ_β − s*)/β`` (a ``Solution`` holding the tangent), i.e. the solution of the
  backward QP of ``docs/guide/modes.md``, which reduces to the KKT linear system under strict
  complementarity;
* ``lagrangian_grads_tangent(solution, tangent, params, needs)`` – the directional derivative of
  ``∂_θ𝓛`` along that tangent: ``∂²_{θz}𝓛·dz + (∂_θ c)ᵀ dλ``.

Gradients are returned with the broadcast batch shape; the gradient modes sum them back to each
parameter's own shape. ``needs[i]`` is False for parameters that need no gradient (the problem may
return ``None`` for them).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .solution import Solution

Params = Sequence[torch.Tensor | None]
Grads = tuple[torch.Tensor | None, ...]


class ArgminProblem:
    """Base class of declared argmin problems (see the module docstring for the protocol)."""

    #: Names of the parameters, in the order ``params`` are passed (for messages).
    param_names: tuple[str, ...] = ()
    #: True when the forward is a closed form written in torch ops (vmap-able, never fails).
    closed_form: bool = False
    #: Names of the gradient modes whose gradient this problem differentiates exactly in a
    #: ``create_graph=True`` backward (second derivatives); with any other mode (``first_order``
    #: excepted: its gradient is zero) such a backward returns the first-order gradient, and
    #: differentiating that raises ``NotImplementedError`` instead of giving a wrong derivative.
    #: Closed forms re-solve in torch ops and support every mode.
    second_derivative_modes: frozenset = frozenset()

    def solve(self, params: Params, warm_start: Solution | None = None) -> Solution:
        raise NotImplementedError

    def solve_nudged(self, params: Params, g: torch.Tensor, beta: float,
                     warm_start: Solution | None = None) -> Solution:
        raise NotImplementedError(f"{type(self).__name__} provides no nudged solve")

    def lagrangian_grads(self, solution: Solution, params: Params, needs: Sequence[bool]) -> Grads:
        raise NotImplementedError(f"{type(self).__name__} provides no Lagrangian gradient")

    def lagrangian_grads_contrast(self, solution_1: Solution, solution_0: Solution, params: Params,
                                  needs: Sequence[bool], denominator: float) -> Grads:
        """``(∂_θ𝓛(solution_1) − ∂_θ𝓛(solution_0)) / denominator``, the contrast the contrastive modes
        take (``Contrastive``: nudged vs free, ``/β``; ``Symmetric``: ``+β`` vs ``−β``, ``/2β``).

        Problems with a cheaper fused formula (e.g. activations) override this; the result must be equal.
        """
        f1 = self.lagrangian_grads(solution_1, params, needs)
        f0 = self.lagrangian_grads(solution_0, params, needs)
        return tuple(None if a is None else (a - b) / denominator for a, b in zip(f1, f0))

    def implicit_tangent(self, solution: Solution, params: Params, g: torch.Tensor) -> Solution:
        raise NotImplementedError(f"{type(self).__name__} provides no implicit tangent")

    def differentiable_solution(self, solution: Solution, params: Params) -> Solution:
        """The solution handed to a ``create_graph=True`` backward (second derivatives): the same
        values, with ``z`` and the multipliers differentiable in ``params`` where the problem can
        express its solution map in torch ops (``QPProblem``: the KKT system on the active set).
        Default: ``solution`` unchanged (its ``z`` is differentiable through the layer itself)."""
        return solution

    def implicit_vjp(self, solution: Solution, params: Params, g: torch.Tensor,
                     needs: Sequence[bool]) -> Grads:
        """The ``Implicit`` gradient: the linearised Lagrangian gradient along the implicit tangent.

        Problems with a cheaper fused formula (e.g. ReLU) override this; the result must be equal.
        """
        tangent = self.implicit_tangent(solution, params, g)
        return self.lagrangian_grads_tangent(solution, tangent, params, needs)

    def lagrangian_grads_tangent(self, solution: Solution, tangent: Solution, params: Params,
                                 needs: Sequence[bool]) -> Grads:
        raise NotImplementedError(f"{type(self).__name__} provides no linearised Lagrangian gradient")

    # -- optional: a fixed-point map, for the bilevel modes (FixedPoint, ConjugateGradient, Unrolled)
    #: True when the Jacobian ``∂_wΦ`` of ``fixed_point_map`` is symmetric (e.g. ``Φ = w − η∇_wE``);
    #: ``ConjugateGradient`` then runs CG on ``(I − ∂_wΦᵀ) v = g`` itself, not on normal equations.
    fixed_point_symmetric: bool = False

    def fixed_point_map(self, params: Params, at: torch.Tensor):
        """A map ``Φ(w, *params)`` whose fixed point ``w = Φ(w, θ)`` is the solution (``docs/guide/modes.md``).

        Returns a callable written in differentiable torch ops (in ``w`` and the params); the modes
        differentiate it by reverse-mode autodiff. ``at`` (a detached point, e.g. the warm start or
        the solution) lets the problem fix any choice the map depends on once, e.g. the step size
        ``η`` of ``Φ = w − η∇_wE`` from the curvature there; that choice is a constant for autograd.
        """
        raise NotImplementedError(
            f"{type(self).__name__} declares no fixed-point map Φ(w, θ); the FixedPoint, "
            "ConjugateGradient and Unrolled modes need one (problems built by declarative.argmin "
            "and declarative.fixed_point provide it)")
