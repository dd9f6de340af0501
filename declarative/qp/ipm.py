"""Batched primal–dual interior-point solver for convex quadratic programs (pure torch).

    minimize_z  ½ zᵀQz + qᵀz   subject to   Gz ≤ h,  Az = b

Mehrotra predictor–corrector on the KKT conditions with slack ``s = h − Gz ≥ 0``:

    Qz + q + Gᵀλ + Aᵀν = 0,   Gz + s = h,   Az = b,   s ∘ λ = 0,   s, λ ≥ 0 .

Every Newton system is reduced to the positive definite matrix

    H = Q + Gᵀ diag(λ/s) G + ρ AᵀA + δ I

(the ``ρAᵀA`` term leaves the solution unchanged because ``A dz`` is prescribed, and makes ``H``
definite when ``Q`` is only positive definite on the null space of ``A``); the equality block is
eliminated with the Schur complement ``A H⁻¹ Aᵀ``. Both are factorised once per iteration with a
batched Cholesky (``torch.linalg.cholesky_ex``, upper factor; ``_Factor`` in ``linalg``) and used
for the predictor and the corrector. The factorisation at the returned iterate is kept in
``Solution.cache`` for the implicit backward (the active-set factorisation of the final polish, see
``kkt_tangent.kkt_tangent``).

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
per iteration, which also tells whether the last step's directions were finite (the step is taken
before that is known, and taken again without the elements concerned when it was not). Converged
solutions are then *polished* (``QPOptions.polish``; see ``polish``): the equality-constrained QP
on the identified active set is solved exactly — in float64 by the method of multipliers on the
penalised interior-point matrix (``_polish_penalty``), elsewhere and where that fails with a Schur
complement of the gathered active rows (``_polish``). Elements whose polish fails iterate on to a
tighter tolerance and are polished again. The first iteration reuses the factorisation of the
starting point (``λ = s``, weights 1). A primal and gap converged element whose dual residual grows
(ill-conditioned Newton systems, typically float32) is stopped and handed to the polish as well;
if that polish fails it iterates on (in float64) like the others. Elements that end ``INACCURATE``
(or ``NON_FINITE`` with finite data) are solved again by the second solver, the proximal
interior-point method of ``proximal_ipm`` (``_second_solver``; ``QPOptions.proximal_max_iter``),
on the equilibrated problem and, where it fails there, on the original one.

Mixed precision (``QPOptions.mixed_precision``): for float64 problems with inequalities the first
phase (to ``polish_tol``) runs on a float32 copy of the data (``_Working``, ``_lowered``) — the
factorisations and matrix–vector products of the loop take about half the time — and its iterate
is cast back for the float64 polish, which checks the KKT conditions itself. Elements the float32
phase does not solve (certificates, non-finite steps, its iteration cap) start again in float64 from
the cold start (``_cold_start``). float32 problems are solved the same way, as float64 problems
with the float32 tolerances, and answered in float32 (``_solve_upcast``).

References:
    S. Mehrotra, "On the implementation of a primal-dual interior point method", SIAM J. Optim. 1992.
    S. Wright, "Primal-Dual Interior-Point Methods", SIAM 1997, ch. 10–11.
    B. Amos and J. Z. Kolter, "OptNet", ICML 2017 (batched IPM for QPs).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import NamedTuple

import torch

from ..solution import Solution
from ..status import Status
from .linalg import (_Factor, _IN_PLACE_MIN, _inf_norm, _Scratch, _mtv, _mtvs, _mv, _mvs, _select, _shared,
                     _static_reg, _with_batch, _zero_rows)
from .options import DEFAULT_REG, DEFAULT_TOL_INFEASIBLE, QPOptions
from .residuals import (CERTIFICATE_TOL, dual_certificate_holds, meets_tolerances, primal_certificate_holds,
                        qp_residuals, tolerance_ratio)
# looked up in this namespace by ``solve_qp_ipm`` (the tests replace them here)
from .least_norm import _least_norm_multipliers
from .polish import _PROX, _PROX_STEPS, _polish, _polish_penalty, _strict
from .proximal_ipm import solve_qp_proximal

__all__ = ["solve_qp_ipm"]

#: internal statuses of the loop (negative: every ``Status`` code is ≥ 0, so ``status < 0`` tests both)
_RUNNING = -1
_STALLED = -2


#: iteration cap of the float32 phase of ``QPOptions.mixed_precision`` (elements still running are
#: solved again in float64)
_MIXED_MAX_ITER = 30
#: ``mixed_precision=None`` lowers phase 1 to float32 from this many entries ``B·n·(n + m)`` of the
#: per-iteration matrices on (below, the cost is per-operation overhead, not arithmetic)
_MIXED_MIN_SIZE = 1 << 16


#: ``polish_tol=None`` with at least this many inequality rows per variable that can be active
#: together: the first phase iterates to ``_MANY_ROWS_POLISH_TOL`` (see ``_default_polish_tol``)
_MANY_ROWS = 2
_MANY_ROWS_POLISH_TOL = 1e-3


def _rows_active_together(G) -> int:
    """The number of rows of ``G`` that can be active at one point, as counted for the first
    phase's tolerance, largest over the batch: the rows with two or more nonzeros, plus the
    variables that single-nonzero rows (bounds) constrain — a variable's lower and upper bound rows
    count once, as at most one of them is active for ``l < u``; zero rows (padding, and the data
    of elements with non-finite inputs, which the solver replaces by zeros) do not count."""
    nz = G != 0
    per_row = nz.sum(-1)
    single = per_row == 1                                       # (B, m) bound rows
    general = (per_row >= 2).sum(-1)
    bounded = (nz & single.unsqueeze(-1)).any(-2).sum(-1)       # variables with a bound row
    return int((general + bounded).amax())


def _default_polish_tol(G, n: int, mixed: bool) -> float:
    """``QPOptions.polish_tol=None``: ``1e-1``, or ``1e-2`` with ``mixed`` (float32 iterations
    cost about half a float64 one, so a closer iterate pays), or ``1e-3`` where at least ``2n``
    rows can be active together (``_rows_active_together``; box constraints alone do not count
    twice): near such a minimiser many rows are nearly active, and the loose iterate's guess of the
    active set needs several polish rounds (a factorisation each), more than the iterations that
    identify it. Measured forward times against ``1e-1``: random QPs with m = 2n–3n general rows
    1.3–2.3× faster; but QPs with few active rows among them (``degenerate_qp``, m = 2n–2.5n)
    0.86–0.90× (slower); m ≤ 1.5n and box constraints are not affected."""
    if G is not None and G.shape[-2] >= _MANY_ROWS * n and _rows_active_together(G) >= _MANY_ROWS * n:
        return _MANY_ROWS_POLISH_TOL
    return 1e-2 if mixed else 1e-1


class _Working(NamedTuple):
    """The data of the interior-point loop in one precision: ``(Q, q, G, h, A, b)``, the constants
    ``(QA, zero_eq, reg, hnorm, bnorm, qnorm)``, the dtype, the relative regularisation of the
    equality Schur complement and the tolerance of the infeasibility certificates."""
    data: tuple
    aux: tuple
    dtype: torch.dtype
    reg_rel: float
    eps_inf: float


def _use_mixed_precision(opts: QPOptions, dtype, G, B: int, n: int, m: int) -> bool:
    """Whether phase 1 runs in float32 (see ``QPOptions.mixed_precision``)."""
    if dtype != torch.float64 or G is None or not opts.polish or opts.mixed_precision is False:
        return False
    return bool(opts.mixed_precision) or B * n * (n + m) >= _MIXED_MIN_SIZE


#: the keys of ``_lowered``'s copies in its scratch (given up to the polish after the first phase)
_LOWERED_KEYS = ("Q_low", "G_low", "QA_low")


def _lowered(work: _Working, dtype, opts: QPOptions, scratch: _Scratch | None = None) -> _Working:
    """``work`` cast to ``dtype`` (float32) with that precision's regularisation and certificate
    tolerance (the larger of the user's and the float32 defaults). With ``scratch``, the matrices
    ``Q``, ``G`` and ``QA`` are cast into its memory (under ``_LOWERED_KEYS``: once the first phase
    is over, the penalty polish's sub-batches reuse it)."""
    reg_rel = max(opts.reg, DEFAULT_REG[dtype])
    QA, zero_eq, reg, hnorm, bnorm, qnorm = work.aux
    aux = (QA, zero_eq, reg * (reg_rel / opts.reg), hnorm, bnorm, qnorm)

    def cast(t, key=None):
        if t is None:
            return None
        return t.to(dtype) if scratch is None or key is None else scratch.copy(key, t, dtype)
    Q, q, G, h, A, b = work.data
    data = (cast(Q, _LOWERED_KEYS[0]), cast(q), cast(G, _LOWERED_KEYS[1]), cast(h), cast(A), cast(b))
    # (QA is Q without equalities: cast once)
    aux = (data[0] if QA is Q else cast(QA, _LOWERED_KEYS[2]),) + tuple(cast(t) for t in aux[1:])
    return _Working(data, aux, dtype, reg_rel, max(opts.tol_infeasible, DEFAULT_TOL_INFEASIBLE[dtype]))


def _solve_upcast(Q, q, G, h, A, b, options: QPOptions, warm_start, original, scales) -> Solution:
    """``solve_qp_ipm`` of float32 data as a float64 problem (exact: float32 values are float64
    values) with the float32 tolerances, answered in float32.

    A float32 polish (its Schur complement and refinement in float32) could not make the answer
    exact on ill-conditioned problems (variables scaled by 1e±2: SOLVED elements off by up to
    ~100 % of ``‖z*‖∞`` while meeting the residual tolerances), and cost more rounds than the
    float64 penalty polish; the float32 speed is kept where it pays, in the interior-point
    iterations (``QPOptions.mixed_precision``).
    """
    r = options.resolved(torch.float32)
    if G is None or G.shape[-2] == 0:
        # no inequalities, no polish: the Newton steps on the equality-constrained problem are the
        # answer, and at the float32 tolerances they left z off by up to 9e-4 of ‖z*‖∞ (KKT
        # condition numbers of 1e7–1e12, residuals within the contract): the float64 tolerances
        # (with the float32 rounding term of the answer), a step or two more with the same factors
        r = options.resolved(torch.float64)
    # the float32 tolerances; the numerical settings (regularisation, certificate tolerance) of
    # float64 unless the user set them
    opts64 = replace(options, eps_abs=r.eps_abs, eps_rel=r.eps_rel, tol=r.tol, tol_primal=r.tol_primal,
                     tol_dual=r.tol_dual, tol_gap=r.tol_gap, active_tol=r.active_tol)

    def up(t):
        return None if t is None else t.to(torch.float64)
    orig = None if original is None else tuple(up(t) for t in original)
    sol = solve_qp_ipm(up(Q), up(q), up(G), up(h), up(A), up(b), options=opts64, warm_start=warm_start,
                       original=orig, scales=scales, answer_dtype=torch.float32)

    def down(t):
        return t.to(torch.float32)
    cache = dict(sol.cache)
    # the backward works in the forward's precision (``kkt_tangent``): an empty tensor of it
    cache["work_dtype"] = sol.z.new_empty(0)
    return Solution(z=down(sol.z), duals={k: down(v) for k, v in sol.duals.items()}, status=sol.status,
                    iterations=sol.iterations, residuals={k: down(v) for k, v in sol.residuals.items()},
                    cache=cache)


def _factor_scratch(work: _Working, B: int, w=None, itemsize: int = 0) -> _Scratch | None:
    """Reused memory for the interior-point loop's factorisations (``linalg._Scratch``, holding
    ``itemsize`` bytes an entry at least), or None: with inequalities, from ``B·n² ≥ 2¹⁶`` on, and
    outside autograd (a factor in reused memory must not be recorded by it)."""
    Q, G = work.data[0], work.data[2]
    if G is None or Q.shape[-1] ** 2 * B < _IN_PLACE_MIN:
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (*work.data, *work.aux, w) if isinstance(t, torch.Tensor)):
        return None
    return _Scratch(Q.device, itemsize)


def _factor_bufs(scratch: _Scratch | None, B: int, m: int, n: int, dtype):
    """``_Factor``'s ``bufs`` (``√w∘G`` and ``H``) on the memory of ``scratch`` (None without)."""
    return None if scratch is None else (scratch.view("sG", (B, m, n), dtype), scratch.view("H", (B, n, n), dtype))


def _cold_start(work: _Working, rho: float, B: int, scratch: _Scratch | None = None):
    """The starting point: ``z`` minimises ``½zᵀ(Q + GᵀG + ρAᵀA)z + (q − Gᵀh − ρAᵀb)ᵀz`` subject to
    ``Az = b`` (the reduced system with unit weights), the slacks ``h − Gz`` shifted to at least 1
    when any is not positive, and ``λ = s`` — so the weights of the first iteration are 1 and it
    reuses this factorisation (returned with the point; in the memory of ``scratch`` when given,
    which the loop then takes over).

    Returns:
        ``z (B, n), s (B, m), λ (B, m), ν (B, p)`` and the ``_Factor``.
    """
    Q, q, G, h, A, b = work.data
    QA, zero_eq, reg, _, _, _ = work.aux
    n = Q.shape[-1]
    bufs = None if G is None else _factor_bufs(scratch, B, G.shape[-2], n, work.dtype)
    fac = _Factor(QA, G, A, None, None, reg, zero_eq, work.reg_rel, bufs)   # unit weights
    r1 = -q.expand(B, n)
    if G is not None:
        r1 = r1 + _mtv(G, h)
    if A is not None:
        r1 = r1 + rho * _mtv(A, b)
    z, nu = fac.solve(r1, b)
    z = torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)   # non-finite entries to 0
    if nu is None:
        nu = z.new_zeros(B, 0)
    if G is not None:
        s = h - _mv(G, z)
        smin = s.amin(-1, keepdim=True)
        s = s + (1.0 - smin).relu_() * (smin <= 0)
        lam = s
    else:
        s = lam = z.new_zeros(B, 0)
    return z, s, lam, nu, fac


