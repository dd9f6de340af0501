"""cvxpy (Clarabel, tight tolerance) reference solutions of batched convex QPs.

    minimize ½ zᵀQz + qᵀz   subject to   Gz ≤ h,  Az = b

solved one batch element at a time, returning the primal solution, the multipliers ``λ ≥ 0`` of
``Gz ≤ h`` and ``ν`` of ``Az = b`` (signs as in the Lagrangian ``½zᵀQz + qᵀz + λᵀ(Gz − h) +
νᵀ(Az − b)``) and cvxpy's status string. Used by tests, examples and benchmarks only; cvxpy is
imported inside the functions.

Tolerance: Clarabel's gap/feasibility tolerances are 1e-11 (at 1e-12 it sometimes reports failure
on random QPs); on non-degenerate random problems of unit scale the solutions agree with an
independent solve to ~1e-9.

``random_qp`` and ``degenerate_qp`` build test problems (feasible and bounded by construction; the
degenerate ones with weakly active constraints at a known solution).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["degenerate_qp", "qp_reference", "qp_reference_batch", "random_qp"]

_CLARABEL = dict(tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11, tol_ktratio=1e-10, max_iter=500)


def _np(x):
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def qp_reference(Q, q, G=None, h=None, A=None, b=None):
    """Solve one (unbatched) QP with cvxpy + Clarabel.

    Returns:
        ``(z, lam, nu, status)``: numpy arrays ``(n,)``, ``(m,)``, ``(p,)`` (None entries where the
        status is not optimal) and cvxpy's status string (``"optimal"``, ``"infeasible"``,
        ``"unbounded"``, ...).
    """
    import cvxpy as cp

    Q, q, G, h, A, b = map(_np, (Q, q, G, h, A, b))
    n = q.shape[-1]
    z = cp.Variable(n)
    Qs = 0.5 * (Q + Q.T)
    cons = []
    if G is not None and G.shape[0] > 0:
        cons.append(G @ z <= h)
    if A is not None and A.shape[0] > 0:
        cons.append(A @ z == b)
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(z, cp.psd_wrap(Qs)) + q @ z), cons)
    try:
        prob.solve(solver="CLARABEL", **_CLARABEL)
    except cp.error.SolverError:
        prob.solve(solver="CLARABEL", **{**_CLARABEL, "tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10,
                                         "tol_feas": 1e-10})
    if prob.status not in ("optimal", "optimal_inaccurate"):
        return None, None, None, prob.status
    k = 0
    lam = np.zeros(0) if G is None else np.zeros(G.shape[0])
    nu = np.zeros(0) if A is None else np.zeros(A.shape[0])
    if G is not None and G.shape[0] > 0:
        lam = np.asarray(cons[k].dual_value, dtype=np.float64).reshape(-1)
        k += 1
    if A is not None and A.shape[0] > 0:
        nu = np.asarray(cons[k].dual_value, dtype=np.float64).reshape(-1)
    return np.asarray(z.value).reshape(-1), lam, nu, prob.status


def qp_reference_batch(Q, q, G=None, h=None, A=None, b=None):
    """``qp_reference`` for every element of a batch (unbatched inputs broadcast).

    Returns:
        ``(z (B, n), lam (B, m), nu (B, p), statuses list)``; rows of non-optimal elements are NaN.
    """
    arrs = [_np(x) for x in (Q, q, G, h, A, b)]
    cores = [2, 1, 2, 1, 2, 1]
    B = max([x.shape[0] for x, c in zip(arrs, cores) if x is not None and x.ndim == c + 1], default=None)
    unbatched = B is None
    B = 1 if B is None else B

    def elem(x, c, i):
        if x is None:
            return None
        return x[i] if x.ndim == c + 1 else x

    zs, ls, ns, sts = [], [], [], []
    n = arrs[1].shape[-1]
    m = 0 if arrs[2] is None else arrs[2].shape[-2]
    p = 0 if arrs[4] is None else arrs[4].shape[-2]
    for i in range(B):
        z, lam, nu, st = qp_reference(*(elem(x, c, i) for x, c in zip(arrs, cores)))
        if z is None:
            z, lam, nu = np.full(n, np.nan), np.full(m, np.nan), np.full(p, np.nan)
        zs.append(z)
        ls.append(lam)
        ns.append(nu)
        sts.append(st)
    out = np.stack(zs), np.stack(ls).reshape(B, m), np.stack(ns).reshape(B, p)
    if unbatched:
        out = tuple(o[0] for o in out)
    return (*out, sts)


def random_qp(B, n, m, p, *, dtype=torch.float64, device="cpu", psd_rank=None, seed=None):
    """A batch of random feasible QPs; ``B=None`` gives unbatched tensors.

    ``Q = MMᵀ/n + 0.1 I`` (or rank ``psd_rank`` PSD without the identity), inequality slack in
    [0.1, 1.1] at a random feasible point, equalities through the same point.
    Returns ``(Q, q, G, h, A, b)`` with ``None`` for absent blocks.
    """
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    shape = () if B is None else (B,)

    def randn(*s):
        return torch.randn(*shape, *s, generator=gen, dtype=torch.float64)

    if psd_rank is None:
        M = randn(n, n)
        Q = M @ M.transpose(-1, -2) / n + 0.1 * torch.eye(n, dtype=torch.float64)
    else:
        M = randn(n, psd_rank)
        Q = M @ M.transpose(-1, -2)
    q = randn(n)
    z0 = randn(n)
    G = h = A = b = None
    if m:
        G = randn(m, n)
        h = (G @ z0.unsqueeze(-1)).squeeze(-1) + 0.1 + torch.rand(*shape, m, generator=gen, dtype=torch.float64)
    if p:
        A = randn(p, n)
        b = (A @ z0.unsqueeze(-1)).squeeze(-1)
    return tuple(None if t is None else t.to(dtype=dtype, device=device) for t in (Q, q, G, h, A, b))


def degenerate_qp(B, n=5, m=6, *, seed=0, dtype=torch.float64):
    """QPs with ``Q = I`` whose solution ``z*`` lies on facets with zero multipliers.

    Rows 0 and 3 are strongly active (multipliers in [0.5, 1.5]), rows 1 and 2 weakly active
    (active with zero multiplier), the others inactive (slack 1): ``q = −z* − G_Sᵀλ_S``.
    Returns ``(Q, q, G, h, z*, λ*, strong, weak)``.
    """
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(B, m, n, generator=gen, dtype=torch.float64)
    zs = torch.randn(B, n, generator=gen, dtype=torch.float64)
    strong = torch.zeros(B, m, dtype=torch.bool)
    weak = torch.zeros(B, m, dtype=torch.bool)
    strong[:, [0, 3]] = True
    weak[:, [1, 2]] = True
    h = (G @ zs.unsqueeze(-1)).squeeze(-1) + (~(strong | weak)).double()
    lam = strong.double() * (torch.rand(B, m, generator=gen, dtype=torch.float64) + 0.5)
    Q = torch.eye(n, dtype=torch.float64).expand(B, n, n).clone()
    q = -zs - (lam.unsqueeze(-2) @ G).squeeze(-2)
    cast = lambda t: t.to(dtype)  # noqa: E731
    return cast(Q), cast(q), cast(G), cast(h), cast(zs), cast(lam), strong, weak
