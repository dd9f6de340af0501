"""``fixed_point``: the fixed point ``w*(θ) = Φ(w*(θ), θ)`` of a user map as a differentiable torch
function (equilibrium models, the inner problems of bilevel optimisation).

Forward: the iteration ``w ← Φ(w, θ)`` from ``w0``, batched, until ``‖Φ(w) − w‖₂ ≤ tol`` per element
(converged elements frozen). A map that is not a contraction near ``w0`` does not converge: the
element is reported ``MAX_ITERATIONS`` (or ``NON_FINITE`` when the iterates overflow) and, with
``check=True``, a ``SolverError`` names it — never a silently wrong ``w``.

Backward, by mode (``docs/guide/modes.md``, ``hypergradient_modes``): with ``g = ∂ℓ/∂w*``,
``∇_θ = ∂_θΦᵀ v`` where ``(I − ∂_wΦᵀ) v = g`` is solved

* ``"implicit"`` – to a relative tolerance (``rtol``, default ``1e-10`` float64 / ``1e-5`` float32)
  by conjugate gradient, on the normal equations unless ``symmetric=True`` says ``∂_wΦ`` is
  symmetric;
* ``FixedPoint(k)``, ``ConjugateGradient(k)`` – with exactly ``k`` steps; ``Unrolled(t)`` –
  back-propagation through ``t`` steps from ``w0``; ``FirstOrder()`` – no gradient through ``w*``.

Shape:
    w0: ``(B, *event)``; ``phi(w, *params)``: ``(B, *event)``; output: ``(B, *event)``.

References:
    S. Bai, J. Z. Kolter, V. Koltun. Deep equilibrium models. NeurIPS 2019.
    R. Grazzi et al. On the iteration complexity of hypergradient computation. ICML 2020.
"""

from __future__ import annotations

from typing import Callable

import torch

from .linear_solvers import check_curvature, default_cg_rtol, warn_unconverged
from .linearisation import FixedPointLinearisation, param_leaves
from .minimizer import default_tol
from .modes import GradientMode, check_layer_solution, resolve_mode
from .problem import ArgminProblem
from .solution import Solution
from .status import Status
from .empty_batch import empty_batch_solution
from .validation import (check_callable, check_count, check_positive, check_real, check_start,
                         scalar_params)

__all__ = ["FixedPointProblem", "fixed_point", "fixed_point_solution"]

_RUNNING = -1


