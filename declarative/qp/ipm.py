"""Batched primal–dual interior-point solver for convex quadratic programs (pure torch).

    minimize_z  ½ zᵀQz + qᵀz   subject to   Gz ≤ h,  Az = b

Mehrotra predictor–corrector on the KKT conditions with slack ``s = h − Gz ≥ 0``:

    Qz + q + Gᵀλ + Aᵀν = 0,   Gz + s = h,   Az = b,   s ∘ λ = 0,   s, λ ≥ 0 .

Every Newton system is reduced to the positive definite matrix

    H = Q + Gᵀ diag(λ/s) G + ρ AᵀA + δ I

(the ``ρAᵀA`` term leaves the solution unchanged because ``A dz`` is prescribed, and makes ``H``
definite when ``Q`` is only positive definite on the null space of ``A``); the equality block is
eliminated with the Schur complement ``A H⁻¹ Aᵀ``. Both are factorised once per iteration with a
batched Cholesky (``torch.linalg.cholesky_ex``, upper factor) and used for the predictor and the corrector. The
factorisation at the returned iterate is kept in ``Solution.cache`` for the implicit backward (the
active-set factorisation of the final polish, see ``kkt_tangent``).

Infeasibility is detected (from the third iteration on) with the usual certificates evaluated on
the iterates and on the Newton directions (an infeasible-start IPM diverges along a certificate);
we chose this over a homogeneous self-dual embedding because it keeps the Newton system of the
plain QP: primal infeasible when
``λ ≥ 0, ν`` satisfy ``‖Gᵀλ + Aᵀν‖ ≤ ε‖(λ,ν)‖`` and ``hᵀλ + bᵀν ≤ −ε‖(λ,ν)‖``; dual infeasible
(unbounded below) when a direction ``d`` satisfies ``‖Qd‖ ≤ ε‖d‖``, ``Gd ≤ ε‖d‖``, ``‖Ad‖ ≤ ε‖d‖``
and ``qᵀd ≤ −ε‖d‖``.

All batch elements advance in the same tensor operations; converged (or failed) elements are frozen
(their step length is zero), and once at most 3/4 of the working set is still running the working
set is compacted to the running elements. The only host synchronisation is one convergence check
per iteration. Converged solutions are then *polished* (``QPOptions.polish``): the
equality-constrained QP on the identified active set is solved exactly, which removes the
``O(√μ)`` error of interior-point iterates at weakly active constraints and gives the backward
its factorisation. In float64 the polish is the method of multipliers on the interior-point
matrix with a large penalty on the active rows, ``Q + c G_KᵀG_K + ρAᵀA`` (two or three
refinement steps; no Schur complement of the active rows); elsewhere, and where that fails, the
active rows are gathered and eliminated with a Schur complement (``_polish``). The first
iteration reuses the factorisation of the starting point (``λ = s``, weights 1). A primal and gap
converged element whose dual residual grows (ill-conditioned Newton systems, typically float32) is
stopped and handed to the polish as well.

References:
    S. Mehrotra, "On the implementation of a primal-dual interior point method", SIAM J. Optim. 1992.
    S. Wright, "Primal-Dual Interior-Point Methods", SIAM 1997, ch. 10–11.
    B. Amos and J. Z. Kolter, "OptNet", ICML 2017 (batched IPM for QPs).
"""

from __future__ import annotations

import torch

from ..solution import Solution
from ..status import Status
from .options import QPOptions

__all__ = ["kkt_tangent", "solve_qp_ipm"]

_RUNNING = -1
_STALLED = -2


_SMALL = 4096   # below this many entries of M, a broadcast multiply-and-sum beats GEMM dispatch
#: penalty of the active rows in ``_polish_penalty`` relative to the scale of Q (float64 only: the
#: penalised matrix has condition ~ γ·cond(Q))
_PENALTY = 1e7


def _strict(dtype) -> float:
    """Feasibility and sign threshold of a polished point (relative)."""
    return 1e3 * torch.finfo(dtype).eps


def _refine_tol(dtype) -> float:
    """Relative residual at which ``_refine_active`` stops."""
    return 1e1 * torch.finfo(dtype).eps


