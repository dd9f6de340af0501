"""``solve_qp``: the validated, differentiable batched QP solve."""

from __future__ import annotations

import torch

from ..modes import GradientMode, resolve_mode
from ..solution import Solution
from ..validation import (LOW_PRECISION, check_batched, check_dim, check_instance,
                          check_same_dtype_device, check_tensor, check_warm_start, common_batch_size,
                          cast_solution, upcast_low_precision)
from ..empty_batch import empty_batch_solution
from .linalg import _NORM_SMALL, _abs_max, _cholesky_upper
from .options import QPOptions
from .problem import QPProblem

__all__ = ["solve_qp", "check_qp_inputs"]

#: Relative tolerance of the positive-semidefiniteness check of Q, per dtype.
PSD_TOL = {torch.float64: 1e-8, torch.float32: 1e-4}


def check_qp_inputs(Q, q, G=None, h=None, A=None, b=None) -> bool:
    """Validate QP inputs; return True if every input is unbatched.

    Raises:
        TypeError: non-tensors, non-floating dtypes, mixed dtypes.
        ValueError: wrong shapes ("expected (B, n, n) or (n, n), got ..."), inconsistent sizes,
            mismatched batch sizes, mixed devices, G without h (or A without b), a Q that is not
            positive semidefinite.
    """
    check_tensor("Q", Q)
    check_tensor("q", q)
    _check_pairs(G, h, A, b)
    named = {"Q": Q, "q": q, "G": G, "h": h, "A": A, "b": b}
    for k, v in named.items():
        if v is not None:
            check_tensor(k, v)
    check_same_dtype_device(**named)
    return _check_shapes(Q, q, G, h, A, b)[0]


def _check_pairs(G, h, A, b) -> None:
    """``G`` with ``h`` and ``A`` with ``b`` (or neither)."""
    if (G is None) != (h is None):
        raise ValueError("G and h must be given together (or both be None)")
    if (A is None) != (b is None):
        raise ValueError("A and b must be given together (or both be None)")


def _check_shapes(Q, q, G, h, A, b) -> tuple[bool, int]:
    """``check_qp_inputs`` after its type, pairing and dtype/device checks: the shapes, the batch
    sizes and ``Q`` positive semidefinite. Returns whether every input is unbatched, and the batch
    size (1 then)."""
    named = {"Q": Q, "q": q, "G": G, "h": h, "A": A, "b": b}
    batched = {
        "Q": check_batched("Q", Q, "nn"),
        "q": check_batched("q", q, "n"),
    }
    n = Q.shape[-1]
    if n == 0:
        raise ValueError(f"Q: expected a non-empty problem (n >= 1 variables), got shape {tuple(Q.shape)}")
    check_dim("Q", Q.shape[-2], n, "a square matrix: rows = columns")
    check_dim("q", q.shape[-1], n, "n (the size of Q)")
    if G is not None:
        batched["G"] = check_batched("G", G, "mn")
        batched["h"] = check_batched("h", h, "m")
        check_dim("G", G.shape[-1], n, "n (the size of Q) columns")
        check_dim("h", h.shape[-1], G.shape[-2], "m (the number of rows of G)")
    if A is not None:
        batched["A"] = check_batched("A", A, "pn")
        batched["b"] = check_batched("b", b, "p")
        check_dim("A", A.shape[-1], n, "n (the size of Q) columns")
        check_dim("b", b.shape[-1], A.shape[-2], "p (the number of rows of A)")
    B = common_batch_size(**{k: (named[k], v) for k, v in batched.items()})
    if B != 0:   # (float16/bfloat16 have no Cholesky kernel on the CPU: checked in float32)
        _check_psd(Q.float() if Q.dtype in LOW_PRECISION else Q)
    return not any(batched.values()), (1 if B is None else B)


def _check_psd(Q: torch.Tensor) -> None:
    """Q must be symmetric positive semidefinite up to a relative tolerance (one Cholesky of
    ``Q + εI``, ``ε = tol·(1 + max|Q_ii|)``; eigenvalues are computed only for the message).
    Non-finite matrices are skipped here (the solver reports them as ``NON_FINITE``).

    One host synchronisation when every matrix passes: the checks run on ``Q`` as given, and only
    if some matrix fails them are they repeated with the non-finite matrices set aside
    (``_check_psd_exact``), which raises."""
    tol = PSD_TOL.get(Q.dtype, 1e-4)
    Qs = Q if Q.dim() == 3 else Q.unsqueeze(0)
    if Qs.shape[0] == 1 and Qs.numel() < 1 << 16 and _single_passes(Qs.detach()[0], tol):
        return
    with torch.no_grad():
        # a non-finite Q needs no test of its own: it passes here (the solver flags it) or fails
        # and is set aside by the exact check
        asym, scale, info = _psd_tests(Qs, tol)
        bad = (asym > tol * scale) | (info > 0)
    if bool(bad.any()):
        _check_psd_exact(Qs, tol)


