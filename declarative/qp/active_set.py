"""Dual active-set solver for one small strictly convex QP (Goldfarb–Idnani), the fast path at B = 1.

    minimize_z  ½ zᵀQz + qᵀz   subject to   Gz ≤ h,  Az = b,   Q ≻ 0

At batch size 1 the interior-point method's cost is per-operation overhead (~100 torch operations an
iteration, then the polish), not arithmetic. The dual active-set method needs a few small
operations a step instead, and it ends on the exact active-set solution, with nothing to polish.

It starts from the unconstrained minimiser (dual feasible: no multiplier), brings in the
equalities, and repeatedly adds the most violated inequality ``p``, raising its multiplier
``t ≥ 0`` — the step ``t`` being the smaller of the full step (constraint ``p`` becomes active and
joins W) and the partial step at which an active multiplier reaches zero (that constraint leaves
W, and the step on ``p`` continues). Each full step strictly increases the dual objective, so no
active set repeats: the method ends after finitely many steps on the optimum, or on a
certificate of primal infeasibility (a violated constraint that no step can reach).

The steps run on the dual: with ``C = [A; G]``, ``r = [b; h]`` and multipliers ``μ``, the
Lagrangian's minimiser is ``z(μ) = z₀ − Q⁻¹Cᵀμ`` (``z₀ = −Q⁻¹q``), where the negated residuals
are affine in ``μ``,

.. math::

    w = r - C z(\\mu) = M \\mu + w_0, \\qquad M = C Q^{-1} C^T, \\quad w_0 = r - C z_0 .

The active rows are held at ``w_W = 0``; the tableau ``T`` gives the basic variables (``μ_W`` and
``w`` of the other rows) in terms of the non-basic ones (``w_W`` and ``μ`` of the other rows), with
the values at the current vertex as its last column. It starts as ``[M w₀]`` (one Cholesky
factorisation of ``Q``, one triangular solve and one product), and a change of the active set is a
principal pivot — one rank-one update of ``T`` (``_pivot``). Column ``p`` of ``T`` holds a step's
directions: ``T_{Wp} = −M_WW⁻¹M_Wp`` the active multipliers' rates, ``T_{pp}`` the Schur complement
``g_pᵀ(Q⁻¹ − …)g_p`` (zero: ``p`` depends on the active rows, only partial steps reach it) and
``T_{ip}`` the other rows' rates. A step is one transfer of that column, the values and the
diagonal to the host (on the CPU the first two, unconcatenated), the ratio test there in Python
floats, and one pivot. The tableau is kept in
float64 whatever the dtype (``M`` squares the condition of ``C``).

The final active set's KKT system is then solved afresh (an LU factorisation of
``[Q C_Wᵀ; C_W 0]``, kept for the backward) and its residuals computed from one product
``K [z ν λ]``; a row that the pivots' rounding let through is found there, and the steps go on
from the fresh solution.

D. Goldfarb and A. Idnani, "A numerically stable dual method for solving strictly convex quadratic
programs", Math. Programming 27, 1983 (the dual method; here on an explicit tableau, fine for tiny
problems, instead of their factorisation updates). Principal pivoting: R. W. Cottle, J.-S. Pang,
R. E. Stone, "The Linear Complementarity Problem", 1992, §4.1.

The result is accepted only if it passes the same strict test as the polish (primal feasible and
multipliers non-negative to ``1e3·eps`` of the data scale) and the solver's tolerances; otherwise
— and for anything outside this method's scope (``Q`` not positive definite, dependent equality
rows, infeasibility, the step limit) — ``solve_qp_active_set`` returns None and the caller runs
the interior-point method, whose statuses and certificates then apply.
"""

from __future__ import annotations

import math
import operator
from array import array

import torch

from ..solution import Solution
from ..status import Status
from .linalg import _one_problem
from .equilibration import in_band
from .options import QPOptions
from .polish import _strict
from .residuals import ROUNDING_FACTOR

__all__ = ["OUT_OF_BAND", "solve_qp_active_set", "use_active_set"]