def _mv(M: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Batched ``M x`` with broadcasting of a leading batch dimension of size 1.

    Written as a row-vector product ``xᵀMᵀ`` (GEMM with one row, the faster layout on CPU; a
    batched ``bmm`` with one column is 2–4× slower), one GEMM when ``M`` is shared by the batch,
    and a broadcast multiply-and-sum for tiny ``M`` (dispatch overhead dominates)."""
    if M.shape[-1] * M.shape[-2] * max(M.shape[0], x.shape[0]) <= _SMALL:
        return (M * x.unsqueeze(-2)).sum(-1)
    if M.shape[0] == 1 and M.dim() == 3:
        return x @ M[0].mT
    return (x.unsqueeze(-2) @ M.mT).squeeze(-2)


def _mtv(M: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Batched ``Mᵀ x`` (see ``_mv``)."""
    if M.shape[-1] * M.shape[-2] * max(M.shape[0], x.shape[0]) <= _SMALL:
        return (M * x.unsqueeze(-1)).sum(-2)
    if M.shape[0] == 1 and M.dim() == 3:
        return x @ M[0]
    return (x.unsqueeze(-2) @ M).squeeze(-2)


def _mvs(M: torch.Tensor, xs) -> list:
    """``[M x for x in xs]`` in one pass over ``M`` (one GEMM with ``len(xs)`` rows); separate
    broadcast products for tiny ``M``, where the stacking costs more than it saves."""
    if M.shape[-1] * M.shape[-2] * max(M.shape[0], xs[0].shape[0]) <= _SMALL:
        return [_mv(M, x) for x in xs]
    return list((torch.stack(xs, -2) @ M.mT).unbind(-2))


def _mtvs(M: torch.Tensor, xs) -> list:
    """``[Mᵀ x for x in xs]`` in one pass over ``M`` (see ``_mvs``)."""
    if M.shape[-1] * M.shape[-2] * max(M.shape[0], xs[0].shape[0]) <= _SMALL:
        return [_mtv(M, x) for x in xs]
    return list((torch.stack(xs, -2) @ M).unbind(-2))


def _loop_residuals(Q, q, G, h, A, b, z, s, lam, nu, w, hnorm, bnorm, qnorm, dz_last, dlp, dnu_last, Gz):
    """``_residuals`` inside the interior-point loop, with the products the iteration needs fused
    into the same passes over ``Q``, ``G``, ``A``: ``Q dz_last``, ``Gᵀ dlp``, ``Aᵀ dnu_last`` (the
    infeasibility certificates; skipped when None), ``A dz_last`` and ``Gᵀ(w ∘ r_i)`` (the
    predictor's right-hand side). ``Gz`` is tracked by the loop (updated with each step)."""
    if dz_last is None:
        Qz = _mv(Q, z)
        Qd = None
    else:
        Qz, Qd = _mvs(Q, [z, dz_last])
    rd0 = Qz + q
    dscale = torch.maximum(_inf_norm(Qz), qnorm)
    pres = gap = mu = torch.zeros_like(dscale)
    ri = re = Gtl = Atn = Gtd = Atd = Ad = Gtwri = None
    rd = rd0
    if A is not None:
        if dz_last is None:
            Az = _mv(A, z)
        else:
            Az, Ad = _mvs(A, [z, dz_last])
        if dnu_last is None:
            Atn = _mtv(A, nu)
        else:
            Atn, Atd = _mtvs(A, [nu, dnu_last])
        rd0 = rd0 + Atn
        re = Az - b
        dscale = torch.maximum(dscale, _inf_norm(Atn))
        pres = _inf_norm(re) / (1 + torch.maximum(_inf_norm(Az), bnorm))
        rd = rd0
    if G is not None:
        ri = Gz + s - h
        cols = [lam, w * ri] + ([] if dlp is None else [dlp])
        GtX = _mtvs(G, cols)
        Gtl, Gtwri = GtX[0], GtX[1]
        Gtd = None if dlp is None else GtX[2]
        rd = rd0 + Gtl
        dscale = torch.maximum(dscale, _inf_norm(Gtl))
        pres = torch.maximum(
            pres, _inf_norm(ri) / (1 + torch.maximum(torch.maximum(_inf_norm(Gz), _inf_norm(s)), hnorm)))
        sl = (s * lam).sum(-1)
        mu = sl / s.shape[-1]
        pobj = 0.5 * (z * Qz).sum(-1) + (q * z).sum(-1)
        gap = sl / (1 + pobj.abs())
    dres = _inf_norm(rd) / (1 + dscale)
    return rd0, ri, re, pres, dres, gap, mu, Gtl, Atn, Gtwri, Qd, Gtd, Atd, Ad


def _chol_solve(U: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Solve ``UᵀU X = R`` for an upper Cholesky factor ``U`` (two triangular solves: faster on
    CPU than ``torch.cholesky_solve``, which copies the factor to column-major on every call)."""
    return torch.linalg.solve_triangular(U, torch.linalg.solve_triangular(U.mT, R, upper=False), upper=True)


def _cholesky_upper(H: torch.Tensor):
    """Upper Cholesky factor ``U`` (``H = UᵀU``) and info of a symmetric ``H`` that may be
    overwritten. Without autograd the factorisation runs in place on ``Hᵀ``, whose layout is
    LAPACK's (column-major): torch otherwise copies ``H`` into a new column-major tensor while
    zeroing its lower triangle, a strided copy that costs up to half of the factorisation at the
    sizes of batched QPs (10–40% of it measured at B = 128, n = 50–100). ``Hᵀ``'s upper triangle is
    ``H``'s lower one (equal, ``H`` symmetric). upper=True: LAPACK works column-major, the upper
    factor of a row-major H is ~4× faster."""
    if H.requires_grad or H.dim() != 3 or H.numel() < 1 << 16:   # small: the plain call is cheaper
        return torch.linalg.cholesky_ex(H, upper=True)
    Ht = H.transpose(-1, -2)
    info = torch.empty(H.shape[0], dtype=torch.int32, device=H.device)
    return torch.linalg.cholesky_ex(Ht, upper=True, out=(Ht, info))


def _inf_norm(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] == 0:
        return x.new_zeros(x.shape[:-1])
    return x.abs().amax(-1)


def _with_batch(x: torch.Tensor | None, core: int) -> torch.Tensor | None:
    if x is None:
        return None
    return x.unsqueeze(0) if x.dim() == core else x


def _ratio(x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Largest ``α`` with ``x + α dx ≥ 0`` (per batch element; inf if ``dx ≥ 0``)."""
    return torch.where(dx < 0, -x / dx, torch.full_like(x, float("inf"))).amin(-1)


def _max_step(x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Largest ``α ≤ 1`` with ``x + α dx ≥ 0`` (per batch element)."""
    return _ratio(x, dx).clamp(max=1.0)


class _Factor:
    """The factorised reduced KKT system at one iterate (and its solves)."""

    def __init__(self, Q, G, A, AtA, w, reg, zero_eq, reg_rel=0.0, bufs=None):
        self.reg_rel = reg_rel
        if G is None:
            H = Q + AtA if AtA is not None else Q.clone()
        else:
            B = max(Q.shape[0], G.shape[0], w.shape[0])
            # (√w ∘ G)ᵀ(√w ∘ G): both operands from one buffer, 15–25% faster than Gᵀ(w ∘ G) on CPU
            if bufs is None:
                sG = (w.sqrt().unsqueeze(-1) * G).expand(B, *G.shape[-2:])
                H = torch.baddbmm(Q.expand(B, *Q.shape[-2:]), sG.transpose(-1, -2), sG)
            else:
                # the interior-point loop's buffers (``run``): no fresh large allocations
                # (each costs page faults when the allocator returns it to the OS in between)
                sG = torch.mul(w.sqrt().unsqueeze(-1), G, out=bufs[0][:B])
                H = torch.baddbmm(Q.expand(B, *Q.shape[-2:]), sG.transpose(-1, -2), sG, out=bufs[1][:B])
            if AtA is not None:
                H += AtA
        H.diagonal(dim1=-2, dim2=-1).add_(reg)
        self.L, self.info = _cholesky_upper(H)
        self.A = A
        if A is not None:
            # Y = U⁻ᵀAᵀ: one triangular solve; the Schur complement A H⁻¹ Aᵀ = YᵀY
            At = A.transpose(-1, -2).expand(*self.L.shape[:-2], *A.shape[-1:], A.shape[-2])
            self.Y = torch.linalg.solve_triangular(self.L.mT, At, upper=False)
            S = self.Y.transpose(-1, -2) @ self.Y
            p = S.shape[-1]
            sscale = 1.0 + S.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True)
            S = S + torch.diag_embed(self.reg_rel * sscale.expand(*S.shape[:-2], p) + zero_eq)
            self.Ls, info_s = _cholesky_upper(S)
            self.info = self.info + info_s
        else:
            self.Y = self.Ls = None

    @classmethod
    def from_cache(cls, L, A, Y=None, Ls=None) -> "_Factor":
        fac = cls.__new__(cls)
        fac.L, fac.A, fac.Y, fac.Ls = L, A, Y, Ls
        return fac

    def solve(self, r1: torch.Tensor, r2: torch.Tensor | None):
        """Solve ``[H Aᵀ; A 0][dz; dν] = [r1; r2]``."""
        # v = U⁻ᵀr₁; with Y = U⁻ᵀAᵀ: A H⁻¹r₁ = Yᵀv and dz = U⁻¹(v − Y dν) — two triangular solves
        # with the n×n factor (not three)
        v = torch.linalg.solve_triangular(self.L.mT, r1.unsqueeze(-1), upper=False)
        if self.A is None:
            return torch.linalg.solve_triangular(self.L, v, upper=True).squeeze(-1), None
        dnu = _chol_solve(self.Ls, self.Y.mT @ v - r2.unsqueeze(-1))
        dz = torch.linalg.solve_triangular(self.L, v - self.Y @ dnu, upper=True)
        return dz.squeeze(-1), dnu.squeeze(-1)


def _primal_infeasible(Gty, Aty, h, b, lam, nu, eps, scale):
    """Certificate of primal infeasibility for ``y = (λ ≥ 0, ν)`` given ``Gᵀλ`` and ``Aᵀν``:
    ``‖Gᵀλ + Aᵀν‖ ≤ ε‖y‖`` and ``hᵀλ + bᵀν ≤ −ε(1 + scale)‖y‖``."""
    gt = ct = ny = None
    if Gty is not None:
        gt, ct, ny = Gty, (h * lam).sum(-1), _inf_norm(lam)
    if Aty is not None:
        cb, nb = (b * nu).sum(-1), _inf_norm(nu)
        gt = Aty if gt is None else gt + Aty
        ct = cb if ct is None else ct + cb
        ny = nb if ny is None else torch.maximum(ny, nb)
    return (ny > 0) & (_inf_norm(gt) <= eps * ny) & (ct <= -eps * ny * (1 + scale))


def _residuals(Q, q, G, h, A, b, z, s, lam, nu, hnorm, bnorm, qnorm, products=False):
    """KKT residual vectors and the relative residuals of ``QPOptions`` (see its docstring)."""
    Qz = _mv(Q, z)
    rd = Qz + q
    dscale = torch.maximum(_inf_norm(Qz), qnorm)
    pres = gap = mu = torch.zeros_like(dscale)
    ri = re = Gtl = Atn = None
    if G is not None:
        Gz = _mv(G, z)
        Gtl = _mtv(G, lam)
        rd = rd + Gtl
        ri = Gz + s - h
        dscale = torch.maximum(dscale, _inf_norm(Gtl))
        pres = _inf_norm(ri) / (1 + torch.maximum(torch.maximum(_inf_norm(Gz), _inf_norm(s)), hnorm))
        sl = (s * lam).sum(-1)
        mu = sl / s.shape[-1]
    if A is not None:
        Az = _mv(A, z)
        Atn = _mtv(A, nu)
        rd = rd + Atn
        re = Az - b
        dscale = torch.maximum(dscale, _inf_norm(Atn))
        pres = torch.maximum(pres, _inf_norm(re) / (1 + torch.maximum(_inf_norm(Az), bnorm)))
    dres = _inf_norm(rd) / (1 + dscale)
    if G is not None:
        pobj = 0.5 * (z * Qz).sum(-1) + (q * z).sum(-1)
        gap = sl / (1 + pobj.abs())
    if products:
        return rd, ri, re, pres, dres, gap, mu, Gtl, Atn
    return rd, ri, re, pres, dres, gap, mu


def _static_reg(Q, AtA, opts):
    """Static regularisation ``δ(1 + max|diag(Q + ρAᵀA)|)``, scaled by the data (not by the barrier
    weights, which grow without bound)."""
    qdiag = Q.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True)
    if AtA is not None:
        qdiag = qdiag + AtA.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True)
    return opts.reg * (1.0 + qdiag)


def _gather_rows(M: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``M[b, idx[b, j]]`` as ``(B, k, n)`` (``M`` may have batch size 1): one ``index_select``
    of whole rows on the flattened batch, much faster on CPU than ``gather`` with an expanded index."""
    B, k = idx.shape
    Bm, m, n = M.shape
    if Bm == 1:
        return M[0].index_select(0, idx.reshape(-1)).reshape(B, k, n)
    flat = idx + (torch.arange(B, device=idx.device) * m).unsqueeze(-1)
    return M.reshape(B * m, n).index_select(0, flat.reshape(-1)).reshape(B, k, n)


def _active_system(G, h, A, b, zero_eq, idx, valid):
    """Equality rows ``[A; G_K]``, right-hand side ``[b; h_K]`` and the padding indicator for the
    gathered active rows ``K = idx`` (rows with ``valid == False`` are zero padding)."""
    B, k = idx.shape
    n = G.shape[-1]
    m = G.shape[-2]
    Gk = _gather_rows(G, idx) * valid.unsqueeze(-1)
    pad = (~valid).to(G.dtype)
    if h is not None:
        hk = h.expand(B, m).gather(1, idx) * valid
    if A is None:
        return Gk, (hk if h is not None else None), pad
    p = A.shape[-2]
    Ae = torch.cat([A.expand(B, p, n), Gk], dim=-2)
    be = torch.cat([b.expand(B, p), hk], dim=-1) if h is not None else None
    return Ae, be, torch.cat([zero_eq.expand(B, p), pad], -1)


def _refine_active(fac, wk, a, Q, G, A, cq, ch, cb, z, y, nu, rho, tol, steps, todo=None, gn=None):
    """Solve the equality-constrained KKT system on an active set ``K`` (0/1 mask ``a``)

        Q z + Gᵀy + Aᵀν = −c_q,   a ∘ (G z) = a ∘ c_h,   A z = c_b,   y = a ∘ y

    by iterative refinement with a factorisation ``fac`` of ``H = Q + GᵀWG + ρAᵀA + δI`` whose
    weights ``wk`` are zero off ``K`` (the method of multipliers with penalty ``W_K``): one
    step solves ``H dz + Aᵀdν = r_a + G_Kᵀ(w_K ∘ r_K) + ρAᵀr_b, A dz = r_b`` and sets
    ``dy_K = w_K ∘ (G_K dz − r_K)``; the error contracts by about
    ``1 / (1 + w σ_min(G_K H⁻¹ G_Kᵀ))`` per step. ``c_h``, ``c_b`` may be None (zero). Elements whose
    relative residuals are below ``tol`` are frozen; the loop ends when those of ``todo`` (all if
    None) are. ``z = None`` starts from zero (``y``, ``ν`` must be None too); ``gn``: the largest
    row 1-norm of ``G`` (``_row_norm``), computed if None.

    Returns:
        ``z, y, ν``, the mask of elements whose residuals met ``tol`` (on the returned iterate) and
        ``G z`` (updated along with ``z``).
    """
    tiny = torch.finfo(cq.dtype).tiny
    # max_i ‖g_i‖₁ bounds |g_i · z| / ‖z‖∞: the scale of the homogeneous rows
    gn = _row_norm(G) if gn is None else gn
    an = _row_norm(A) if A is not None else None
    zero = z is None
    if zero:
        z, y = cq.new_zeros(cq.shape), cq.new_zeros(a.shape)
        nu = cq.new_zeros(cq.shape[0], 0 if A is None else A.shape[-2])
        Gz, Qz, Gty, Gtwr = y, z, z, z
    else:
        Gz = _mv(G, z)
    # constant scales; the residuals are checked from the third iterate on (the first two are
    # never converged: the error contracts by ~1e-6 a step from an interior-point iterate)
    cqn = _inf_norm(cq)
    chn = None if ch is None else _inf_norm(ch * a)
    cbn = None if cb is None else _inf_norm(cb)
    conv = torch.zeros(cq.shape[0], dtype=torch.bool, device=cq.device)
    for it in range(steps + 1):
        rk = -Gz * a if ch is None else (ch - Gz) * a
        if it > 0 or not zero:
            Qz = _mv(Q, z)
            Gty, Gtwr = _mtvs(G, [y, wk * rk])
        elif ch is not None:
            Gtwr = _mtv(G, wk * rk)
        ra = -cq - Qz - Gty
        r1 = ra + Gtwr
        rb = Atn = None
        if A is not None:
            Az = _mv(A, z)
            rb = -Az if cb is None else cb - Az
            Atn, Atr = _mtvs(A, [nu, rb])
            ra = ra - Atn
            r1 = r1 - Atn + rho * Atr
        check = it >= 2 or it == steps
        if check:
            zn = _inf_norm(z)
            scale_a = torch.maximum(torch.maximum(_inf_norm(Qz), cqn), _inf_norm(Gty))
            scale_k = gn * zn if ch is None else torch.maximum(gn * zn, chn)
            if A is not None:
                scale_a = torch.maximum(scale_a, _inf_norm(Atn))
            ok = (_inf_norm(ra) <= tol * (scale_a + tiny)) & (_inf_norm(rk) <= tol * (scale_k + tiny))
            if A is not None:
                scale_b = an * zn if cb is None else torch.maximum(an * zn, cbn)
                ok = ok & (_inf_norm(rb) <= tol * (scale_b + tiny))
            done = conv | ok
            # stop when all are done, or when a step (from the fourth on) converged none of the
            # others: they are on a wrong or degenerate active set, the next round or the
            # Schur-complement polish takes them
            if it == steps or bool((done if todo is None else done | ~todo).all()) or \
                    (it >= 3 and not bool((done & ~conv).any())):
                conv = done
                break
            conv = done
        dz, dnu = fac.solve(r1, rb)
        Gdz = _mv(G, dz)
        dy = wk * (Gdz - rk)
        if check:   # converged elements are frozen
            go = (~conv).unsqueeze(-1).to(z.dtype)
            dz, Gdz, dy = dz * go, Gdz * go, dy * go
            dnu = None if dnu is None else dnu * go
        z = z + dz
        Gz = Gz + Gdz   # updated, not recomputed: one pass over G less a step
        y = y + dy
        if A is not None:
            nu = nu + dnu
    finite = torch.isfinite(z).all(-1) & torch.isfinite(y).all(-1)
    conv = conv & finite
    return z, y, nu, (conv if todo is None else conv & todo), Gz


def _row_norm(M: torch.Tensor) -> torch.Tensor:
    """``max_i ‖M_i‖₁`` per batch element: bounds ``|M_i · z| / ‖z‖∞``."""
    return torch.linalg.vector_norm(M, 1, -1).amax(-1)


def _zeros_as(t: torch.Tensor, B: int) -> torch.Tensor:
    """Zeros of ``t``'s shape with batch size ``B``, column-major per matrix if ``t`` is."""
    if t.dim() == 3 and t.stride(-2) == 1 and t.shape[-1] > 1:
        return t.new_zeros(B, t.shape[-1], t.shape[-2]).mT
    return t.new_zeros(B, *t.shape[1:])


def _polish_penalty(Q, q, G, h, A, b, z, s, lam, nu, todo, opts, reg, zero_eq, QA, hnorm, rounds=4):
    """Active-set polish by the method of multipliers (``_refine_active``) on the penalised
    factorisation ``Q + Gᵀ diag(c·a) G + ρAᵀA`` of the guessed active set ``a`` (the interior-point
    ``_Factor``: no gathered rows, no Schur complement of the active rows). Rounds as in
    ``_polish``: a polished point must be primal feasible with non-negative multipliers up to
    ``1e3·eps``; otherwise violated constraints are added and negative multipliers dropped.

    The penalty ``c = γ (1 + max|Q_ii|) / max_i ‖g_i‖²`` (``γ = 1e7``) makes each step of the method
    of multipliers gain about seven digits, so two or three steps reach rounding level; used in
    float64 only (the penalised matrix has condition ~ ``γ·cond(Q)``).

    Returns:
        ``z, s, λ, ν`` (polished where accepted), the accepted mask, the active mask and the
        full-batch ``[U, Y, Us, w, gn]`` (factors and weights of the accepted elements' last round,
        largest row 1-norm of G) for ``kkt_tangent``.
    """
    dtype = z.dtype
    B, m = lam.shape
    strict = _strict(dtype)
    # penalty: γ times the scale of Q over the largest squared row norm of G
    qscale = 1 + Q.diagonal(dim1=-2, dim2=-1).abs().amax(-1)
    g2 = torch.linalg.vector_norm(G, 2, -1).square()   # squared row norms of G (one pass)
    gscale = g2.amax(-1)
    c = (_PENALTY * qscale / gscale.clamp(min=torch.finfo(dtype).tiny)).expand(B).unsqueeze(-1)
    gn = _row_norm(G).expand(B).contiguous()
    # the active-set guess: the barrier's curvature along g_i, w_i‖g_i‖² (w = λ/s), exceeds that of
    # Q — invariant to the scaling of the rows of G, unlike λ_i > s_i, which at the loose
    # tolerance of the interior-point phase misses many active constraints with small multipliers
    # (a wrong guess costs a round; the Schur-complement polish, with λ > s, is the fallback)
    act_all = lam * g2 > qscale.unsqueeze(-1) * s
    act_final = act_all.clone()
    accepted = torch.zeros_like(todo)
    todo_all = todo.clone()
    store = None

    def take(t, ix):
        return t if t is None or t.dim() == 0 or t.shape[0] == 1 else t.index_select(0, ix)
    for r in range(rounds):
        if not bool(todo_all.any()):
            break
        every = bool(todo_all.all())
        sub = None if every else torch.nonzero(todo_all).reshape(-1)
        d = (Q, q, G, h, A, b, QA, zero_eq, reg, hnorm, c, z, lam, nu, act_all, gn)
        if sub is not None:
            d = tuple(take(t, sub) for t in d)
        Qs, qs_, Gs, hs, As, bs, QAs, zqs, regs, hn, cs, zs, ls, ns, act, gns = d
        a = act.to(dtype)
        wk = cs * a
        fac = _Factor(QAs, Gs, As, None, wk, regs, zqs, opts.reg)
        zp, yp, nup, conv, Gzp = _refine_active(fac, wk, a, Qs, Gs, As, qs_, hs, bs, zs, ls * a, ns,
                                                opts.rho, _refine_tol(dtype), 8, gn=gns)
        viol = Gzp - hs
        hscale = (1 + hn).unsqueeze(-1)
        lnorm = (1 + _inf_norm(yp)).unsqueeze(-1)
        ok = conv & (viol <= strict * hscale).all(-1) & (yp >= -strict * lnorm).all(-1)
        new_act = (act & (yp >= -strict * lnorm)) | (viol > strict * hscale)
        o_ = ok.unsqueeze(-1)
        upd = [(z, zp), (s, (-viol).clamp(min=0)), (lam, yp.clamp(min=0)), (nu, nup), (act_final, act)]
        parts = [fac.L, fac.Y, fac.Ls, wk.expand(fac.L.shape[0], m)]
        if store is None:
            # the factors of the full batch, in their (column-major) layout: the triangular
            # solves of the backward would copy a row-major factor on every call
            store = parts if sub is None else [None if t is None else _zeros_as(t, B) for t in parts]
        if sub is None:
            if r > 0 and store is not parts:
                # a later round on the whole batch (every element retried): its accepted elements'
                # factors replace those of the earlier round
                if bool(ok.all()):
                    store = parts
                elif bool(ok.any()):
                    dst = torch.nonzero(ok).reshape(-1)
                    for t, p_ in zip(store, parts):
                        if t is not None:
                            t.index_copy_(0, dst, p_.index_select(0, dst))
            z, s, lam, nu, act_final = (torch.where(o_, n_, o) for o, n_ in upd)
            accepted = accepted | ok
            todo_all = todo_all & ~ok
            act_all = torch.where(o_, act_all, new_act)
        else:
            z, s, lam, nu, act_final = (o.index_copy(0, sub, torch.where(o_, n_, o.index_select(0, sub)))
                                        for o, n_ in upd)
            if bool(ok.any()):
                dst = sub[ok]
                for t, p_ in zip(store, parts):
                    if t is not None:
                        t.index_copy_(0, dst, p_[ok])   # in place: keeps the layout
            accepted = accepted.index_copy(0, sub, accepted.index_select(0, sub) | ok)
            todo_all = todo_all.index_copy(0, sub, ~ok)
            act_all = act_all.index_copy(0, sub, new_act)
    return z, s, lam, nu, accepted, act_final, (None if store is None else store + [gn])


def _polish(Q, q, G, h, A, b, z, s, lam, nu, solved, opts, reg, zero_eq, hnorm, bnorm, qnorm, rounds=4):
    """Active-set polishing of converged IPM solutions (cf. OSQP's solution polishing).

    The constraints guessed active (``λ_i > s_i``) are imposed as equalities and the
    equality-constrained QP is solved exactly by the reduced factorisation (active rows gathered
    and padded, two steps of iterative refinement). The polished point replaces the IPM's if it is
    primal feasible and its multipliers are non-negative up to ``1e3·eps`` (or, as a fallback, up
    to the solver tolerance); otherwise constraints with negative multipliers are dropped, violated
    ones added, and the polish repeated on those elements only (at most ``rounds`` times). This
    removes the ``O(√μ)`` error of interior-point iterates at weakly active constraints.

    Returns:
        ``z, s, λ, ν`` (polished where accepted), the mask of strictly polished elements, the
        active mask ``(B, m)`` of each accepted solution, and ``[U, Y, Us, idx, valid, k]``: the
        factorisation of the first (full-batch) round with the factors of elements accepted in
        later rounds merged in (same padding), or None if they could not be merged.
    """
    B, m = lam.shape
    p = 0 if A is None else A.shape[-2]
    n = z.shape[-1]
    tol = opts.tol_primal
    strict = 1e3 * torch.finfo(z.dtype).eps
    act_all = lam > s
    act_final = act_all.clone()
    todo_all = solved.clone()
    fallback_all = torch.zeros_like(todo_all)
    polished_all = torch.zeros_like(todo_all)
    first = None
    # a partial batch (the others already polished) starts on its subset and keeps no factors
    partial = not bool(solved.all())
    mergeable = not partial
    for r in range(rounds):
        if r == 0 and not partial:
            sub = None
            Qs, qs, Gs, hs, As, bs, zqs, regs, hn = Q, q, G, h, A, b, zero_eq, reg, hnorm
            act, todo, fb = act_all, todo_all, fallback_all
        else:
            sub = torch.nonzero(todo_all).reshape(-1)

            def take(t):
                return t if t is None or t.dim() == 0 or t.shape[0] == 1 else t.index_select(0, sub)
            Qs, qs, Gs, hs, As, bs, zqs, regs, hn = (take(x) for x in (Q, q, G, h, A, b, zero_eq, reg, hnorm))
            act, todo, fb = take(act_all), take(todo_all), take(fallback_all)
        Bs = act.shape[0]
        k = int(act.sum(-1).amax())
        if first is not None and k <= first[5]:
            k = first[5]        # same padding as the first round: factors can be merged into it
        elif first is not None:
            mergeable = False
        else:
            k = min(m, k + 4)   # a little padding, so that later rounds usually fit (and merge)
        if k == 0:
            idx = act.new_zeros(Bs, 0, dtype=torch.int64)
        else:
            idx = torch.argsort(act.to(torch.int8), dim=-1, descending=True, stable=True)[:, :k]
        valid = act.gather(1, idx)
        Ae, be, zq = _active_system(Gs, hs, As, bs, zqs, idx, valid)
        if Ae.shape[-2] == 0:
            fac = _Factor(Qs, None, None, None, None, regs, None, opts.reg)
            zp, _ = fac.solve(-qs.expand(Bs, n), None)
            y = z.new_zeros(Bs, 0)
        else:
            fac = _Factor(Qs, None, Ae, opts.rho * (Ae.transpose(-1, -2) @ Ae), None, regs, zq, opts.reg)
            zp, y = fac.solve(-qs.expand(Bs, n) + opts.rho * _mtv(Ae, be), be)
            for _ in range(2):   # iterative refinement: undo the static regularisation's bias
                ra = -qs - _mv(Qs, zp) - _mtv(Ae, y)
                rb = (be - _mv(Ae, zp)) * (1 - zq)
                dzp, dy = fac.solve(ra + opts.rho * _mtv(Ae, rb), rb)
                zp, y = zp + dzp, y + dy
        lp = z.new_zeros(Bs, m).scatter(1, idx, y[:, p:] * valid)
        viol = _mv(Gs, zp) - hs
        finite = torch.isfinite(zp).all(-1) & torch.isfinite(y).all(-1)
        lnorm = (1 + _inf_norm(lp)).unsqueeze(-1)
        hscale = (1 + hn).unsqueeze(-1)
        ok_loose = finite & (viol <= tol * hscale).all(-1) & (lp >= -tol * lnorm).all(-1)
        ok_strict = finite & (viol <= strict * hscale).all(-1) & (lp >= -strict * lnorm).all(-1)
        # strictly consistent points are final; loosely consistent ones are kept as a fallback
        # while the active set is refined
        acc = (todo & (ok_strict | (ok_loose & ~fb))).unsqueeze(-1)
        new = (zp, (-viol).clamp(min=0), lp.clamp(min=0), y[:, :p] if A is not None else None, act)
        old = (z, s, lam, nu if A is not None else None, act_final)
        out = []
        for o_, n_ in zip(old, new):
            if o_ is None:
                out.append(None)
            elif sub is None:
                out.append(torch.where(acc, n_, o_))
            else:
                out.append(o_.index_copy(0, sub, torch.where(acc, n_, o_.index_select(0, sub))))
        z, s, lam, nu_new, act_final = out
        if A is not None:
            nu = nu_new
        flags = (acc.squeeze(-1), todo & ok_strict, todo & ~ok_strict,
                 (act & (lp >= -strict * lnorm)) | (viol > strict * hscale))
        if sub is None:
            fallback_all = fallback_all | flags[0]
            polished_all = polished_all | flags[1]
            todo_all, act_all = flags[2], flags[3]
            first = [fac.L, fac.Y, fac.Ls, idx, valid, k]
        else:
            # the factorisation of elements accepted in this round replaces theirs from round one
            take_acc = flags[1]
            if mergeable and bool(take_acc.any()):
                dst = sub[take_acc]
                parts = (fac.L, fac.Y, fac.Ls, idx, valid)
                if any(a_ is not None and a_.shape[0] != take_acc.shape[0] for a_ in parts):
                    mergeable = False
                else:
                    for j, a_ in enumerate(parts):
                        if a_ is not None:
                            first[j] = first[j].index_copy(0, dst, a_[take_acc])
            fallback_all = fallback_all.index_copy(0, sub, fb | flags[0])
            polished_all = polished_all.index_copy(0, sub, flags[1])
            todo_all = todo_all.index_copy(0, sub, flags[2])
            act_all = act_all.index_copy(0, sub, flags[3])
        if not bool(todo_all.any()):
            break
    return z, s, lam, nu, polished_all, act_final, (first if mergeable else None)


def solve_qp_ipm(Q: torch.Tensor, q: torch.Tensor, G: torch.Tensor | None = None,
                 h: torch.Tensor | None = None, A: torch.Tensor | None = None,
                 b: torch.Tensor | None = None, *, options: QPOptions | None = None,
                 warm_start: Solution | None = None) -> Solution:
    """Solve a batch of convex QPs ``min ½zᵀQz + qᵀz s.t. Gz ≤ h, Az = b`` (not differentiable).

    This is the raw solver: inputs are assumed valid (see ``solve_qp`` for validated, differentiable
    solves). Unbatched inputs broadcast against batched ones.

    Args:
        Q: ``(B, n, n)`` or ``(n, n)``, symmetric positive semidefinite.
        q: ``(B, n)`` or ``(n,)``.
        G, h: ``(B, m, n)``/``(m, n)`` and ``(B, m)``/``(m,)``, or both None.
        A, b: ``(B, p, n)``/``(p, n)`` and ``(B, p)``/``(p,)``, or both None.
        options: ``QPOptions`` (defaults per dtype).
        warm_start: a previous ``Solution`` of a nearby problem (same shapes); its ``z``, ``λ``,
            ``ν`` start the iteration, slacks and multipliers lifted into the interior.

    Returns:
        ``Solution`` with ``z (B, n)``, ``duals={"lam": (B, m), "nu": (B, p)}``, ``status (B,)``,
        ``iterations (B,)``, ``residuals={"primal", "dual", "gap"}`` each ``(B,)`` and ``cache``
        for the backward: the slack ``s``, the weights ``w = λ/s`` of the returned iterate and,
        when every solved element was polished, its active mask ``act``, the penalty factors of
        ``_polish_penalty`` (``pre_U``, ``pre_Y``, ``pre_Us``, ``pre_w``, ``pre_gn``; ``pre_ok``: the
        elements polished that way) and — if the first polish
        round was final — the upper Cholesky factor ``U`` (``H = UᵀU``) of
        ``H = Q + ρÃᵀÃ + δI`` on the gathered active rows ``Ã = [A; G_K]`` (``act_idx``,
        ``act_valid``), ``Y = U⁻ᵀÃᵀ`` and the upper factor ``Us`` of the Schur complement
        ``ÃH⁻¹Ãᵀ = YᵀY``; without inequalities ``U``, ``Y``, ``Us`` of ``Q + ρAᵀA``.

    Shape:
        B is the common batch size (1 when every input is unbatched).
    """
    opts = (options or QPOptions()).resolved(Q.dtype)
    Q = _with_batch(Q, 2)
    q = _with_batch(q, 1)
    G, h = _with_batch(G, 2), _with_batch(h, 1)
    A, b = _with_batch(A, 2), _with_batch(b, 1)
    dtype, device = Q.dtype, Q.device
    n = Q.shape[-1]
    m = 0 if G is None else G.shape[-2]
    p = 0 if A is None else A.shape[-2]
    if m == 0:
        G = h = None
    if p == 0:
        A = b = None
    present = [t for t in (Q, q, G, h, A, b) if t is not None]
    B = max(t.shape[0] for t in present)

    # -- non-finite inputs: flag the elements, replace their data by a trivial problem ----------
    # a sum is finite only if every term is (one pass, no mask temporaries); the per-element sums
    # of all inputs are added (an overflow only sends every element to the exact check below)
    tot = None
    for t in present:
        st = t.sum(tuple(range(1, t.dim())))
        tot = st if tot is None else tot + st
    bad = ~torch.isfinite(tot.expand(B))
    if bool(bad.any()):
        bad = torch.zeros_like(bad)   # exact check (the sum of finite values can overflow)
        for t in present:
            bad = bad | ~torch.isfinite(t.reshape(t.shape[0], -1)).all(-1)
    if bool(bad.any()):
        def clean(t, fill):
            keep = (~bad).reshape(-1, *([1] * (t.dim() - 1)))
            return torch.where(keep, t, torch.as_tensor(fill, dtype=dtype, device=device))
        Q = clean(Q, 0.0) + torch.diag_embed(bad.to(dtype).unsqueeze(-1).expand(B, n))
        q = clean(q, 0.0)
        if G is not None:
            G, h = clean(G, 0.0), clean(h, 1.0)
        if A is not None:
            A, b = clean(A, 0.0), clean(b, 0.0)

    AtA = None
    zero_eq = None
    if A is not None:
        AtA = opts.rho * (A.transpose(-1, -2) @ A) if opts.rho > 0 else None
        zero_eq = (A.abs().amax(-1) == 0).to(dtype)   # rows of zeros: fixed multiplier 0
    reg = _static_reg(Q, AtA, opts)
    QA = Q if AtA is None else Q + AtA   # the constant part of every reduced KKT matrix, formed once
    hnorm = _inf_norm(h) if G is not None else torch.zeros((), dtype=dtype, device=device)
    bnorm = _inf_norm(b) if A is not None else torch.zeros((), dtype=dtype, device=device)
    qnorm = _inf_norm(q)

    # -- starting point ---------------------------------------------------------------------------
    fac0 = None
    if warm_start is None:
        ones = torch.ones(B, m, dtype=dtype, device=device)
        fac = fac0 = _Factor(QA, G, A, None, ones, reg, zero_eq, opts.reg)
        r1 = -q.expand(B, n)
        if G is not None:
            r1 = r1 + _mtv(G, h)
        if A is not None:
            r1 = r1 + opts.rho * _mtv(A, b)
        z, nu = fac.solve(r1, b)
        z = torch.where(torch.isfinite(z), z, torch.zeros_like(z))
        if nu is None:
            nu = z.new_zeros(B, 0)
        if G is not None:
            s = h - _mv(G, z)
            lam = -s
            s = s + (1.0 + (-s.amin(-1, keepdim=True))).clamp(min=0) * (s.amin(-1, keepdim=True) <= 0)
            lam = lam + (1.0 + (-lam.amin(-1, keepdim=True))).clamp(min=0) * (lam.amin(-1, keepdim=True) <= 0)
            # λ = s: the weights of the first iteration are 1, so it reuses this factorisation
            lam = s
        else:
            s = lam = z.new_zeros(B, 0)
    else:
        z = warm_start.z.detach().to(dtype).expand(B, n).clone()
        nu = warm_start.duals.get("nu") if A is not None else None
        nu = z.new_zeros(B, p) if nu is None else nu.detach().to(dtype).expand(B, p).clone()
        if G is not None:
            margin = opts.warm_start_margin * (1.0 + hnorm).unsqueeze(-1)
            s = torch.maximum(h - _mv(G, z), margin)
            lam0 = warm_start.duals.get("lam")
            lam0 = torch.zeros_like(s) if lam0 is None else lam0.detach().to(dtype).expand(B, m)
            lam = torch.maximum(lam0, margin)
        else:
            s = lam = z.new_zeros(B, 0)

    status = torch.full((B,), _RUNNING, dtype=torch.int64, device=device)
    status = torch.where(bad, torch.full_like(status, int(Status.NON_FINITE)), status)
    iterations = torch.zeros(B, dtype=torch.int64, device=device)
    eps_inf = opts.tol_infeasible
    frac = opts.step_fraction
    wmax = 1.0 / torch.finfo(dtype).eps ** 2   # keeps GᵀWG finite when a slack underflows
    solved_code = int(Status.SOLVED)
    pinf_code = int(Status.PRIMAL_INFEASIBLE)
    dinf_code = int(Status.DUAL_INFEASIBLE)
    stalled_code = _STALLED
    nonfinite_code = int(Status.NON_FINITE)
    data = (Q, q, G, h, A, b)
    aux = (QA, zero_eq, reg, hnorm, bnorm, qnorm)

    def take(t, ix):
        return t if t is None or t.dim() == 0 or t.shape[0] == 1 else t.index_select(0, ix)

    def run(z, s, lam, nu, status, iterations, tol_p, tol_d, tol_g, max_iter, fac0=None):
        """The interior-point loop on the elements with status ``_RUNNING`` (``fac0``: the
        factorisation at the starting point, if known)."""
        Q, q, G, h, A, b = data
        QA, zero_eq, reg, hnorm, bnorm, qnorm = aux
        B = z.shape[0]
        fac = None
        dres_prev = torch.full((B,), float("inf"), dtype=dtype, device=device)
        dz_last = Gdz_last = dlam_last = dnu_last = None
        pscale = hnorm + bnorm
        # working set: the loop runs on the still-running elements only; when at most 3/4 of the
        # working set is still running it is compacted (finished elements written back to the full
        # batch, the data gathered for the others)
        widx = None
        full = None
        pres = dres = gap = torch.zeros(B, dtype=dtype, device=device)
        # G z is updated with each step (one pass over G less an iteration; the drift is rounding)
        Gz = _mv(G, z) if G is not None else None
        X = None   # (s, λ) stacked: updated by the steps, rebuilt after a compaction
        bufs = None   # (√w∘G, H) of the factorisations (large problems)
        tiny = torch.finfo(dtype).tiny


        for k in range(max_iter + 1):
            # -- residuals at the current iterate -----------------------------------------------------
            certify = k >= 3   # infeasible problems show their certificates within a few iterations
            w = (lam / s).clamp(max=wmax) if G is not None else None
            dlp = dlam_last.clamp(min=0) if certify and G is not None else None
            rd0, ri, re, pres, dres, gap, mu, Gtl, Atn, Gtwri, Qd, Gtd, Atd, Ad = _loop_residuals(
                Q, q, G, h, A, b, z, s, lam, nu, w, hnorm, bnorm, qnorm,
                dz_last if certify else None, dlp, dnu_last if certify else None, Gz)
            pg = (pres <= tol_p) & (gap <= tol_g)
            converged = pg & (dres <= tol_d)
            # stalled: primal and gap converged but the dual residual grows (ill-conditioned Newton
            # systems, typically float32); such elements stop here and are handed to the polish
            stalled = pg & (dres > dres_prev.clamp(min=tol_d))
            dres_prev = dres

            # -- statuses -------------------------------------------------------------------------------
            running = status == _RUNNING
            new_status = torch.where(converged, solved_code, status)
            if certify and not bool((running & ~converged).any()):
                # every running element converged: no certificates to check, nothing runs on
                status = torch.where(running, new_status, status)
                break
            if certify and (G is not None or A is not None):
                # infeasibility certificates, on the iterates (λ, ν) and on the last Newton directions
                pinf = _primal_infeasible(Gtl, Atn, h, b, lam, nu, eps_inf, pscale)
                pinf = pinf | _primal_infeasible(Gtd, Atd, h, b, dlp, dnu_last, eps_inf, pscale)
                nd = _inf_norm(dz_last)
                dinf = (nd > 0) & (_inf_norm(Qd) <= eps_inf * nd) \
                    & ((q * dz_last).sum(-1) <= -eps_inf * nd * (1 + qnorm))
                if G is not None:
                    dinf = dinf & (Gdz_last.amax(-1) <= eps_inf * nd * (1 + hnorm))
                if A is not None:
                    dinf = dinf & (_inf_norm(Ad) <= eps_inf * nd * (1 + bnorm))
                open_ = ~converged
                new_status = torch.where(open_ & pinf, pinf_code, new_status)
                open_ = open_ & ~pinf
                new_status = torch.where(open_ & dinf, dinf_code, new_status)
                new_status = torch.where(open_ & ~dinf & stalled, stalled_code, new_status)
            elif certify:
                nd = _inf_norm(dz_last)
                dinf = (nd > 0) & (_inf_norm(Qd) <= eps_inf * nd) \
                    & ((q * dz_last).sum(-1) <= -eps_inf * nd * (1 + qnorm))
                new_status = torch.where(~converged & dinf, dinf_code, new_status)
            status = torch.where(running, new_status, status)
            running = status == _RUNNING
            nrun = int(running.sum())
            if k == max_iter or nrun == 0:
                break
            Bw = z.shape[0]
            if nrun <= 0.75 * Bw and Bw >= 4:
                state = (z, s, lam, nu, status, iterations, pres, dres, gap)
                if widx is None:
                    full = [x.clone() for x in state]
                    widx = torch.arange(B, device=device)
                else:
                    for f_, x in zip(full, state):
                        f_.index_copy_(0, widx, x)
                keep = torch.nonzero(running).reshape(-1)
                widx = widx.index_select(0, keep)
                (z, s, lam, nu, status, iterations, dres_prev, dz_last, Gdz_last, dlam_last, dnu_last, Gz,
                 rd0, ri, re, mu, w, Gtwri, Q, q, G, h, A, b, QA, zero_eq, reg, hnorm, bnorm, qnorm, pscale) = (
                    take(x, keep) for x in (
                        z, s, lam, nu, status, iterations, dres_prev, dz_last, Gdz_last, dlam_last, dnu_last, Gz,
                        rd0, ri, re, mu, w, Gtwri, Q, q, G, h, A, b, QA, zero_eq, reg, hnorm, bnorm, qnorm, pscale))
                running = status == _RUNNING
                X = None

            # -- the factorisation at this iterate ------------------------------------------------------
            if k == 0 and fac0 is not None and widx is None:
                fac = fac0
            else:
                if bufs is None and G is not None and Q.shape[-1] ** 2 * z.shape[0] >= 1 << 16 and \
                        not (torch.is_grad_enabled() and (QA.requires_grad or G.requires_grad or w.requires_grad)):
                    # reused by every factorisation of this loop: the previous factor is dead by then
                    bufs = (torch.empty(z.shape[0], m, n, dtype=dtype, device=device),
                            torch.empty(z.shape[0], n, n, dtype=dtype, device=device))
                fac = _Factor(QA, G, A, None, w, reg, zero_eq, opts.reg, bufs)
            iterations = iterations + running.to(iterations.dtype)
            r0 = -rd0 if A is None else -rd0 - opts.rho * _mtv(A, re)
            if G is not None:
                # -- Mehrotra predictor (affine scaling) and corrector, one factorisation ---------------
                # right-hand side r0 − Gᵀ(w∘r_i − r_c/s): with r_c = s∘λ (predictor) the Gᵀλ of the
                # dual residual cancels, leaving −Gᵀ(w∘r_i) (computed with the residuals); the
                # corrector adds Gᵀ((r_c − s∘λ)/s)
                rhs_aff = r0 - Gtwri
                ere = -re if A is not None else None
                # step lengths from the stacked (s, λ): α = 1 / max(1, max_i −d_i/x_i / f) for the
                # fraction f of the step to the boundary (f = 1 for the predictor)
                if X is None:
                    X = torch.cat([s, lam], -1)
                Xn = X.clamp(min=tiny)
                Xn1, Xnf = Xn.neg(), Xn * -frac

                def step(rcs, rhs):
                    dz, dnu = fac.solve(rhs, ere)
                    Gdz = _mv(G, dz)
                    ds = torch.neg(ri + Gdz)
                    # dλ = w∘(G dz + r_i) − r_c/s
                    dlam = torch.addcmul(rcs, w, ds).neg_()
                    return dz, torch.cat([ds, dlam], -1), dnu, Gdz

                dz, D, dnu, Gdz = step(lam, rhs_aff)
                a = (D / Xn1).amax(-1, keepdim=True).clamp_(min=1.0).reciprocal_()
                Xa = torch.addcmul(X, a, D)
                mu_aff = (Xa[..., :m] * Xa[..., m:]).sum(-1) / m
                sigma = (mu_aff / mu).clamp(min=0, max=1) ** 3
                dc = (D[..., :m] * D[..., m:] - (sigma * mu).unsqueeze(-1)) / s
                dz, D, dnu, Gdz = step(lam + dc, rhs_aff + _mtv(G, dc))
                alpha = (D / Xnf).amax(-1, keepdim=True).clamp_(min=1.0).reciprocal_()
                check = dz.sum(-1) + D.sum(-1)
            else:
                # equality-constrained or unconstrained: Newton steps (one solves the problem)
                dz, dnu = fac.solve(r0, -re if A is not None else None)
                alpha = torch.ones(z.shape[0], 1, dtype=dtype, device=device)
                Gdz = D = None
                check = dz.sum(-1)
            if dnu is not None:
                check = check + dnu.sum(-1)
            finite = torch.isfinite(check)
            if bool(finite.all()):
                # frozen elements: zero step (their directions are only read for running elements)
                a = alpha * running.unsqueeze(-1)
            else:
                status = torch.where(running & ~finite, nonfinite_code, status)
                move = (running & finite).unsqueeze(-1)
                # frozen elements: zero direction (also clears non-finite directions), zero step
                a = torch.where(move, alpha, 0.0)
                dz = torch.where(move, dz, 0.0)
                dnu = None if dnu is None else torch.where(move, dnu, 0.0)
                if D is not None:
                    D, Gdz = torch.where(move, D, 0.0), torch.where(move, Gdz, 0.0)
            z = torch.addcmul(z, a, dz)
            if dnu is not None:
                nu = torch.addcmul(nu, a, dnu)
            dlam = None
            if D is not None:
                X = torch.addcmul(X, a, D)
                s, lam = X[..., :m], X[..., m:]
                dlam = D[..., m:]
                Gz = torch.addcmul(Gz, a, Gdz)
            dz_last, Gdz_last, dlam_last, dnu_last = dz, Gdz, dlam, dnu

        if widx is not None:
            for f_, x in zip(full, (z, s, lam, nu, status, iterations, pres, dres, gap)):
                f_.index_copy_(0, widx, x)
            z, s, lam, nu, status, iterations, pres, dres, gap = full
            Q, q, G, h, A, b = data
            QA, zero_eq, reg, hnorm, bnorm, qnorm = aux
            fac = None
        return z, s, lam, nu, status, iterations, pres, dres, gap, fac

    # phase 1: with polishing, iterate only to a loose tolerance (the polish makes the solution
    # exact once the active set is identified); later phases: elements whose polish fails continue
    # to a 100× tighter tolerance (at most twice, then to the full tolerance) and are polished again
    loose = max(opts.tol, opts.polish_tol) if (opts.polish and G is not None) else None
    tols = (opts.tol_primal, opts.tol_dual, opts.tol_gap)
    ladder = [tols]
    if loose is not None:
        looser = [loose * f_ for f_ in (1.0, 1e-2) if loose * f_ > max(tols)]
        ladder = [tuple(max(t_, l_) for t_ in tols) for l_ in looser] + [tols]
    tols1 = ladder[0]
    z, s, lam, nu, status, iterations, pres, dres, gap, fac = run(
        z, s, lam, nu, status, iterations, *tols1, opts.max_iter, fac0)
    unfinished = (status == _RUNNING) | (status == _STALLED)
    cache = {}
    if G is not None:
        if opts.polish:
            pre = None
            fast_all = polished = torch.zeros_like(status, dtype=torch.bool)
            act_final = lam > s
            retry = None
            for phase in range(1, len(ladder) + 1):
                solved = status == Status.SOLVED
                before = (z, s, lam, nu)
                # later phases polish the retried elements only; the others keep their earlier polish
                todo = unfinished | solved if retry is None else (unfinished | solved) & retry
                fast = torch.zeros_like(todo)
                act_fast = lam > s
                if dtype == torch.float64:
                    # float64: the penalty polish (one interior-point-sized factorisation a round);
                    # the Schur-complement polish below takes the elements where it fails
                    z, s, lam, nu, fast, act_fast, pre_ = _polish_penalty(
                        Q, q, G, h, A, b, z, s, lam, nu, todo, opts, reg, zero_eq, QA, hnorm)
                    if pre is None or pre_ is None:
                        pre = pre if pre_ is None else pre_
                    elif bool(fast.any()):
                        ix = torch.nonzero(fast).reshape(-1)
                        for t_, u_ in zip(pre, pre_):
                            if t_ is not None:
                                t_.index_copy_(0, ix, u_.index_select(0, ix))
                rest = todo & ~fast
                first = None
                pol_rest = torch.zeros_like(todo)
                act_rest = act_fast
                if bool(rest.any()):
                    z, s, lam, nu, pol_rest, act_rest, first = _polish(
                        Q, q, G, h, A, b, z, s, lam, nu, rest, opts, reg, zero_eq, hnorm, bnorm, qnorm)
                t_ = todo.unsqueeze(-1)
                act_final = torch.where(t_, torch.where(fast.unsqueeze(-1), act_fast, act_rest), act_final)
                polished = torch.where(todo, fast | pol_rest, polished)
                fast_all = torch.where(todo, fast, fast_all)
                _, _, _, pres, dres, gap, _ = _residuals(Q, q, G, h, A, b, z, s, lam, nu, hnorm, bnorm, qnorm)
                converged = (pres <= opts.tol_primal) & (dres <= opts.tol_dual) & (gap <= opts.tol_gap)
                status = torch.where(unfinished & converged, torch.full_like(status, int(Status.SOLVED)), status)
                retry = solved & ~converged     # loose IPM solution, polish failed: iterate on
                if phase == len(ladder) or not bool(retry.any()):
                    break
                first = None
                status = torch.where(retry, torch.full_like(status, _RUNNING), status)
                # continue from the interior iterate, not from the (boundary) polished point
                r_ = retry.unsqueeze(-1)
                z, s, lam, nu = (torch.where(r_, a_, b_) for a_, b_ in zip(before, (z, s, lam, nu)))
                budget = max(1, opts.max_iter - int(iterations.max()))
                z, s, lam, nu, status, iterations, pres, dres, gap, fac = run(
                    z, s, lam, nu, status, iterations, *ladder[phase], budget)
                unfinished = (status == _RUNNING) | (status == _STALLED)
            # the backward's active sets: the polished ones, and for elements left unpolished
            # (their polish failed at every rung; they converged by the interior-point iterations
            # alone) the strict-complementarity guess λ > s. The active-set form then serves every
            # element — the barrier form's weights λ/s are infinite at the polished elements'
            # exactly active constraints, which gave NaN gradients in mixed batches.
            # ``cache["polished"]`` tells ``QPProblem`` which elements are exact to rounding.
            act_final = torch.where(polished.unsqueeze(-1), act_final, lam > s)
            cache = {"act": act_final, "polished": polished}
            if pre is not None and bool(fast_all.any()):
                # the penalty factors: the backward refines with them (``kkt_tangent``)
                for key, t_ in zip(("pre_U", "pre_Y", "pre_Us", "pre_w", "pre_gn"), pre):
                    if t_ is not None:
                        cache[key] = t_
                cache["pre_ok"] = fast_all
            if first is not None:
                U_, Y_, Us_, idx, valid, _ = first
                if bool((act_final.gather(1, idx).sum(-1) == act_final.sum(-1)).all() and
                        (act_final.gather(1, idx) == valid).all()):
                    # ... whose factorisation (merged over the polish rounds) is kept
                    cache.update(U=U_, act_idx=idx, act_valid=valid)
                    if Y_ is not None:
                        cache.update(Y=Y_, Us=Us_)
        cache["s"] = s
        cache["w"] = (lam / s.clamp(min=torch.finfo(dtype).tiny)).clamp(max=wmax)
    elif fac is not None:
        cache = {"U": fac.L}
        if fac.Y is not None:
            cache.update(Y=fac.Y, Us=fac.Ls)
    status = torch.where((status == _RUNNING) | (status == _STALLED),
                         torch.full_like(status, int(Status.MAX_ITERATIONS)), status)
    duals = {"lam": lam if G is not None else z.new_zeros(B, 0),
             "nu": nu if A is not None else z.new_zeros(B, 0)}
    return Solution(z=z, duals=duals, status=status, iterations=iterations,
                    residuals={"primal": pres, "dual": dres, "gap": gap}, cache=cache)


def kkt_tangent(Q: torch.Tensor, G: torch.Tensor | None, A: torch.Tensor | None, solution: Solution,
                g: torch.Tensor, options: QPOptions | None = None):
    """Solve the linearised KKT system at a solution of ``solve_qp_ipm`` (strict complementarity):

        Q dz + G_Kᵀ dλ_K + Aᵀ dν = −g,   G_K dz = 0,   A dz = 0,   dλ_i = 0 (i ∉ K)

    with ``K`` the polished active set: by the method of multipliers with the forward's penalty
    factors (``_polish_penalty``, three steps) where the forward kept them, otherwise reusing the
    forward's factorisation kept in
    ``solution.cache`` when the first polish round was final for every element (otherwise the
    active-set system is factorised once here), plus two steps of iterative refinement. If the forward was not polished,
    the barrier form ``(Q + GᵀWG) dz + Aᵀdν = −g, dλ = W G dz`` with ``W = λ/s`` of the last iterate
    is factorised instead (equal up to the solver's accuracy).

    Returns:
        ``(dz (B, n), dλ (B, m), dν (B, p))``.
    """
    opts = (options or QPOptions()).resolved(Q.dtype)
    Qb, Gb, Ab = _with_batch(Q, 2), _with_batch(G, 2), _with_batch(A, 2)
    cache = solution.cache
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

            def take(t):
                return t if t is None or t.shape[0] == 1 else t.index_select(0, sub)
            part = Solution(z=take(z), cache={"act": take(act)})
            dz_, dlam_, dnu_ = kkt_tangent(take(Qb), take(Gb), take(Ab), part, take(g), options)
            dz, dlam = dz.index_copy(0, sub, dz_), dlam.index_copy(0, sub, dlam_)
            if Ab is not None:
                dnu = dnu.index_copy(0, sub, dnu_)
        return dz, dlam, (dnu if Ab is not None else empty)
    zero_eq = None if Ab is None else (Ab.abs().amax(-1) == 0).to(z.dtype)
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
        w = cache["w"]
        fac = _Factor(Qb, Gb, Ab, AtA, w, reg, zero_eq, opts.reg)
        dz, dnu = fac.solve(-g, None if Ab is None else z.new_zeros(B, p))
        return dz, w * _mv(Gb, dz), (dnu if dnu is not None else empty)
    if "U" in cache:
        fac = _Factor.from_cache(cache["U"], Ab, cache.get("Y"), cache.get("Us"))
    else:
        fac = _Factor(Qb, None, Ab, AtA, None, reg, zero_eq, opts.reg)
    dz, dnu = fac.solve(-g, None if Ab is None else z.new_zeros(B, p))
    return dz, empty, (dnu if dnu is not None else empty)
