"""``LassoProblem``: the lasso / elastic net as a declared argmin problem (``docs/guide/problems.md``)."""

from __future__ import annotations

import torch

from ..problem import ArgminProblem
from ..second_derivatives import building_graph, derivative_of, note_zeroed_second_derivatives, second_order
from ..solution import Solution
from .solver import (LassoOptions, lasso_correlation, lasso_fista_polish, support_solve)

__all__ = ["LassoProblem"]


def _canonical(params, z=None):
    """Batched views: D (B,d,k), x (B,d), lam (B,k), mu (B,) and z (B,k) if given."""
    D, x, lam, mu = (tuple(params) + (None,))[:4]
    Bs = [t.shape[0] for t, nd in ((D, 3), (x, 2)) if t.dim() == nd]
    if lam.dim() == 2:
        Bs.append(lam.shape[0])
    if mu is not None and mu.dim() == 1:
        Bs.append(mu.shape[0])
    B = max(Bs) if Bs else 1
    d, k = D.shape[-2:]
    D3 = D.expand(B, d, k)
    x2 = x.expand(B, d)
    lam2 = lam.expand(B, k)
    mu1 = (torch.zeros((), dtype=D.dtype, device=D.device) if mu is None else mu).expand(B)
    out = [D3, x2, lam2, mu1]
    if z is not None:
        out.append(z.reshape(B, k))
    return out


