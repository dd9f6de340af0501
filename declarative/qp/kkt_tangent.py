"""``kkt_tangent``: the linearised KKT system at a solution of ``solve_qp_ipm`` (the QP backward's
linear algebra), solved with the factorisations the forward kept in ``Solution.cache``."""

from __future__ import annotations

import torch

from ..solution import Solution
from .linalg import _Factor, _mtv, _mv, _select, _static_reg, _with_batch, _zero_rows
from .options import QPOptions
from .polish import _active_system, _refine_active, _refine_tol

__all__ = ["kkt_tangent"]


def kkt_tangent(Q: torch.Tensor, G: torch.Tensor | None, A: torch.Tensor | None, solution: Solution,
                g: torch.Tensor, options: QPOptions | None = None):
    """Solve the linearised KKT system at a solution of ``solve_qp_ipm`` (strict complementarity):

        Q dz + G_Kᵀ dλ_K + Aᵀ dν = −g,   G_K dz = 0,   A dz = 0,   dλ_i = 0 (i ∉ K)

    with ``K`` the polished active set: by the method of multipliers with the forward's penalty
    factors (``_polish_penalty``, three steps) where the forward kept them, otherwise reusing the
    forward's factorisation kept in
    ``solution.cache`` when the first polish round was final for every element (otherwise the
    active-set system is factorised once here), plus two steps of iterative refinement. A forward
    that was not polished (``QPOptions.polish=False``) has the strict-complementarity guess
    ``λ > s`` as its active set.

    A forward solved in a higher precision than the data (float32 data are solved as float64
    problems, ``ipm._solve_upcast``, which marks its cache with an empty ``cache["work_dtype"]`` of
    that dtype; the factors it keeps are float64) is
    differentiated in that precision, consistently with its factors, and the tangent returned in
    the data's dtype.

    Returns:
        ``(dz (B, n), dλ (B, m), dν (B, p))``.
    """
    work = solution.cache.get("work_dtype")
    if work is not None and work.dtype != Q.dtype:
        wd = work.dtype

        def up(t):
            return None if t is None else t.to(wd)
        part = Solution(z=up(solution.z), cache=solution.cache)
        return tuple(t.to(Q.dtype) for t in kkt_tangent(up(Q), up(G), up(A), part, up(g), options))
    cache = solution.cache
    if "kkt_lu" in cache:
        return _active_set_tangent(G, A, solution, g)
    opts = (options or QPOptions()).resolved(Q.dtype)
    Qb, Gb, Ab = _with_batch(Q, 2), _with_batch(G, 2), _with_batch(A, 2)
    z = solution.z
    B, n = z.shape
    g = g.expand(B, n)
    m = 0 if Gb is None else Gb.shape[-2]
    p = 0 if Ab is None else Ab.shape[-2]
    if m == 0:
        Gb = None
    if p == 0:
        Ab = None
    empty = z.new_zeros(B, 0)
    if Gb is not None and "pre_U" in cache:
        # the method of multipliers with the forward's penalty factors (``_polish_penalty``); the
        # elements polished otherwise, or where it does not converge, get the exact active-set
        # factorisation
        U_, Y_, Us_, wf, gn = (cache.get(k_) for k_ in ("pre_U", "pre_Y", "pre_Us", "pre_w", "pre_gn"))
        act = cache["act"]
        a = act.to(z.dtype)
        dz, dlam, dnu, conv, _ = _refine_active(
            _Factor.from_cache(U_, Ab, Y_, Us_), wf * a, a, Qb, Gb, Ab, g, None, None, None, None, None,
            opts.rho, _refine_tol(z.dtype), 5, cache["pre_ok"], gn)
        if not bool(conv.all()):
            sub = torch.nonzero(~conv).reshape(-1)
            part = Solution(z=_select(z, sub), cache={"act": _select(act, sub)})
            dz_, dlam_, dnu_ = kkt_tangent(_select(Qb, sub), _select(Gb, sub), _select(Ab, sub), part, _select(g, sub),
                                           options)
            dz, dlam = dz.index_copy(0, sub, dz_), dlam.index_copy(0, sub, dlam_)
            if Ab is not None:
                dnu = dnu.index_copy(0, sub, dnu_)
        return dz, dlam, (dnu if Ab is not None else empty)
    zero_eq = None if Ab is None else _zero_rows(Ab, z.dtype)
    AtA = None if Ab is None or opts.rho == 0 else opts.rho * (Ab.transpose(-1, -2) @ Ab)
    reg = _static_reg(Qb, AtA, opts)
    if Gb is not None and "act" in cache and "act_idx" not in cache:
        act = cache["act"]
        k = int(act.sum(-1).amax())
        idx = torch.argsort(act.to(torch.int8), dim=-1, descending=True, stable=True)[:, :k]
        valid = act.gather(1, idx)
        Ae, _, zq = _active_system(Gb, None, Ab, None, zero_eq, idx, valid)
        if k + p > 0:
            f_ = _Factor(Qb, None, Ae, opts.rho * (Ae.transpose(-1, -2) @ Ae), None, reg, zq, opts.reg)
            cache = {"U": f_.L, "Y": f_.Y, "Us": f_.Ls, "act_idx": idx, "act_valid": valid}
        else:
            cache = {"U": _Factor(Qb, None, None, None, None, reg, None, opts.reg).L,
                     "act_idx": idx, "act_valid": valid}
    if Gb is not None and "act_idx" in cache:
        idx, valid = cache["act_idx"], cache["act_valid"]
        Ae, _, zq = _active_system(Gb, None, Ab, None, zero_eq, idx, valid)
        if Ae.shape[-2] == 0:
            fac = _Factor.from_cache(cache["U"], None)
            dz, _ = fac.solve(-g, None)
            return dz, z.new_zeros(B, m), z.new_zeros(B, p)
        fac = _Factor.from_cache(cache["U"], Ae, cache["Y"], cache["Us"])
        keep = 1 - zq
        dz, dy = fac.solve(-g, torch.zeros_like(zq))
        for _ in range(2):
            ra = -g - _mv(Qb, dz) - _mtv(Ae, dy)
            rb = -_mv(Ae, dz) * keep
            ddz, ddy = fac.solve(ra + opts.rho * _mtv(Ae, rb), rb)
            dz, dy = dz + ddz, dy + ddy
        dlam = z.new_zeros(B, m).scatter(1, idx, dy[:, p:] * valid)
        return dz, dlam, (dy[:, :p] if Ab is not None else empty)
    if Gb is not None:
        raise KeyError("kkt_tangent: the solution's cache holds no active set ('act'); every "
                       "solve_qp_ipm solution with inequalities has one")
    if "U" in cache:
        fac = _Factor.from_cache(cache["U"], Ab, cache.get("Y"), cache.get("Us"))
    else:
        fac = _Factor(Qb, None, Ab, AtA, None, reg, zero_eq, opts.reg)
    dz, dnu = fac.solve(-g, None if Ab is None else z.new_zeros(B, p))
    return dz, empty, (dnu if dnu is not None else empty)


