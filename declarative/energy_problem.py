"""``EnergyProblem``: the ``ArgminProblem`` protocol for a user-written energy, by autograd.

The problem declared is, per batch element,

    z*(θ) = argmin_z E(z, θ)   s.t.   lower ≤ z ≤ upper     (bounds independent of θ),

with ``E`` any differentiable batched torch expression ``energy(z, *params) -> (B,)``. Because
the bounds do not depend on θ, the Lagrangian gradient is ``∂_θ𝓛 = ∂_θE`` and every part of the
protocol follows from autograd:

* ``solve`` / ``solve_nudged`` – the batched solver (default ``declarative.minimize``) on ``E`` and
  on ``E + β⟨g, z⟩``, warm-started;
* ``lagrangian_grads`` – ``∂_θE(z, θ)``;
* ``implicit_tangent`` – the one-sided tangent ``dz`` of ``docs/guide/modes.md``: coordinates at a bound
  with a strictly positive multiplier (strongly active) are fixed (``dz_i = 0``); on the free
  coordinates ``H_FF dz_F = −g_F`` is solved by matrix-free conjugate gradient (Hessian-vector
  products by double backward) to a relative tolerance. If some coordinates are *weakly* active
  (at a bound with multiplier ≈ 0) the tangent is the solution of the backward QP
  ``min ½dᵀHd + gᵀd`` s.t. ``d_i = 0`` (strongly active), ``d_i ≥ 0`` (weakly active at the lower
  bound), ``d_i ≤ 0`` (weakly active at the upper bound), solved by ``minimize`` with these bounds
  — the one-sided derivative (Zach 2021, Prop. 2);
* ``lagrangian_grads_tangent`` – ``∂²_{θz}E · dz`` (a VJP of ``∇_zE`` with respect to θ);
* ``fixed_point_map`` – ``Φ(w) = P(w − η∇_wE(w, θ))`` (``P`` the projection onto the bounds), with
  the step ``η`` given by the user or ``1/L̂`` where ``L̂`` is a 20-step power-iteration estimate of
  the largest Hessian eigenvalue at the given point (a per-element constant for autograd). Without
  bounds ``∂_wΦ = I − ηH`` is symmetric (``fixed_point_symmetric``); ``(I − ∂_wΦᵀ)v = g`` is then
  ``ηHv = g`` and ``∂_θΦᵀv = −η∂²_{θw}E v`` — the same gradient as ``Implicit`` for any ``η``.

Tolerances: the implicit CG stops at ``‖r‖ ≤ cg_rtol‖g‖`` (default ``1e-10`` in float64, ``1e-5``
in float32) within ``cg_max_iter`` steps (default ``max(2n, 50)``); non-convergence warns.

Shape:
    z: ``(B, *event)``; ``energy(z, *params)``: ``(B,)``; params broadcast freely inside
    ``energy``; their gradients come out in each parameter's own shape.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch

from .linear_solvers import batch_dot, check_curvature, conjugate_gradient, default_cg_rtol, warn_unconverged
from .linearisation import grads_or_zeros, param_leaves
from .minimizer import _bound_tensor, default_tol, minimize
from .problem import ArgminProblem
from .solution import Solution
from .validation import check_callable, check_count, check_energies, check_real, check_tensor

__all__ = ["EnergyProblem"]


class _GradientGraph:
    """``∇_zE(z, θ)`` built once with ``create_graph=True``: Hessian-vector products and the mixed
    products ``∂²_{θz}E · v`` by reverse mode."""

    def __init__(self, energy, z, params, needs):
        with torch.enable_grad():
            self.z = z.detach().requires_grad_(True)
            self.params = param_leaves(params, needs)
            e = energy(self.z, *self.params)
            (gz,) = torch.autograd.grad(e.sum(), self.z, create_graph=True, allow_unused=True)
        self.gz = torch.zeros_like(self.z) if gz is None else gz

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        if not self.gz.requires_grad:
            return torch.zeros_like(v)
        (r,) = torch.autograd.grad(self.gz, self.z, v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(v) if r is None else r

    def mixed_vjp(self, v: torch.Tensor):
        return grads_or_zeros(self.gz, self.params, v)


def _check_step_size(step_size):
    """``η``: None, a finite number > 0, or a tensor of finite values > 0 (one host sync)."""
    if step_size is None:
        return None
    if isinstance(step_size, torch.Tensor):
        check_tensor("step_size", step_size)
        if not bool((torch.isfinite(step_size) & (step_size > 0)).all()):
            raise ValueError(f"step_size: expected finite values > 0, got {step_size.detach().cpu()}")
        return step_size
    return check_real("step_size", step_size, minimum=0.0)


class EnergyProblem(ArgminProblem):
    """``argmin_z E(z, θ)`` s.t. ``lower ≤ z ≤ upper`` for a user energy (see module docstring).

    Args:
        energy: ``energy(z, *params) -> (B,)``; element ``b`` depends on ``z[b]`` only.
        lower, upper: bounds on ``z`` (floats or tensors broadcastable to ``z``), or None.
        like: a tensor with the shape/dtype/device of ``z`` (to broadcast the bounds).
        solver: ``solver(fun, z0, *, lower, upper, tol, max_iter) -> Solution`` (default
            ``minimize``).
        tol, max_iter: passed to the solver.
        step_size: ``η`` of the fixed-point map (float, or a ``(B,)`` tensor); default ``1/L̂``.
        cg_rtol, cg_max_iter: tolerance / iteration limit of the implicit CG.
        check: raise a ``SolverError`` (``Status.INDEFINITE``) when the implicit CG meets negative
            curvature; with ``False`` those elements get zero gradients and a ``RuntimeWarning``
            names them (the others are unaffected).

    Shape:
        - z: ``(B, *event)`` (the shape of ``like``); ``energy(z, *params)``: ``(B,)``.
    """

    param_names = ()

    def __init__(self, energy: Callable[..., torch.Tensor], *, like: torch.Tensor, lower=None,
                 upper=None, solver=None, tol: float | None = None, max_iter: int = 500,
                 step_size=None, cg_rtol: float | None = None, cg_max_iter: int | None = None,
                 check: bool = True):
        self.energy = check_callable("energy", energy, "energy(z, *params) -> (B,)")
        self.shape = like.shape
        lo = _bound_tensor("lower", lower, like)
        hi = _bound_tensor("upper", upper, like)
        if lo is not None and hi is not None and bool((lo > hi).any()):
            raise ValueError("lower/upper: expected lower <= upper everywhere")
        self.lower = None if lo is None else lo.reshape(like.shape)
        self.upper = None if hi is None else hi.reshape(like.shape)
        self.bounded = self.lower is not None or self.upper is not None
        self.fixed_point_symmetric = not self.bounded
        self.solver = minimize if solver is None else check_callable(
            "solver", solver, "solver(fun, z0, *, lower, upper, tol, max_iter) -> Solution")
        self.tol = default_tol(like.dtype) if tol is None else check_real("tol", tol, minimum=0.0)
        self.max_iter = check_count("max_iter", max_iter)
        self.step_size = _check_step_size(step_size)
        self.check = bool(check)
        self.cg_rtol = (default_cg_rtol(like.dtype) if cg_rtol is None
                        else check_real("cg_rtol", cg_rtol, minimum=0.0))
        n = like.shape[1:].numel()
        self.cg_max_iter = (max(2 * n, 50) if cg_max_iter is None
                            else check_count("cg_max_iter", cg_max_iter, minimum=1))

    # -- solves ------------------------------------------------------------------------------------
    def _solve(self, fun, warm_start: Solution | None) -> Solution:
        if warm_start is None:
            raise ValueError("EnergyProblem.solve needs a warm start (the initial point z0)")
        return self.solver(fun, warm_start.z.detach(), lower=self.lower, upper=self.upper,
                           tol=self.tol, max_iter=self.max_iter)

    def _energies(self, z, p):
        # shape-checked here, so that a wrong energy is reported under the user's name for it
        return check_energies("energy", self.energy(z, *p), z.shape[0])

    def solve(self, params, warm_start=None):
        p = param_leaves(params)
        return self._solve(lambda z: self._energies(z, p), warm_start)

    def solve_nudged(self, params, g, beta, warm_start=None):
        p = param_leaves(params)
        g = g.detach()
        return self._solve(lambda z: self._energies(z, p) + beta * batch_dot(g, z), warm_start)

    # -- gradients ---------------------------------------------------------------------------------
    def lagrangian_grads(self, solution, params, needs):
        with torch.enable_grad():
            leaves = param_leaves(params, needs)
            e = self.energy(solution.z.detach(), *leaves).sum()
        return grads_or_zeros(e, leaves)

    def _active_sets(self, z: torch.Tensor, grad: torch.Tensor):
        """Masks (strongly active, weakly active at lower, weakly active at upper)."""
        strong = torch.zeros_like(z, dtype=torch.bool)
        weak_lo = torch.zeros_like(z, dtype=torch.bool)
        weak_hi = torch.zeros_like(z, dtype=torch.bool)
        mult_tol = 10 * self.tol
        if self.lower is not None:
            at = torch.isfinite(self.lower) & (z <= self.lower + 1e-12 * (1 + self.lower.abs()))
            strong |= at & (grad > mult_tol)
            weak_lo |= at & (grad <= mult_tol)
        if self.upper is not None:
            at = torch.isfinite(self.upper) & (z >= self.upper - 1e-12 * (1 + self.upper.abs()))
            strong |= at & (grad < -mult_tol)
            weak_hi |= at & (grad >= -mult_tol)
        return strong, weak_lo & ~strong, weak_hi & ~strong

    def _tangent(self, graph: _GradientGraph, g: torch.Tensor) -> torch.Tensor:
        z = graph.z.detach()
        if self.bounded:
            strong, weak_lo, weak_hi = self._active_sets(z, graph.gz.detach())
            if bool((weak_lo | weak_hi).any()):
                return self._tangent_qp(graph, g, strong, weak_lo, weak_hi)
            free = (~strong).to(z.dtype)
        else:
            free = None

        def matvec(v):
            if free is None:
                return graph.hvp(v)
            return free * graph.hvp(free * v) + (1 - free) * v

        b = -g if free is None else -g * free
        res = conjugate_gradient(matvec, b, max_iter=self.cg_max_iter, rtol=self.cg_rtol)
        x = check_curvature(res, "implicit gradient (CG on the Hessian at the solution)", check=self.check,
                            stacklevel=4)
        warn_unconverged(res, "implicit gradient", self.cg_rtol, self.cg_max_iter,
                         " (is the Hessian positive definite at the solution?)", stacklevel=4)
        return x

    def _tangent_qp(self, graph, g, strong, weak_lo, weak_hi):
        zero = torch.zeros_like(g)
        inf = torch.full_like(g, math.inf)
        lo = torch.where(strong | weak_lo, zero, -inf)
        hi = torch.where(strong | weak_hi, zero, inf)
        g = g.detach()

        def qp(d):
            hd = torch.autograd.grad(graph.gz, graph.z, d, retain_graph=True, create_graph=True)[0]
            return 0.5 * batch_dot(d, hd) + batch_dot(g, d)

        scale = float(g.reshape(g.shape[0], -1).norm(dim=1).max())
        tol = max(self.cg_rtol * scale, torch.finfo(g.dtype).tiny)
        sol = minimize(qp, zero, lower=lo, upper=hi, tol=tol, max_iter=max(self.cg_max_iter, 200))
        if not bool(sol.solved.all()):
            warnings.warn("implicit gradient: the backward QP at weakly active bounds was not solved "
                          f"to tol={tol:g}: {sol.messages()}", RuntimeWarning, stacklevel=4)
        return sol.z

    def implicit_tangent(self, solution, params, g):
        graph = _GradientGraph(self.energy, solution.z, params, [False] * len(params))
        return Solution(z=self._tangent(graph, g.detach()))

    def lagrangian_grads_tangent(self, solution, tangent, params, needs):
        graph = _GradientGraph(self.energy, solution.z, params, needs)
        return graph.mixed_vjp(tangent.z.detach())

    def implicit_vjp(self, solution, params, g, needs):
        graph = _GradientGraph(self.energy, solution.z, params, needs)  # one graph for both steps
        dz = self._tangent(graph, g.detach())
        return graph.mixed_vjp(dz)

    # -- fixed-point map -------------------------------------------------------------------------
    def lipschitz_estimate(self, params, at: torch.Tensor, iters: int = 20) -> torch.Tensor:
        """Power-iteration estimate ``L̂`` of the largest Hessian eigenvalue at ``at``, ``(B,)``."""
        graph = _GradientGraph(self.energy, at, params, [False] * len(params))
        gen = torch.Generator(device=at.device).manual_seed(0)
        v = torch.randn(at.shape, generator=gen, device=at.device, dtype=at.dtype)
        lam = torch.ones(at.shape[0], dtype=at.dtype, device=at.device)
        for _ in range(iters):
            v = v / batch_dot(v, v).sqrt().clamp_min(torch.finfo(at.dtype).tiny).reshape(
                (-1,) + (1,) * (v.dim() - 1))
            hv = graph.hvp(v)
            lam = batch_dot(hv, hv).sqrt()
            v = hv
        return lam

    def fixed_point_map(self, params, at):
        if self.step_size is None:
            L = self.lipschitz_estimate(params, at)
            eta = 1.0 / L.clamp_min(torch.finfo(at.dtype).eps)
        elif isinstance(self.step_size, torch.Tensor):
            eta = self.step_size.detach().to(at.dtype).expand(at.shape[0])
        else:
            eta = torch.full((at.shape[0],), float(self.step_size), dtype=at.dtype, device=at.device)
        eta = eta.reshape((-1,) + (1,) * (at.dim() - 1))
        energy, lower, upper = self.energy, self.lower, self.upper

        def phi(w, *params):
            with torch.enable_grad():
                w_in = w if w.requires_grad else w.detach().requires_grad_(True)
                e = energy(w_in, *params).sum()
                (gw,) = torch.autograd.grad(e, w_in, create_graph=True, allow_unused=True)
            out = w_in - eta * (torch.zeros_like(w_in) if gw is None else gw)
            if lower is not None:
                out = torch.where(out < lower, lower, out)
            if upper is not None:
                out = torch.where(out > upper, upper, out)
            return out

        return phi
