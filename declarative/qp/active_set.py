"""Dual active-set solver for one small strictly convex QP (Goldfarb–Idnani), the fast path at B = 1.

    minimize_z  ½ zᵀQz + qᵀz   subject to   Gz ≤ h,  Az = b,   Q ≻ 0

At batch size 1 the interior-point method's cost is per-operation overhead (~100 torch operations an
iteration, then the polish), not arithmetic. The dual active-set method needs a handful of small
dense solves instead, and it ends on the exact active-set solution, with nothing to polish.

It starts from the equality-constrained minimiser (dual feasible: no inequality multiplier) and
repeatedly adds the most violated inequality ``p``, raising its multiplier ``t ≥ 0`` along

    [Q  Cᵀ] [dz]   [−g_p]
    [C  0 ] [dμ] = [ 0  ],      C = [A; G_W]  (equalities and the active set W),

the step ``t`` being the smaller of the full step (constraint ``p`` becomes active and joins W) and
the partial step at which an active multiplier reaches zero (that constraint leaves W, and the
step on ``p`` continues). Each full step strictly increases the dual objective, so no active set
repeats: the method ends after finitely many steps on the optimum, or on a certificate of primal
infeasibility (a violated constraint that no step can reach).

D. Goldfarb and A. Idnani, "A numerically stable dual method for solving strictly convex quadratic
programs", Math. Programming 27, 1983 (here with a fresh dense solve per step, fine for tiny
problems, instead of their factorisation updates).

The result is accepted only if it passes the same strict test as the polish (primal feasible and
multipliers non-negative to ``1e3·eps`` of the data scale) and the solver's tolerances; otherwise
— and for anything outside this method's scope (``Q`` not positive definite, singular equality
blocks, infeasibility, the step limit) — ``solve_qp_active_set`` returns None and the caller runs
the interior-point method, whose statuses and certificates then apply.
"""

from __future__ import annotations

import math

import torch

from ..solution import Solution
from ..status import Status
from .ipm import _residuals
from .linalg import _inf_norm, _with_batch
from .options import QPOptions
from .polish import _strict

__all__ = ["solve_qp_active_set", "use_active_set"]

#: the fast path applies up to this many variables plus constraints
MAX_SIZE = 64


def use_active_set(opts: QPOptions, Q, q, G, h, A, b) -> bool:
    """Whether ``QPOptions.active_set`` sends this problem to ``solve_qp_active_set``: one problem
    (every input unbatched or of batch size 1) with ``n + m + p ≤ 64``, unless disabled."""
    if opts.active_set is False:
        return False
    if any(t is not None and t.dim() == 3 and t.shape[0] != 1 for t in (Q, G, A)) or \
            any(t is not None and t.dim() == 2 and t.shape[0] != 1 for t in (q, h, b)):
        return False
    n = Q.shape[-1]
    m = 0 if G is None else G.shape[-2]
    p = 0 if A is None else A.shape[-2]
    return n + m + p <= MAX_SIZE


def _kkt_matrix(Q, C):
    """``[Q Cᵀ; C 0]``."""
    k = C.shape[0]
    if k == 0:
        return Q
    return torch.cat([torch.cat([Q, C.mT], 1), torch.cat([C, C.new_zeros(k, k)], 1)], 0)