#: the fast path applies up to this many variables plus constraints
MAX_SIZE = 128

#: ``solve_qp_active_set(..., in_band_only=True)`` on data that ``equilibration`` does not leave
#: as they are (or whose in-band test it takes to its tensor test: non-finite data)
OUT_OF_BAND = object()


def use_active_set(opts: QPOptions, Q, q, G, h, A, b) -> bool:
    """Whether ``QPOptions.active_set`` sends this problem to ``solve_qp_active_set``: one problem
    (every input unbatched or of batch size 1) with ``n + m + p ≤ 128``, unless disabled."""
    if opts.active_set is False:
        return False
    if not _one_problem(Q, q, G, h, A, b):
        return False
    n = Q.shape[-1]
    m = 0 if G is None else G.shape[-2]
    p = 0 if A is None else A.shape[-2]
    return n + m + p <= MAX_SIZE


_ARRAY_CODES = {torch.float64: "d", torch.float32: "f", torch.int64: "q", torch.bool: "b"}


def _lift(values: list, dtype: torch.dtype, device) -> torch.Tensor:
    """A 1-D tensor of Python numbers (``torch.frombuffer`` of an ``array``: a quarter of the cost
    of ``torch.tensor`` on small lists)."""
    code = _ARRAY_CODES.get(dtype)
    if code is None:
        return torch.tensor(values, dtype=dtype, device=device)
    t = torch.frombuffer(array(code, values), dtype=dtype) if values else torch.empty(0, dtype=dtype)
    return t if torch.device(device).type == "cpu" else t.to(device)


def _single(x: torch.Tensor, core: int) -> torch.Tensor:
    """The one problem's tensor of ``core`` dimensions of an unbatched or batch-size-1 input."""
    return x if x.dim() == core else x[0]


def _to_host(parts: list[torch.Tensor], on_cpu: bool) -> list:
    """The entries of the 1-D tensors ``parts``, in order, as one list of Python numbers: one
    concatenation and one transfer, or on the CPU, where a transfer is a copy, each tensor's own
    (no concatenation; the same numbers: a float32 or integer entry is exact as a Python float
    or int)."""
    if not on_cpu:
        return torch.cat(parts).tolist()
    out = []
    for t in parts:
        out += t.tolist()
    return out


def _split(values: list, sizes: list[int]) -> list[list]:
    """``values`` cut into consecutive pieces of the given sizes."""
    out, k = [], 0
    for size in sizes:
        out.append(values[k:k + size])
        k += size
    return out


def _in_band(qmax: float, rhs: list[float], cinf: list[float], n: int, p: int) -> bool:
    """``equilibration.in_band`` on this method's host values: ``max|Q|``, the right-hand sides
    ``rhs = [−q; b; h]`` and the ∞-norms ``cinf`` of the rows of ``C = [A; G]``. False also for
    non-finite data (that test's answer for them)."""
    aq = list(map(abs, rhs[:n]))
    if not math.isfinite(sum(aq)):
        return False                           # (the reduction max|q| would not be finite)
    v, rows, m = [qmax, max(aq)], [], len(cinf) - p
    if m:                                      # (G, h), then (A, b)
        v += cinf[p:]
        v += map(abs, rhs[n + p:])
        rows.append(m)
    if p:
        v += cinf[:p]
        v += map(abs, rhs[n:n + p])
        rows.append(p)
    return in_band(v, rows)


def _kkt_matrix(Q, q, A, b, G, h):
    """``[Q Cᵀ −q; C 0 r]`` with ``C = [A; G]`` and ``r = [b; h]`` (absent blocks left out): the
    KKT matrix of every row with the right-hand sides as a last column — the system of an active
    set W is its principal submatrix on the variables, the equalities and W, and its right-hand
    side (or a row's step direction ``[g_p; 0]``) a column of it."""
    rows = [t for t in (A, G) if t is not None]
    top = [Q, (-q).unsqueeze(1)]
    if not rows:
        return torch.cat(top, 1)
    C = torch.cat(rows, 0) if len(rows) > 1 else rows[0]
    r = torch.cat([b, h]) if len(rows) > 1 else (b if A is not None else h)
    k = C.shape[0]
    return torch.cat([torch.cat([Q, C.mT, top[1]], 1), torch.cat([C, C.new_zeros(k, k), r.unsqueeze(1)], 1)], 0)