def _active_set_tangent(G: torch.Tensor | None, A: torch.Tensor | None, solution: Solution,
                        g: torch.Tensor):
    """``kkt_tangent`` with the dual active-set solver's LU factors of ``[Q Cᵀ; C 0]``,
    ``C = [A; G_K]`` (``active_set``): one solve with the right-hand side ``[−g; 0]``.

    Shape: ``G (B, m, n)|(m, n)``, ``A (B, p, n)|(p, n)`` (or None), ``g (B, n)|(n,)``; returns
    ``(dz (B, n), dλ (B, m), dν (B, p))``."""
    cache = solution.cache
    z = solution.z
    B, n = z.shape
    m = 0 if G is None else G.shape[-2]
    p = 0 if A is None else A.shape[-2]
    idx = cache["kkt_idx"]
    k = idx.shape[-1]
    rhs = torch.cat([g.expand(B, n).neg(), z.new_zeros(B, p + k)], 1).unsqueeze(-1)   # [−g; 0]
    LU, piv = cache["kkt_lu"], cache["kkt_piv"]   # (float64 whatever the dtype)
    sol = torch.linalg.lu_solve(LU, piv, rhs.to(LU.dtype)).to(rhs.dtype).squeeze(-1)
    dlam = z.new_zeros(B, m)
    if k:
        dlam.scatter_(1, idx, sol[:, n + p:])
    return sol[:, :n], dlam, sol[:, n:n + p]