class LassoProblem(ArgminProblem):
    r"""The lasso / elastic net

    .. math::

        z^\star(D, x, \lambda, \mu) = \arg\min_z\; E(z) = \tfrac12\|Dz - x\|^2
            + \sum_i \lambda_i |z_i| + \tfrac{\mu}{2}\|z\|^2

    with parameters ``params = (D, x, lam, mu)`` (``mu`` may be ``None`` for the plain lasso).

    Partial derivatives of the energy at a solution (constraints are absent, so 𝓛 = E):
    ``∂_x E = x − Dz``, ``∂_D E = (Dz − x) zᵀ``, ``∂_lam E = |z|`` (per coordinate; summed by
    autograd for a scalar or per-element lam), ``∂_mu E = ½‖z‖²``. The nudged problem adds
    ``β gᵀz`` to the data term and is warm-started from ``z*``.

    Implicit tangent ``dz = lim_{β→0⁺} (ẑ_β − z*)/β``: with the correlation
    ``c = Dᵀ(x − Dz*) − mu z*``, the free set ``S = {z_i ≠ 0} ∪ {lam_i = 0}`` and the weakly active
    set ``W = {z_i = 0, lam_i > 0, |c_i| ≥ lam_i − weak_tol·scale}``,

        dz = argmin_d ½ dᵀ(DᵀD + mu I)d + gᵀd   s.t.  d_i = 0 (i ∉ S ∪ W),  s_i d_i ≥ 0 (i ∈ W),

    ``s_i = sign(c_i)``: a coordinate can only leave zero in the sign of its correlation. Without
    weakly active coordinates this is the linear system ``(DᵀD + mu I)_{SS} dz_S = −g_S``; elements
    with ``W ≠ ∅`` are gathered and solved together by the batched QP solver
    ``declarative.qp.ipm.solve_qp_ipm`` (padded to the largest ``|S ∪ W|`` of the batch).

    Directional derivatives of ∂_θE along dz (the ``Implicit`` gradient, the limit of (C)):
    ``∇x = −D dz``, ``∇D = (D dz) zᵀ + (Dz − x) dzᵀ``, ``∇lam_i = sign(z_i) dz_i`` on the support
    and ``|dz_i|`` off it (``= s_i dz_i`` on W), ``∇mu = zᵀdz``.

    Args:
        options: ``LassoOptions`` (iterations, tolerances, the weak-activity tolerance).

    Shape:
        - D: ``(B, d, k)`` or ``(d, k)``; x: ``(B, d)`` or ``(d,)``
        - lam: broadcastable to ``(B, k)`` (canonicalised by ``solve_lasso``: ``()``, ``(B, 1)``,
          ``(k,)`` or ``(B, k)``); mu: ``()`` or ``(B,)`` or None
        - z: ``(B, k)``, or ``(k,)`` when no input is batched.

    References:
        J. Mairal, F. Bach, J. Ponce, "Task-driven dictionary learning", IEEE TPAMI 2012.
        C. Zach, "Bilevel programs meet deep learning", 2021 (one-sided limit, Prop. 2).
    """

    param_names = ("D", "x", "lam", "mu")
    #: second derivatives: the implicit gradient is written in torch ops of ``D``, ``μ`` and the
    #: saved ``z`` (the layer's output) on the support, which is locally constant (elements with
    #: weakly active coordinates, a kink: second-order terms zero, with a warning; ``implicit_vjp``)
    second_derivative_modes = frozenset({"implicit"})

    def __init__(self, options: LassoOptions | None = None):
        self.options = options or LassoOptions()

    @staticmethod
    def _batched(params) -> bool:
        D, x, lam, mu = (tuple(params) + (None,))[:4]
        return D.dim() == 3 or x.dim() == 2 or lam.dim() == 2 or (mu is not None and mu.dim() == 1)

    def _out(self, sol: Solution, params) -> Solution:
        if self._batched(params):
            return sol
        return Solution(z=sol.z[0], status=sol.status[0], iterations=sol.iterations[0],
                        residuals={k: v[0] for k, v in sol.residuals.items()})

    # -- the ArgminProblem protocol -------------------------------------------------------------
    def solve(self, params, warm_start=None):
        D, x, lam, mu = _canonical(params)
        z0 = None if warm_start is None else warm_start.z.detach().reshape(D.shape[0], -1)
        sol = lasso_fista_polish(D.detach(), x.detach(), lam.detach(), mu.detach(), None, z0, self.options)
        return self._out(sol, params)

    def solve_nudged(self, params, g, beta, warm_start=None):
        D, x, lam, mu = _canonical(params)
        B, k = D.shape[0], D.shape[-1]
        lin = float(beta) * g.detach().reshape(B, k)
        z0 = None if warm_start is None else warm_start.z.detach().reshape(B, k)
        sol = lasso_fista_polish(D.detach(), x.detach(), lam.detach(), mu.detach(), lin, z0, self.options)
        return self._out(sol, params)

    def lagrangian_grads(self, solution, params, needs):
        D, x, lam, mu, z = _canonical(params, solution.z)
        r = torch.bmm(D, z.unsqueeze(-1)).squeeze(-1) - x
        needs = tuple(needs) + (False,) * (4 - len(needs))
        gD = r.unsqueeze(-1) * z.unsqueeze(1) if needs[0] else None
        gx = -r if needs[1] else None
        glam = z.abs() if needs[2] else None
        gmu = 0.5 * (z * z).sum(-1) if needs[3] else None
        return (gD, gx, glam, gmu)[: len(params)]

    def classify(self, solution, params):
        """Masks ``(S, W, s)``: free set, weakly active set, signs of the correlation (B, k)."""
        D, x, lam, mu, z = _canonical(params, solution.z)
        c = lasso_correlation(D, x, z, mu, None)
        dt = D.dtype
        scale = torch.maximum(torch.bmm(x.unsqueeze(1), D).squeeze(1).abs().amax(-1),
                              lam.amax(-1)).clamp(min=1.0)
        wtol = self.options.weak_tol_for(dt) * scale
        S = (z != 0) | (lam == 0)
        W = (~S) & (c.abs() >= lam - wtol.unsqueeze(-1))
        s = torch.where(z != 0, torch.sign(z), torch.sign(c))
        return S, W, s

    def implicit_tangent(self, solution, params, g):
        D, x, lam, mu, z = _canonical(params, solution.z)
        B, d, k = D.shape
        g2 = g.reshape(B, k).to(D.dtype)
        S, W, s = self.classify(solution, params)
        dz, _ = support_solve(D, mu, S, -g2, pinv_fallback=True)
        need_qp = W.any(-1)
        if bool(need_qp.any()):
            idx = torch.nonzero(need_qp).squeeze(-1)
            # θ as data (no derivative in a create_graph backward: see implicit_vjp); the tangent
            # keeps its derivative in g where its exact refinement holds
            dq, exact = _weakly_active_tangent(*(t[idx].detach() for t in (D, mu, S, W, s)), g2[idx])
            dz = dz.index_copy(0, idx, dq)
            if building_graph() and not bool(exact.all()):
                lost = torch.zeros(B, dtype=torch.bool, device=D.device).index_copy(0, idx, ~exact)
                note_zeroed_second_derivatives(lost, "weakly active coordinates whose backward QP's tangent is the "
                                               "solver's, not its exact refinement (the derivative through the "
                                               "cotangent is dropped too)", "lasso")
        return Solution(z=dz.reshape(solution.z.shape))

    def implicit_vjp(self, solution, params, g, needs):
        """The ``Implicit`` gradient. In a ``create_graph=True`` backward an element with weakly
        active coordinates (a kink of the solution map; its tangent comes from the backward QP)
        has the second-order terms of its solution map dropped — its tangent keeps its derivative
        in ``g`` where the backward QP's exact refinement holds, linear in ``g`` on its support —
        with a ``RuntimeWarning``; the others' are exact."""
        if not second_order(params, g):
            return super().implicit_vjp(solution, params, g, needs)
        with torch.no_grad():
            _, W, _ = self.classify(solution, params)
            weak = W.any(-1)
        if not bool(weak.any()):
            return super().implicit_vjp(solution, params, g, needs)
        note_zeroed_second_derivatives(weak, "weakly active coordinates (the gradient has a kink there)", "lasso")
        D, x, lam, mu, z = _canonical(params, solution.z)
        def cut(t):   # the weak elements' rows as constants
            return t.detach() + derivative_of(t, ~weak)
        cut_params = (cut(D), cut(x), cut(lam), cut(mu))[: len(params)]
        cut_solution = Solution(z=cut(z).reshape(solution.z.shape), status=solution.status)
        return super().implicit_vjp(cut_solution, cut_params, g, needs)

    def lagrangian_grads_tangent(self, solution, tangent, params, needs):
        D, x, lam, mu, z = _canonical(params, solution.z)
        B, d, k = D.shape
        dz = tangent.z.reshape(B, k)
        needs = tuple(needs) + (False,) * (4 - len(needs))
        Ddz = torch.bmm(D, dz.unsqueeze(-1)).squeeze(-1)
        gD = gx = glam = gmu = None
        if needs[0]:
            r = torch.bmm(D, z.unsqueeze(-1)).squeeze(-1) - x
            gD = Ddz.unsqueeze(-1) * z.unsqueeze(1) + r.unsqueeze(-1) * dz.unsqueeze(1)
        if needs[1]:
            gx = -Ddz
        if needs[2]:
            glam = torch.where(z != 0, torch.sign(z) * dz, dz.abs())
        if needs[3]:
            gmu = (z * dz).sum(-1)
        return (gD, gx, glam, gmu)[: len(params)]


