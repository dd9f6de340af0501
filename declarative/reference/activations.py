"""cvxpy reference solutions of the activation argmin problems (``docs/guide/problems.md``).

Each activation ``f(a) = argmin_z ψ(z) − aᵀz`` is solved here as a generic convex program with
Clarabel at tight tolerance, optionally *nudged* (``argmin_z ψ(z) − aᵀz + β gᵀz``, ``docs/guide/modes.md``),
so that tests can compare the closed forms of ``declarative.activations`` and the difference
quotients ``(ẑ_β − z*)/β`` of their gradient modes with solutions we did not write:

=========== =========================================== ================================
name        problem (per row of a (B, n) batch)          ``ATOL`` (float64, |a| ≲ 5)
=========== =========================================== ================================
relu        ½‖z − a‖²  s.t. z ≥ 0                         1e-8  (QP)
box         ½‖z − a‖²  s.t. lo ≤ z ≤ hi                   1e-8  (QP)
sparsemax   ½‖z − a‖²  s.t. z ≥ 0, 1ᵀz = 1                1e-8  (QP)
softmax     Σ z_i log z_i − aᵀz  s.t. 1ᵀz = 1             1e-6  (exponential cone)
=========== =========================================== ================================

Tolerances, measured against the closed forms on Gaussian inputs of scale 1–3 (8×7 batches, three
seeds): Clarabel's gap/feasibility tolerances are set to 1e-12 (at 1e-10 the interior-point iterates
stop visibly short of the boundary: ReLU errors 5e-8, softmax 2.5e-6; at 1e-14 Clarabel reports
"optimal_inaccurate"). At 1e-12 the QPs came within 5e-9 and softmax within 1e-8. The QP
tolerance ``ATOL`` keeps a factor 2 of margin; the softmax one a factor 100, because the
exponential-cone iterates approach ``z_i → 0`` (large negative logits) less reliably — at 1e-10 its
error was 250× that of the QPs. A difference quotient of two solves has error ≲ ``2·ATOL/β``.

**Degenerate points.** Where a constraint is weakly active (active with a zero multiplier: ReLU at
``a = 0``, box at ``a = lo/hi``, sparsemax ties ``a_i = τ``) strict complementarity fails and
interior-point iterates approach the solution only at the rate sqrt(μ): with the 1e-12 tolerances
we measured errors up to 1.1e-6 there (ReLU 3.5e-7, box 4.9e-7, sparsemax 1.0e-6), and ~1e-7 for
problems nudged by β = 1e-4…1e-3 off such a point. ``ATOL_DEGENERATE`` = 3e-6 keeps a factor 3.
Hence ``nudged_difference_quotient(..., base_beta=β)``: for a piecewise-linear activation the
nudged path ``t ↦ ẑ_t`` is linear on ``[0, t₁)`` (t₁ = first kink crossed), so
``(ẑ_{2β} − ẑ_β)/β`` equals ``(ẑ_β − z*)/β`` for ``2β < t₁`` while both solves are
non-degenerate and accurate to ``ATOL``.

numpy/cvxpy only: never used by a forward or backward pass. cvxpy is imported inside functions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ATOL", "ATOL_DEGENERATE", "PROBLEMS", "activation_reference", "nudged_difference_quotient",
           "simplex_backward_qp_reference"]

PROBLEMS = ("relu", "box", "sparsemax", "softmax")

#: Absolute tolerance of the reference solutions, per problem (see the module docstring).
ATOL = {"relu": 1e-8, "box": 1e-8, "sparsemax": 1e-8, "softmax": 1e-6}
#: Absolute tolerance of the QP references at weakly active constraints (see the module docstring).
ATOL_DEGENERATE = 3e-6

_CLARABEL = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-12,
                 max_iter=500)


def _as_batch(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(1, -1) if x.ndim <= 1 else x.reshape(-1, x.shape[-1])


def _solve(problem, what: str) -> None:
    import cvxpy as cp

    problem.solve(solver=cp.CLARABEL, **_CLARABEL)
    if problem.status != cp.OPTIMAL:
        raise RuntimeError(f"reference {what}: cvxpy/Clarabel returned status {problem.status!r}")


def activation_reference(name: str, a, g=None, beta: float = 0.0, *, lo: float = -1.0,
                         hi: float = 1.0, return_duals: bool = False):
    """Solve the (nudged) argmin problem of an activation with cvxpy + Clarabel.

    ``ẑ = argmin_z ψ(z) − aᵀz + β gᵀz`` over the activation's constraint set (β = 0 or ``g=None``:
    the free problem ``z* = f(a)``). Every row of ``a`` is an independent problem (the simplex is
    over the last dimension); all rows are solved in one cvxpy program.

    Args:
        name: one of ``PROBLEMS``.
        a: array ``(n,)`` or ``(*, n)``.
        g: nudging direction, same shape as ``a`` (or None).
        beta: nudging strength (any sign).
        lo, hi: bounds of the box problem.
        return_duals: also return the multiplier of ``z ≥ 0`` (relu, sparsemax) or of
            ``(z ≥ lo, z ≤ hi)`` (box), shaped like ``a``.

    Returns:
        ``z`` with the shape of ``a`` (float64), and the duals if asked.
    """
    import cvxpy as cp

    if name not in PROBLEMS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(PROBLEMS)}")
    shape = np.shape(a)
    A = _as_batch(a)
    if g is not None and beta != 0.0:
        A = A - beta * _as_batch(g)  # ψ(z) − aᵀz + βgᵀz = ψ(z) − (a − βg)ᵀz
    Z = cp.Variable(A.shape)
    cons = []
    if name == "softmax":
        energy = -cp.sum(cp.entr(Z)) - cp.sum(cp.multiply(A, Z))
        cons.append(cp.sum(Z, axis=1) == 1)
    else:
        energy = 0.5 * cp.sum_squares(Z - A)
        if name in ("relu", "sparsemax"):
            cons.append(Z >= 0)
        if name == "sparsemax":
            cons.append(cp.sum(Z, axis=1) == 1)
        if name == "box":
            cons += [Z >= lo, Z <= hi]
    problem = cp.Problem(cp.Minimize(energy), cons)
    _solve(problem, name)
    z = np.asarray(Z.value).reshape(shape)
    if not return_duals:
        return z
    if name == "box":
        return z, (np.asarray(cons[0].dual_value).reshape(shape),
                   np.asarray(cons[1].dual_value).reshape(shape))
    if name in ("relu", "sparsemax"):
        return z, np.asarray(cons[0].dual_value).reshape(shape)
    return z, None


def nudged_difference_quotient(name: str, a, g, beta: float, *, base_beta: float = 0.0,
                               **kw) -> np.ndarray:
    """``(ẑ_{b+β} − ẑ_b)/β`` from two cvxpy solves, ``b = base_beta`` (default 0: ``ẑ_0 = z*``).

    The finite-β estimate of the one-sided implicit tangent ``dz``; the input gradient is
    ``∇_a = −dz`` (``∂_a 𝓛 = −z``). For piecewise-linear activations it is exact once
    ``b + β`` is below the nudging strength at which the first kink is crossed; its error is then
    the reference's accuracy divided by β (``2·ATOL/β``, or ``ATOL_DEGENERATE/β`` when ``b = 0`` at
    a weakly active point — use ``base_beta=beta`` there, see the module docstring).
    """
    z0 = activation_reference(name, a, g, base_beta, **kw)
    z1 = activation_reference(name, a, g, base_beta + beta, **kw)
    return (z1 - z0) / beta


def simplex_backward_qp_reference(a, g, *, active_tol: float = 1e-5) -> np.ndarray:
    """The one-sided tangent ``dz`` of sparsemax at ``a`` in the cotangent ``g``, by the backward QP
    of ``docs/guide/problems.md`` solved with cvxpy (rows of ``a`` independent):

        dz = argmin_d ½‖d‖² + gᵀd  s.t.  1ᵀd = 0,  d_i = 0 (strongly active i),  d_i ≥ 0 (weakly
        active i),

    where the active sets come from a cvxpy solve of the forward problem: ``z_i ≤ active_tol`` is
    active, strongly if its multiplier exceeds ``active_tol``, weakly otherwise. (H = I for the
    Euclidean projection.) The implicit gradient of the input is ``−dz``. ``active_tol`` must exceed
    ``ATOL_DEGENERATE`` (a weakly active coordinate comes back as ~1e-6, not 0) and be below the
    smallest nonzero output and strong multiplier of the inputs used.
    """
    import cvxpy as cp

    shape = np.shape(a)
    A, G = _as_batch(a), _as_batch(g)
    z, lam = activation_reference("sparsemax", A, return_duals=True)
    active = z <= active_tol
    strong = active & (lam > active_tol)
    weak = active & ~strong
    D = cp.Variable(A.shape)
    cons = [cp.sum(D, axis=1) == 0]
    if strong.any():
        cons.append(D[strong] == 0)
    if weak.any():
        cons.append(D[weak] >= 0)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(D) + cp.sum(cp.multiply(G, D))), cons)
    _solve(problem, "sparsemax backward QP")
    return np.asarray(D.value).reshape(shape)