def _loop_residuals(Q, q, G, h, A, b, z, s, lam, nu, w, hnorm, bnorm, qnorm, dz_last, dlp, dnu_last, Gz):
    """``_residuals`` inside the interior-point loop, with the products the iteration needs fused
    into the same passes over ``Q``, ``G``, ``A``: ``Q dz_last``, ``Gᵀ dlp``, ``Aᵀ dnu_last`` (the
    infeasibility certificates; skipped when None), ``A dz_last`` and ``−Gᵀ(w ∘ r_i)`` (the
    predictor's right-hand side). ``Gz`` is tracked by the loop (updated with each step). The
    inequality residual is returned negated, ``−r_i = h − (Gz + s)`` (what the steps use)."""
    if dz_last is None:
        Qz = _mv(Q, z)
        Qd = None
    else:
        Qz, Qd = _mvs(Q, [z, dz_last])
    rd0 = Qz + q
    scaled = [Qz]   # the terms of the dual residual whose largest entry scales it (with ‖q‖)
    pres = gap = mu = None
    nri = re = Gtl = Atn = Gtd = Atd = Ad = nGtwri = None
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
        scaled.append(Atn)
        pres = _inf_norm(re) / (torch.maximum(_inf_norm(Az), bnorm) + 1)
        rd = rd0
    if G is not None:
        nri = h - (Gz + s)   # exactly −r_i
        cols = [lam, w * nri] + ([] if dlp is None else [dlp])
        GtX = _mtvs(G, cols)
        Gtl, nGtwri = GtX[0], GtX[1]
        Gtd = None if dlp is None else GtX[2]
        rd = rd0 + Gtl
        scaled.append(Gtl)
        # max(‖Gz‖, ‖s‖) as one norm of the concatenation
        pri = _inf_norm(nri) / (torch.maximum(_inf_norm(torch.cat([Gz, s], -1)), hnorm) + 1)
        pres = pri if pres is None else torch.maximum(pres, pri)
        sl = (s * lam).sum(-1)
        mu = sl / s.shape[-1]
        pobj = 0.5 * (z * Qz).sum(-1) + (q * z).sum(-1)
        gap = sl / (pobj.abs() + 1)
    # max(‖Qz‖, ‖Aᵀν‖, ‖Gᵀλ‖) as one norm of the concatenation
    dscale = torch.maximum(_inf_norm(scaled[0] if len(scaled) == 1 else torch.cat(scaled, -1)), qnorm)
    dres = _inf_norm(rd) / (dscale + 1)
    if pres is None:
        pres = gap = mu = torch.zeros_like(dres)
    elif gap is None:
        gap = mu = torch.zeros_like(dres)
    return rd0, nri, re, pres, dres, gap, mu, Gtl, Atn, nGtwri, Qd, Gtd, Atd, Ad


def _finite_directions(dz, D, dnu):
    """Per element: whether the Newton directions ``dz``, ``D = (ds, dλ)`` and ``dν`` are finite
    (a sum is finite only if every term is)."""
    check = dz.sum(-1) + (D.sum(-1) if D is not None else 0)
    if dnu is not None:
        check = check + dnu.sum(-1)
    return torch.isfinite(check)


