"""Least-norm multipliers of polished answers at degenerate vertices.

At a degenerate vertex the active rows ``M = [A; G_K]`` are linearly dependent and the optimal
multipliers form a set ``y + {v : Mᵀv = 0}``; an interior-point iterate may sit far out in it
(multipliers of ``10⁷`` whose terms cancel in ``Mᵀy``, where ``10²`` suffice). The answer is exact,
but its dual residual and duality gap round at ``u‖y‖``. ``_least_norm_multipliers`` replaces such
multipliers by the least-norm non-negative ones on the same active rows, found as the minimiser of
a strictly convex QP solved by this package's own solver.
"""

from __future__ import annotations

import torch

from .linalg import _gather_rows, _inf_norm, _mtv, _mv, _row_norm, _select
from .options import QPOptions

__all__: list[str] = []

#: the multipliers of a polished element are reduced to least-norm ones when their terms exceed
#: the gradient they balance by this factor
_CANCELLATION = 1e4


def _cancelling(Q, q, G, A, z, lam, nu, polished):
    """The polished elements whose multipliers' terms exceed the gradient ``g = −(Qz + q)`` they
    balance by ``_CANCELLATION`` (``‖λ‖∞ max_i‖g_i‖₁`` or ``‖ν‖∞ max_i‖a_i‖₁``), and ``g``."""
    g = -(q + _mv(Q, z))
    big = _inf_norm(lam) * _row_norm(G)
    if A is not None and A.shape[-2]:
        big = torch.maximum(big, _inf_norm(nu) * _row_norm(A))
    return polished & (big > _CANCELLATION * _inf_norm(g)), g


def _least_norm_qp(M, g, p):
    """The data ``(Q, q, G, h, A, b)`` of the least-norm problem

    .. math::

        \\min_y \\tfrac12 \\|y\\|^2 \\quad \\text{s.t.} \\quad M^T y = \\hat g, \\quad y_i \\ge 0
        \\ (i \\ge p)

    for ``y = (ν, λ_K)``, with ``ĝ = g/‖g‖∞`` (the minimiser is positively homogeneous in ``g``)
    and ``ĝ_j = 0`` where column ``j`` of ``M`` is zero (variables no active row touches: their
    stationarity does not involve ``y``, and a rounding-level ``g_j`` would make the rows
    inconsistent). Padding slots have zero rows in ``M``: their ``y`` is 0.

    Shape:
        ``M (B, N, n)`` with ``N = p + k``; ``g (B, n)``; returns the data of a
        batch of ``(N, n, k)`` problems (``N`` variables, ``n`` equality and ``k`` inequality rows)
        and the scale ``‖g‖∞ (B, 1)``.
    """
    B, N, n = M.shape
    k = N - p
    dtype, device = M.dtype, M.device
    scale = _inf_norm(g).unsqueeze(-1)
    scale = torch.where(scale > 0, scale, 1.0)
    touched = (M != 0).any(-2)
    b = torch.where(touched, g / scale, 0.0)
    G = torch.cat([torch.zeros(k, p, dtype=dtype, device=device),
                   -torch.eye(k, dtype=dtype, device=device)], -1)
    Q = torch.eye(N, dtype=dtype, device=device)
    return (Q, torch.zeros(N, dtype=dtype, device=device), G, torch.zeros(k, dtype=dtype, device=device),
            M.mT.contiguous(), b), scale


#: the options of the least-norm QP: its right-hand side has norm 1 and ``eps_abs`` asks for its
#: rounding level (a polished answer at ``1e-9`` left ``Mᵀy − g`` at 1e-14 relative, and its
#: inner product with ``z`` moved Maros–Meszaros QBORE3D's duality gap from 7e-10 to 3e-7); its
#: status is not required (its dual residual, in multipliers of dependent rows, may miss that
#: level): the answer is judged by its use; at most 30 iterations (QBORE3D and QSCFXM1 took 22–23,
#: QPCBOEI1, whose answer is not taken, ran to the limit of 50); without this clean-up of its own
#: multipliers and without the second solver
_OPTIONS = QPOptions(eps_abs=1e-13, max_iter=30, least_norm_multipliers=False, proximal_max_iter=0)