class FixedPointProblem(ArgminProblem):
    """``w* = Φ(w*, θ)`` for a user map ``phi(w, *params)`` (see the module docstring).

    Args:
        phi: the map, differentiable torch ops, ``(B, *event) -> (B, *event)``; element ``b`` of
            the output must depend on ``w[b]`` only.
        symmetric: declare ``∂_wΦ`` symmetric (CG then runs on the system itself).
        tol, max_iter: forward stopping rule (absolute, on ``‖Φ(w) − w‖₂``).
        rtol, cg_max_iter: the implicit backward's CG tolerance and step limit.
        check: raise a ``SolverError`` (``Status.INDEFINITE``) when the implicit CG
            (``symmetric=True``) meets negative curvature; with ``False`` those elements get zero
            gradients and a ``RuntimeWarning`` names them.

    Shape:
        - w: ``(B, *event)``; ``phi(w, *params)``: ``(B, *event)``.
    """

    def __init__(self, phi: Callable[..., torch.Tensor], *, tol: float, max_iter: int,
                 symmetric: bool = False, rtol: float = 1e-10, cg_max_iter: int = 500, check: bool = True):
        self.phi = check_callable("phi", phi, "phi(w, *params) -> w")
        self.tol = check_real("tol", tol, minimum=0.0, inclusive=True)
        self.max_iter = check_count("max_iter", max_iter)
        self.fixed_point_symmetric = bool(symmetric)
        self.rtol = check_real("rtol", rtol, minimum=0.0)
        self.cg_max_iter = check_count("cg_max_iter", cg_max_iter, minimum=1)
        self.check = bool(check)

    def solve(self, params, warm_start=None):
        if warm_start is None:
            raise ValueError("FixedPointProblem.solve needs a warm start w0")
        p = param_leaves(params)
        w = warm_start.z.detach()
        B = w.shape[0]
        if self.tol == 0:  # exactly max_iter iterations, no convergence test (fixed-t experiments)
            with torch.no_grad():
                w_prev = w
                for i in range(self.max_iter):
                    w_prev, w = w, self.phi(w, *p)
                    if i == 0 and w.shape != w_prev.shape:  # (once: the shape cannot change after)
                        raise ValueError(f"phi: expected Φ(w) of the shape of w {tuple(w_prev.shape)}, "
                                         f"got {tuple(w.shape)}")
                r = torch.linalg.vector_norm((w - w_prev).reshape(B, -1), dim=1)
                finite = torch.isfinite(w.reshape(B, -1)).all(1) & torch.isfinite(r)
            status = torch.where(r == 0, Status.SOLVED, Status.MAX_ITERATIONS)
            status = torch.where(finite, status, Status.NON_FINITE).to(torch.int64)
            iterations = torch.full((B,), self.max_iter, dtype=torch.int64, device=w.device)
            return Solution(z=w, status=status, iterations=iterations, residuals={"residual": r})
        status = torch.full((B,), _RUNNING, dtype=torch.int64, device=w.device)
        residual = torch.full((B,), float("inf"), dtype=w.dtype, device=w.device)
        iterations = torch.zeros(B, dtype=torch.int64, device=w.device)
        shape = (-1,) + (1,) * (w.dim() - 1)
        all_running = True
        with torch.no_grad():
            for it in range(self.max_iter + 1):
                w_new = self.phi(w, *p)
                if w_new.shape != w.shape:
                    raise ValueError(f"phi: expected Φ(w) of the shape of w {tuple(w.shape)}, got "
                                     f"{tuple(w_new.shape)}")
                r = torch.linalg.vector_norm((w_new - w).reshape(B, -1), dim=1)
                if all_running and it < self.max_iter and bool((r > self.tol).all()):
                    # fast path (one sync): every element still running and finite, none converged
                    w = w_new
                    iterations += 1
                    continue
                running = status == _RUNNING
                residual = torch.where(running, r, residual)
                finite = torch.isfinite(w_new.reshape(B, -1)).all(1) & torch.isfinite(r)
                status = torch.where(running & ~finite, Status.NON_FINITE, status)
                status = torch.where((status == _RUNNING) & (r <= self.tol), Status.SOLVED, status)
                running = status == _RUNNING
                if it == self.max_iter or not bool(running.any()):
                    break
                all_running = bool(running.all())
                w = torch.where(running.reshape(shape), w_new, w)
                iterations = iterations + running.to(torch.int64)
        status = torch.where(status == _RUNNING, Status.MAX_ITERATIONS, status)
        return Solution(z=w, status=status, iterations=iterations, residuals={"residual": residual})

    def fixed_point_map(self, params, at):
        return self.phi

    def implicit_vjp(self, solution, params, g, needs):
        lin = FixedPointLinearisation(self, params, solution.z, needs)
        res = lin.solve_adjoint(g, symmetric=self.fixed_point_symmetric, max_iter=self.cg_max_iter,
                                rtol=self.rtol)
        x = check_curvature(res, "fixed_point implicit gradient (symmetric=True)", check=self.check,
                            stacklevel=4)
        warn_unconverged(res, "fixed_point implicit gradient", self.rtol, self.cg_max_iter, stacklevel=4)
        return lin.params_vjp(x)

    def implicit_tangent(self, solution, params, g):
        raise NotImplementedError("a fixed-point problem has no energy: the contrastive modes and "
                                  "implicit_tangent do not apply (its implicit gradient is "
                                  "implicit_vjp)")