def _dual_tableau(L, Cq, r):
    """The dual tableau ``S = [M; w₀ᵀ]`` (transposed) of the rows ``C`` and the unconstrained
    minimiser ``z₀``:

    .. math::

        z_0 = -Q^{-1} q, \\quad M = C Q^{-1} C^T = H^T H, \\quad H = L^{-1} C^T, \\quad
        w_0 = r - C z_0 = r + H^T L^{-1} q,

    with ``Q = LLᵀ``: ``w = Mμ + w₀`` is the negated constraint residual ``r − Cz`` at
    ``z = z₀ − Q⁻¹Cᵀμ``, the minimiser of the Lagrangian for the multipliers ``μ``. One triangular
    solve for ``L⁻¹[Cᵀ −q]`` and one product.

    Shape: ``L (n, n)``, ``Cq (n, k + 1)`` (``[Cᵀ −q]``), ``r (k,)`` → ``S (k + 1, k)``, ``z₀ (n, 1)``."""
    H = torch.linalg.solve_triangular(L, Cq, upper=False)
    S = H.mT @ H[:, :-1]
    S[-1].neg_().add_(r)                # w₀ = r − (the product's last row)
    return S, torch.linalg.solve_triangular(L.mT, H[:, -1:], upper=True)


def _pivot(S, E, j: int, d: float):
    """Principal pivot of the transposed tableau ``S`` on row ``j`` (pivot ``d = S[j, j]``), in
    place: the basic and non-basic variables ``w_j`` and ``μ_j`` exchange places,

    .. math::

        T'_{ik} = T_{ik} - \\frac{T_{ij} T_{jk}}{d}, \\quad T'_{ij} = \\frac{T_{ij}}{d}, \\quad
        T'_{jk} = -\\frac{T_{jk}}{d}, \\quad T'_{jj} = \\frac{1}{d}

    (``T = Sᵀ`` with the constant column last, which pivots like any other non-pivot column) — one
    rank-one update ``T' = T − u vᵀ/d`` with ``u = T_{:j} + e_j`` and ``v = T_{j:} − e_j``
    (``E``: the identity, ``(k + 1, k)``, for ``e_j``). Pivoting on ``j`` again undoes it.

    Shape: ``S, E (k + 1, k)``."""
    u = S[j] + E[j]
    v = S.select(1, j) - E.select(1, j)
    S.addr_(v, u, alpha=-1.0 / d)


