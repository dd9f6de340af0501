"""``argmin``: the minimiser of a user-written batched energy as a differentiable torch function.

    z*(θ) = argmin_z E(z, θ)   s.t.   lower ≤ z ≤ upper,

solved by ``declarative.minimize`` (or a solver passed in), differentiated by any gradient mode:
``"implicit"`` (matrix-free CG on the Hessian; one-sided rule at weakly active bounds),
``"contrastive"``/``"symmetric"`` (with ``beta``; nudged re-solves),
or the bilevel modes ``FixedPoint(k)``, ``ConjugateGradient(k)``, ``Unrolled(t)``, ``FirstOrder()``
on the map ``Φ(w) = P(w − η∇_wE)`` (see ``EnergyProblem`` and ``hypergradient_modes``).

Example::

    >>> X, y = torch.randn(50, 10), torch.randn(50)
    >>> lam = torch.full((10,), 0.1, requires_grad=True)
    >>> def energy(w, lam):   # ridge regression, batch of one
    ...     return 0.5 * ((w @ X.T - y) ** 2).sum(-1) + 0.5 * (lam * w ** 2).sum(-1)
    >>> w = argmin(energy, torch.zeros(1, 10), lam)
    >>> ((w @ X.T - y) ** 2).mean().backward()   # hypergradient in lam.grad

Shape:
    z0: ``(B, *event)``; ``energy(z, *params)`` returns ``(B,)``; output: ``(B, *event)``.

References:
    S. Gould et al. Deep declarative networks. TPAMI 2021.
    R. Grazzi et al. On the iteration complexity of hypergradient computation. ICML 2020.
"""

from __future__ import annotations

from typing import Callable

import torch

from .empty_batch import empty_batch_solution
from .energy_problem import EnergyProblem
from .modes import GradientMode, check_layer_solution, resolve_mode
from .solution import Solution
from .validation import check_callable, check_start, scalar_params

__all__ = ["argmin", "argmin_solution"]


@torch.compiler.disable  # solver: host checks, data-dependent loops (a graph break)
def argmin_solution(energy: Callable[..., torch.Tensor], z0: torch.Tensor, *params: torch.Tensor,
                    mode: str | GradientMode = "implicit", beta: float | None = None,
                    lower=None, upper=None, solver=None, tol: float | None = None,
                    max_iter: int = 500, step_size=None, check: bool = True) -> Solution:
    """Like ``argmin`` but returns the full ``Solution`` (``z`` differentiable; ``status``,
    ``iterations``, ``residuals``).

    Shape:
        - Solution.z: ``(B, *event)``; status, iterations: ``(B,)``.
    """
    check_callable("energy", energy, "energy(z, *params) -> (B,)")
    check_start("z0", z0, params)
    params = scalar_params(params, z0)
    mode = resolve_mode(mode, beta, problem=EnergyProblem)
    problem = EnergyProblem(energy, like=z0, lower=lower, upper=upper, solver=solver, tol=tol,
                            max_iter=max_iter, step_size=step_size, check=check)
    if z0.shape[0] == 0:
        return empty_batch_solution(z0.shape, z0, params, residuals=("grad_norm", "energy"))
    sol = mode.apply(problem, tuple(params), Solution(z=z0.detach()))
    if check:
        check_layer_solution(sol, mode, "argmin")
    return sol


def argmin(energy: Callable[..., torch.Tensor], z0: torch.Tensor, *params: torch.Tensor,
           mode: str | GradientMode = "implicit", beta: float | None = None, lower=None, upper=None,
           solver=None, tol: float | None = None, max_iter: int = 500, step_size=None,
           check: bool = True) -> torch.Tensor:
    """The minimiser ``z*(θ) = argmin_z E(z, θ)`` s.t. ``lower ≤ z ≤ upper``, differentiable in θ.

    Args:
        energy: ``energy(z, *params) -> (B,)`` per-element energies, a differentiable torch
            expression; element ``b`` must depend on ``z[b]`` only.
        z0: ``(B, *event)`` warm start (a constant for autograd).
        *params: the tensors θ (gradients flow to those that require them); Python numbers and
            0-d tensors of another floating dtype are scalars (torch's type promotion).
        mode: a ``GradientMode`` or a registered name (``"implicit"``, ``"contrastive"``,
            ``"symmetric"``, ``"first_order"``).
        beta: nudging strength for the contrastive modes given by name.
        lower, upper: bounds on z (floats or tensors broadcastable to z0), independent of θ.
        solver: ``solver(fun, z0, *, lower, upper, tol, max_iter) -> Solution``; default
            ``declarative.minimize`` (projected L-BFGS).
        tol, max_iter: solver tolerance (gradient norm; default ``sqrt(eps)`` of the dtype) and limit.
        step_size: ``η`` of the fixed-point map used by the bilevel modes (default ``1/L̂``).
        check: raise ``SolverError`` naming the failing batch elements (else inspect statuses via
            ``argmin_solution``); in the implicit backward, an element whose Hessian is indefinite
            at the solution raises ``INDEFINITE`` (else its gradient is zero and a
            ``RuntimeWarning`` names it).

    Returns:
        ``z*`` of shape ``(B, *event)``.

    Raises:
        TypeError / ValueError: bad input, each message naming the argument (``energy`` not
            callable or not returning ``(B,)`` energies, ``z0`` without a batch dimension or with
            an empty event, parameters of another dtype or device — 0-d tensors and Python numbers
            are scalars and exempt, as in torch's type promotion —, ``tol``/``step_size`` not
            finite and positive, ``max_iter`` < 0, an unknown ``mode``).
        SolverError: ``check=True`` and some element was not solved.

    A batch of zero problems (``B = 0``) returns an empty ``(0, *event)`` result (zero gradients).
    float16/bfloat16 are computed in that dtype (the default ``tol`` is ``sqrt(eps)`` of the dtype).

    Shape:
        - z0: ``(B, *event)``; ``energy(z, *params)``: ``(B,)``; params: any shapes ``energy``
          broadcasts (their gradients come out in each parameter's own shape).
        - Output: ``(B, *event)``, the dtype and device of ``z0``.
    """
    return argmin_solution(energy, z0, *params, mode=mode, beta=beta, lower=lower, upper=upper,
                           solver=solver, tol=tol, max_iter=max_iter, step_size=step_size,
                           check=check).z