@torch.compiler.disable  # solver: host checks, data-dependent loops (a graph break)
def fixed_point_solution(phi: Callable[..., torch.Tensor], w0: torch.Tensor, *params: torch.Tensor,
                         mode: str | GradientMode = "implicit", tol: float | None = None,
                         max_iter: int = 1000, symmetric: bool = False, rtol: float | None = None,
                         check: bool = True) -> Solution:
    """Like ``fixed_point`` but returns the full ``Solution``.

    Shape:
        - Solution.z: ``(B, *event)``; status, iterations, residuals["residual"]: ``(B,)``.
    """
    check_callable("phi", phi, "phi(w, *params) -> w")
    check_start("w0", w0, params)
    params = scalar_params(params, w0)
    tol = default_tol(w0.dtype) if tol is None else check_positive("tol", tol, allow_zero=True)
    check_count("max_iter", max_iter)
    rtol = default_cg_rtol(w0.dtype) if rtol is None else check_real("rtol", rtol, minimum=0.0)
    mode = resolve_mode(mode, problem=FixedPointProblem)
    n = w0.shape[1:].numel()
    problem = FixedPointProblem(phi, tol=tol, max_iter=max_iter, symmetric=symmetric, rtol=rtol,
                                cg_max_iter=max(10 * n, 100), check=check)
    if w0.shape[0] == 0:
        return empty_batch_solution(w0.shape, w0, params, residuals=("residual",))
    sol = mode.apply(problem, tuple(params), Solution(z=w0.detach()))
    if check:
        check_layer_solution(sol, mode, "fixed_point")
    return sol


def fixed_point(phi: Callable[..., torch.Tensor], w0: torch.Tensor, *params: torch.Tensor,
                mode: str | GradientMode = "implicit", tol: float | None = None, max_iter: int = 1000,
                symmetric: bool = False, rtol: float | None = None, check: bool = True) -> torch.Tensor:
    """The fixed point ``w* = Φ(w*, θ)`` by iteration from ``w0``, differentiable in θ.

    Args:
        phi: ``phi(w, *params)``, same shape as ``w``, differentiable torch ops.
        w0: ``(B, *event)`` initial point (a constant for autograd).
        *params: the tensors θ; Python numbers and 0-d tensors of another floating dtype are
            scalars (torch's type promotion).
        mode: ``"implicit"``, ``"first_order"`` or a mode object (``FixedPoint(k)``,
            ``ConjugateGradient(k)``, ``Unrolled(t)``, ...).
        tol: stop an element when ``‖Φ(w) − w‖₂ ≤ tol`` (default ``sqrt(eps)`` of the dtype);
            ``tol=0`` runs exactly ``max_iter`` iterations without a convergence test (the fixed-t
            setting of ITD/AID experiments; the status is then ``MAX_ITERATIONS`` with the last step
            ``‖w_t − w_{t−1}‖`` as residual, or ``NON_FINITE``).
        max_iter: iteration limit of the forward.
        symmetric: ``∂_wΦ`` is symmetric (e.g. ``Φ = w − η∇E``): CG without normal equations.
        rtol: relative tolerance of the implicit backward's CG (finite, > 0).
        check: raise ``SolverError`` for elements that did not converge; with ``symmetric=True``
            the implicit backward raises ``INDEFINITE`` where ``I − ∂_wΦ`` is not positive definite
            (else those elements' gradients are zero and a ``RuntimeWarning`` names them).

    Returns:
        ``w*`` of shape ``(B, *event)``; for a batch of zero problems (``B = 0``) an empty result
        (zero gradients).

    Raises:
        TypeError / ValueError: ``phi`` not callable or changing the shape of ``w``, ``w0``
            without a batch dimension or with an empty event, parameters of another dtype or
            device (0-d tensors and Python numbers are exempt), ``tol`` < 0, ``rtol`` ≤ 0, NaN,
            ``max_iter`` < 0, an unknown ``mode``.
        SolverError: ``check=True`` and some element did not converge.

    Shape:
        - w0: ``(B, *event)``; ``phi(w, *params)``: ``(B, *event)``; params: any shapes ``phi``
          broadcasts (their gradients come out in each parameter's own shape).
        - Output: ``(B, *event)``, the dtype and device of ``w0``.
    """
    return fixed_point_solution(phi, w0, *params, mode=mode, tol=tol, max_iter=max_iter,
                                symmetric=symmetric, rtol=rtol, check=check).z