def solve_qp_active_set(Q: torch.Tensor, q: torch.Tensor, G: torch.Tensor | None = None,
                        h: torch.Tensor | None = None, A: torch.Tensor | None = None,
                        b: torch.Tensor | None = None, *, options: QPOptions | None = None,
                        in_band_only: bool = False):
    """The exact solution of one small strictly convex QP by the dual active-set method (see the
    module docstring), or None when it does not apply or fails (run ``solve_qp_ipm`` then).

    With ``in_band_only``, ``OUT_OF_BAND`` for data that ``equilibration`` would not leave as
    they are (run the equilibrated solve then): its in-band test (``equilibration.in_band``, the
    test of one small problem) is decided on this method's first host transfer, before any step.

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
    Q1, q1 = _single(Q, 2), _single(q, 1)
    G1 = None if G is None or G.shape[-2] == 0 else _single(G, 2)
    A1 = None if A is None or A.shape[-2] == 0 else _single(A, 2)
    h1 = None if G1 is None else _single(h, 1)
    b1 = None if A1 is None else _single(b, 1)
    n = Q1.shape[-1]
    m = 0 if G1 is None else G1.shape[0]
    p = 0 if A1 is None else A1.shape[0]
    N = n + p + m
    dtype, device = Q1.dtype, Q1.device
    on_cpu = device.type == "cpu"
    K = _kkt_matrix(Q1, q1, A1, b1, G1, h1)
    C = K[n:, :n]
    # one host sync for the scalars the steps compare against: max|Q| and the Cholesky info of Q
    # (positive definite: the unconstrained minimiser exists), ‖c_i‖∞, ‖c_i‖₁ and ‖c_i‖₂² of the
    # rows of C = [A; G], the right-hand sides (−q, b, h), and the dual tableau's starting values
    # and diagonal; any non-finite datum makes one of them non-finite (the interior-point method
    # flags it). The same values decide equilibration's in-band test (``in_band_only``).
    L, info = torch.linalg.cholesky_ex(Q1)
    # the dual tableau (module docstring): M = C Q⁻¹ Cᵀ = HᵀH with H = L⁻¹Cᵀ, and w(0) = r − C z₀
    # at the unconstrained minimiser z₀ = −Q⁻¹q, stored transposed: S = [M; w(0)ᵀ]
    # (in float64 whatever the dtype: M squares the condition of C)
    if dtype == torch.float64:
        S, z0 = _dual_tableau(L, K[:n, n:], K[n:, N])
    else:
        L64, info64 = torch.linalg.cholesky_ex(Q1.double())
        info = info + info64                   # either factorisation failing: not this method's
        S, z0 = _dual_tableau(L64, K[:n, n:].double(), K[n:, N].double())
    aC = C.abs()
    diag_view, last = S[:-1].diagonal(), S[-1]
    parts = [torch.linalg.vector_norm(Q1, float("inf")).reshape(1), info.reshape(1),   # (info: promoted by a cat)
             aC.amax(-1), aC.sum(-1), C.square().sum(-1), K[:, N], L.diagonal(), last, diag_view,
             z0.view(-1)]
    pre = _to_host(parts, on_cpu)
    cinf, c1, c2sq, rhs, ldiag, cst, diag, z0_v = _split(pre[2:], [N - n, N - n, N - n, N, n, N - n, N - n, n])
    if in_band_only and not _in_band(pre[0], rhs, cinf, n, p):
        return OUT_OF_BAND
    if not math.isfinite(sum(pre)) or pre[1] != 0.0:
        return None
    qscale, gmax = max(pre[0], torch.finfo(dtype).tiny), max(cinf[p:], default=0.0)
    # info: 0 when the Cholesky factorisation ran through; its smallest pivot tells a definite Q
    # from one that is only semidefinite up to rounding (a pivot² at the rounding level of Q)
    if min(map(abs, ldiag), default=1.0) ** 2 <= 100 * n * torch.finfo(dtype).eps * qscale:
        # semidefinite up to rounding: an unbounded direction would come back as a huge "solution"
        # (z ~ 1e15); the interior-point method certifies unboundedness or solves it
        return None
    c1 = c1[p:]                                # ‖g_i‖₁ (the rows of G)
    q_v = [-v for v in rhs[:n]]
    b_v, h_v = rhs[n:n + p], rhs[n + p:]
    # a row counts as violated when g_i·z − h_i exceeds the rounding level of its evaluation,
    # c·eps·(|h_i| + ‖g_i‖₁‖z‖∞) — per row and relative (a threshold tied to ‖h‖∞, like the
    # polish's 1e3·eps·(1 + ‖h‖∞), let float32 solutions violate a row by 1e-4·(1 + ‖h‖∞))
    reps = max(n, 16) * torch.finfo(dtype).eps
    thr_h = [reps * abs(v) for v in h_v]
    thr_g = [reps * v for v in c1]
    base = list(range(n + p))
    inf = float("inf")
    # a pivot below this is a row dependent on the pivoted ones (no step of the dual reaches it)
    dep = [1e-12 * c / qscale for c in c2sq]   # ‖c_i‖₂² / max|Q|

    def any_violated(rz, zmax, active_g):
        inactive = set(range(m)).difference(active_g)
        return any(rz[i] > thr_h[i] + thr_g[i] * zmax for i in inactive)

    def read(j):
        """Column ``j`` of the tableau, its constant column and its diagonal (host lists: one
        transfer a step); on the CPU, where a transfer is a copy, the first two alone (no
        concatenation; the diagonal is None, its entries are read when a pivot needs them)."""
        if on_cpu:
            return S[j].tolist(), last.tolist(), None
        v = torch.cat([S[j], last, diag_view]).tolist()
        return v[:N - n], v[N - n:2 * (N - n)], v[2 * (N - n):]

    E = torch.eye(N - n + 1, N - n, dtype=S.dtype, device=device)
    # the equalities' multipliers enter first (free: they never leave); a vanishing pivot is a
    # dependent row of A (the interior-point method handles it)
    for e in range(p):
        d = float(S[e, e]) if e else diag[0]
        if not d > dep[e]:
            return None
        _pivot(S, E, e, d)
    if p:
        cst = S[-1].tolist()
    # the state on the host: the constant column ``cst`` (the values at the current vertex: ν,
    # λ_W and the slacks' negatives w_i = h_i − g_i·z of the other rows), and the active set W
    # (rows of the tableau, p + i for row i of G)
    active: list[int] = []
    act: set[int] = set()
    # ‖z‖∞ of the violation thresholds: the unconstrained minimiser's in the steps (z is not
    # formed there), the final solve's after it
    zmax = max(map(abs, z0_v), default=0.0)
    steps = 1
    max_steps = 4 * (m + p) + n + 11
    # a full step's pivot, taken when the tableau is next needed (the last step's never is: the
    # final solve works on K)
    pending = ()
    for _ in range(3):      # rounds: the loop, then a fresh solve that must confirm it
        # w_i < −threshold_i: row i violated (most_violated's test, negated)
        nthr = [-(th + tg * zmax) for th, tg in zip(thr_h, thr_g)]
        # the values at the vertex: cst + lam_p·col after a full step (the host's copy, read
        # afresh at the next step), cst alone at the start of a round
        col, lam_p = [0.0] * len(cst), 0.0
        while m:
            # the most violated row p (the most negative w_p beyond its threshold): the smallest
            # w_i of all rows (builtins' loops) when it qualifies, else a pass over the rows
            w = list(map(operator.add, cst[p:], map(lam_p.__mul__, col[p:])))
            i = min(range(m), key=w.__getitem__)
            if w[i] >= 0.0:                    # (thresholds are ≥ 0: nothing violated)
                break
            if w[i] < nthr[i] and p + i not in act:
                jp = p + i
            else:
                jp, wmin = -1, 0.0
                for i, (c, t) in enumerate(zip(w, nthr)):
                    if c < wmin and c < t and p + i not in act:
                        jp, wmin = p + i, c
                if jp < 0:
                    break
            lam_p = 0.0
            while True:
                steps += 1
                if steps > max_steps:
                    return None
                if pending:
                    _pivot(S, E, *pending)
                    pending = ()
                col, cst, diag = read(jp)
                # partial step: the first active multiplier λ_j + (λ_p + t)·col_j (col_j < 0) to
                # reach zero
                t1, drop = inf, -1
                for jj, j in enumerate(active):
                    dj = col[j]
                    if dj < 0:
                        tj = (cst[j] + lam_p * dj) / -dj
                        if tj < t1:
                            t1, drop = tj, jj
                # full step: row p's w_p = cst_p + λ_p·s reaches zero (s = the Schur complement)
                s = col[jp]
                dependent = s <= dep[jp]
                t2 = inf if dependent else -(cst[jp] + lam_p * s) / s
                if t1 == inf and t2 == inf:
                    return None                # no step reaches p: primal infeasible (IPM certifies)
                if t2 <= t1:
                    pending = (jp, s)
                    active.append(jp)
                    act.add(jp)
                    lam_p += t2
                    break
                lam_p += t1
                j = active[drop]
                d = diag[j] if diag is not None else S[j, j].item()
                if not d > 0:                  # an active block no longer positive definite (rounding)
                    return None
                _pivot(S, E, j, d)
                del active[drop]
                act.discard(j)
        active_g = [j - p for j in active]
        # the final active set's KKT system solved afresh (the steps' updates accumulate rounding),
        # factorised in float64 whatever the dtype (below float64 a vertex solution, where dz = 0
        # exactly, came out O(10) in float32; at these sizes float64 costs what float32 does, and
        # fewer operations than refining a float32 solve); the answer is rounded to the dtype before
        # it is judged. The LU factors serve the backward (``kkt_tangent``)
        ix = _lift(base + [n + p + i for i in active_g] + [N], torch.int64, device)
        Kw = K.index_select(0, ix[:-1]).index_select(1, ix).double()
        LU, piv, _ = torch.linalg.lu_factor_ex(Kw[:, :-1])
        x = torch.linalg.lu_solve(LU, piv, Kw[:, -1:]).to(dtype)
        # [Qz, Aᵀν, G_Wᵀλ_W; Az, 0, 0; Gz, 0, 0] in one product: x spread over three columns
        # (as rows: X K[:, :N]ᵀ, the (3, N) @ (N, N) layout, is the fast one for BLAS)
        cols = list(range(n)) + [N + i for i in range(n, n + p)] + [2 * N + n + p + i for i in active_g]
        X = x.new_zeros(3 * N).index_copy_(0, _lift(cols, torch.int64, device), x.view(-1)).view(3, N)
        # the residuals of the SOLVED contract are judged in float64
        Y = X @ K[:, :N].mT if dtype == torch.float64 else X.double() @ K[:, :N].double().mT
        v = _to_host([Y.view(-1), x.view(-1)], on_cpu)
        if not math.isfinite(sum(v)):          # a singular final system
            return None
        z, nu, lam_w = v[3 * N:3 * N + n], v[3 * N + n:3 * N + n + p], v[3 * N + n + p:]
        Gz = v[n + p:N]
        rz = [gz - hv for gz, hv in zip(Gz, h_v)]
        zmax = max(map(abs, z), default=0.0)
        if m and any_violated(rz, zmax, active_g):
            # a row the steps' rounding let through: go on from the fresh values
            lam_at = dict(zip(active_g, lam_w))
            cst = nu + [lam_at[i] if i in lam_at else -r for i, r in enumerate(rz)]
            if pending:
                _pivot(S, E, *pending)
                pending = ()
            S[-1] = _lift(cst, S.dtype, device)
            continue
        break
    else:
        return None
    # the SOLVED contract of ``QPOptions`` on the data as given (``residuals.qp_residuals``'
    # definitions, in float64; those of the solve's multipliers: the returned λ is clamped at 0, a
    # change below 1e3·eps of its scale)
    Qz, Az = v[0:n], v[n:n + p]
    Atn, Gtl = v[N:N + n], v[2 * N:2 * N + n]
    rd = [a + c + d + e for a, c, d, e in zip(Qz, q_v, Atn, Gtl)]
    ninf = lambda xs: max(map(abs, xs), default=0.0)   # noqa: E731
    dres = ninf(rd)
    dscale = max(ninf(Qz), ninf(q_v), ninf(Gtl), ninf(Atn))
    lam = [0.0] * m
    for i, l in zip(active_g, lam_w):
        lam[i] = max(l, 0.0)
    s = [max(-r, 0.0) for r in rz]
    mul = operator.mul
    zQz, qz = sum(map(mul, z, Qz)), sum(map(mul, z, q_v))
    hl, bn = sum(map(mul, h_v, lam)), sum(map(mul, b_v, nu))
    gap, gscale = abs(zQz + qz + hl + bn), max(abs(zQz), abs(qz), abs(hl), abs(bn))
    pres = max(max(rz, default=0.0), 0.0)
    pscale = max(ninf(Gz), ninf(h_v))
    if p:
        pres = max(pres, ninf([a - c for a, c in zip(Az, b_v)]))
        pscale = max(pscale, ninf(Az), ninf(b_v))
    # accept: the tolerances and the multipliers' signs (the polish's test: non-negative to
    # 1e3·eps of their scale)
    ea, er = opts.eps_abs, opts.eps_rel
    if not (pres <= ea + er * pscale and dres <= ea + er * dscale and gap <= ea + er * gscale):
        # the contract's rounding term (``residuals.meets_tolerances``), only where it matters:
        # the same products with every term in absolute value
        Xa = X.abs() if dtype == torch.float64 else X.double().abs()
        Ka = K[:, :N].abs() if dtype == torch.float64 else K[:, :N].double().abs()
        w_ = (Xa @ Ka.mT).view(-1).tolist()
        aQz, aAtn, aGtl = w_[0:n], w_[N:N + n], w_[2 * N:2 * N + n]
        aAz, aGz = w_[n:n + p], w_[n + p:N]
        az = [abs(a) for a in z]
        ad = max((a + abs(c) + d + e for a, c, d, e in zip(aQz, q_v, aAtn, aGtl)), default=0.0)
        ag = sum(a * c for a, c in zip(az, aQz)) + sum(abs(a) * c for a, c in zip(q_v, az)) + \
            sum(abs(a) * c for a, c in zip(h_v, lam)) + sum(abs(a * c) for a, c in zip(b_v, nu))
        ap = max([a + abs(c) for a, c in zip(aGz, h_v)] + [a + abs(c) for a, c in zip(aAz, b_v)], default=0.0)
        r_ = ROUNDING_FACTOR * torch.finfo(dtype).eps / 2
        if not (pres <= ea + er * pscale + r_ * ap and dres <= ea + er * dscale + r_ * ad
                and gap <= ea + er * gscale + r_ * ag):
            return None
    if active_g and not min(lam_w) + _strict(dtype) * (1 + ninf(lam_w)) >= 0:
        return None
    # the returned tensors as views of three lifted lists and of x, cut by one split each
    # (``split_with_sizes``: ``Tensor.split`` without its Python wrapper)
    s_t, lam_t, res = _lift(s + lam + [pres, dres, gap], dtype, device).view(1, -1).split_with_sizes([m, m, 3], 1)
    status, iters, kkt_idx = _lift([int(Status.SOLVED), steps] + active_g, torch.int64, device).split_with_sizes(
        [1, 1, len(active_g)])
    act_g = set(active_g)
    act_t, polished = _lift([i in act_g for i in range(m)] + [True], torch.bool, device).split_with_sizes([m, 1])
    z_t, nu_t, _ = x.view(1, -1).split_with_sizes([n, p, len(active_g)], 1)
    cache = {"s": s_t, "polished": polished,
             "kkt_lu": LU.unsqueeze(0), "kkt_piv": piv.unsqueeze(0), "kkt_idx": kkt_idx.view(1, -1)}
    if m:
        cache["act"] = act_t.view(1, m)
        # the backward's classification (``QPProblem.classify_constraints`` with the threshold
        # of polished solutions), done here on the host: when every row is clearly strongly active
        # or clearly not weakly active — 1e-3 away from its threshold, so that the backward's
        # evaluation (in the dtype, after equilibration's round trip of λ) cannot decide
        # otherwise — the active mask is also stored as ``act_strict`` and the backward goes
        # straight to the KKT system; rows near a threshold leave it to ``classify_constraints``
        tau = (options.active_tol if options is not None else None) or torch.finfo(dtype).eps ** 0.5
        lam_nat = max(ninf(Qz), ninf(q_v)) / max(gmax, torch.finfo(dtype).tiny)
        lam_thr, s_thr = 1.001 * tau * (min(1.0, lam_nat) + ninf(lam)), 1.001 * tau * (1 + ninf(h_v))
        if all(lam[i] > lam_thr if i in act_g else s[i] > s_thr for i in range(m)):
            cache["act_strict"] = cache["act"]
    primal, dual, gap_t = res.unbind(1)
    return Solution(z=z_t, duals={"lam": lam_t, "nu": nu_t}, status=status, iterations=iters,
                    residuals={"primal": primal, "dual": dual, "gap": gap_t}, cache=cache)
