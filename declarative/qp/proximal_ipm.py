"""Proximal interior-point method: the second solver for elements the interior-point method leaves
unsolved (pure torch, batched).

The interior-point method of ``ipm`` reduces every Newton system to the normal matrix
``Q + Gᵀ diag(λ/s) G + ρAᵀA + δI`` and factorises it by Cholesky. On some badly conditioned
problems (free variables, degenerate vertices, multipliers of 1e5 and more — e.g. QCAPRI and
QSHARE1B of the Maros–Meszaros set) its weights ``λ/s`` span more orders of magnitude than float64
resolves, and the iterations stop with a dual residual far above the tolerances: the element is
``INACCURATE``. For those elements (and for finite problems whose iterations overflowed,
``NON_FINITE``) ``solve_qp_ipm`` runs this method from a cold start.

It is the proximal method of multipliers with one interior-point (Mehrotra predictor–corrector)
step per outer iteration, after PIQP (Schwan et al. 2023). With proximal centres
``(ξ, λ̄, ν̄)`` and weights ``ρ, δ > 0`` each iteration takes a Newton step on

.. math::

    Qz + q + Gᵀλ + Aᵀν + ρ(z − ξ) = 0,\\quad Az − b − δ(ν − ν̄) = 0,\\quad
    Gz + s − h − δ(λ − λ̄) = 0,\\quad s ∘ λ = σμ\\,\\mathbf 1,

and then moves the centres to the new iterate, so that at the start of every iteration the
proximal terms vanish and the residuals are those of the QP itself; ``ρ`` and ``δ`` only
regularise the Newton system. Eliminating ``ds`` and ``dλ`` (with ``W = (S Λ⁻¹ + δI)⁻¹``, whose
entries are at most ``1/δ``) leaves the quasi-definite system

.. math::

    \\begin{bmatrix} Q + ρI + GᵀWG & Aᵀ \\\\ A & −δI \\end{bmatrix}
    \\begin{bmatrix} dz \\\\ dν \\end{bmatrix} =
    \\begin{bmatrix} −r_d − GᵀW(r_i − Λ⁻¹ r_c) \\\\ −r_e \\end{bmatrix},\\qquad
    dλ = W(G\\,dz + r_i − Λ⁻¹ r_c),\\quad ds = −Λ⁻¹(r_c + S\\,dλ),

which is non-singular for every ``Q ⪰ 0`` and every ``A`` (dependent or zero equality rows
included). It is factorised by LU (``torch.linalg.lu_factor_ex``) and solved with two steps of
iterative refinement. After a step of length ``α`` both weights shrink, ``ρ ← max(10⁻¹⁰,
(1 − α)ρ)`` (likewise ``δ``), from ``ρ = 10⁻⁶``, ``δ = 10⁻⁴``.

An element stops as soon as the caller's ``accept`` says its iterate meets the tolerances (in
``solve_qp_ipm``: the SOLVED contract on the original problem), when a direction is not finite,
or after ``max_iter`` iterations. The method keeps no active set and no factorisation for the
backward: ``solve_qp_ipm`` polishes its answers as it polishes its own
(``ipm._polish_second_solver``). ``solve_qp_ipm`` runs it on the equilibrated problem and, for the
elements it leaves unsolved there, once more on the original data (``ipm._second_solver_unscaled``).

Shape:
    ``Q (b, n, n)``, ``q (b, n)``, ``G (b, m, n)``, ``h (b, m)``, ``A (b, p, n)``, ``b (b, p)``;
    a leading dimension of 1 is shared by the batch; ``A``, ``b`` may be None. The iterate:
    ``z (B, n)``, ``s, λ (B, m)``, ``ν (B, p)``.

References:
    R. Schwan, Y. Jiang, D. Kuhn, C. N. Jones, "PIQP: A Proximal Interior-Point Quadratic
    Programming Solver", IEEE CDC 2023.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .linalg import _mtv, _mv

__all__: list[str] = []

#: initial weights of the primal and dual proximal terms, and their lower limit
RHO_START, DELTA_START, REG_FLOOR = 1e-6, 1e-4, 1e-10
#: steps of iterative refinement of each Newton solve
REFINEMENT_STEPS = 2


class ProximalState(NamedTuple):
    """An iterate of the method: primal ``z``, slack ``s``, multipliers ``λ``, ``ν``, and the
    per-element weights ``ρ``, ``δ`` (``(B,)``)."""

    z: torch.Tensor
    s: torch.Tensor
    lam: torch.Tensor
    nu: torch.Tensor
    rho: torch.Tensor
    delta: torch.Tensor


class _Newton(NamedTuple):
    """The factorised Newton system of one iteration."""

    K: torch.Tensor       # (B, n + p, n + p)
    LU: torch.Tensor
    pivots: torch.Tensor
    W: torch.Tensor       # (B, m)


def start(B: int, n: int, m: int, p: int, dtype: torch.dtype, device) -> ProximalState:
    """The cold start ``z = 0, s = λ = 1, ν = 0``."""
    def full(*shape, value):
        return torch.full(shape, value, dtype=dtype, device=device)
    return ProximalState(full(B, n, value=0.0), full(B, m, value=1.0), full(B, m, value=1.0), full(B, p, value=0.0),
                         full(B, value=RHO_START), full(B, value=DELTA_START))


def _residuals(data, st: ProximalState):
    """``(r_d, r_e, r_i)``: the dual residual ``Qz + q + Gᵀλ + Aᵀν``, the equality residual
    ``Az − b`` (None without equalities) and the inequality residual ``Gz + s − h``."""
    Q, q, G, h, A, b = data
    r_d = _mv(Q, st.z) + q + _mtv(G, st.lam)
    r_e = None
    if A is not None:
        r_d = r_d + _mtv(A, st.nu)
        r_e = _mv(A, st.z) - b
    return r_d, r_e, _mv(G, st.z) + st.s - h


def _factorise(data, st: ProximalState) -> _Newton:
    """``K = [Q + ρI + GᵀWG, Aᵀ; A, −δI]`` and its LU factors."""
    Q, _, G, _, A, _ = data
    B, n = st.z.shape
    W = 1.0 / (st.s / st.lam + st.delta.unsqueeze(-1))
    H = Q + (G.mT * W.unsqueeze(-2)) @ G
    H = H + torch.diag_embed(st.rho.unsqueeze(-1).expand(B, n))
    if A is None:
        K = H
    else:
        p = A.shape[-2]
        A_ = A.expand(B, p, n)
        lower = torch.cat([A_, torch.diag_embed(-st.delta.unsqueeze(-1).expand(B, p))], -1)
        K = torch.cat([torch.cat([H, A_.mT], -1), lower], -2)
    LU, pivots, _ = torch.linalg.lu_factor_ex(K)
    return _Newton(K, LU, pivots, W)


def _direction(data, st: ProximalState, sys: _Newton, r_d, r_e, r_i, r_c):
    """``(dz, ds, dλ, dν)`` of the Newton system for the complementarity residual ``r_c``."""
    _, _, G, _, A, _ = data
    n = st.z.shape[-1]
    t = sys.W * (r_i - r_c / st.lam)
    rhs = -r_d - _mtv(G, t)
    if A is not None:
        rhs = torch.cat([rhs, -r_e], -1)
    rhs = rhs.unsqueeze(-1)
    x = torch.linalg.lu_solve(sys.LU, sys.pivots, rhs)
    for _ in range(REFINEMENT_STEPS):
        x = x + torch.linalg.lu_solve(sys.LU, sys.pivots, rhs - sys.K @ x)
    x = x.squeeze(-1)
    dz, dnu = x[:, :n], x[:, n:]
    dlam = sys.W * _mv(G, dz) + t
    ds = -(r_c + st.s * dlam) / st.lam
    return dz, ds, dlam, dnu


def _max_step(v: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
    """The largest ``α ≤ 1`` with ``v + α dv ≥ 0`` per element (``v > 0``)."""
    ratio = torch.where(dv < 0, -v / dv.clamp(max=-torch.finfo(v.dtype).tiny), torch.ones_like(v))
    return ratio.amin(-1).clamp(max=1.0) if ratio.shape[-1] else v.new_ones(v.shape[0])


def step(data, st: ProximalState, running: torch.Tensor, fraction: float):
    """One predictor–corrector iteration: ``(state, finite)``. Elements not ``running`` and
    elements whose directions are not finite (``finite`` False) do not move; the proximal
    centres are the iterate itself (see the module docstring), so only ``ρ, δ`` carry over."""
    m = st.s.shape[-1]
    r_d, r_e, r_i = _residuals(data, st)
    sys = _factorise(data, st)
    sl = st.s * st.lam
    mu = sl.sum(-1, keepdim=True) / m
    dz, ds, dl, dn = _direction(data, st, sys, r_d, r_e, r_i, sl)
    a_aff = torch.minimum(_max_step(st.s, ds), _max_step(st.lam, dl)).unsqueeze(-1)
    mu_aff = ((st.s + a_aff * ds) * (st.lam + a_aff * dl)).sum(-1, keepdim=True) / m
    sigma = (mu_aff / mu).clamp(0.0, 1.0) ** 3
    dz, ds, dl, dn = _direction(data, st, sys, r_d, r_e, r_i, sl + ds * dl - sigma * mu)
    finite = torch.stack([d.isfinite().all(-1) for d in (dz, ds, dl, dn)], -1).all(-1)
    alpha = fraction * torch.minimum(_max_step(st.s, ds), _max_step(st.lam, dl))
    alpha = torch.where(running & finite, alpha, torch.zeros_like(alpha))
    a = alpha.unsqueeze(-1)

    def move(v, dv):
        return v + a * torch.where(a > 0, dv, torch.zeros_like(dv))   # (no NaN reaches a frozen element)
    shrink = torch.where(running & finite, 1.0 - alpha, torch.ones_like(alpha))
    st = ProximalState(move(st.z, dz), move(st.s, ds), move(st.lam, dl), move(st.nu, dn),
                       (shrink * st.rho).clamp(min=REG_FLOOR), (shrink * st.delta).clamp(min=REG_FLOOR))
    return st, finite


def _where(mask: torch.Tensor, a: ProximalState, b: ProximalState) -> ProximalState:
    """``a`` where ``mask`` ``(B,)``, else ``b``, field by field."""
    return ProximalState(*(torch.where(mask.view(-1, *([1] * (u.dim() - 1))), u, v) for u, v in zip(a, b)))


def solve_qp_proximal(data, *, accept: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object],
                      max_iter: int, fraction: float = 0.99, patience: int = 0):
    """Solve ``min ½zᵀQz + qᵀz s.t. Gz ≤ h, Az = b`` (``data = (Q, q, G, h, A, b)``, with
    inequalities) by the proximal interior-point method from the cold start.

    Args:
        accept: ``(z, λ, ν) ↦ (B,)`` bool, True where the iterate is good enough; checked before
            every iteration (one host synchronisation per iteration, with the test whether any
            element still runs). With ``patience > 0`` a pair ``(acceptable, score)``: an
            acceptable iterate is good where its ``score`` ``(B,)`` (e.g. the largest residual
            over its tolerance) is at most 1.
        max_iter: iteration limit per element.
        fraction: fraction of the step to the boundary of the positive orthant.
        patience: an element whose iterate is acceptable but not good iterates on, at most this
            many iterations more, until one is good; its answer is the acceptable iterate of the
            lowest score (an iterate that is not acceptable, or a direction that is not finite,
            does not replace it). 0: the first acceptable iterate is the answer.

    Returns:
        ``(state, iterations, accepted)``: the answer (for accepted elements the acceptable
        iterate chosen, else the last one), the iterations each element ran ``(B,)`` (with
        ``patience``, those after the answer's iterate included) and whether an iterate was
        acceptable ``(B,)``.
    """
    Q, q, G, h, A, b = data
    B = max(t.shape[0] for t in data if t is not None)
    n, m = Q.shape[-1], G.shape[-2]
    p = 0 if A is None else A.shape[-2]
    st = start(B, n, m, p, q.dtype, q.device)
    iterations = torch.zeros(B, dtype=torch.int64, device=q.device)
    accepted = torch.zeros(B, dtype=torch.bool, device=q.device)
    running = torch.ones(B, dtype=torch.bool, device=q.device)
    since = torch.zeros_like(iterations)   # iterations since the first acceptable iterate
    kept, best = st, torch.full((B,), float("inf"), dtype=q.dtype, device=q.device)
    for _ in range(max_iter + 1):
        if patience:
            verdict = accept(st.z, st.lam, st.nu)
            if not (isinstance(verdict, tuple) and len(verdict) == 2):
                raise TypeError("solve_qp_proximal(patience > 0): accept must return (acceptable, score)")
            ok, score = verdict
            ok = running & ok
            take = ok & (score < best)
            kept, best = _where(take, st, kept), torch.where(take, score.to(best.dtype), best)
            accepted = accepted | ok
            stop = (ok & (score <= 1)) | (accepted & (since >= patience))
        else:
            stop = running & accept(st.z, st.lam, st.nu)
            accepted = accepted | stop
        running = running & ~stop & (iterations < max_iter)
        if not bool(running.any()):
            break
        st, finite = step(data, st, running, fraction)
        iterations = iterations + running.to(torch.int64)
        since = since + (running & accepted).to(torch.int64)
        running = running & finite
    if patience:
        st = _where(accepted, kept, st)
    return st, iterations, accepted
