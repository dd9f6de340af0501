"""Residuals of a QP answer on the original problem, in float64, and the SOLVED contract.

For ``min ½zᵀQz + qᵀz s.t. Gz ≤ h, Az = b`` and an answer ``(z, λ, ν)`` (the definitions of
qpbenchmark / ``qpsolvers.Solution``, ∞-norms):

.. math::

    r_p = \\max(\\|[Gz - h]_+\\|_\\infty, \\|Az - b\\|_\\infty), \\quad
    r_d = \\|Qz + q + G^T\\lambda + A^T\\nu\\|_\\infty, \\quad
    r_g = |z^TQz + q^Tz + h^T\\lambda + b^T\\nu| ,

with the scales of ``QPOptions``' relative tolerance

.. math::

    s_p = \\max(\\|Gz\\|, \\|h\\|, \\|Az\\|, \\|b\\|), \\quad
    s_d = \\max(\\|Qz\\|, \\|q\\|, \\|G^T\\lambda\\|, \\|A^T\\nu\\|), \\quad
    s_g = \\max(|z^TQz|, |q^Tz|, |h^T\\lambda|, |b^T\\nu|) .

An answer meets the contract when ``r ≤ eps_abs + eps_rel·s + c·u·a`` for all three, where the
last term is the rounding of the answer's own evaluation: ``u`` the unit roundoff of the answer's
dtype, ``c = ROUNDING_FACTOR`` and ``a`` the same sums with every term in absolute value
(``a_p = ‖|G||z| + |h|, |A||z| + |b|‖∞``, ``a_d = ‖|Q||z| + |q| + |Gᵀ||λ| + |Aᵀ||ν|‖∞``,
``a_g = |z|ᵀ|Q||z| + |q|ᵀ|z| + |h|ᵀλ + |b|ᵀ|ν|``) — without it a minimiser of size 1e8 along a
near-null direction of ``Q`` (``zᵀQz`` cancelling from terms of 1e15) could never be SOLVED, however
exact. Everything is evaluated in float64 (the data and the answer cast once; a few matrix–vector products), so that a
float32 answer is judged on what it is, not on float32 rounding of its residuals.

Certificates (``primal_certificate_holds``, ``dual_certificate_holds``) are checked the same way,
relative to the data's own scale: a ``y = (λ ≥ 0, ν)`` proves primal infeasibility when
``‖Gᵀλ + Aᵀν‖∞ ≤ ε‖y‖∞ max(‖G‖, ‖A‖)`` and ``hᵀλ + bᵀν < −ε‖y‖∞ max(‖h‖, ‖b‖)`` (then no point
with ``‖z‖∞ < −(hᵀλ + bᵀν)/‖Gᵀλ + Aᵀν‖₁`` is feasible, by Farkas' lemma); a ``d`` proves
unboundedness when ``‖Qd‖ ≤ ε‖d‖‖Q‖``, ``Gd ≤ ε‖d‖‖G‖``, ``‖Ad‖ ≤ ε‖d‖‖A‖`` and
``qᵀd < −ε‖d‖‖q‖`` (``‖M‖``: the largest entry).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .linalg import _abs_max, _abs_products, _inf_norm, _mtv, _mv

__all__ = ["QPResiduals", "qp_residuals", "meets_tolerances", "primal_certificate_holds",
           "dual_certificate_holds", "CERTIFICATE_TOL"]

#: multiple of the unit roundoff allowed per unit of the absolute-value sums (module docstring)
ROUNDING_FACTOR = 64.0

#: relative tolerance of a verified certificate, per dtype of the data
CERTIFICATE_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


class QPResiduals(NamedTuple):
    """Absolute residuals ``(primal, dual, gap)``, their scales and their absolute-value sums
    (rounding scales), each ``(B,)`` float64."""
    primal: torch.Tensor
    dual: torch.Tensor
    gap: torch.Tensor
    primal_scale: torch.Tensor
    dual_scale: torch.Tensor
    gap_scale: torch.Tensor
    primal_abs: torch.Tensor
    dual_abs: torch.Tensor
    gap_abs: torch.Tensor


def _f64(t):
    return None if t is None or t.shape[-1] == 0 or (t.dim() > 1 and t.shape[-2] == 0) else t.detach().double()


def _dot(x, y):
    return (x * y).sum(-1)


def qp_residuals(Q, q, G, h, A, b, z, lam, nu) -> QPResiduals:
    """The residuals and scales of the module docstring, in float64. The products with ``|Q|,
    |G|, |A|`` go through ``linalg._abs_products`` (large matrices in blocks of rows: no full
    ``|M|``, a fresh tensor of ``M``'s size).

    Shape:
        data as ``solve_qp_ipm``'s (batched or not, broadcasting); ``z (B, n)``, ``lam (B, m)``,
        ``nu (B, p)``; every output ``(B,)``.
    """
    Q, q, z = Q.detach().double(), q.detach().double(), z.detach().double()
    G, h, A, b = _f64(G), _f64(h), _f64(A), _f64(b)
    if G is None:
        h = None
    if A is None:
        b = None
    if Q.dim() == 2:
        Q = Q.unsqueeze(0)
    az = z.abs()
    Qz, aQz = _mv(Q, z), _abs_products(Q, az)[0]
    rd, ad = Qz + q, aQz + q.abs()
    zQz, qz = _dot(z, Qz), _dot(q.expand_as(z), z)
    rg, ag = zQz + qz, _dot(az, aQz) + _dot(q.abs().expand_as(z), az)
    ds = [_inf_norm(Qz), _inf_norm(q).expand_as(zQz)]
    gs = [zQz.abs(), qz.abs()]
    zero = torch.zeros_like(zQz)
    rp, ps, ap = zero, [zero], zero
    if G is not None:
        lam = lam.detach().double()
        Gm = G.unsqueeze(0) if G.dim() == 2 else G
        Gz, Gtl = _mv(Gm, z), _mtv(Gm, lam)
        hl = _dot(h.expand_as(lam), lam)
        rd, rg = rd + Gtl, rg + hl
        aGz, aGl = _abs_products(Gm, az, lam.abs())
        ad, ag = ad + aGl, ag + _dot(h.abs().expand_as(lam), lam.abs())
        rp = torch.maximum(rp, (Gz - h).clamp(min=0).amax(-1))
        ap = torch.maximum(ap, _inf_norm(aGz + h.abs()))
        ps += [_inf_norm(Gz), _inf_norm(h).expand_as(zero)]
        ds.append(_inf_norm(Gtl))
        gs.append(hl.abs())
    if A is not None:
        nu = nu.detach().double()
        Am = A.unsqueeze(0) if A.dim() == 2 else A
        Az, Atn = _mv(Am, z), _mtv(Am, nu)
        bn = _dot(b.expand_as(nu), nu)
        rd, rg = rd + Atn, rg + bn
        aAz, aAn = _abs_products(Am, az, nu.abs())
        ad, ag = ad + aAn, ag + _dot(b.abs().expand_as(nu), nu.abs())
        rp = torch.maximum(rp, _inf_norm(Az - b))
        ap = torch.maximum(ap, _inf_norm(aAz + b.abs()))
        ps += [_inf_norm(Az), _inf_norm(b).expand_as(zero)]
        ds.append(_inf_norm(Atn))
        gs.append(bn.abs())

    def top(xs):
        return torch.stack(torch.broadcast_tensors(*xs), -1).amax(-1)
    return QPResiduals(rp, _inf_norm(rd), rg.abs(), top(ps), top(ds), top(gs), ap, _inf_norm(ad), ag)


def meets_tolerances(res: QPResiduals, eps_abs: float, eps_rel: float, unit: float = 0.0) -> torch.Tensor:
    """``(B,)`` bool: all three residuals within ``eps_abs + eps_rel·scale + c·unit·abs`` (module
    docstring; ``unit``: the unit roundoff of the answer's dtype; False for NaN)."""
    c, cap = ROUNDING_FACTOR * unit, unit ** 0.5

    def allowance(scale, abs_sum):
        # the rounding term, capped at √u·(1 + scale): a huge iterate (z ~ 1e15 along a direction
        # of unboundedness) has huge absolute-value sums, and an uncapped term absorbed residuals
        # of 70 % of their scale
        return torch.minimum(c * abs_sum, cap * (1 + scale))

    return ((res.primal <= eps_abs + eps_rel * res.primal_scale + allowance(res.primal_scale, res.primal_abs))
            & (res.dual <= eps_abs + eps_rel * res.dual_scale + allowance(res.dual_scale, res.dual_abs))
            & (res.gap <= eps_abs + eps_rel * res.gap_scale + allowance(res.gap_scale, res.gap_abs)))


def tolerance_ratio(res: QPResiduals, eps_abs: float, eps_rel: float) -> torch.Tensor:
    """``(B,)``: the largest of the three residuals over its tolerance ``eps_abs + eps_rel·scale``
    (without the rounding term of ``meets_tolerances``; NaN for a NaN residual)."""
    ratios = [r / (eps_abs + eps_rel * sc) for r, sc in ((res.primal, res.primal_scale),
                                                        (res.dual, res.dual_scale), (res.gap, res.gap_scale))]
    return torch.stack(ratios, -1).amax(-1)


def _entry_max(M):
    return _abs_max(M, (-2, -1))


def primal_certificate_holds(G, h, A, b, lam, nu, eps: float) -> torch.Tensor:
    """``(B,)`` bool: ``y = (λ, ν)`` proves primal infeasibility of the original data (module
    docstring), evaluated in float64; ``λ`` must be non-negative."""
    G, h, A, b = _f64(G), _f64(h), _f64(A), _f64(b)
    r = cost = ny = mscale = rscale = None
    parts = []
    if G is not None:
        lam = lam.detach().double()
        Gm = G.unsqueeze(0) if G.dim() == 2 else G
        parts.append((Gm, h, lam))
    if A is not None:
        nu = nu.detach().double()
        Am = A.unsqueeze(0) if A.dim() == 2 else A
        parts.append((Am, b, nu))
    nonneg = None
    for M, c, y in parts:
        r_ = _mtv(M, y)
        cost_ = _dot(c.expand_as(y), y)
        r = r_ if r is None else r + r_
        cost = cost_ if cost is None else cost + cost_
        ny_, ms_, rs_ = _inf_norm(y), _entry_max(M), _inf_norm(c)
        ny = ny_ if ny is None else torch.maximum(ny, ny_)
        mscale = ms_ if mscale is None else torch.maximum(mscale, ms_)
        rscale = rs_ if rscale is None else torch.maximum(rscale, rs_)
    if r is None:
        return torch.zeros(lam.shape[0] if lam is not None else nu.shape[0], dtype=torch.bool, device=lam.device)
    if G is not None:
        nonneg = (lam >= 0).all(-1)
    ok = (ny > 0) & (_inf_norm(r) <= eps * ny * mscale) & (cost < -eps * ny * rscale) & (cost < 0)
    return ok if nonneg is None else ok & nonneg


def dual_certificate_holds(Q, q, G, A, d, eps: float) -> torch.Tensor:
    """``(B,)`` bool: the direction ``d`` proves that the objective is unbounded below on the
    feasible set of the original data (module docstring; the feasible set must be non-empty for
    the verdict, which this test does not decide), evaluated in float64."""
    Q, q, d = Q.detach().double(), q.detach().double(), d.detach().double()
    G, A = _f64(G), _f64(A)
    Qm = Q.unsqueeze(0) if Q.dim() == 2 else Q
    nd = _inf_norm(d)
    ok = (nd > 0) & (_inf_norm(_mv(Qm, d)) <= eps * nd * _entry_max(Qm))
    qd = _dot(q.expand_as(d), d)
    ok = ok & (qd < -eps * nd * _inf_norm(q)) & (qd < 0)
    if G is not None:
        Gm = G.unsqueeze(0) if G.dim() == 2 else G
        ok = ok & (_mv(Gm, d).amax(-1) <= eps * nd * _entry_max(Gm))
    if A is not None:
        Am = A.unsqueeze(0) if A.dim() == 2 else A
        ok = ok & (_inf_norm(_mv(Am, d)) <= eps * nd * _entry_max(Am))
    return ok
