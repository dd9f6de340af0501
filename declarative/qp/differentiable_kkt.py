r"""The QP's solution as a differentiable function of its data, for second derivatives.

First-order gradients of a QP come from the implicit tangent (``kkt_tangent``), computed with the
forward's factorisations, which are constants for autograd. A ``create_graph=True`` backward
(Hessian-vector products, gradient penalties, meta-gradients) also differentiates the gradient
itself, so the solution ``(z, λ, ν)`` and the tangent must be differentiable functions of the data.
On a neighbourhood where the active set ``K`` does not change (strict complementarity), the solution
and its multipliers solve the linear KKT system of the equality-constrained QP on ``K``:

.. math::

    \begin{bmatrix} Q & G_K^\top & A^\top \\ G_K & 0 & 0 \\ A & 0 & 0 \end{bmatrix}
    \begin{bmatrix} z \\ \lambda_K \\ \nu \end{bmatrix} =
    \begin{bmatrix} -q \\ h_K \\ b \end{bmatrix}, \qquad \lambda_{\bar K} = 0 .

There this system is the solution map itself. Solved in torch ops (``torch.linalg.solve_ex``, in
float64), it carries exact derivatives of every order. ``differentiable_kkt_solution`` returns the
forward's values with that system's derivatives (``x + (x̃ − x̃.detach())``): first-order gradients
are unchanged, and their own derivatives are exact. ``Q`` enters symmetrised, ``½(Q + Qᵀ)``, as in
the first-order gradient ``½(dz zᵀ + z dzᵀ)``.

Per element, these derivatives are zero (the values stay) where the map is not differentiable or
the system does not stand for it — the second-order terms of that element's solution map are
dropped; a cotangent that itself depends on θ still contributes through the first-order gradient.
A ``RuntimeWarning`` names those solved elements:

* weakly active constraints (active with a zero multiplier): the solution map has a kink there.
  The one-sided first derivative (the backward QP, solved as data) keeps its derivative in the
  cotangent — it is linear in ``g`` on the backward QP's own active set
  (``QPProblem._linear_in_cotangent``) — but has none in θ;
* a KKT system that is singular, or whose solution is not the forward's to ``1e-6`` (float64
  answers) or ``1e-3`` (float32) of its size, or ``1e3`` times the iterations' tolerance if that
  is larger (e.g. dependent active rows). The system is judged before it is differentiated: a
  singular one never reaches autograd (its backward would raise, or return NaN that a shared
  parameter spreads to every element).

Elements whose forward solve failed get zero derivatives without a warning (their status says so).
"""

from __future__ import annotations

import torch

from ..second_derivatives import derivative_of, note_zeroed_second_derivatives
from ..solution import Solution
from .linalg import _zero_rows

__all__ = ["differentiable_kkt_solution"]

#: agreement between the KKT system's solution and the forward's, relative to its size, per dtype
#: of the forward's answer (an interior-point answer is accurate to its tolerances, not to rounding)
_AGREEMENT = {torch.float64: 1e-6, torch.float32: 1e-3}


def _batched(t: torch.Tensor | None, core: int, B: int) -> torch.Tensor | None:
    if t is None:
        return None
    t = t.to(torch.float64)
    return t.expand(B, *t.shape[-core:]) if t.dim() == core else t


def _kkt_system(params, active: torch.Tensor | None, B: int):
    """``(K, r)`` of the system in the module docstring, ``(B, N, N)`` and ``(B, N)`` with
    ``N = n + m + p``, in float64. Inactive rows read ``−λ_i = 0``; equality rows of zeros read
    ``ν_i = b_i``, which keeps the system regular."""
    Q, q, G, h, A, b = (_batched(t, c, B) for t, c in zip(params, (2, 1, 2, 1, 2, 1)))
    Q = 0.5 * (Q + Q.transpose(-1, -2))
    rows, rhs = [[Q]], [-q]
    blocks = []
    if G is not None and G.shape[-2]:
        a = active.to(torch.float64)
        Gk = G * a.unsqueeze(-1)
        blocks.append((Gk, torch.diag_embed(a - 1.0), a * h))
    if A is not None and A.shape[-2]:
        blocks.append((A, torch.diag_embed(_zero_rows(A, torch.float64)), b))
    for M, _, _ in blocks:
        rows[0].append(M.transpose(-1, -2))
    for i, (M, D, r) in enumerate(blocks):
        row = [M]
        for j, (M2, _, _) in enumerate(blocks):
            row.append(D if i == j else M.new_zeros(B, M.shape[-2], M2.shape[-2]))
        rows.append(row)
        rhs.append(r)
    return torch.cat([torch.cat(row, -1) for row in rows], -2), torch.cat(rhs, -1)


