"""Reference residuals of a QP answer (numpy, float64): qpbenchmark's definitions and their scales.

For ``min ½xᵀPx + qᵀx s.t. Gx ≤ h, Ax = b`` and an answer ``(x, z, y)`` (``z ≥ 0`` the multipliers
of ``G``, ``y`` those of ``A``), as ``qpsolvers.Solution`` computes them:

.. math::

    r_p = \\max(0, \\max(Gx - h), \\|Ax - b\\|_\\infty), \\quad
    r_d = \\|Px + q + G^Tz + A^Ty\\|_\\infty, \\quad
    r_g = |x^TPx + q^Tx + h^Tz + b^Ty| ,

with the scales of the relative tolerance ``max(‖Gx‖, ‖h‖, ‖Ax‖, ‖b‖)``,
``max(‖Px‖, ‖q‖, ‖Gᵀz‖, ‖Aᵀy‖)`` and ``max(|xᵀPx|, |qᵀx|, |hᵀz|, |bᵀy|)``, and the rounding
scales (the same sums with every term in absolute value). Written independently of the solver's
own (torch) evaluation, for tests and benchmarks.
"""

from __future__ import annotations

import numpy as np

__all__ = ["qp_residuals_np", "meets_np"]


def qp_residuals_np(P, q, G, h, A, b, x, z, y):
    """``(r_p, r_d, r_g, s_p, s_d, s_g, a_p, a_d, a_g)`` for one problem (numpy arrays; G/h, A/b
    may be None): residuals, scales, rounding scales."""
    P, q, x = (np.asarray(t, dtype=np.float64) for t in (P, q, x))
    Px = P @ x
    rd = Px + q
    xPx, qx = float(x @ Px), float(q @ x)
    rg = xPx + qx
    ax = np.abs(x)
    ad = np.abs(P) @ ax + np.abs(q)
    ag = float(ax @ (np.abs(P) @ ax) + np.abs(q) @ ax)
    ap = 0.0
    rp, ps, ds, gs = 0.0, [0.0], [np.abs(Px).max(initial=0), np.abs(q).max(initial=0)], [abs(xPx), abs(qx)]
    if G is not None and len(h):
        G, h, z = (np.asarray(t, dtype=np.float64) for t in (G, h, z))
        Gx, Gtz = G @ x, G.T @ z
        rd = rd + Gtz
        rg += float(h @ z)
        ad = ad + np.abs(G).T @ np.abs(z)
        ag += float(np.abs(h) @ np.abs(z))
        ap = max(ap, float((np.abs(G) @ ax + np.abs(h)).max()))
        rp = max(rp, float((Gx - h).max()))
        ps += [np.abs(Gx).max(), np.abs(h).max()]
        ds.append(np.abs(Gtz).max())
        gs.append(abs(float(h @ z)))
    if A is not None and len(b):
        A, b, y = (np.asarray(t, dtype=np.float64) for t in (A, b, y))
        Ax, Aty = A @ x, A.T @ y
        rd = rd + Aty
        rg += float(b @ y)
        ad = ad + np.abs(A).T @ np.abs(y)
        ag += float(np.abs(b) @ np.abs(y))
        ap = max(ap, float((np.abs(A) @ ax + np.abs(b)).max()))
        rp = max(rp, float(np.abs(Ax - b).max()))
        ps += [np.abs(Ax).max(), np.abs(b).max()]
        ds.append(np.abs(Aty).max())
        gs.append(abs(float(b @ y)))
    return rp, float(np.abs(rd).max()), abs(rg), max(ps), max(ds), max(gs), ap, float(ad.max()), ag


def meets_np(res, eps_abs: float, eps_rel: float, rounding: float = 0.0) -> bool:
    """All three residuals of ``qp_residuals_np`` within ``eps_abs + eps_rel·scale +
    rounding·abs`` (``rounding``: an allowance per unit of the absolute-value sums)."""
    rp, rd, rg, sp, sd, sg, ap, ad, ag = res
    return (rp <= eps_abs + eps_rel * sp + rounding * ap and rd <= eps_abs + eps_rel * sd + rounding * ad
            and rg <= eps_abs + eps_rel * sg + rounding * ag)