def _weakly_active_tangent(D, mu, S, W, s, g):
    """The one-sided backward QP for the elements that have weakly active coordinates.

    Variables are compacted to ``U = S ∪ W`` (padded to the largest |U| with decoupled identity
    rows and zero linear term, whose solution is 0); one inequality row ``−s_i d_i ≤ 0`` per weakly
    active coordinate, padded with trivially satisfied rows ``0 ≤ 1``. Solved by the batched QP
    solver of ``declarative.qp.ipm`` (no second QP solver is written here).

    Returns:
        ``(d, exact)``: the tangent ``(B, k)`` and, ``(B,)``, where it is the exact refinement
        (linear in ``g``, differentiable in it) rather than the solver's iterate (data).
    """
    from ..qp.ipm import solve_qp_ipm  # the shared batched QP solver

    B, d, k = D.shape
    dt, dev = D.dtype, D.device
    U = S | W
    nU = U.sum(-1)
    m = int(nU.max())
    idx = torch.argsort((~U).to(torch.int8), dim=-1, stable=True)[:, :m]
    valid = torch.arange(m, device=dev).unsqueeze(0) < nU.unsqueeze(-1)
    vf = valid.to(dt)
    DU = D.gather(2, idx.unsqueeze(1).expand(B, d, m)) * vf.unsqueeze(1)
    diag = torch.where(valid, mu.unsqueeze(-1).expand(B, m), torch.ones((), dtype=dt, device=dev))
    Q = DU.transpose(1, 2) @ DU + torch.diag_embed(diag)
    q = g.gather(1, idx) * vf
    Wc = W.gather(1, idx) & valid
    sc = s.gather(1, idx)
    G = torch.diag_embed(torch.where(Wc, -sc, torch.zeros_like(sc)))
    h = torch.where(Wc, torch.zeros_like(sc), torch.ones_like(sc))
    with torch.no_grad():   # (the solver's iterations are not differentiated; the refinement below is)
        sol = solve_qp_ipm(Q, q.detach(), G, h)
    d_ipm = torch.zeros(B, k, dtype=dt, device=dev).scatter(1, idx, sol.z * vf)
    # Exact refinement: the interior-point iterate identifies which weakly active coordinates leave
    # zero (s_i d_i clearly > 0); re-solve the linear system on S ∪ {those} and keep it when it
    # satisfies the backward QP's optimality conditions (sign constraints and multipliers ≥ 0).
    sd = s * d_ipm
    gap = 1e-6 * d_ipm.abs().amax(-1, keepdim=True).clamp(min=1e-30)
    F = S | (W & (sd > gap))
    d_ex, ok = support_solve(D, mu, F, -g)
    Dd = torch.bmm(D, d_ex.unsqueeze(-1))
    grad_qp = torch.bmm(Dd.transpose(1, 2), D).squeeze(1) + mu.unsqueeze(-1) * d_ex + g
    tol = 1e3 * torch.finfo(dt).eps * (1 + g.abs().amax(-1, keepdim=True))
    feasible = ((s * d_ex >= -tol) | ~(W & F)).all(-1)
    dual_ok = ((s * grad_qp >= -tol) | ~(W & ~F)).all(-1)
    exact = ok & feasible & dual_ok
    return torch.where(exact.unsqueeze(-1), d_ex, d_ipm), exact
