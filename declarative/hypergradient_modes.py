"""Bilevel hypergradient modes (Grazzi et al. 2020; ``docs/guide/modes.md``) as ``GradientMode`` objects.

They work on every problem that declares a fixed-point map ``w = Φ(w, θ)`` through
``ArgminProblem.fixed_point_map`` (``declarative.argmin`` uses ``Φ = w − η∇_wE``,
``declarative.fixed_point`` the user's map). With ``g = ∂ℓ/∂w`` the cotangent of the inner
solution ``w`` returned by the forward solve, the implicit-function theorem gives

    ∇_θ ℓ = ∂_θΦ(w, θ)ᵀ v,     (I − ∂_wΦ(w, θ)ᵀ) v = g ,

(any direct dependence of the outer loss on θ is added by autograd outside the layer). The modes
differ in how ``v`` is obtained — all products by reverse-mode autodiff
(``FixedPointLinearisation``), all solvers shared (``linear_solvers``):

* ``FixedPoint(k)`` – AID-FP: ``k`` steps of ``v ← ∂_wΦᵀ v + g`` from ``v = 0`` (recurrent
  back-propagation; the Neumann series ``v_k = Σ_{i<k} (∂_wΦᵀ)ⁱ g``). Error ``O(q^k)`` for a
  contraction with constant ``q``.
* ``ConjugateGradient(k)`` – AID-CG: exactly ``k`` CG steps from ``v = 0`` on ``(I − ∂_wΦᵀ) v = g``
  when ``∂_wΦ`` is symmetric (``problem.fixed_point_symmetric``), otherwise on the normal
  equations ``(I − ∂_wΦᵀ)(I − ∂_wΦ) u = g``, ``v = (I − ∂_wΦ) u``.
* ``Unrolled(t)`` – ITD: the forward runs ``t`` steps ``w_{i+1} = Φ(w_i, θ)`` from the warm start
  ``w_0`` (treated as a constant) *recorded by autograd*, and the gradient is the exact gradient
  of ``ℓ(w_t(θ))``. Memory ``O(t)``. The returned ``w_t`` is not solved to a tolerance (its status
  is ``MAX_ITERATIONS`` unless ``‖w_t − w_{t−1}‖ ≤ tol``); the layers do not raise for that.
* ``FirstOrder()`` – ``v = 0``: the inner solution is treated as a constant, so the parameters
  receive **no** gradient through it (zeros); only a direct dependence of the outer loss on θ
  (added by autograd outside the layer) contributes. This is the "first-order" approximation of
  meta-learning (e.g. first-order MAML) — biased unless ``∂_θΦ = 0``.
* ``Implicit()`` (in ``modes``) – the problem's own matrix-free solve to a tolerance.

``FixedPoint`` and ``ConjugateGradient`` take ``jacobian="auto" | "dense" | "products"``: whether
the backward forms ``∂_wΦ`` as a dense matrix once (``D`` VJPs in one vmapped backward) instead of
``k`` separate VJPs — same iterates up to round-off, much less autograd overhead when ``k`` is large
against the size ``D`` of ``w`` (policy and the CG finite-termination shortcut: ``dense_jacobian``).

They also take ``rtol`` (stop at a tolerance, ``k`` then being the step limit), ``warm_start`` (start
the linear solve from the previous backward's iterate — across the outer steps of a bilevel loop
the system changes little, so fewer steps reach ``rtol``) and ``check``: ``ConjugateGradient`` raises
a ``SolverError`` with ``Status.INDEFINITE`` where CG meets negative curvature (the Hessian is not
positive definite at the solution: its iterate would not be the solution), ``FixedPoint`` warns when
its Neumann series grows and raises ``NON_FINITE`` when it overflows. ``mode.last_solve`` keeps the
last backward's ``LinearSolve`` (iterations, residuals, flags).

String names: ``"first_order"`` resolves to ``FirstOrder()``. ``FixedPoint``,
``ConjugateGradient`` and ``Unrolled`` are passed as objects: a string cannot carry ``k``/``t``
(and a default number of steps would silently decide the accuracy of the gradient);
``resolve_mode`` says so for the names ``"fixed_point"``, ``"conjugate_gradient"`` and
``"unrolled"``.

References:
    R. Grazzi, L. Franceschi, M. Pontil, S. Salzo. On the iteration complexity of hypergradient
    computation. ICML 2020 (Sec. 2–3).
    R. Liao et al. Reviving and improving recurrent back-propagation. ICML 2018.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

from .dense_jacobian import DenseJacobian, check_jacobian_policy, use_dense_jacobian
from .errors import SolverError
from .linear_solvers import (LinearSolve, batch_dot, check_curvature, conjugate_gradient, fixed_point_iteration,
                             normal_equations, warn_unconverged)
from .linearisation import FixedPointLinearisation
from .modes import GradientMode, check_mode_supports
from .solution import Solution
from .status import Status
from .validation import check_count, check_positive, check_real

__all__ = ["ConjugateGradient", "FirstOrder", "FixedPoint", "Unrolled"]


class _AIDSteps(GradientMode):
    """Shared by the AID modes with ``k`` steps: ``k``, the Jacobian policy, the optional tolerance
    and warm start, the linearisation at the solution and the choice between the dense Jacobian
    and the VJPs (``dense_jacobian``)."""

    requires = frozenset({"fixed_point_map"})

    def __init__(self, k: int, jacobian: str = "auto", *, rtol: float = 0.0, warm_start: bool = False,
                 check: bool = True):
        self.k = check_count("k", k, what=" (a number of steps)")
        self.jacobian = check_jacobian_policy(jacobian)
        self.rtol = check_positive("rtol", rtol, allow_zero=True)
        if not isinstance(warm_start, bool):
            raise TypeError(f"warm_start: expected a bool, got {type(warm_start).__name__}")
        if not isinstance(check, bool):
            raise TypeError(f"check: expected a bool, got {type(check).__name__}")
        self.warm_start, self.check = warm_start, check
        #: the ``LinearSolve`` of the last backward (iterations, residuals, flags), for diagnostics
        self.last_solve: LinearSolve | None = None
        self._x0: torch.Tensor | None = None

    def apply(self, problem, params, warm_start: Solution | None = None) -> Solution:
        check_mode_supports(self, problem)
        return super().apply(problem, params, warm_start)

    def _linearise(self, problem, params, solution, needs):
        """``(lin, dense)``: the linearisation at ``solution.z`` and, when the policy says so, its
        ``DenseJacobian`` (else None; always None with a tolerance or a warm start)."""
        lin = FixedPointLinearisation(problem, params, solution.z, needs)
        plain = self.rtol == 0 and not self.warm_start
        return lin, (DenseJacobian.of(lin) if plain and use_dense_jacobian(self.jacobian, lin.w, self.k) else None)

    def _start(self, like: torch.Tensor) -> torch.Tensor | None:
        """The previous backward's iterate as the initial guess, when warm-starting and it fits."""
        x0 = self._x0 if self.warm_start else None
        if x0 is None or x0.shape != like.shape or x0.dtype != like.dtype or x0.device != like.device:
            return None
        return x0

    #: the solver's name in warnings
    method = "conjugate gradient"

    def _record(self, res: LinearSolve, iterate: torch.Tensor) -> None:
        """Keep ``res`` (``last_solve``) and, when warm-starting, the iterate of the elements that
        are finite (and, with ``rtol``, converged) as the next initial guess — zero for the others,
        so that one diverged backward does not poison the next ones; then the checks. An element
        whose iterate is not finite, or (with ``rtol``) whose solve stopped at a non-finite
        residual (the iteration overflowed), is ``NON_FINITE``."""
        self.last_solve = res
        B = res.x.shape[0]
        finite = torch.isfinite(res.x.reshape(B, -1)).all(1)
        if self.rtol > 0:
            finite = finite & (torch.isfinite(res.residual) | (res.iterations == 0))
        if self.warm_start:
            keep = finite & torch.isfinite(iterate.reshape(B, -1)).all(1)
            if self.rtol > 0:
                keep = keep & res.converged
            keep = keep.reshape((-1,) + (1,) * (iterate.dim() - 1))
            self._x0 = torch.where(keep, iterate.detach(), torch.zeros_like(iterate))
        if self.check:
            err = SolverError.from_status(torch.where(finite, Status.SOLVED, Status.NON_FINITE),
                                          res, f"{self!r} backward (the linear system's iterate)")
            if err is not None:
                raise err
            if self.rtol > 0:
                warn_unconverged(res, f"{self!r} backward", self.rtol, self.k, stacklevel=4,
                                 method=self.method)

    def __repr__(self):
        extra = "" if self.jacobian == "auto" else f", jacobian={self.jacobian!r}"
        if self.rtol:
            extra += f", rtol={self.rtol:g}"
        if self.warm_start:
            extra += ", warm_start=True"
        return f"{type(self).__name__}(k={self.k}{extra})"