def _least_norm_multipliers(Q, q, G, A, z, lam, nu, polished):
    """Least-norm non-negative multipliers of polished points whose multipliers cancel.

    At a degenerate vertex (active rows ``M = [A; G_K]``, ``K = {i : λ_i > 0}``, linearly
    dependent) the multipliers of the stationarity condition

    .. math::

        M^T y = g := -(Qz + q), \\qquad y = (\\nu, \\lambda_K), \\quad \\lambda_K \\ge 0

    are not unique: ``y + t v`` with ``Mᵀv = 0`` is optimal too. For the elements whose
    multipliers are large against ``g`` (``_cancelling``), the least-norm ``y`` of that set is the
    minimiser of the strictly convex QP of ``_least_norm_qp``, solved (batched over those
    elements, ``K`` padded to the largest count) by ``QPProblem`` with ``_OPTIONS``; rows outside
    ``K`` keep ``λ_i = 0``, so complementarity is unchanged, and ``z`` is not touched. The new
    multipliers replace the old where they are finite, their residual ``‖Mᵀy − g‖∞`` is not
    larger (up to ten times the rounding of its terms) and their size ``‖y‖∞`` at most half the
    old (multipliers that are large without cancelling, from ill-conditioned rows, stay); the
    caller compares the two on the original problem. Returns the inputs themselves where nothing
    changed.

    Shape:
        data as ``solve_qp_ipm``'s (with a batch dimension, 1 or B); ``z (B, n)``,
        ``lam (B, m)``, ``nu (B, p)`` or None, ``polished (B,)`` (the elements to consider);
        returns ``lam, nu``.
    """
    from .problem import QPProblem   # (problem → ipm → this module)

    if not bool(polished.any()):
        return lam, nu
    todo, g = _cancelling(Q, q, G, A, z, lam, nu, polished)
    if not bool(todo.any()):
        return lam, nu
    ix = torch.nonzero(todo).reshape(-1)
    B, m = lam.shape
    n = z.shape[-1]
    p = 0 if A is None else A.shape[-2]   # (an A of zero rows is none)
    Gs, gs, ls = _select(G, ix), _select(g, ix), _select(lam, ix)
    Bs = ix.shape[0]
    pos = ls > 0
    k = int(pos.sum(-1).amax())
    idx = torch.argsort(pos.to(torch.int8), dim=-1, descending=True, stable=True)[:, :k]
    valid = pos.gather(1, idx)
    Gk = _gather_rows(Gs, idx) * valid.unsqueeze(-1).to(Gs.dtype)
    y0 = ls.gather(1, idx) * valid
    if p:
        M = torch.cat([_select(A, ix).expand(Bs, p, n), Gk], -2)
        y0 = torch.cat([_select(nu, ix), y0], -1)
    else:
        M = Gk
    data, scale = _least_norm_qp(M, gs, p)
    sol = QPProblem(_OPTIONS).solve(data)
    y = sol.z * scale
    y = torch.cat([y[:, :p], y[:, p:].clamp(min=0) * valid], -1)   # (λ ≥ 0 to rounding: exactly)
    old = _inf_norm(gs - _mtv(M, y0))
    new = _inf_norm(gs - _mtv(M, y))
    # (with the rounding of the new residual's own terms as slack: old multipliers that fit
    # exactly, e.g. data on a binary grid, would otherwise keep their size)
    slack = 10 * torch.finfo(y.dtype).eps * (_inf_norm(gs) + _inf_norm(_mtv(M.abs(), y.abs())))
    ok = (new <= old + slack) & (_inf_norm(y) <= 0.5 * _inf_norm(y0)) & torch.isfinite(y).all(-1)
    if not bool(ok.any()):
        return lam, nu
    o_ = ok.unsqueeze(-1)
    lam_s = torch.where(pos, ls.new_zeros(Bs, m).scatter(1, idx, y[:, p:]), ls)
    lam = lam.index_copy(0, ix, torch.where(o_, lam_s, ls))
    if p:
        nu = nu.index_copy(0, ix, torch.where(o_, y[:, :p], _select(nu, ix)))
    return lam, nu