def _single_passes(Q1: torch.Tensor, tol: float) -> bool:
    """One matrix (B = 1): the checks of ``_check_psd`` with fewer operations, through one host
    transfer (on the CPU, three reads) — the asymmetry, and a Cholesky of ``Q`` itself: if it
    succeeds, ``Q`` is positive definite and so is ``Q + εI``. False (not necessarily failing)
    otherwise: then the full checks decide. Below ``2¹⁶`` entries only, where the full check's
    Cholesky reads the same (upper) triangle (above, it factors the transposed layout: the lower
    one)."""
    asym = torch.linalg.vector_norm(torch.sub(Q1, Q1.mT), float("inf"))
    scale = torch.linalg.vector_norm(Q1.diagonal(), float("inf"))
    info = torch.linalg.cholesky_ex(Q1, upper=True).info
    if Q1.device.type == "cpu":         # (a transfer is a copy: three reads, no stack)
        a, d, i = asym.item(), scale.item(), info.item()
    else:
        a, d, i = torch.stack([asym, scale, info]).tolist()     # (info promoted to Q's dtype)
    return a <= tol * (1 + d) and i == 0


def _psd_tests(Qf: torch.Tensor, tol: float):
    """``max |Q − Qᵀ|``, the scale ``1 + max|Q_ii|`` and the Cholesky info of ``Q + tol·scale·I``."""
    work = torch.sub(Qf, Qf.mT)
    asym = _abs_max(work, (-1, -2)) if work.numel() <= _NORM_SMALL else work.abs_().amax((-1, -2))
    scale = _abs_max(Qf.diagonal(dim1=-2, dim2=-1)) + 1
    # Q + tol·scale·I in the same buffer: the upper Cholesky reads the upper triangle only,
    # which is that of ½(Q + Qᵀ) up to the asymmetry checked above (and is what the solver's
    # factorisations read)
    Qsh = work.copy_(Qf)
    Qsh.diagonal(dim1=-2, dim2=-1).add_((tol * scale).unsqueeze(-1))
    _, info = _cholesky_upper(Qsh)
    return asym, scale, info


def _check_psd_exact(Qs: torch.Tensor, tol: float) -> None:
    """``_check_psd`` with the non-finite matrices replaced by zeros; raises on a failing one."""
    finite = torch.isfinite(Qs).flatten(1).all(-1)
    Qf = Qs if bool(finite.all()) else torch.where(finite.view(-1, 1, 1), Qs, torch.zeros_like(Qs))
    with torch.no_grad():
        asym, scale, info = _psd_tests(Qf, tol)
    bad_sym = asym > tol * scale
    bad_psd = info > 0
    if bool((bad_sym | bad_psd).any()):
        if bool(bad_sym.any()):
            idx = torch.nonzero(bad_sym).reshape(-1).tolist()[:20]
            raise ValueError(f"Q: expected a symmetric matrix, but Q is not symmetric for batch "
                             f"indices {idx} (max |Q − Qᵀ| = {asym.max().item():.3g})")
        idx = torch.nonzero(bad_psd).reshape(-1).tolist()[:20]
        lo = torch.linalg.eigvalsh(Qf[bad_psd]).amin(-1)
        raise ValueError(f"Q: expected a positive semidefinite matrix (convex QP), but Q is "
                         f"indefinite for batch indices {idx} (smallest eigenvalue "
                         f"{lo.min().item():.3g})")