def solve_qp_active_set(Q: torch.Tensor, q: torch.Tensor, G: torch.Tensor | None = None,
                        h: torch.Tensor | None = None, A: torch.Tensor | None = None,
                        b: torch.Tensor | None = None, *, options: QPOptions | None = None) -> Solution | None:
    """The exact solution of one small strictly convex QP by the dual active-set method (see the
    module docstring), or None when it does not apply or fails (run ``solve_qp_ipm`` then).

    Returns:
        ``Solution`` as ``solve_qp_ipm``'s with batch size 1: ``z (1, n)``, ``duals`` ``lam (1, m)``
        and ``nu (1, p)``, ``status`` SOLVED, ``iterations`` the number of KKT solves, the residuals, and
        ``cache`` with the slack ``s``, the active mask ``act``, ``polished`` (exact to rounding:
        the backward's weak-activity threshold is ``√eps``) and the LU factors of the KKT matrix
        on the final active set (``kkt_lu``, ``kkt_piv``; ``kkt_idx``: the active rows of G) for
        ``kkt_tangent``.

    Shape:
        inputs as ``solve_qp_ipm``'s, batch size 1 or unbatched.
    """
    opts = (options or QPOptions()).resolved(Q.dtype)
    Qb, qb = _with_batch(Q, 2), _with_batch(q, 1)
    Gb, hb = _with_batch(G, 2), _with_batch(h, 1)
    Ab, bb = _with_batch(A, 2), _with_batch(b, 1)
    Q1, q1 = Qb[0], qb[0]
    n = Q1.shape[-1]
    G1 = None if Gb is None or Gb.shape[-2] == 0 else Gb[0]
    h1 = None if G1 is None else hb[0]
    A1 = None if Ab is None or Ab.shape[-2] == 0 else Ab[0]
    b1 = None if A1 is None else bb[0]
    m = 0 if G1 is None else G1.shape[0]
    p = 0 if A1 is None else A1.shape[0]
    dtype = Q1.dtype
    strict = _strict(dtype)
    hnorm = _inf_norm(h1) if G1 is not None else Q1.new_zeros(())
    bnorm = _inf_norm(b1) if A1 is not None else Q1.new_zeros(())
    qnorm = _inf_norm(q1)
    # finite data (the interior-point method flags the others) and positive definite Q (the
    # unconstrained minimiser exists); the scalars the steps compare against — one host sync
    data = [t.reshape(-1) for t in (Q1, q1, G1, h1, A1, b1) if t is not None]
    checks = [torch.isfinite(torch.cat(data)).all().to(dtype),
              (torch.linalg.cholesky_ex(Q1).info == 0).to(dtype), Q1.abs().amax()]
    vals = torch.stack(checks)
    if G1 is not None:
        # ‖g_i‖² (the dependence test), ‖g_i‖₁ and |h_i| (the rounding level of g_i·z − h_i)
        vals = torch.cat([vals, (G1 * G1).sum(-1), G1.abs().sum(-1), h1.abs()])
    vals = vals.tolist()
    if vals[0] != 1.0 or vals[1] != 1.0:
        return None
    qscale = max(vals[2], torch.finfo(dtype).tiny)
    gsq, g1, habs = vals[3:3 + m], vals[3 + m:3 + 2 * m], vals[3 + 2 * m:]
    # a row counts as violated when g_i·z − h_i exceeds the rounding level of its evaluation,
    # c·eps·(|h_i| + ‖g_i‖₁‖z‖∞) — per row and relative (a threshold tied to ‖h‖∞, like the
    # polish's 1e3·eps·(1 + ‖h‖∞), let float32 solutions violate a row by 1e-4·(1 + ‖h‖∞))
    reps = max(n, 16) * torch.finfo(dtype).eps
    thr_h = [reps * v for v in habs]
    thr_g = [reps * v for v in g1]

    # the KKT matrix of every row, [Q Cᵀ; C 0] with C = [A; G], formed once: the system of an
    # active set W is its principal submatrix on the variables, the equalities and W
    rows = [t for t in (A1, G1) if t is not None]
    K_all = _kkt_matrix(Q1, torch.cat(rows, 0) if len(rows) > 1 else (rows[0] if rows else Q1.new_zeros(0, n)))
    base = list(range(n + p))

    def kkt(active):
        ix = torch.tensor(base + [n + p + i for i in active], device=Q1.device)
        return K_all.index_select(0, ix).index_select(1, ix)

    def kkt_solve(active, rhs):
        """``[Q Cᵀ; C 0]⁻¹ rhs`` on the active set (LU); None if the matrix is singular."""
        try:
            return torch.linalg.solve(kkt(active), rhs)
        except torch.linalg.LinAlgError:
            return None

    # equality-constrained minimiser
    sol = kkt_solve([], torch.cat([-q1, b1]) if b1 is not None else -q1)
    if sol is None:
        return None
    z = sol[:n]
    nu = sol[n:].tolist()                     # equality multipliers (Python floats: tiny, updated often)
    active: list[int] = []                    # inequality indices in W, in the order of C's rows
    lam_w: list[float] = []                   # their multipliers
    zeros = Q1.new_zeros(p + m)
    steps = 0
    max_steps = 4 * (m + p) + n + 10
    inf = float("inf")
    while G1 is not None:
        rz = torch.cat([G1 @ z - h1, z]).tolist()   # constraint values g_i·z − h_i, then z
        if not math.isfinite(sum(rz)):                # (an overflowing sum only sends it to the IPM)
            return None
        zmax = max(map(abs, rz[m:]), default=0.0)
        # the most violated row outside W, relative to its rounding level (W's rows hold by the solve)
        ip, viol = -1, 0.0
        for i, (ri, th, tg) in enumerate(zip(rz, thr_h, thr_g)):
            if ri > viol and ri > th + tg * zmax and i not in active:
                ip, viol = i, ri
        if ip < 0:
            break
        gp = G1[ip]
        gap_p = -viol                          # h_p − g_p·z, updated with z
        lam_p = 0.0
        while True:
            steps += 1
            if steps > max_steps:
                return None
            k = len(active)
            sol = kkt_solve(active, torch.cat([gp, zeros[:p + k]]))
            if sol is None:
                return None
            # sol = −(dz, dμ): the direction for a unit increase of λ_p (signs folded in below)
            dz = sol[:n]
            vals = torch.cat([sol[n:], (gp @ dz).unsqueeze(0)]).tolist()
            if not math.isfinite(sum(vals)):
                return None
            dmu = [-v for v in vals[:p + k]]
            gdz = -vals[-1]
            dlam_w = dmu[p:]                   # inequality multipliers' rates (equalities: free)
            # partial step: the first active multiplier to reach zero (ratio λ_j / −dλ_j)
            t1, drop = inf, -1
            for jj, (lj, dj) in enumerate(zip(lam_w, dlam_w)):
                if dj < 0 and lj / -dj < t1:
                    t1, drop = lj / -dj, jj
            # full step: constraint p becomes active (its slack h_p − g_p·z over −g_p·dz)
            dependent = -gdz <= 1e-12 * gsq[ip] / qscale
            t2 = inf if dependent else gap_p / gdz
            if t1 == inf and t2 == inf:
                return None                    # no step reaches p: primal infeasible (IPM certifies)
            t = min(t1, t2)
            if not dependent:
                z = torch.add(z, dz, alpha=-t)
                gap_p -= t * gdz
            nu = [v + t * d for v, d in zip(nu, dmu[:p])]
            lam_w = [v + t * d for v, d in zip(lam_w, dlam_w)]
            lam_p += t
            if t2 <= t1:
                active.append(ip)
                lam_w.append(lam_p)
                break
            del active[drop]
            del lam_w[drop]
    # the final active set's KKT system solved afresh (the steps' updates accumulate rounding),
    # below float64 with one step of iterative refinement; its LU factors serve the backward
    # (``kkt_tangent``).
    # The last violation check above found every row outside W feasible to its rounding level.
    idx = torch.tensor(active, dtype=torch.int64, device=Q1.device)
    K = kkt(active)
    LU, piv, info = torch.linalg.lu_factor_ex(K)
    rhs = torch.cat([-q1] + ([b1] if p else []) + ([h1.index_select(0, idx)] if active else [])).unsqueeze(-1)
    x = torch.linalg.lu_solve(LU, piv, rhs)
    if dtype != torch.float64:                # one step of iterative refinement (float32 and below)
        x = x + torch.linalg.lu_solve(LU, piv, rhs - K @ x)
    x = x.squeeze(-1)
    z, nu, lam_act = x[:n], x[n:n + p], x[n + p:]
    zb = z.unsqueeze(0)
    if G1 is not None:
        lam = Q1.new_zeros(m).index_copy(0, idx, lam_act).clamp(min=0).unsqueeze(0)
        s = (h1 - G1 @ z).clamp(min=0).unsqueeze(0)
        act = torch.zeros(1, m, dtype=torch.bool, device=Q1.device).index_fill(1, idx, True)
    else:
        lam = s = Q1.new_zeros(1, 0)
        act = None
    nub = nu.unsqueeze(0) if p else Q1.new_zeros(1, 0)
    # the relative residuals of ``QPOptions`` (the solver's definition)
    _, _, _, pres, dres, gap, _ = _residuals(Qb, qb, Gb if m else None, hb if m else None,
                                             Ab if p else None, bb if p else None, zb, s, lam, nub,
                                             hnorm, bnorm, qnorm)
    pres, dres, gap = pres[0], dres[0], gap[0]
    # accept: the solver's tolerances, a successful factorisation and the multipliers' signs (the
    # polish's test: non-negative to 1e3·eps of their scale)
    res = torch.stack([pres, dres, gap])
    checks = [res, info.to(dtype).reshape(1)]
    if active:
        checks.append((lam_act.amin() + strict * (1 + lam_act.abs().amax())).reshape(1))
    vals = torch.cat(checks).tolist()
    r_p, r_d, r_g, info_ = vals[:4]
    if not (r_p <= opts.tol_primal and r_d <= opts.tol_dual and r_g <= opts.tol_gap and info_ == 0):
        return None
    if active and not vals[4] >= 0:
        return None
    pres, dres, gap = res.reshape(3, 1).unbind(0)
    cache = {"s": s, "polished": torch.ones(1, dtype=torch.bool, device=Q1.device),
             "kkt_lu": LU.unsqueeze(0), "kkt_piv": piv.unsqueeze(0), "kkt_idx": idx.unsqueeze(0)}
    if act is not None:
        cache["act"] = act
    return Solution(z=zb, duals={"lam": lam, "nu": nub},
                    status=torch.full((1,), int(Status.SOLVED), dtype=torch.int64, device=Q1.device),
                    iterations=torch.full((1,), steps + 1, dtype=torch.int64, device=Q1.device),
                    residuals={"primal": pres, "dual": dres, "gap": gap}, cache=cache)