class FixedPoint(_AIDSteps):
    """AID with the fixed-point method (recurrent back-propagation / Neumann series):

        v₀ = 0,  v_{i+1} = ∂_wΦ(w, θ)ᵀ v_i + g  (k steps),   ∇_θ = ∂_θΦ(w, θ)ᵀ v_k .

    The iteration converges iff the spectral radius of ``∂_wΦ`` is below one; for an argmin layer
    (``Φ = w − η∇E``) that fails when the Hessian at the solution is indefinite (a saddle point or
    maximum): ``v`` then grows geometrically.

    Args:
        k: number of steps (``k = 0`` gives ``FirstOrder``); with ``rtol`` the step limit.
        jacobian: ``"auto"`` (default), ``"dense"`` or ``"products"``: form ``∂_wΦ`` once or use
            ``k`` VJPs (see ``declarative.dense_jacobian``).
        rtol: stop an element when ``‖v_i − v_{i−1}‖ ≤ rtol·‖g‖`` (default 0: exactly ``k`` steps).
        warm_start: start from the previous backward's ``v`` (same shape) instead of 0 — across
            outer steps of a bilevel loop, where ``v`` changes little, fewer steps reach ``rtol``.
            The mode object then carries state: use one object per layer.
        check: raise a ``SolverError`` (``NON_FINITE``) when ``v`` overflows, and warn
            (``RuntimeWarning``) when the last increment ``‖v_k − v_{k−1}‖`` is larger than the first
            (``‖g‖``) — the series is diverging (or in a transient growth, for non-normal maps).

    Examples::

        >>> mode = FixedPoint(100, rtol=1e-8, warm_start=True)   # one object across outer steps
        >>> w = fixed_point(phi, w0, lam, mode=mode)
        >>> mode.last_solve.iterations                            # steps of the last backward
    """

    name = "fixed_point"
    method = "the fixed-point iteration"

    def vjp(self, problem, params, solution, g, needs):
        lin, dense = self._linearise(problem, params, solution, needs)
        if dense is not None:
            res = dense.fixed_point(g, self.k)
        else:
            res = fixed_point_iteration(lin.jt, g, x0=self._start(g), max_iter=self.k, rtol=self.rtol)
        self._record(res, res.x)
        if self.check and self.k > 1:
            growing = res.residual > batch_dot(g, g).sqrt()
            if bool(growing.any()):
                bad = growing.nonzero().reshape(-1).tolist()
                warnings.warn(f"{self!r} backward: the Neumann series is growing for batch indices "
                              f"{bad[:20]} (‖v_k − v_(k−1)‖ > ‖g‖): ∂_wΦ has spectral radius ≥ 1 "
                              "(indefinite Hessian, too large a step, or a map that is not a "
                              "contraction) or a long transient; the gradient is not reliable",
                              RuntimeWarning, stacklevel=3)
        return lin.params_vjp(res.x)