def _advance(z, s, lam, nu, X, Gz, status, running, dz, D, dnu, Gdz, alpha, finite, nrun):
    r"""One interior-point step of the running elements of the working set,

    .. math::
        z \leftarrow z + \alpha\, d_z, \quad (s, \lambda) \leftarrow (s, \lambda) + \alpha\, D,
        \quad \nu \leftarrow \nu + \alpha\, d_\nu, \quad Gz \leftarrow Gz + \alpha\, G d_z,

    with a zero step for the other elements. ``finite``: ``None`` when every direction is finite;
    otherwise the per-element mask, and the running elements outside it stop with ``NON_FINITE``
    (their directions are zeroed, so that no NaN spreads). ``nrun``: the number of running elements.

    Shape:
        z, dz: ``(B, n)``; s, lam: ``(B, m)``; X = (s, λ), D: ``(B, 2m)`` (or ``None``); nu, dnu:
        ``(B, p)`` (or ``None``); Gz, Gdz: ``(B, m)``; status, running, finite: ``(B,)``;
        alpha: ``(B, 1)``. Returns the new ``(z, s, lam, nu, X, Gz, status, running)`` and the
        directions taken ``(dz, Gdz, D, dnu)``.
    """
    if finite is None:
        # frozen elements: zero step (their directions are only read for running elements)
        a = alpha if nrun == z.shape[0] else alpha * running.unsqueeze(-1)
    else:
        status = torch.where(running & ~finite, int(Status.NON_FINITE), status)
        move = (running & finite).unsqueeze(-1)
        running = running & finite
        # frozen elements: zero direction (also clears non-finite directions), zero step
        a = torch.where(move, alpha, 0.0)
        dz = torch.where(move, dz, 0.0)
        dnu = None if dnu is None else torch.where(move, dnu, 0.0)
        if D is not None:
            D, Gdz = torch.where(move, D, 0.0), torch.where(move, Gdz, 0.0)
    z = torch.addcmul(z, a, dz)
    if dnu is not None:
        nu = torch.addcmul(nu, a, dnu)
    if D is not None:
        X = torch.addcmul(X, a, D)
        s, lam = X.chunk(2, -1)
        Gz = torch.addcmul(Gz, a, Gdz)
    return z, s, lam, nu, X, Gz, status, running, dz, Gdz, D, dnu


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
    pres = gap = mu = None
    ri = re = Gtl = Atn = None
    if G is not None:
        Gz = _mv(G, z)
        Gtl = _mtv(G, lam)
        rd = rd + Gtl
        ri = Gz + s - h
        dscale = torch.maximum(dscale, _inf_norm(Gtl))
        pres = _inf_norm(ri) / (torch.maximum(_inf_norm(torch.cat([Gz, s], -1)), hnorm) + 1)
        sl = (s * lam).sum(-1)
        mu = sl / s.shape[-1]
    if A is not None:
        Az = _mv(A, z)
        Atn = _mtv(A, nu)
        rd = rd + Atn
        re = Az - b
        dscale = torch.maximum(dscale, _inf_norm(Atn))
        pre = _inf_norm(re) / (torch.maximum(_inf_norm(Az), bnorm) + 1)
        pres = pre if pres is None else torch.maximum(pres, pre)
    dres = _inf_norm(rd) / (dscale + 1)
    if G is not None:
        pobj = 0.5 * (z * Qz).sum(-1) + (q * z).sum(-1)
        gap = sl / (pobj.abs() + 1)
    else:
        gap = mu = torch.zeros_like(dres)
        if pres is None:
            pres = gap
    if products:
        return rd, ri, re, pres, dres, gap, mu, Gtl, Atn
    return rd, ri, re, pres, dres, gap, mu


def _contract_on(orig, scales, answer_dtype, dtype, opts):
    """``(z, λ, ν) ↦ (residuals, contract mask)``: the residuals of an iterate of the (possibly
    equilibrated, ``scales``) problem on the original problem ``orig``, and where the SOLVED
    contract of ``opts`` holds — on the answer rounded to ``answer_dtype`` when given."""
    def on_original(z, lam, nu):
        if answer_dtype is not None:
            # the answer as the caller returns it: rounded, then unscaled in that dtype
            z, lam, nu = (t.to(answer_dtype) for t in (z, lam, nu))
        if scales is not None:
            z, lam, nu = scales.unscale_point(z, lam, nu)
        if answer_dtype is not None:
            z, lam, nu = (t.to(dtype) for t in (z, lam, nu))
        res = qp_residuals(*orig, z, lam, nu)
        if not opts.contract:
            return res, torch.ones_like(res.primal, dtype=torch.bool)
        return res, meets_tolerances(res, opts.eps_abs, opts.eps_rel, torch.finfo(answer_dtype or dtype).eps / 2)
    return on_original