@torch.compiler.disable  # solver: host checks, data-dependent loops (a graph break)
def solve_qp(Q: torch.Tensor, q: torch.Tensor, G: torch.Tensor | None = None,
             h: torch.Tensor | None = None, A: torch.Tensor | None = None,
             b: torch.Tensor | None = None, *, mode: "str | GradientMode" = "implicit",
             beta: float | None = None, options: QPOptions | None = None,
             warm_start: Solution | None = None, check: bool = True) -> Solution:
    r"""Solve ``z* = argmin_z ½zᵀQz + qᵀz s.t. Gz ≤ h, Az = b`` differentiably, for a batch.

    The forward is the batched interior-point method ``solve_qp_ipm``; the gradient of a loss of
    ``z*`` reaches all six parameters through ``mode``: ``"implicit"`` (exact one-sided limit,
    including weakly active constraints via the backward QP), ``"contrastive"`` or
    ``"symmetric"`` with ``beta`` (nudged re-solves ``q → q ± βg``, ``docs/guide/modes.md``), or any
    ``GradientMode``.

    Args:
        Q: quadratic term, symmetric positive semidefinite.
        q: linear term.
        G, h: inequality constraints ``Gz ≤ h`` (both or neither).
        A, b: equality constraints ``Az = b`` (both or neither).
        mode, beta: the gradient mode (see ``resolve_mode``).
        options: ``QPOptions`` (tolerances etc.; defaults per dtype).
        warm_start: a previous ``Solution`` to start the iteration from.
        check: if True (default) raise one ``SolverError`` naming every failing batch index
            (infeasible, unbounded, iteration limit, non-finite input); if False return the
            per-element statuses — the other elements are solved normally.

    Returns:
        ``Solution``: ``z`` (differentiable), ``duals["lam"]``, ``duals["nu"]``, ``status``,
        ``iterations``, ``residuals`` (``"primal"``, ``"dual"``, ``"gap"``: absolute, on the
        problem as given, in float64 — see ``QPOptions``). ``Status.SOLVED`` means that the
        tolerances ``eps_abs``/``eps_rel`` of ``QPOptions`` hold on the problem as given;
        ``Status.INACCURATE`` that the iterations stopped without meeting them; infeasibility
        verdicts come with a certificate verified on the data as given. When every input is unbatched the batch dimension is
        removed from ``z``, the duals, the status, the iterations and the residuals.

    Shape:
        - Q: ``(B, n, n)`` or ``(n, n)``;  q: ``(B, n)`` or ``(n,)``
        - G: ``(B, m, n)`` or ``(m, n)``;  h: ``(B, m)`` or ``(m,)``
        - A: ``(B, p, n)`` or ``(p, n)``;  b: ``(B, p)`` or ``(p,)``
        - z: ``(B, n)``, or ``(n,)`` when every input is unbatched.

    float16 / bfloat16 inputs are solved in float32 (no CPU kernels for the factorisations in
    half precision) and the solution is returned in the input dtype; gradients reach the inputs in
    their own dtype. A batch of zero problems (``B = 0``) returns empty results (and zero
    gradients); an empty problem (``n = 0``) is a ``ValueError``; ``m = 0`` or ``p = 0`` rows are
    the same as omitting the block.

    Raises:
        TypeError, ValueError: invalid inputs (see ``check_qp_inputs``), ``options`` that is not a
            ``QPOptions``, a ``warm_start`` that is not a ``Solution`` of the solution's shape;
            NaN/inf entries are not an input error: those elements get ``Status.NON_FINITE``.
        SolverError: ``check=True`` and some element was not solved.

    References:
        B. Amos, J. Z. Kolter, "OptNet: Differentiable Optimization as a Layer in Neural
        Networks", ICML 2017. C. Zach, "Bilevel Programs Meet Deep Learning", 2021 (Prop. 2).
    """
    gm = resolve_mode(mode, beta, problem=QPProblem)
    check_instance("options", options, QPOptions)
    named = {"Q": Q, "q": q, "G": G, "h": h, "A": A, "b": b}
    for k, v in named.items():
        if v is not None or k in ("Q", "q"):
            check_tensor(k, v)
    check_same_dtype_device(**named)
    t, low = upcast_low_precision(**named)
    # the rest of ``check_qp_inputs`` (its type and dtype/device checks are the ones above)
    _check_pairs(G, h, A, b)
    unbatched, B = _check_shapes(*t.values())
    n, m, p = Q.shape[-1], 0 if G is None else G.shape[-2], 0 if A is None else A.shape[-2]
    if warm_start is not None:
        batch = [(n,)] if unbatched else [(B, n), (n,)]
        check_warm_start("warm_start", warm_start, Q, batch,
                         {"lam": [(m,)] if unbatched else [(B, m), (m,)],
                          "nu": [(p,)] if unbatched else [(B, p), (p,)]})
    if B == 0:
        return empty_batch_solution((0, n), Q, (Q, q, G, h, A, b), duals={"lam": m, "nu": p},
                                    residuals=("primal", "dual", "gap"))
    if warm_start is not None and low is not None:
        warm_start = cast_solution(warm_start, torch.float32)
    problem = QPProblem(options)
    sol = cast_solution(gm.apply(problem, tuple(t.values()), warm_start), low)
    if unbatched:
        sol = Solution(
            z=sol.z[0], duals={k: v[0] for k, v in sol.duals.items()},
            status=sol.status[0] if sol.status is not None else None,
            iterations=sol.iterations[0] if sol.iterations is not None else None,
            residuals={k: v[0] for k, v in sol.residuals.items()}, cache=sol.cache)
    if check:
        sol.raise_for_status("QP solve")
    return sol