def differentiable_kkt_solution(solution: Solution, params, active: torch.Tensor | None,
                                usable: torch.Tensor, accuracy: float = 0.0) -> Solution:
    """``solution`` with ``z`` and the multipliers made differentiable in ``params`` (see the
    module docstring); values unchanged, ``status``, ``iterations``, ``residuals`` and ``cache``
    kept.

    Args:
        solution: the forward's solution in the units of ``params`` (``z (B, n)``, duals ``lam
            (B, m)`` and ``nu (B, p)``).
        params: ``(Q, q, G, h, A, b)``, batched or not, some requiring gradients.
        active: ``(B, m)`` bool, the active set ``K`` (None without inequalities).
        usable: ``(B,)`` bool, the solved elements whose solution map is differentiable there
            (no weakly active constraint); the others get zero derivatives, with a warning for
            those that ``solution`` calls solved.
        accuracy: the forward's relative accuracy (its iterations' tolerance); the agreement
            required is the larger of ``1e3·accuracy`` and the dtype's threshold above.
    """
    z = solution.z
    B, dtype = z.shape[0], z.dtype
    lam, nu = solution.duals.get("lam"), solution.duals.get("nu")
    K, r = _kkt_system(params, active, B)
    forward = torch.cat([t.detach().to(torch.float64) for t in (z, lam, nu) if t is not None and t.shape[-1]], -1)
    tol = max(_AGREEMENT.get(dtype, 1e-3), 1e3 * accuracy)
    with torch.no_grad():
        # which elements the system stands for: decided first, so that the differentiable solve
        # below never meets a singular matrix (its backward would raise, or give NaN that a
        # shared parameter spreads to every element)
        x0, info = torch.linalg.solve_ex(K.detach(), r.detach().unsqueeze(-1))
        x0 = x0.squeeze(-1)
        agree = (info == 0) & torch.isfinite(x0).all(-1) & \
            ((x0 - forward).abs().amax(-1) <= tol * (1 + forward.abs().amax(-1)))
    ok = usable & agree
    solved = solution.solved
    # weakly active: the tangent is the backward QP's, a constant (``QPProblem``); else only the
    # solution map's second-order terms are dropped
    note_zeroed_second_derivatives(solved & ~usable, "weakly active constraints (the gradient has a kink there)",
                                   "QP")
    note_zeroed_second_derivatives(solved & usable & ~agree, "a singular KKT system on the active set, or one "
                                   "whose solution is not the forward's", "QP")
    if not bool(ok.any()):
        return solution.detach() if solution.z.requires_grad else solution
    # the elements not ok solve I x = 0 instead (a regular system; their derivatives are dropped)
    keep = ok.reshape(-1, 1, 1)
    eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    x = torch.linalg.solve(torch.where(keep, K, eye), torch.where(keep[..., 0], r, 0.0).unsqueeze(-1)).squeeze(-1)
    parts = x.to(dtype).split([t.shape[-1] if t is not None else 0 for t in (z, lam, nu)], -1)
    duals = dict(solution.duals)
    for key, value, part in (("lam", lam, parts[1]), ("nu", nu, parts[2])):
        if value is not None:
            duals[key] = value.detach() + derivative_of(part, ok)
    return Solution(z=z.detach() + derivative_of(parts[0], ok), duals=duals, status=solution.status,
                    iterations=solution.iterations, residuals=solution.residuals, cache=solution.cache)
