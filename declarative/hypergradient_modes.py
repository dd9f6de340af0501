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

import torch

from .dense_jacobian import DenseJacobian, check_jacobian_policy, use_dense_jacobian
from .linear_solvers import batch_dot, fixed_point_iteration
from .linearisation import FixedPointLinearisation
from .modes import GradientMode, check_mode_supports
from .solution import Solution
from .status import Status
from .validation import check_count, check_real

__all__ = ["ConjugateGradient", "FirstOrder", "FixedPoint", "Unrolled"]


class _AIDSteps(GradientMode):
    """Shared by the AID modes with ``k`` steps: ``k``, the Jacobian policy, the linearisation at
    the solution and the choice between the dense Jacobian and the VJPs (``dense_jacobian``)."""

    requires = frozenset({"fixed_point_map"})

    def __init__(self, k: int, jacobian: str = "auto"):
        self.k = check_count("k", k, what=" (a number of steps)")
        self.jacobian = check_jacobian_policy(jacobian)

    def apply(self, problem, params, warm_start: Solution | None = None) -> Solution:
        check_mode_supports(self, problem)
        return super().apply(problem, params, warm_start)

    def _linearise(self, problem, params, solution, needs):
        """``(lin, dense)``: the linearisation at ``solution.z`` and, when the policy says so, its
        ``DenseJacobian`` (else None)."""
        lin = FixedPointLinearisation(problem, params, solution.z, needs)
        return lin, (DenseJacobian.of(lin) if use_dense_jacobian(self.jacobian, lin.w, self.k) else None)

    def __repr__(self):
        extra = "" if self.jacobian == "auto" else f", jacobian={self.jacobian!r}"
        return f"{type(self).__name__}(k={self.k}{extra})"


class FixedPoint(_AIDSteps):
    """AID with the fixed-point method (recurrent back-propagation / Neumann series):

        v₀ = 0,  v_{i+1} = ∂_wΦ(w, θ)ᵀ v_i + g  (k steps),   ∇_θ = ∂_θΦ(w, θ)ᵀ v_k .

    Args:
        k: number of steps (``k = 0`` gives ``FirstOrder``).
        jacobian: ``"auto"`` (default), ``"dense"`` or ``"products"``: form ``∂_wΦ`` once or use
            ``k`` VJPs (see ``declarative.dense_jacobian``).
    """

    name = "fixed_point"

    def vjp(self, problem, params, solution, g, needs):
        lin, dense = self._linearise(problem, params, solution, needs)
        if dense is not None:
            v = dense.fixed_point(g, self.k).x
        else:
            v = fixed_point_iteration(lin.jt, g, max_iter=self.k).x
        return lin.params_vjp(v)


class ConjugateGradient(_AIDSteps):
    """AID with exactly ``k`` conjugate-gradient steps from ``v = 0`` on ``(I − ∂_wΦᵀ) v = g``
    (symmetric ``∂_wΦ``), else on the normal equations; then ``∇_θ = ∂_θΦᵀ v``.

    With a dense Jacobian and ``k ≥ D`` (the size of ``w``) the ``k``-step iterate is the exact
    solution (CG's finite termination), computed by a factorisation (``dense_jacobian``).

    Args:
        k: number of CG steps.
        jacobian: ``"auto"`` (default), ``"dense"`` or ``"products"``: form ``∂_wΦ`` once or use
            one VJP per step (see ``declarative.dense_jacobian``).
    """

    name = "conjugate_gradient"

    def vjp(self, problem, params, solution, g, needs):
        lin, dense = self._linearise(problem, params, solution, needs)
        v = (dense or lin).solve_adjoint(g, symmetric=problem.fixed_point_symmetric, max_iter=self.k).x
        return lin.params_vjp(v)


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