class ConjugateGradient(_AIDSteps):
    """AID with exactly ``k`` conjugate-gradient steps from ``v = 0`` on ``(I − ∂_wΦᵀ) v = g``
    (symmetric ``∂_wΦ``), else on the normal equations; then ``∇_θ = ∂_θΦᵀ v``.

    With a dense Jacobian and ``k ≥ D`` (the size of ``w``) the ``k``-step iterate is the exact
    solution (CG's finite termination), computed by a factorisation (``dense_jacobian``).

    On the symmetric system CG needs ``I − ∂_wΦ`` positive definite (for an argmin layer: a
    positive definite Hessian at the solution). Where it meets negative curvature (a saddle point
    or maximum) its iterate is not the solution; with ``check`` this raises a ``SolverError``
    (``Status.INDEFINITE``) naming the batch elements instead of returning a wrong gradient.

    Args:
        k: number of CG steps (with ``rtol``: the step limit).
        jacobian: ``"auto"`` (default), ``"dense"`` or ``"products"``: form ``∂_wΦ`` once or use
            one VJP per step (see ``declarative.dense_jacobian``), plus one for CG's curvature scale
            on the symmetric system (``declarative.linear_solvers``; the normal equations are
            positive semidefinite by construction and need none with ``rtol = 0``; with
            ``rtol > 0`` the residual test takes that product too).
        rtol: stop an element when the residual ``‖r‖ ≤ rtol·‖g‖`` (default 0: exactly ``k``
            steps).
        warm_start: start from the previous backward's iterate (``v``, or ``u`` on the normal
            equations) instead of 0; the mode object then carries state.
        check: raise for negative curvature (``INDEFINITE``) or a non-finite iterate.
    """

    name = "conjugate_gradient"

    def vjp(self, problem, params, solution, g, needs):
        lin, dense = self._linearise(problem, params, solution, needs)
        symmetric = problem.fixed_point_symmetric
        if dense is not None:
            res = dense.solve_adjoint(g, symmetric=symmetric, max_iter=self.k)
            iterate = res.x
        else:
            a_t = lambda v: v - lin.jt(v)  # noqa: E731  (I − ∂_wΦᵀ)
            if symmetric:
                res = conjugate_gradient(a_t, g, x0=self._start(g), max_iter=self.k, rtol=self.rtol)
                iterate = res.x
            else:
                a = lambda u: u - lin.j(u)  # noqa: E731  (I − ∂_wΦ)
                res = conjugate_gradient(normal_equations(a_t, a), g, x0=self._start(g), max_iter=self.k,
                                         rtol=self.rtol, semidefinite=True)
                iterate = res.x
                res = dataclasses.replace(res, x=a(res.x))
        if self.check and symmetric:   # (the normal equations are PSD: a negative pᵀAp there is round-off)
            check_curvature(res, f"{self!r} backward")
        self._record(res, iterate)
        return lin.params_vjp(res.x)