def solve_qp_ipm(Q: torch.Tensor, q: torch.Tensor, G: torch.Tensor | None = None,
                 h: torch.Tensor | None = None, A: torch.Tensor | None = None,
                 b: torch.Tensor | None = None, *, options: QPOptions | None = None,
                 warm_start: Solution | None = None, original: tuple | None = None,
                 scales=None, answer_dtype: torch.dtype | None = None) -> Solution:
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
        original, scales: when the inputs are an equilibration (``Equilibration``: ``scales``) of
            the problem ``original = (Q, q, G, h, A, b)``, the SOLVED contract of ``QPOptions`` and
            the infeasibility certificates are checked on ``original`` (default: on the inputs).
        answer_dtype: the dtype the answer is returned in by the caller (default: the inputs'):
            the SOLVED contract is checked on the answer rounded to it, with its unit roundoff.

    Below float64 (float32 inputs; with inequalities, unless ``polish`` is off) the problem is solved as a
    float64 problem (``_solve_upcast``): the first interior-point phase runs in float32 where
    ``QPOptions.mixed_precision`` applies (as for float64 inputs), the polish, the retries and the
    SOLVED contract in float64, with the float32 tolerances; ``z``, the duals and the residuals
    are returned in float32 (the contract checked on the rounded answer), the backward's
    factorisations in ``cache`` stay in float64 (``kkt_tangent`` works in their dtype).

    Statuses: ``SOLVED`` only where the answer meets ``eps_abs``/``eps_rel`` on the original
    problem (``QPOptions``); elements whose iterations converge without meeting them iterate on
    to tighter tolerances, then are ``INACCURATE``. ``PRIMAL_INFEASIBLE`` and ``DUAL_INFEASIBLE``
    only with a certificate verified on the original data in float64 (``residuals``); then the
    duals hold the certificate ``(λ, ν)``, resp. ``z`` the descent ray. A certificate that does
    not hold there sends the element back to the iterations with a thousand times tighter
    certificate tolerance, and, failing again, it is ``INACCURATE``.

    Returns:
        ``Solution`` with ``z (B, n)``, ``duals={"lam": (B, m), "nu": (B, p)}``, ``status (B,)``,
        ``iterations (B,)``, ``residuals={"primal", "dual", "gap"}`` each ``(B,)`` (absolute, on the
        original problem: see ``residuals.qp_residuals``) and ``cache``
        for the backward: the slack ``s``, the active mask ``act`` (``polished``: the elements
        polished; the others', and without polish everyone's, is the guess ``λ > s``), the penalty factors of
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
    if Q.dtype == torch.float32 and (opts.polish or G is None or G.shape[-2] == 0):
        return _solve_upcast(Q, q, G, h, A, b, options or QPOptions(), warm_start, original, scales)
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
    orig = original if original is not None else (Q, q, G, h, A, b)

    on_original = _contract_on(orig, scales, answer_dtype, dtype, opts)

    # elements that met the iterations' tolerances but not the contract are iterated on; their
    # last such point is kept and returned (INACCURATE) if the tighter iterations end worse
    # (non-finite steps or the iteration limit, e.g. an unbounded set of optimal multipliers)
    # Also kept: unpolished points that met the contract while a later rung followed (``met``:
    # returned SOLVED, unpolished, if the later rungs end worse)
    kept = {}

    def keep(mask, state, met=False):
        if kept and not met:
            mask = mask & ~kept["met"]   # a point that met the contract is not replaced by one that did not
        if not bool(mask.any()):
            return
        if not kept:
            kept.update(mask=mask, state=state, met=mask & met)
            return
        m_ = mask.unsqueeze(-1)
        kept["state"] = tuple(torch.where(m_, a_, b_) for a_, b_ in zip(state, kept["state"]))
        kept["mask"] = kept["mask"] | mask
        kept["met"] = torch.where(mask, met, kept["met"])

    def certificates_hold(z, lam, nu, st):
        """Per element: True where ``st`` claims no infeasibility, or where its certificate holds
        on the original data."""
        eps_c = CERTIFICATE_TOL.get(orig[0].dtype, 1e-5)
        if scales is not None:
            z, lam, nu = scales.unscale_point(z, lam, nu)
        ok = torch.ones_like(st, dtype=torch.bool)
        pinf_, dinf_ = st == int(Status.PRIMAL_INFEASIBLE), st == int(Status.DUAL_INFEASIBLE)
        if bool(pinf_.any()):
            oG, oh, oA, ob = orig[2:]
            ok = ok & (~pinf_ | primal_certificate_holds(oG, oh, oA, ob, lam, nu, eps_c))
        if bool(dinf_.any()):
            ok = ok & (~dinf_ | dual_certificate_holds(orig[0], orig[1], orig[2], orig[4], z, eps_c))
        return ok

    # -- non-finite inputs: flag the elements, replace their data by a trivial problem ----------
    # a sum is finite only if every term is (one pass, no mask temporaries); the sums of all
    # inputs are added (an overflow only sends the batch to the exact check below); one host sync
    tot = None
    for t in present:
        st = t.sum()
        tot = st if tot is None else tot + st
    bad = None   # None: every element finite
    if not math.isfinite(float(tot.detach())):
        bad = torch.zeros(B, dtype=torch.bool, device=device)   # exact check, per element
        for t in present:
            bad = bad | ~torch.isfinite(t.reshape(t.shape[0], -1)).all(-1)
    if bad is not None and bool(bad.any()):
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
        zero_eq = _zero_rows(A, dtype)   # rows of zeros: fixed multiplier 0
    reg = _static_reg(Q, AtA, opts)
    QA = Q if AtA is None else Q + AtA   # the constant part of every reduced KKT matrix, formed once
    hnorm = _inf_norm(h) if G is not None else torch.zeros((), dtype=dtype, device=device)
    bnorm = _inf_norm(b) if A is not None else torch.zeros((), dtype=dtype, device=device)
    qnorm = _inf_norm(q)

    work64 = _Working((Q, q, G, h, A, b), (QA, zero_eq, reg, hnorm, bnorm, qnorm), dtype, opts.reg,
                      opts.tol_infeasible)
    # phase 1 in float32 (``QPOptions.mixed_precision``): its iterate only has to identify the
    # active set for the float64 polish, which is checked against the KKT conditions
    mixed = _use_mixed_precision(opts, dtype, G, B, n, m)
    # the memory of the first phase's factorisations (with a float32 first phase, held for the
    # float64 penalty polish's same-sized buffers) and float32 copies, reused by the polish
    scratch0 = _factor_scratch(work64, B, itemsize=dtype.itemsize)
    work1 = _lowered(work64, torch.float32, opts, scratch0) if mixed else work64

    # -- starting point ---------------------------------------------------------------------------
    fac0 = None
    if warm_start is None:
        z, s, lam, nu, fac0 = _cold_start(work1, opts.rho, B, scratch0)
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
        if mixed:
            z, s, lam, nu = (t.to(work1.dtype) for t in (z, s, lam, nu))

    status = torch.full((B,), _RUNNING, dtype=torch.int64, device=device)
    if bad is not None:
        status = torch.where(bad, torch.full_like(status, int(Status.NON_FINITE)), status)
    iterations = torch.zeros(B, dtype=torch.int64, device=device)
    frac = opts.step_fraction
    solved_code = int(Status.SOLVED)
    solved_t = torch.tensor(solved_code, device=device)   # a tensor operand: cheaper than a Python scalar
    pinf_code = int(Status.PRIMAL_INFEASIBLE)
    dinf_code = int(Status.DUAL_INFEASIBLE)
    nonfinite_code = int(Status.NON_FINITE)

    def restart(redo, z, s, lam, nu, status, iterations):
        """The elements ``redo`` set back to the cold start of the float64 data, running, with no
        iterations counted."""
        ix = torch.nonzero(redo).reshape(-1)
        part = _Working(tuple(_select(t, ix) for t in work64.data), tuple(_select(t, ix) for t in work64.aux),
                        dtype, work64.reg_rel, work64.eps_inf)
        zr, sr, lr, nr, _ = _cold_start(part, opts.rho, ix.shape[0])
        z, s, lam, nu = (t.index_copy(0, ix, u) for t, u in zip((z, s, lam, nu), (zr, sr, lr, nr)))
        status = torch.where(redo, torch.full_like(status, _RUNNING), status)
        iterations = torch.where(redo, torch.zeros_like(iterations), iterations)
        return z, s, lam, nu, status, iterations

    def limits(more, iterations):
        """``(limit, budget)`` of a further ``run``: the elements ``more`` may iterate to
        ``max_iter`` of their own (at least once more), every other element not at all — a running
        element outside ``more`` stays where it is, so that an element's iterations never depend on
        the other elements of its batch (one exception: the first phase's default tolerance is the
        batch's, ``_default_polish_tol``); ``budget``, the loop's bound, is the largest remainder
        (one host sync)."""
        limit = torch.where(more, torch.clamp(iterations + 1, min=opts.max_iter), iterations)
        return limit, int((limit - iterations).max())

    def run(z, s, lam, nu, status, iterations, tol_p, tol_d, tol_g, max_iter, fac0=None, work=None,
            limit=None, scratch=None):
        """The interior-point loop on the elements with status ``_RUNNING`` (``fac0``: the
        factorisation at the starting point, if known; ``scratch``: the memory it lies in, reused
        by the loop's factorisations, see ``_factor_scratch``). ``work``: the data, its constants
        and the numerical settings in the working precision (``_Working``; default: the input's).
        ``limit``: per-element caps of ``iterations`` (``(B,)``, see ``limits``); an element at its
        cap stops where it is, still ``_RUNNING``."""
        work = work or work64

        def stepping(status, iterations):
            running = status == _RUNNING
            return running if limit is None else running & (iterations < limit)
        Q, q, G, h, A, b = work.data
        QA, zero_eq, reg, hnorm, bnorm, qnorm = work.aux
        dtype = work.dtype
        wmax = 1.0 / torch.finfo(dtype).eps ** 2   # keeps GᵀWG finite when a slack underflows
        eps_inf = work.eps_inf
        B = z.shape[0]
        fac = None
        dres_prev = None   # set by every iteration before it is read (k ≥ 3)
        tol_vec = torch.tensor([tol_p, tol_g, tol_d], dtype=dtype, device=device)
        dz_last = Gdz_last = D_last = dnu_last = None
        pscale = hnorm + bnorm
        # working set: the loop runs on the still-running elements only; when at most 3/4 of the
        # working set is still running it is compacted (finished elements written back to the full
        # batch, the data gathered for the others)
        widx = None
        full = None
        # G z is updated with each step (one pass over G less an iteration; the drift is rounding)
        # the matrices of the products, as (m, n) when shared by the batch (one call a product)
        Qv, Gv, Av = _shared(Q), _shared(G), _shared(A)
        Gz = _mv(Gv, z) if G is not None else None
        X = None   # (s, λ) stacked: updated by the steps, rebuilt after a compaction
        tiny = torch.finfo(dtype).tiny


        running = stepping(status, iterations)
        # the last step, taken before its directions were known to be finite: (their sum, the
        # state before the step, the directions); checked in the next iteration's synchronisation
        pending = None
        for k in range(max_iter + 1):
            certify = k >= 3   # infeasible problems show their certificates within a few iterations
            while True:   # runs twice only when the last step must be redone (non-finite directions)
                # -- residuals at the current iterate ---------------------------------------------
                w = torch.div(lam, s).clamp_(max=wmax) if G is not None else None
                dlp = D_last[..., m:].clamp(min=0) if certify and G is not None else None
                rd0, nri, re, pres, dres, gap, mu, Gtl, Atn, nGtwri, Qd, Gtd, Atd, Ad = _loop_residuals(
                    Qv, q, Gv, h, Av, b, z, s, lam, nu, w, hnorm, bnorm, qnorm,
                    dz_last if certify else None, dlp, dnu_last if certify else None, Gz)
                within = torch.stack([pres, gap, dres], -1) <= tol_vec   # (B, 3): one comparison
                converged = within.all(-1)

                # -- statuses ----------------------------------------------------------------------
                if not certify:
                    status = torch.where(running & converged, solved_t, status)
                else:
                    new_status = torch.where(converged, solved_t, status)
                    # dual infeasibility (unbounded below): the last direction d is a descent ray,
                    # ‖Qd‖ ≈ 0, qᵀd < 0, Gd ≤ 0, Ad = 0 (relative to ‖d‖)
                    nd = _inf_norm(dz_last)
                    dinf = (nd > 0) & (_inf_norm(Qd) <= eps_inf * nd) \
                        & ((q * dz_last).sum(-1) <= -eps_inf * nd * (1 + qnorm))
                    if G is not None:
                        dinf = dinf & (Gdz_last.amax(-1) <= eps_inf * nd * (1 + hnorm))
                    if A is not None:
                        dinf = dinf & (_inf_norm(Ad) <= eps_inf * nd * (1 + bnorm))
                    if G is not None or A is not None:
                        # stalled: primal and gap converged but the dual residual grows (ill-conditioned
                        # Newton systems, typically float32); such elements stop here and are handed to
                        # the polish
                        stalled = within[:, :2].all(-1) & (dres > dres_prev.clamp(min=tol_d))
                        # primal infeasibility certificates, on the iterates (λ, ν) and on the last
                        # Newton directions
                        pinf_it = _primal_infeasible(Gtl, Atn, h, b, lam, nu, eps_inf, pscale)
                        pinf_dir = _primal_infeasible(Gtd, Atd, h, b, dlp, dnu_last, eps_inf, pscale)
                        pinf = pinf_it | pinf_dir
                        open_ = ~converged
                        new_status = torch.where(open_ & pinf, pinf_code, new_status)
                        open_ = open_ & ~pinf
                        new_status = torch.where(open_ & dinf, dinf_code, new_status)
                        new_status = torch.where(open_ & ~dinf & stalled, _STALLED, new_status)
                        # the certificates are returned (and verified on the original data): a
                        # direction's (λ, ν) replaces the iterate's, a descent ray replaces z
                        cert_dir = (running & ~converged & pinf_dir & ~pinf_it).unsqueeze(-1)
                        ray = (running & open_ & dinf).unsqueeze(-1)
                        if G is not None:
                            X = torch.where(cert_dir, torch.cat([s, dlp], -1),
                                            torch.cat([s, lam], -1) if X is None else X)
                            s, lam = X.chunk(2, -1)
                        if A is not None:
                            nu = torch.where(cert_dir, dnu_last, nu)
                        z = torch.where(ray, dz_last, z)
                    else:
                        new_status = torch.where(~converged & dinf, dinf_code, new_status)
                        z = torch.where((running & ~converged & dinf).unsqueeze(-1), dz_last, z)
                    status = torch.where(running, new_status, status)
                dres_last = dres_prev
                dres_prev = dres
                running = stepping(status, iterations)
                # one host synchronisation: the number of running elements (the convergence check)
                # and whether the last step's directions were finite
                if pending is None:
                    nrun = int(running.sum())
                    break
                # (one integer: the count, or −1 where the sum of the directions is not finite;
                # exact at any batch size, unlike a count carried in the working float dtype)
                total = int(torch.where(torch.isfinite(pending[0]), running.sum(), -1))
                if total >= 0:
                    nrun = total
                    pending = None
                    break
                # some sum overflowed: the exact per-element check (an extra synchronisation);
                # where a direction is not finite the step is taken again from the state before it,
                # with those elements stopped, and the residuals are evaluated again
                _, pre, dirs = pending
                pending = None
                finite = _finite_directions(*dirs[:3])
                if bool(finite.all()):
                    nrun = int(running.sum())
                    break
                z, s, lam, nu, X, Gz, status, running, nrun = pre
                dres_prev = dres_last
                z, s, lam, nu, X, Gz, status, running, dz_last, Gdz_last, D_last, dnu_last = _advance(
                    z, s, lam, nu, X, Gz, status, running, *dirs, finite, nrun)
            Bw = z.shape[0]
            if k == max_iter or nrun == 0:
                break
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
                (z, s, lam, nu, status, iterations, dres_prev, dz_last, Gdz_last, D_last, dnu_last, Gz,
                 rd0, nri, re, mu, w, nGtwri, Q, q, G, h, A, b, QA, zero_eq, reg, hnorm, bnorm, qnorm, pscale) = (
                    _select(x, keep) for x in (
                        z, s, lam, nu, status, iterations, dres_prev, dz_last, Gdz_last, D_last, dnu_last, Gz,
                        rd0, nri, re, mu, w, nGtwri, Q, q, G, h, A, b, QA, zero_eq, reg, hnorm, bnorm, qnorm, pscale))
                if limit is not None:
                    limit = _select(limit, keep)
                running = stepping(status, iterations)
                nrun = Bw = z.shape[0]
                Qv, Gv, Av = _shared(Q), _shared(G), _shared(A)
                X = None

            # -- the factorisation at this iterate ------------------------------------------------------
            if k == 0 and fac0 is not None and widx is None:
                fac = fac0
            else:
                if scratch is None:
                    # reused by every factorisation of this loop: the previous factor is dead by then
                    scratch = _factor_scratch(work, z.shape[0], w)
                fac = _Factor(QA, G, A, None, w, reg, zero_eq, work.reg_rel, _factor_bufs(scratch, z.shape[0], m, n, dtype))
            iterations = iterations + running
            r0 = -rd0 if A is None else -rd0 - opts.rho * _mtv(Av, re)
            if G is not None:
                # -- Mehrotra predictor (affine scaling) and corrector, one factorisation ---------------
                # right-hand side r0 − Gᵀ(w∘r_i − r_c/s): with r_c = s∘λ (predictor) the Gᵀλ of the
                # dual residual cancels, leaving −Gᵀ(w∘r_i) (computed with the residuals); the
                # corrector adds Gᵀ((r_c − s∘λ)/s)
                rhs_aff = r0 + nGtwri
                ere = -re if A is not None else None
                # step lengths from the stacked (s, λ): α = 1 / max(1, max_i −d_i/x_i / f) for the
                # fraction f of the step to the boundary (f = 1 for the predictor)
                if X is None:
                    X = torch.cat([s, lam], -1)
                Xn1 = X.clamp(min=tiny).neg_()
                Xnf = Xn1 * frac

                def step(rcs, rhs):
                    dz, dnu = fac.solve(rhs, ere)
                    Gdz = _mv(Gv, dz)
                    ds = nri - Gdz
                    # dλ = w∘(G dz + r_i) − r_c/s
                    dlam = torch.addcmul(rcs, w, ds).neg_()
                    return dz, torch.cat([ds, dlam], -1), dnu, Gdz, ds, dlam

                dz, D, dnu, Gdz, Ds, Dl = step(lam, rhs_aff)
                a = (D / Xn1).amax(-1, keepdim=True).clamp_(min=1.0).reciprocal_()
                Xa = torch.addcmul(X, a, D)
                Xas, Xal = Xa.chunk(2, -1)
                mu_aff = (Xas * Xal).sum(-1) / m
                sigma = (mu_aff / mu).clamp_(min=0, max=1).pow_(3)
                dc = (Ds * Dl - (sigma * mu).unsqueeze(-1)) / s
                dz, D, dnu, Gdz, _, _ = step(lam + dc, rhs_aff + _mtv(Gv, dc))
                alpha = (D / Xnf).amax(-1, keepdim=True).clamp_(min=1.0).reciprocal_()
                check = dz.sum() + D.sum()
            else:
                # equality-constrained or unconstrained: Newton steps (one solves the problem)
                dz, dnu = fac.solve(r0, -re if A is not None else None)
                alpha = torch.ones(z.shape[0], 1, dtype=dtype, device=device)
                Gdz = D = None
                check = dz.sum()
            if dnu is not None:
                check = check + dnu.sum()
            # the step is taken at once; the sum of the directions (finite only if every term is; an
            # overflow only sends it to the exact check) is read in the next iteration's
            # synchronisation, which takes the step again if some direction is not finite
            pending = (check, (z, s, lam, nu, X, Gz, status, running, nrun), (dz, D, dnu, Gdz, alpha))
            z, s, lam, nu, X, Gz, status, running, dz_last, Gdz_last, D_last, dnu_last = _advance(
                z, s, lam, nu, X, Gz, status, running, dz, D, dnu, Gdz, alpha, None, nrun)

        if widx is not None:
            for f_, x in zip(full, (z, s, lam, nu, status, iterations, pres, dres, gap)):
                f_.index_copy_(0, widx, x)
            z, s, lam, nu, status, iterations, pres, dres, gap = full
            fac = None
        return z, s, lam, nu, status, iterations, pres, dres, gap, fac

    # phase 1: with polishing, iterate only to a loose tolerance (the polish makes the solution
    # exact once the active set is identified); later phases: elements whose polish fails continue
    # to a 100× tighter tolerance (at most twice, then to the full tolerance) and are polished again
    polish_tol = opts.polish_tol if opts.polish_tol is not None else _default_polish_tol(G, q.shape[-1], mixed)
    loose = max(opts.tol, polish_tol) if (opts.polish and G is not None) else None
    tols = (opts.tol_primal, opts.tol_dual, opts.tol_gap)
    ladder = [tols]
    if loose is not None:
        looser = [loose * f_ for f_ in (1.0, 1e-2) if loose * f_ > max(tols)]
        ladder = [tuple(max(t_, l_) for t_ in tols) for l_ in looser] + [tols]
        # elements that meet the iteration tolerances but not the contract on the original
        # problem: two more rungs, each a hundred times tighter (down to the rounding level)
        floor = 10 * torch.finfo(dtype).eps
        for f_ in (1e-2, 1e-4):
            tighter = tuple(max(t_ * f_, floor) for t_ in tols)
            if tighter != ladder[-1]:
                ladder.append(tighter)
    tols1 = ladder[0]
    z, s, lam, nu, status, iterations, pres, dres, gap, fac = run(
        z, s, lam, nu, status, iterations, *tols1, min(opts.max_iter, _MIXED_MAX_ITER) if mixed else opts.max_iter,
        fac0, work1, scratch=scratch0)
    fac0 = None   # (its memory is the scratch's, taken over by the loop)
    if mixed and scratch0 is not None:
        work1 = None   # (the float32 copies: spare memory from here on)
        scratch0.free(*_LOWERED_KEYS)
    if mixed:
        z, s, lam, nu, pres, dres, gap = (t.to(dtype) for t in (z, s, lam, nu, pres, dres, gap))
        # elements the float32 phase did not bring to the loose tolerance (infeasibility
        # certificates, non-finite steps, the iteration cap) start again in float64 from the cold
        # start: their statuses are those of the float64 solver (stalled elements go to the polish
        # and, where it fails, iterate on in float64 like the others)
        redo = (status != solved_code) & (status != _STALLED)
        if bad is not None:
            redo = redo & ~bad
        if bool(redo.any()):
            z, s, lam, nu, status, iterations = restart(redo, z, s, lam, nu, status, iterations)
            z, s, lam, nu, status, iterations, pres, dres, gap, fac = run(
                z, s, lam, nu, status, iterations, *tols1, opts.max_iter)
    # infeasibility verdicts only with a certificate that holds on the original data; the others
    # start again from the cold start with a thousand times tighter certificate tolerance, and
    # are INACCURATE if that fails too
    rerun = False   # iterations run after this verification (their verdicts are verified at the end)
    for attempt in range(2):
        infeasible = (status == pinf_code) | (status == dinf_code)
        if not bool(infeasible.any()):
            break
        redo = infeasible & ~certificates_hold(z, lam, nu, status)
        if not bool(redo.any()):
            break
        if attempt == 1:
            status = torch.where(redo, int(Status.INACCURATE), status)
            break
        z, s, lam, nu, status, iterations = restart(redo, z, s, lam, nu, status, iterations)
        limit, budget = limits(redo, iterations)
        z, s, lam, nu, status, iterations, pres, dres, gap, fac = run(
            z, s, lam, nu, status, iterations, *tols1, budget, None,
            work64._replace(eps_inf=work64.eps_inf * 1e-3), limit)
    if not (opts.polish and G is not None) and opts.contract:
        # without the polish ladder: elements that met the iterations' tolerances but not the
        # contract iterate on (Newton steps on the equality-constrained problem refine the point)
        floor = 10 * torch.finfo(dtype).eps
        for f_ in (1e-2, 1e-4):
            solved = status == solved_code
            if not bool(solved.any()):
                break
            fail = solved & ~on_original(z, lam, nu)[1]
            if not bool(fail.any()):
                break
            keep(fail, (z, s, lam, nu))
            status = torch.where(fail, torch.full_like(status, _RUNNING), status)
            limit, budget = limits(fail, iterations)
            z, s, lam, nu, status, iterations, pres, dres, gap, fac = run(
                z, s, lam, nu, status, iterations, *(max(t_ * f_, floor) for t_ in tols), budget,
                limit=limit)
            rerun = True
    unfinished = status < 0   # running or stalled
    cache = {}
    if G is not None:
        if opts.polish:
            pre = None
            fast_all = polished = act_final = None
            tols_final = torch.tensor([opts.tol_primal, opts.tol_gap, opts.tol_dual], dtype=dtype, device=device)
            retry = None
            for phase in range(1, len(ladder) + 1):
                solved = status == solved_t
                before = (z, s, lam, nu)
                before_res = (pres, dres, gap)   # the interior-point loop's, at ``before``
                # later phases polish the retried elements only; the others keep their earlier polish
                todo = unfinished | solved if retry is None else (unfinished | solved) & retry
                if dtype != torch.float64:
                    fast = prox_ok = far = torch.zeros_like(todo)
                    act_fast = lam > s
                else:
                    # float64: the penalty polish (one interior-point-sized factorisation a round);
                    # the Schur-complement polish below takes the elements where it fails
                    # (elements whose guess is far off skip the Schur-complement polish and iterate
                    # on, where a later rung follows)
                    z, s, lam, nu, fast, prox_ok, act_fast, pre_, far = _polish_penalty_twice(
                        (Q, q, G, h, A, b), (z, s, lam, nu), todo, opts, (QA, reg, zero_eq, hnorm),
                        give_up=phase < len(ladder), scratch=scratch0)
                    if pre is None or pre_ is None:
                        pre = pre if pre_ is None else pre_
                    elif bool(fast.any()):
                        ix = torch.nonzero(fast).reshape(-1)
                        for t_, u_ in zip(pre, pre_):
                            if t_ is not None:
                                t_.index_copy_(0, ix, u_.index_select(0, ix))
                penalty_ok = fast | prox_ok      # accepted by the penalty polish or its retry
                # far elements skip it where they are retried (converged or stalled at this rung's
                # tolerance; an element out of iterations is not; one whose unpolished iterate meets
                # the contract is retried below)
                rest = todo & ~penalty_ok & ~(far & (solved | (status == _STALLED)))
                first = None
                act_new, pol_new = act_fast, penalty_ok
                if bool(rest.any()):
                    # from λ > s of the interior-point iterate: the penalty rounds' last guess of
                    # an element they did not accept comes from a diverged refinement more often
                    # than not (it then holds more rows than a vertex), and was accepted far less
                    z, s, lam, nu, pol_rest, act_rest, first = _polish(
                        Q, q, G, h, A, b, z, s, lam, nu, rest, opts, reg, zero_eq, hnorm, bnorm, qnorm)
                    act_new = torch.where(penalty_ok.unsqueeze(-1), act_fast, act_rest)
                    pol_new = penalty_ok | pol_rest
                if polished is None:
                    # first phase (the accepted masks lie in ``todo``; the active sets of the other
                    # elements are replaced by λ > s below, as they are not polished)
                    act_final, polished, fast_all = act_new, pol_new, fast
                else:
                    act_final = torch.where(todo.unsqueeze(-1), act_new, act_final)
                    polished = torch.where(todo, pol_new, polished)
                    fast_all = torch.where(todo, fast, fast_all)
                _, _, _, pres, dres, gap, _ = _residuals(Q, q, G, h, A, b, z, s, lam, nu, hnorm, bnorm, qnorm)
                converged = (torch.stack([pres, gap, dres], -1) <= tols_final).all(-1)
                # ... and the SOLVED contract on the original problem
                ok_c = on_original(z, lam, nu)[1]
                keep((unfinished | solved) & converged & ~ok_c, (z, s, lam, nu))
                converged = converged & ok_c
                if phase < len(ladder):
                    # an unpolished point that meets the contract (the polish failed; float32
                    # answers' looser tolerances are met by loose iterates) iterates on and is
                    # polished again while a later rung follows: unpolished gradients are not exact
                    # (such float32 answers' were up to 50 off); the point is kept
                    unpolished = todo & converged & ~pol_new
                    keep(unpolished, (z, s, lam, nu), met=True)
                    converged = converged & ~unpolished
                else:
                    unpolished = torch.zeros_like(converged)
                status = torch.where(unfinished & converged, solved_t, status)
                # loose IPM solution or stalled iterations, polish failed: iterate on (in float64;
                # stalled elements are typical of the float32 phase, and of cond(Q) ≳ 1e8)
                retry = (solved & ~converged) | (status == _STALLED) | unpolished
                if phase == len(ladder) or not bool(retry.any()):
                    break
                first = None
                status = torch.where(retry, torch.full_like(status, _RUNNING), status)
                # continue from the interior iterate, not from the (boundary) polished point
                r_ = retry.unsqueeze(-1)
                z, s, lam, nu = (torch.where(r_, a_, b_) for a_, b_ in zip(before, (z, s, lam, nu)))
                # the iteration limit counts per element: the retried ones' own iterations, not
                # those of another element of the batch; elements not retried stay where they are
                limit, budget = limits(retry, iterations)
                z, s, lam, nu, status, iterations, pres, dres, gap, fac = run(
                    z, s, lam, nu, status, iterations, *ladder[phase], budget, limit=limit)
                rerun = True
                unfinished = status < 0
            # the last rung's polish left a point that misses the tolerances (its factorisation's
            # regularisation can dominate a tiny eigenvalue of Q, e.g. 1e-9 with a minimiser of
            # size 1e9): the interior-point iterate instead, which the loop found converged (its
            # residuals as the loop measured them: recomputed over the whole batch they round
            # differently, and at ‖A‖‖z‖ ~ 1e8 that alone crossed the tolerance)
            worse = solved & ~converged
            if bool(worse.any()):
                w_ = worse.unsqueeze(-1)
                z, s, lam, nu = (torch.where(w_, a_, b_) for a_, b_ in zip(before, (z, s, lam, nu)))
                pres, dres, gap = (torch.where(worse, a_, b_) for a_, b_ in zip(before_res, (pres, dres, gap)))
                polished, fast_all = polished & ~worse, fast_all & ~worse
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
        else:
            # unpolished: the active-set form on the strict-complementarity guess, classified with
            # the interior-point accuracy's threshold (``QPProblem``). The barrier form
            # (Q + Gᵀ diag(λ/s) G) dz = −g it replaces misread small multipliers of active rows at
            # interior-point accuracy: gradients off by 3 to 5e6 times their size on random QPs.
            cache = {"act": lam > s, "polished": torch.zeros(B, dtype=torch.bool, device=device)}
        cache["s"] = s
    elif fac is not None:
        cache = {"U": fac.L}
        if fac.Y is not None:
            cache.update(Y=fac.Y, Us=fac.Ls)
    status = torch.where(status < 0, int(Status.MAX_ITERATIONS), status)   # running or stalled
    # the SOLVED contract on the original problem, and its residuals reported
    lam_, nu_ = (lam if G is not None else z.new_zeros(B, 0)), (nu if A is not None else z.new_zeros(B, 0))
    if rerun:
        # infeasibility verdicts of the iterations run after the certificate check above (the
        # contract's tighter tolerances, the polish ladder) are verified too; failing, INACCURATE
        infeasible = (status == pinf_code) | (status == dinf_code)
        status = torch.where(infeasible & ~certificates_hold(z, lam_, nu_, status), int(Status.INACCURATE), status)
    res, ok = on_original(z, lam_, nu_)
    if "polished" in cache and opts.least_norm_multipliers:
        lam, nu, res, ok = _least_norm_answers((Q, q, G, A), orig, scales, z, lam, nu, res, ok,
                                               cache["polished"], on_original, opts, answer_dtype)
    status = torch.where((status == solved_code) & ~ok, int(Status.INACCURATE), status)
    if kept:
        # tighter iterations that ended worse: the last point that met the iterations' tolerances
        back = kept["mask"] & ((status == int(Status.INACCURATE)) | (status == int(Status.MAX_ITERATIONS))
                               | (status == nonfinite_code))
        if bad is not None:
            back = back & ~bad
        if bool(back.any()):
            b_ = back.unsqueeze(-1)
            z, s, lam, nu = (torch.where(b_, a_, c_) for a_, c_ in zip(kept["state"], (z, s, lam, nu)))
            # (SOLVED where the kept point met the contract: an unpolished answer)
            status = torch.where(back, torch.where(kept["met"], solved_code, int(Status.INACCURATE)), status)
            if G is not None and "act" in cache:
                cache["act"] = torch.where(b_, lam > s, cache["act"])
            if "polished" in cache:
                cache["polished"] = cache["polished"] & ~back
                if "pre_ok" in cache:
                    cache["pre_ok"] = cache["pre_ok"] & ~back
                _forget_batch_factors(cache, s)
            lam_, nu_ = (lam if G is not None else z.new_zeros(B, 0)), (nu if A is not None else z.new_zeros(B, 0))
            res, _ = on_original(z, lam_, nu_)
    # the second solver
    redo = (status == int(Status.INACCURATE)) | (status == nonfinite_code)
    if bad is not None:
        redo = redo & ~bad
    if G is not None and opts.contract and opts.proximal_max_iter > 0 and bool(redo.any()):
        z, s, lam, nu, won, iterations = _second_solver(
            (Q, q, G, h, A, b), (z, s, lam, nu), iterations, redo, opts, orig, scales, answer_dtype)
        if won is not None:
            status = torch.where(won, int(Status.SOLVED), status)
            if opts.polish:
                z, s, lam, nu = _polish_second_solver(
                    (Q, q, G, h, A, b), (z, s, lam, nu), won, cache, opts, on_original,
                    (QA, reg, zero_eq, hnorm, bnorm, qnorm))
            else:
                cache["act"] = torch.where(won.unsqueeze(-1), lam > s, cache["act"])
            _forget_batch_factors(cache, s)
            lam_, nu_ = lam, (nu if A is not None else z.new_zeros(B, 0))
            res, ok = on_original(z, lam_, nu_)
            if "polished" in cache and opts.least_norm_multipliers:
                lam, nu, res, _ = _least_norm_answers((Q, q, G, A), orig, scales, z, lam, nu, res, ok,
                                                      won & cache["polished"], on_original, opts, answer_dtype)
    pres, dres, gap = (r_.to(dtype) for r_ in (res.primal, res.dual, res.gap))
    duals = {"lam": lam if G is not None else z.new_zeros(B, 0),
             "nu": nu if A is not None else z.new_zeros(B, 0)}
    return Solution(z=z, duals=duals, status=status, iterations=iterations,
                    residuals={"primal": pres, "dual": dres, "gap": gap}, cache=cache)


#: the second solver's answers are taken where they meet the contract with no residual above this
#: many times its tolerance (the contract's rounding allowance capped there): its iterates are not
#: polished onto an active set, and where the multipliers reach 1e13 (QFORPLAN) the allowance
#: alone spans 1e-3
_SECOND_SOLVER_FACTOR = 100.0

#: an accepted iterate of the second solver whose residuals are within that allowance but above the
#: tolerances themselves iterates on, at most this many iterations, until they are below them
#: (``solve_qp_proximal(patience=...)``; the answer is the accepted iterate whose largest residual
#: over its tolerance is lowest): Maros–Meszaros QSHARE1B's first accepted iterate had a duality
#: gap of 1.4e-9 at eps_abs 1e-9, the next one 7e-10; on QCAPRI and QPCBOEI2 the tolerances
#: themselves are not reached (135 and 250 more iterations, then the limit), and their later
#: iterates are not better (QCAPRI, tol=1e-9: gaps 4.5e-8, 4.5e-8, 7.5e-8, 7.5e-8)
_SECOND_SOLVER_PATIENCE = 3

#: cache entries that hold one factorisation for the whole batch (valid only if every element's
#: active set is the one factorised)
_BATCH_FACTORS = ("U", "act_idx", "act_valid", "Y", "Us")


#: core dimensions of (Q, q, G, h, A, b)
_CORES = (2, 1, 2, 1, 2, 1)


def _least_norm_answers(data, orig, scales, z, lam, nu, res, ok, polished, on_original, opts, answer_dtype):
    """Multipliers that cancel at a degenerate vertex: of the ``polished`` elements whose dual
    residual's rounding ``u·a_d`` is not negligible against ``eps_abs``, the least-norm
    non-negative ones (``_least_norm_candidates``) replace the answer's where the larger of the
    dual residual and the gap on the original problem (``on_original``) is no worse with them and
    the contract holds if it held (``ok``). Returns ``(λ, ν, residuals, ok)``."""
    with_eq = data[3] is not None
    unit = torch.finfo(answer_dtype or z.dtype).eps / 2
    cand = polished & (unit * res.dual_abs > 1e-2 * opts.eps_abs)
    if not bool(cand.any()):
        return lam, nu, res, ok
    for lam_l, nu_l in _least_norm_candidates(data, orig, scales, z, lam, nu, cand):
        r1, ok1 = on_original(z, lam_l, nu_l if with_eq else z.new_zeros(z.shape[0], 0))
        better = cand & (ok1 | ~ok) & (torch.maximum(r1.dual, r1.gap) <= torch.maximum(res.dual, res.gap))
        lam = torch.where(better.unsqueeze(-1), lam_l, lam)
        if with_eq:
            nu = torch.where(better.unsqueeze(-1), nu_l, nu)
        res = type(res)(*(torch.where(better, a_, b_) for a_, b_ in zip(r1, res)))
        ok = torch.where(better, ok1, ok)
    return lam, nu, res, ok


def _least_norm_candidates(data, orig, scales, z, lam, nu, cand):
    """The least-norm multipliers (``least_norm._least_norm_multipliers``) of the polished
    elements ``cand``, as a candidate ``(λ, ν)`` in the solver's (scaled) units for the caller to
    compare on the original problem. Computed on the data the answer is judged on: the original
    ``orig`` when the problem was equilibrated (``scales``; mapped back), else ``data``. (On
    Maros–Meszaros QADLITTL least-norm multipliers of the scaled problem left a dual residual of
    1.4e-9 on the original problem in one BLAS's rounding, 1.5e-10 in another; the original
    problem's, 5.7e-13 in both.)"""
    if scales is None:
        lam_l, nu_l = _least_norm_multipliers(*data, z, lam, nu, cand)
        if lam_l is not lam or nu_l is not nu:
            yield lam_l, nu_l
        return
    Qo, qo, Go, _, Ao, _ = (_with_batch(t, c) for t, c in zip(orig, _CORES))
    if Ao is not None and Ao.shape[-2] == 0:
        Ao = None   # (the solver's data have no equality block then either)
    z_o, lam_o, nu_o = (None if t is None else t.to(Qo.dtype) for t in scales.unscale_point(z, lam, nu))
    nu_o = nu_o if Ao is not None else None
    lam_l, nu_l = _least_norm_multipliers(Qo, qo, Go, Ao, z_o, lam_o, nu_o, cand)
    if lam_l is not lam_o or nu_l is not nu_o:
        _, lam_b, nu_b = scales.scale_point(z, lam_l.to(lam.dtype), nu if nu_l is None else nu_l.to(lam.dtype))
        # (the other elements' multipliers — and those of candidates whose least-norm QP was not
        # taken — as they were, not rounded by the round trip)
        changed = (lam_l != lam_o).any(-1)
        if nu_l is not None:
            changed = changed | (nu_l != nu_o).any(-1)
        c_ = (cand & changed).unsqueeze(-1)
        yield torch.where(c_, lam_b, lam), (nu if nu_l is None else torch.where(c_, nu_b, nu))


def _second_solver(data, state, iterations, redo, opts, orig, scales, answer_dtype):
    """The elements ``redo`` (``INACCURATE``, or ``NON_FINITE`` with finite data) solved again by
    the proximal interior-point method (``proximal_ipm``), in float64, from the cold start, at most
    ``opts.proximal_max_iter`` iterations of its own (counted in ``iterations``). It stops where its
    iterate meets the SOLVED contract on the original problem (in the answer's dtype) with no
    residual above ``_SECOND_SOLVER_FACTOR`` times its tolerance (``residuals.tolerance_ratio``) —
    after up to ``_SECOND_SOLVER_PATIENCE`` iterations more where a residual is still above the
    tolerance itself (of the iterates that met the test, the one whose largest residual over its
    tolerance is lowest is the answer); the contract is evaluated on those elements alone.

    Returns:
        ``(z, s, λ, ν, won, iterations)``: the batch with the accepted iterates in place of the
        elements' answers (``won``, None where none was accepted).
    """
    z, s, lam, nu = state
    dtype = z.dtype
    ix = torch.nonzero(redo).reshape(-1)
    part = tuple(None if t is None else _select(t, ix, c).double() for t, c in zip(data, _CORES))
    with_eq = data[4] is not None

    def acceptor(sel):
        """The stopping test of the batch elements ``sel`` (scaled iterates of those only)."""
        contract = _contract_on(tuple(_select(t, sel, c) for t, c in zip(orig, _CORES)),
                                None if scales is None else scales.select(sel), answer_dtype, dtype, opts)

        def accept(zs, ls, ns):
            ns = ns.to(dtype) if with_eq else zs.new_zeros(zs.shape[0], 0, dtype=dtype)
            res, ok = contract(zs.to(dtype), ls.to(dtype), ns)
            ratio = tolerance_ratio(res, opts.eps_abs, opts.eps_rel)
            return ok & (ratio <= _SECOND_SOLVER_FACTOR), ratio
        return accept

    st, its, accepted = solve_qp_proximal(part, accept=acceptor(ix), max_iter=opts.proximal_max_iter,
                                          fraction=opts.step_fraction, patience=_SECOND_SOLVER_PATIENCE)
    if scales is not None and not bool(accepted.all()):
        st, its, accepted = _second_solver_unscaled(orig, scales, ix, st, its, accepted, acceptor, opts)
    iterations = iterations.index_add(0, ix, its)
    won = torch.zeros_like(redo).index_copy(0, ix, accepted)
    if not bool(won.any()):
        return z, s, lam, nu, None, iterations
    w_ = won.unsqueeze(-1)

    def put(t, u):
        return torch.where(w_, t.index_copy(0, ix, u.to(t.dtype)), t)
    z, s, lam = put(z, st.z), put(s, st.s.clamp(min=0)), put(lam, st.lam)
    if with_eq:
        nu = put(nu, st.nu)
    return z, s, lam, nu, won, iterations


def _second_solver_unscaled(orig, scales, ix, st, its, accepted, acceptor, opts):
    """The second solver's elements ``ix`` that it left unaccepted on the equilibrated problem,
    solved once more on the original one (float64, cold start, ``opts.proximal_max_iter`` more
    iterations). Equilibration can make a solution's entries huge (QSHARE1B: ``‖z'‖∞ ≈ 7·10⁹``
    in scaled units, ``9·10⁵`` in the original ones), and the proximal method then stalls far from
    it; on the original data it converges. The iterate is mapped to scaled units
    (``z' = D⁻¹z``, ``s' = d_G s``, multipliers by ``Equilibration.scale_duals``) and the stopping
    test of those elements, ``acceptor(ix[left])`` (scaled iterates ↦ accepted), is evaluated on
    that mapped point, i.e. on exactly what the caller returns.

    Returns:
        ``(state, iterations, accepted)`` of ``ix`` with the accepted retries in place.
    """
    left = torch.nonzero(~accepted).reshape(-1)
    sub = scales.select(ix).select(left)
    accept = acceptor(ix.index_select(0, left))
    data = tuple(None if t is None else _with_batch(_select(_select(t, ix, c), left, c), c).double()
                 for t, c in zip(orig, _CORES))
    st2, its2, acc2 = solve_qp_proximal(data, accept=lambda *point: accept(*sub.scale_point(*point)),
                                        max_iter=opts.proximal_max_iter, fraction=opts.step_fraction,
                                        patience=_SECOND_SOLVER_PATIENCE)
    z2, lam2, nu2 = sub.scale_point(st2.z, st2.lam, st2.nu)
    s2 = st2.s * sub.ineq
    a_ = acc2.unsqueeze(-1)

    def put(t, u):
        return t.index_copy(0, left, torch.where(a_, u.to(t.dtype), t.index_select(0, left)))
    st = st._replace(z=put(st.z, z2), s=put(st.s, s2), lam=put(st.lam, lam2), nu=put(st.nu, nu2))
    return st, its.index_add(0, left, its2), accepted.index_copy(0, left, acc2)


def _polish_penalty_twice(data, state, todo, opts, aux, give_up=False, scratch=None):
    """The penalty polish (``polish._polish_penalty``, float64) of the elements ``todo`` and, where
    it failed and its first round's refinement did not converge, one round more with a proximal
    term (its factors are not kept: the backward's refinement expects those of the static
    regularisation). That round starts from the first round's guess; where the first refinement
    converged it would only solve the same system again.

    Returns:
        ``(z, s, λ, ν, fast, prox_ok, act, factors, far)``: the points (polished where accepted),
        the masks accepted by the first and by the proximal polish, the active masks, the first
        polish's factors and its *far* mask (``give_up``, see ``_polish_penalty``).
    """
    Q, q, G, h, A, b = data
    QA, reg, zero_eq, hnorm = aux
    if scratch is None:
        scratch = _Scratch(state[0].device)   # (used by large problems only)
    z, s, lam, nu, fast, act, factors, first_conv, far = _polish_penalty(
        Q, q, G, h, A, b, *state, todo, opts, reg, zero_eq, QA, hnorm, give_up=give_up, scratch=scratch)
    # (the proximal round starts from the first round's guess: where that round's refinement
    # converged, it would solve the same system again)
    prox_todo = todo & ~fast & ~first_conv
    prox_ok = torch.zeros_like(fast)
    if bool(prox_todo.any()):
        z, s, lam, nu, prox_ok, act_prox, _, _, _ = _polish_penalty(
            Q, q, G, h, A, b, z, s, lam, nu, prox_todo, opts, reg, zero_eq, QA, hnorm,
            rounds=1, prox=_PROX, steps=_PROX_STEPS, refine_tol=_strict(z.dtype), scratch=scratch)
        act = torch.where(prox_ok.unsqueeze(-1), act_prox, act)
    return z, s, lam, nu, fast, prox_ok, act, factors, far


def _polish_second_solver(data, state, won, cache, opts, on_original, aux):
    """The second solver's answers ``won`` polished as the interior-point method's are: in float64
    by the penalty polish and its proximal retry (``_polish_penalty_twice``; their guessed active
    set handles dependent active rows, e.g. QCAPRI, QPCBOEI2), then, where those fail and in the
    other dtypes, onto the active set ``λ > s`` (``polish._polish``). Where a polish is accepted and
    the contract holds at the polished point, that point replaces the answer and the element counts
    as polished (``cache["polished"]``, its active set in ``cache["act"]``: the backward's
    classification is the one of polished elements). The others keep the second solver's answer,
    unpolished, with the active set ``λ > s``."""
    Q, q, G, h, A, b = data
    z, s, lam, nu = state
    QA, reg, zero_eq, hnorm, bnorm, qnorm = aux
    zp, sp, lp, np_ = z, s, lam, nu
    ok, act = torch.zeros_like(won), lam > s
    if z.dtype == torch.float64:
        zp, sp, lp, np_, fast, prox_ok, act, _, _ = _polish_penalty_twice(
            data, state, won, opts, (QA, reg, zero_eq, hnorm))
        ok = fast | prox_ok
    rest = won & ~ok
    if bool(rest.any()):
        zp, sp, lp, np_, ok_rest, act_rest, _ = _polish(Q, q, G, h, A, b, zp, sp, lp, np_, rest, opts, reg,
                                                        zero_eq, hnorm, bnorm, qnorm)
        act = torch.where(ok.unsqueeze(-1), act, act_rest)
        ok = ok | ok_rest
    ok = ok & won & on_original(zp, lp, np_ if A is not None else zp.new_zeros(zp.shape[0], 0))[1]
    o_ = ok.unsqueeze(-1)
    z, s, lam = (torch.where(o_, a_, b_) for a_, b_ in ((zp, z), (sp, s), (lp, lam)))
    if A is not None:
        nu = torch.where(o_, np_, nu)
    w_ = won.unsqueeze(-1)
    cache["act"] = torch.where(o_, act, torch.where(w_, lam > s, cache["act"]))
    cache["polished"] = torch.where(won, ok, cache["polished"])
    if "pre_ok" in cache:
        cache["pre_ok"] = cache["pre_ok"] & ~won
    return z, s, lam, nu


def _forget_batch_factors(cache, s):
    """After answers were replaced: the batch's single factorisation no longer fits every element
    (the backward factorises again), and the slacks are the new ones."""
    for key in _BATCH_FACTORS:
        cache.pop(key, None)
    cache["s"] = s