class Unrolled(GradientMode):
    """Iterative differentiation (ITD): back-propagation through ``t`` steps of ``Φ`` from the warm
    start, ``w_{i+1} = Φ(w_i, θ)``, ``w_0`` constant; the forward value is ``w_t``.

    Memory grows linearly in ``t`` (autograd keeps every step's graph). For ``declarative.argmin``
    the steps are gradient descent ``w ← w − η∇_wE`` (not the L-BFGS solver, whose line search is
    not a fixed map).

    Args:
        t: number of unrolled steps.
        tol: a ``w_t`` with ``‖w_t − w_{t−1}‖ ≤ tol`` is reported ``SOLVED`` (default: never).
    """

    name = "unrolled"
    requires = frozenset({"fixed_point_map"})
    #: the forward is a truncated iteration: layers do not raise for MAX_ITERATIONS
    truncated = True

    def __init__(self, t: int, tol: float = 0.0):
        self.t = check_count("t", t, what=" (a number of steps)")
        self.tol = check_real("tol", tol, minimum=0.0, inclusive=True)

    def apply(self, problem, params, warm_start: Solution | None = None) -> Solution:
        check_mode_supports(self, problem)
        if warm_start is None:
            raise ValueError("Unrolled needs a warm start w₀ (the initial point of the unrolled "
                             "iteration)")
        w = warm_start.z.detach()
        phi = problem.fixed_point_map(params, at=w)
        B = w.shape[0]
        step = torch.full((B,), float("inf"), dtype=w.dtype, device=w.device)
        w_prev = w
        for _ in range(self.t):
            w_prev, w = w, phi(w, *params)
        if self.t > 0:
            d = (w - w_prev).detach()
            step = batch_dot(d, d).sqrt()
        finite = torch.isfinite(w.detach().reshape(B, -1)).all(1)
        status = torch.where(step <= self.tol, Status.SOLVED, Status.MAX_ITERATIONS)
        status = torch.where(finite, status, Status.NON_FINITE).to(torch.int64)
        iterations = torch.full((B,), self.t, dtype=torch.int64, device=w.device)
        return Solution(z=w, status=status, iterations=iterations, residuals={"step": step})

    def vjp(self, problem, params, solution, g, needs):  # pragma: no cover - apply differentiates
        raise RuntimeError("Unrolled differentiates through its own forward; vjp is not used")

    def __repr__(self):
        return f"Unrolled(t={self.t})"


class FirstOrder(GradientMode):
    """``v = 0``: no gradient flows through the inner solution (the parameters receive zeros from
    the layer); only direct dependences of the outer loss on θ contribute."""

    name = "first_order"

    def vjp(self, problem, params, solution, g, needs):
        return tuple(torch.zeros_like(p) if need and p is not None else None
                     for p, need in zip(params, needs))

