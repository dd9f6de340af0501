"""``QPProblem``: the convex quadratic program as a declared argmin problem."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Sequence

import torch

from ..broadcasting import sum_to_shape
from ..problem import ArgminProblem
from ..second_derivatives import building_graph, derivative_of, detached, note_zeroed_second_derivatives, second_order
from ..solution import Solution
from ..status import Status
from .ipm import solve_qp_ipm
from .active_set import OUT_OF_BAND, solve_qp_active_set, use_active_set
from .equilibration import Equilibration, _small_problem, equilibration
from .kkt_tangent import kkt_tangent
from .linalg import _abs_max, _abs_products, _gather_rows, _with_batch
from .options import QPOptions
from .residuals import meets_tolerances, qp_residuals
from .differentiable_kkt import differentiable_kkt_solution

__all__ = ["QPProblem"]


def _outer(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u.unsqueeze(-1) * v.unsqueeze(-2)


def _mv(M: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (M @ x.unsqueeze(-1)).squeeze(-1)


#: the dimensions of one problem's ``Q, q, G, h, A, b``
_QP_CORES = (2, 1, 2, 1, 2, 1)


def _rows_of(mask: torch.Tensor):
    """The rows set in ``mask (B, m)`` as indices ``(B, k)``, ``k`` the largest count, first in
    each element, padded with other rows; ``valid (B, k)`` marks the real ones."""
    k = int(mask.sum(-1).amax()) if mask.shape[-1] else 0
    idx = torch.argsort(mask.to(torch.int8), dim=-1, descending=True, stable=True)[:, :k]
    return idx, mask.gather(1, idx)


def _select(tensors, idx: torch.Tensor, cores):
    """The batch elements ``idx`` of each tensor (None stays None; unbatched ones, of dimension
    ``core`` or of batch size 1, are shared and kept as they are)."""
    return tuple(t if t is None or t.dim() <= c or t.shape[0] == 1 else t.index_select(0, idx)
                 for t, c in zip(tensors, cores))


def _stationarity_status(params, g, dz, dlam, dnu) -> torch.Tensor:
    r"""``(B,)`` statuses of a KKT tangent: SOLVED where it satisfies the unregularised
    stationarity row to ``eps^¼`` of its scale,

    .. math::
        \|Q\,dz + G^\top d\lambda + A^\top d\nu + g\|_\infty \le \epsilon^{1/4}\,
        \big\||Q||dz| + |G|^\top|d\lambda| + |A|^\top|d\nu| + |g|\big\|_\infty ,

    INACCURATE where it does not. Every factorisation the tangent uses satisfies this row exactly
    up to rounding (the method of multipliers at every step)
    except through its regularisation ``reg·dz``: a tangent that violates it is ``~g/reg`` along
    a null direction of ``Q`` that no constraint fixes — the minimiser is not unique there and no
    derivative exists (a gradient of 5e10 was returned silently)."""
    Q, _, G, _, A, _ = params
    r = _mv(Q, dz) + g
    a = _abs_products(Q, dz.abs())[0] + g.abs()
    for M, d in ((G, dlam), (A, dnu)):
        if M is not None and d is not None and d.shape[-1]:
            r = r + _mv(M.transpose(-1, -2), d)
            a = a + _abs_products(M, y=d.abs())[1]
    ok = _abs_max(r) <= torch.finfo(dz.dtype).eps ** 0.25 * _abs_max(a)
    return torch.where(ok, int(Status.SOLVED), int(Status.INACCURATE))


#: the options of a ``QPProblem`` made without any
_DEFAULT_OPTIONS = QPOptions()


#: the weakly-active threshold of an unpolished element is at least this many times the square
#: root of its relative mean complementarity product (``QPProblem.classify_constraints``)
_WEAK_PAIR_FACTOR = 30.0


class QPProblem(ArgminProblem):
    r"""``z* = argmin_z ½zᵀQz + qᵀz  s.t.  Gz ≤ h,  Az = b`` (``docs/guide/problems.md``, QP).

    Parameters ``params = (Q, q, G, h, A, b)``; ``G, h`` and/or ``A, b`` may be None. The Lagrangian
    is ``𝓛 = ½zᵀQz + qᵀz + λᵀ(Gz − h) + νᵀ(Az − b)`` and the nudge is ``q → q + βg``.

    * ``lagrangian_grads``: ``∂Q = ½zzᵀ, ∂q = z, ∂G = λzᵀ, ∂h = −λ, ∂A = νzᵀ, ∂b = −ν``; their
      contrast at two solutions is exactly formula (C) (used by ``Contrastive``/``Symmetric``).
    * ``implicit_tangent``: the one-sided limit ``(dz, dλ, dν)`` of ``(ŝ_β − s*)/β``.
    * ``lagrangian_grads_tangent``: ``∇q = dz, ∇Q = ½(dz z*ᵀ + z* dzᵀ), ∇h = −dλ,
      ∇G = dλ z*ᵀ + λ* dzᵀ, ∇b = −dν, ∇A = dν z*ᵀ + ν* dzᵀ``.

    **Weakly active constraints.** With the solver's final slack ``s`` and multiplier ``λ`` and a
    threshold ``τ`` tied to their accuracy — ``options.active_tol`` if set, otherwise for polished
    elements (active-set solution exact to rounding) ``√eps`` in float64 (``1.5e-8``) and
    ``eps^¾`` below (``6.4e-6`` in float32, where ``√eps = 3.5e-4`` is the size of real
    multipliers), else — unpolished answers — ``√min(tol, eps_abs)`` in float64 and ``tol^¼``
    below (``options._unpolished_threshold``), for the multipliers raised to at least ``30√μ̂``
    (``μ̂`` the element's mean complementarity product ``mean(λ∘s)`` relative to the two scales
    below): at an interior-point answer a weakly active pair has both members of order ``√μ``, a
    strictly complementary pair keeps its multiplier, which can itself be small, and where the two
    overlap (loose tolerances, float32, some random problems even at the float64 defaults) such
    gradients are not exact
    — constraint ``i`` of a batch element is

    * strongly active if ``λ_i > τ (f + ‖λ‖∞)``, with ``f = 1``, or for polished elements
      ``f = min(1, λ̄)``, ``λ̄ = max(‖Qz‖∞, ‖q‖∞) / max|G|`` the multipliers' own scale (with
      ``f = 1`` the test was absolute when equilibration leaves the objective's gradient small
      against the data, a minimiser in a near-null direction of ``Q``);
    * weakly active if not strongly active and ``s_i ≤ τ_s (1 + ‖h‖∞)``, with ``τ_s = τ`` (not
      raised by ``30√μ̂``), or for polished elements ``τ_s = √eps`` in float64 (``1.5e-8``) and
      ``eps^¾`` below (``6.4e-6`` in float32; a polished slack is ``h − Gz`` to rounding) unless
      ``options.active_tol`` is set;
    * inactive otherwise.

    Elements without a weakly active constraint get the tangent of the KKT linear system
    ``Q dz + G_Kᵀdλ_K + Aᵀdν = −g, G_K dz = 0, A dz = 0`` on the active set ``K``, reusing the
    forward's factorisation where it has one (``kkt_tangent``; without polish, or where the polish
    failed, the active set is the strict-complementarity guess ``λ > s``). The elements with one
    get the backward QP of the one-sided derivative,

    .. math::

        \min_d \tfrac12 d^\top Q d + g^\top d \quad\text{s.t.}\quad
        G_S d = 0,\; G_W d \le 0,\; A d = 0,

    solved for that sub-batch by the same batched IPM (constraints outside S/W are masked to zero
    rows), its multipliers giving ``dλ`` (zero on inactive constraints) and ``dν``; an element's
    tangent never depends on the other elements of its batch.
    Below float64, elements whose backward QP fails (a weakly active row that repeats a strongly
    active one to rounding leaves its multipliers undetermined) are solved again in float64.

    **Per-element failures.** Elements whose forward solve failed get a zero tangent (their
    status says so). A solved element whose tangent still fails — its backward QP not solved (below
    float64: by the float64 re-solve either; e.g. unbounded: the minimiser is not unique along a direction the cotangent
    sees, so the derivative does not exist), or a non-finite tangent — also gets a zero tangent,
    hence zero gradients for its parameters, and a ``RuntimeWarning`` names its batch indices;
    nothing is raised, whatever ``check``, and the other elements' gradients are exact. Zero, not
    NaN: a NaN would spread through a parameter shared by the batch and through the optimiser's
    state. A non-finite cotangent ``g`` is passed through (its element's gradient is not finite).

    **Badly scaled data** (an objective or constraint rows far from unit size) are equilibrated
    before every solve and tangent (``equilibration``): the scaled problem has the same minimiser,
    and its multipliers and tangents map back exactly; ``residuals`` are those of the original
    problem (the SOLVED contract of ``QPOptions`` is checked there), ``iterations`` those of the
    scaled problem.

    Args:
        options: ``QPOptions`` for the forward, nudged and backward solves.
    """

    param_names = ("Q", "q", "G", "h", "A", "b")
    #: second derivatives: the solution (and every nudged one) re-expressed by the KKT system on
    #: its active set (``differentiable_solution``, ``differentiable_kkt``)
    second_derivative_modes = frozenset({"implicit", "contrastive", "symmetric", "equilibrium"})

    def __init__(self, options: QPOptions | None = None):
        # (options are frozen: the default instance is shared, and so are the per-dtype defaults
        # it caches)
        self.options = options if options is not None else _DEFAULT_OPTIONS
        self._inner = None

    @property
    def _inner_options(self) -> QPOptions:
        """The backward QP's options: accuracy judged by the backward (no SOLVED contract of its
        own); made when first needed."""
        if self._inner is None:
            self._inner = replace(self.options, contract=False)
        return self._inner

    # -- solves ------------------------------------------------------------------------------------
    def solve(self, params, warm_start: Solution | None = None) -> Solution:
        """``solve_qp_ipm`` on the equilibrated data (``equilibration``; badly scaled data only),
        with the multipliers returned in the original units. One small problem for the active-set
        method goes to it first: its first host transfer also decides the in-band test
        (``solve_qp_active_set``'s ``in_band_only``), and only data out of band are equilibrated."""
        if use_active_set(self.options, *params) and _small_problem(*params):   # (one problem)
            sol = solve_qp_active_set(*params, options=self.options, in_band_only=True)
            if sol is not OUT_OF_BAND:
                return sol if sol is not None else solve_qp_ipm(*params, options=self.options,
                                                                warm_start=warm_start)
        eq = equilibration(*params)
        if eq is None:
            return self._solve(params, warm_start)
        ws = None if warm_start is None else eq.scaled_solution(warm_start)
        sol = self._solve(eq.params(params), ws, params, eq)
        eq.store(sol.cache)
        return eq.unscaled_solution(sol)

    def _solve(self, params, warm_start, original=None, scales=None, options=None):
        """One problem: the dual active-set method when it applies and succeeds
        (``QPOptions.active_set``); otherwise, and for batches, the interior-point method. The
        SOLVED contract is checked on ``original`` (the data ``params`` are an equilibration of,
        with ``scales``), default ``params``. ``options``: default the problem's (the backward QP
        passes its own, without the contract)."""
        options = self.options if options is None else options
        if use_active_set(options, *params):
            sol = solve_qp_active_set(*params, options=options)
            if sol is not None and (scales is None or self._meets_contract(sol, original, scales)):
                return sol
        return solve_qp_ipm(*params, options=options, warm_start=warm_start, original=original,
                            scales=scales)

    def _meets_contract(self, sol, original, scales) -> bool:
        """Whether an active-set solution of the equilibrated problem meets the SOLVED contract on
        the original one (its residuals replaced by the original's)."""
        opts = self.options.resolved(sol.z.dtype)
        un = scales.unscaled_solution(sol)
        res = qp_residuals(*original, un.z, un.duals["lam"], un.duals["nu"])
        sol.residuals = {"primal": res.primal.to(sol.z.dtype), "dual": res.dual.to(sol.z.dtype),
                         "gap": res.gap.to(sol.z.dtype)}
        return bool(meets_tolerances(res, opts.eps_abs, opts.eps_rel, torch.finfo(sol.z.dtype).eps / 2).all())

    def solve_nudged(self, params, g, beta, warm_start=None) -> Solution:
        Q, q, G, h, A, b = params
        nudged = (Q, q + beta * g, G, h, A, b)
        if not second_order(nudged):
            return self.solve(nudged, warm_start)
        # a create_graph backward (the contrastive modes' second derivatives): solved as data, then
        # made differentiable in θ and g by the KKT system on its own active set
        with torch.no_grad():
            sol = self.solve(detached(nudged), warm_start)
        return self.differentiable_solution(sol, nudged)

    def differentiable_solution(self, solution, params) -> Solution:
        """``solution`` with ``z`` and the multipliers differentiable in ``params`` through the KKT
        system on its active set (``differentiable_kkt``: same values, exact derivatives; zero
        derivatives, with a warning, for solved elements with weakly active constraints or a
        singular system). The active set is the one of the first-order backward: the active-set
        solver's, else the strongly active rows of ``classify_constraints``."""
        if not second_order(params):
            return solution
        solved = solution.solved
        lam = solution.duals.get("lam")
        if params[2] is None or lam is None or lam.shape[-1] == 0:
            active, usable = None, solved
        elif "act_strict" in solution.cache:
            active, usable = solution.cache["act_strict"], solved
        else:
            with torch.no_grad():
                plain = detached(params)
                eq = Equilibration.stored(solution.cache)
                if eq is not None:
                    strong, weak = self.classify_constraints(eq.scaled_solution(solution.detach()), eq.params(plain))
                else:
                    strong, weak = self.classify_constraints(solution.detach(), plain)
            active, usable = strong, solved & ~weak.any(-1)
        accuracy = self.options.resolved(solution.z.dtype).tol
        return differentiable_kkt_solution(solution, params, active, usable, accuracy)

    def implicit_vjp(self, solution, params, g, needs):
        """The ``Implicit`` gradient (``lagrangian_grads_tangent`` along ``implicit_tangent``). In a
        ``create_graph=True`` backward: the same values, differentiable in ``g`` through the
        tangent and in ``params`` through ``differentiable_solution`` (the gradient of
        ``⟨g, z(θ)⟩`` for the KKT system's solution map ``z(θ)``, ``g`` held fixed; ``solution``
        is then ``differentiable_solution``'s, as ``ArgminFunction`` passes it)."""
        if not second_order(params):
            return super().implicit_vjp(solution, params, g, needs)
        first = super().implicit_vjp(solution.detach(), detached(params), g, needs)   # in g only
        z = solution.z   # (``ArgminFunction`` passes ``differentiable_solution``'s)
        leaves = [i for i, (p, need) in enumerate(zip(params, needs)) if need and p is not None and p.requires_grad]
        grads = [None] * len(params)
        if z.requires_grad and leaves:
            found = torch.autograd.grad(z, [params[i] for i in leaves], g.detach().expand_as(z),
                                        create_graph=True, allow_unused=True)
            for i, d in zip(leaves, found):
                grads[i] = d
        out = []
        for p, f, d in zip(params, first, grads):
            if f is not None and p is not None:
                f = sum_to_shape(f, p.shape)
                if d is not None:
                    f = f + derivative_of(d)
            out.append(f)
        return tuple(out)

    # -- gradients -----------------------------------------------------------------------------------
    def lagrangian_grads(self, solution, params, needs: Sequence[bool]):
        z = solution.z
        lam, nu = solution.duals.get("lam"), solution.duals.get("nu")
        nQ, nq, nG, nh, nA, nb = needs
        return (
            0.5 * _outer(z, z) if nQ else None,
            z if nq else None,
            _outer(lam, z) if nG and params[2] is not None else None,
            -lam if nh and params[3] is not None else None,
            _outer(nu, z) if nA and params[4] is not None else None,
            -nu if nb and params[5] is not None else None,
        )

    def lagrangian_grads_tangent(self, solution, tangent, params, needs: Sequence[bool]):
        z, dz = solution.z, tangent.z
        lam, nu = solution.duals.get("lam"), solution.duals.get("nu")
        dlam, dnu = tangent.duals.get("lam"), tangent.duals.get("nu")
        nQ, nq, nG, nh, nA, nb = needs
        # the rank-2 sums u zᵀ + v dzᵀ as one (B, ·, 2) @ (B, 2, n) product (one pass over the output)
        zdz = torch.stack([z, dz], -2) if (nQ or nG or nA) else None
        return (
            torch.bmm(torch.stack([dz, z], -1), zdz).mul_(0.5) if nQ else None,
            dz if nq else None,
            torch.bmm(torch.stack([dlam, lam], -1), zdz) if nG and params[2] is not None else None,
            -dlam if nh and params[3] is not None else None,
            torch.bmm(torch.stack([dnu, nu], -1), zdz) if nA and params[4] is not None else None,
            -dnu if nb and params[5] is not None else None,
        )

    def classify_constraints(self, solution: Solution, params):
        """Masks ``(strong, weak)`` of shape ``(B, m)`` (see the class docstring), or None."""
        G, h = params[2], params[3]
        lam = solution.duals.get("lam")
        if G is None or lam is None or lam.shape[-1] == 0:
            return None
        s = solution.cache["s"]
        loose = self.options.resolved(lam.dtype).active_tol
        polished = solution.cache.get("polished")
        # the floor of the multipliers' scale: 1, or for polished elements (exact to rounding)
        # min(1, λ̄) with λ̄ = max(‖Qz‖∞, ‖q‖∞) / max|G|, what Gᵀλ balances at the solution —
        # equilibration can leave the objective's gradient, and every multiplier, at 1e-8 of the
        # scaled data (a minimiser in a near-null direction of Q), where a floor of 1 called
        # active rows weakly active; interior-point multipliers keep 1 (their error on weak rows
        # is O(√tol), absolute)
        floor = 1.0
        if polished is not None:
            # polished solutions are exact to rounding: only a rounding-level multiplier is zero;
            # elements left unpolished keep the tolerance tied to the interior-point accuracy
            eps = torch.finfo(lam.dtype).eps
            # multipliers: √eps in float64 (1.5e-8); below float64 √eps (3.5e-4 in float32) is the
            # size of real multipliers — polished float32 multipliers of 3e-4…7e-4 (|λ|∞ ≈ 1,
            # exact to 1e-7) were called weak and bent ∇ by 10–50 % (bench_qp.py (512, 32, 64)) —
            # so eps^¾ (6.4e-6), as for the slacks
            tight = self.options.active_tol or (eps ** 0.5 if lam.dtype == torch.float64 else eps ** 0.75)
            tau = torch.where(polished, lam.new_tensor(tight), loose).unsqueeze(-1)
            # a polished slack is h − Gz to rounding, far more accurate than a multiplier: with
            # √eps (3.5e-4 in float32) an inactive row of slack 8e-4 was called weakly active and
            # bent the tangent (40 % off in one of 128 elements of bench_qp.py's (128, 10, 10))
            # (below float64 only: in float64 a slack of 4e-11 on a row outside the polished active
            # set was called inactive, and the KKT tangent of a minimiser that is not unique along
            # that row came out at 5e10 without a warning, where √eps sends it to the backward QP)
            tight_s = eps ** 0.5 if lam.dtype == torch.float64 else eps ** 0.75
            tau_s = torch.where(polished, lam.new_tensor(self.options.active_tol or tight_s),
                                loose).unsqueeze(-1)
            lam_nat = torch.maximum(_abs_max(_mv(params[0], solution.z)), _abs_max(params[1])) / \
                _abs_max(G, (-2, -1)).clamp(min=torch.finfo(lam.dtype).tiny)
            floor = torch.where(polished, lam_nat.reshape(-1).clamp(max=1.0), 1.0).unsqueeze(-1)
        else:
            tau = tau_s = loose
        lam_scale = _abs_max(lam, keepdim=True) + floor
        h_scale = _abs_max(h, keepdim=True) + 1
        if self.options.active_tol is None and (polished is None or not polished.is_cpu or not bool(polished.all())):
            # unpolished elements: the multiplier threshold is at least κ√μ̂, μ̂ the element's mean
            # complementarity product relative to the scales — a weakly active pair has both
            # members of order √μ̂, and the answer's accuracy can be below what tol and eps_abs
            # promise (eps_abs = 1e-4 on degenerate_qp: weak rows with λ ~ 1e-3 > √tol were read
            # as strongly active, gradients 1.7 off; 3e-4 with κ = 30, 10 was not enough). The
            # slack threshold keeps √a: raised as well, it called inactive rows with slacks of
            # ~25√μ̂ weakly active (random_qp(32, 6, 30, 0, seed=3): 0.81 off instead of 1.3e-5).
            # (The polished-only check is made on the CPU, where it costs no synchronisation.)
            mu = ((lam / lam_scale) * (s / h_scale)).mean(-1, keepdim=True)
            adapt = (_WEAK_PAIR_FACTOR * mu.clamp(min=0).sqrt()).to(lam.dtype)
            tau = torch.as_tensor(tau, dtype=lam.dtype, device=lam.device)
            raised = torch.maximum(tau, adapt)
            tau = raised if polished is None else torch.where(polished.unsqueeze(-1), tau, raised)
        strong = lam > tau * lam_scale
        weak = ~strong & (s <= tau_s * h_scale)
        return strong, weak

    def implicit_tangent(self, solution, params, g) -> Solution:
        eq = Equilibration.stored(solution.cache)
        if eq is not None:
            # the tangent of the equilibrated problem along σg: same dz, multipliers mapped back
            tangent = self._implicit_tangent(eq.scaled_solution(solution), eq.params(params), eq.direction(g))
            return eq.unscaled_solution(tangent)
        return self._implicit_tangent(solution, params, g)

    def _implicit_tangent(self, solution, params, g) -> Solution:
        if "act_strict" in solution.cache:
            # classified by the active-set solver (one solved problem, Q definite beyond rounding):
            # strictly complementary, and its KKT matrix, unregularised, was factorised exactly by
            # the forward — no failure to catch, nothing to check (the B = 1 backward stays short)
            return self._kkt_tangent(solution, params, g, check=False)
        return self._zero_failed(solution, self._classified_tangent(solution, params, g), g)

    def _classified_tangent(self, solution, params, g) -> Solution:
        """The KKT tangent for the elements without weakly active constraints, the backward QP
        for the others (on their sub-batch only: an element's tangent never depends on the other
        elements of its batch)."""
        masks = self.classify_constraints(solution, params)
        qp = None if masks is None else masks[1].any(-1) & solution.solved
        if qp is None or not bool(qp.any()):
            return self._kkt_tangent(solution, params, g)
        strong, weak = masks
        # the backward QP is solved as data (in a create_graph backward its tangent gets its
        # derivative in g from ``_linear_in_cotangent``; none in θ, see ``differentiable_solution``)
        plain = detached(params)
        if bool(qp.all()):
            with torch.no_grad():
                part = self._backward_qp(solution.z.detach(), plain, g.detach(), strong, weak)
            return self._linear_in_cotangent(part, solution.z.detach(), plain, g, strong, weak)
        idx = torch.nonzero(qp).reshape(-1)
        tangent = self._kkt_tangent(solution, params, g)
        sub = _select(plain, idx, _QP_CORES)
        g_sub = _select((g,), idx, (1,))[0]
        with torch.no_grad():
            part = self._backward_qp(solution.z.detach().index_select(0, idx), sub, g_sub.detach(),
                                     strong.index_select(0, idx), weak.index_select(0, idx))
        part = self._linear_in_cotangent(part, solution.z.detach().index_select(0, idx), sub, g_sub,
                                         strong.index_select(0, idx), weak.index_select(0, idx), idx,
                                         solution.z.shape[0])
        status = tangent.status.index_copy(0, idx, part.status)
        return Solution(z=tangent.z.index_copy(0, idx, part.z),
                        duals={k: v.index_copy(0, idx, part.duals[k]) for k, v in tangent.duals.items()},
                        status=status)

    def _linear_in_cotangent(self, part: Solution, z, params, g, strong, weak, rows=None, B=None) -> Solution:
        """The backward QP's tangent ``part`` (data) with its derivative in ``g`` in a backward that
        builds a graph (``building_graph``): the tangent is positively homogeneous and piecewise
        linear in ``g``, linear where the backward QP's own active set — the strongly active rows
        and the weakly active ones it holds with a positive multiplier (relative to its largest) —
        does not change; there it is the KKT tangent on that set (``kkt_tangent``, torch ops in
        ``g``). Values stay the backward QP's; an element whose KKT tangent does not reproduce them (to ``1e-6`` of
        its size in float64, ``1e-3`` below; an ambiguous active set) keeps no derivative, and a
        note names it (its batch index: ``rows`` of a batch of ``B``, default all)."""
        if not building_graph():   # (not ``g.requires_grad``: under torch.func it reads False)
            return part
        dlam = part.duals["lam"]
        held = weak & (dlam > 1e-9 * dlam.abs().amax(-1, keepdim=True))   # scale-free: g may be tiny
        kkt = Solution(z=z, cache={"act": strong | held})
        dz, dl, dn = kkt_tangent(params[0], params[2], params[4], kkt, g.expand_as(z), self.options)
        tol = 1e-6 if z.dtype == torch.float64 else 1e-3
        with torch.no_grad():
            size = part.z.abs().amax(-1)
            ok = (dz - part.z).abs().amax(-1) <= tol * size + torch.finfo(z.dtype).tiny
            lost = ~ok & (part.status == Status.SOLVED) if part.status is not None else ~ok
            if bool(lost.any()):
                if rows is not None:
                    lost = torch.zeros(B, dtype=torch.bool, device=z.device).index_copy(0, rows, lost)
                note_zeroed_second_derivatives(lost, "weakly active constraints whose backward QP's own active set "
                                               "is ambiguous (the derivative through the cotangent is dropped "
                                               "too)", "QP")
        duals = {"lam": part.duals["lam"] + derivative_of(dl, ok)}
        if "nu" in part.duals:
            duals["nu"] = part.duals["nu"] + (derivative_of(dn, ok) if dn.shape[-1] else 0.0)
        return Solution(z=part.z + derivative_of(dz, ok), duals=duals, status=part.status,
                        iterations=part.iterations, residuals=part.residuals)

    @staticmethod
    def _zero_failed(solution: Solution, tangent: Solution, g: torch.Tensor) -> Solution:
        """The tangent with zeros for every element whose forward solve failed (no warning: its
        status says so) and for every solved element whose tangent failed — a backward QP not
        solved (also in float64) or a non-finite tangent — with a ``RuntimeWarning`` naming those.
        A non-finite cotangent ``g`` is the caller's: its element's tangent is left as computed."""
        solved = solution.solved
        ok = solved & torch.isfinite(tangent.z).all(-1)
        for v in tangent.duals.values():
            ok = ok & torch.isfinite(v).all(-1)
        if tangent.status is not None:
            ok = ok & (tangent.status == Status.SOLVED)
        if bool(ok.all()):
            return tangent
        ok = ok | (solved & ~torch.isfinite(g.expand_as(tangent.z)).all(-1))
        failed = solved & ~ok
        if bool(failed.any()):
            idx = torch.nonzero(failed).reshape(-1).tolist()
            shown = ", ".join(map(str, idx[:20])) + (", ..." if len(idx) > 20 else "")
            why = "backward QP not solved, tangent not solving the KKT system (no derivative) or " \
                "not finite" if tangent.status is not None else "tangent not finite"
            warnings.warn(
                f"QP implicit gradient: {why} for {len(idx)} solved batch element(s), batch indices "
                f"[{shown}]; their gradients are set to zero (the other elements' are unaffected)",
                RuntimeWarning, stacklevel=2)
        keep = ok.unsqueeze(-1)
        return Solution(z=torch.where(keep, tangent.z, 0.0),
                        duals={k: torch.where(keep, v, 0.0) for k, v in tangent.duals.items()},
                        status=tangent.status)

    def _kkt_tangent(self, solution, params, g, check: bool = True) -> Solution:
        """Strict complementarity: the KKT linear system with the forward's factorisation; with
        ``check``, its per-element ``status`` from ``_stationarity_status``."""
        dz, dlam, dnu = kkt_tangent(params[0], params[2], params[4], solution, g, self.options)
        status = _stationarity_status(params, g.expand_as(dz), dz, dlam, dnu) if check else None
        return Solution(z=dz, duals={"lam": dlam, "nu": dnu}, status=status)

    def _backward_qp(self, z, params, g, strong, weak) -> Solution:
        """Weakly active constraints: the backward QP ``min ½dᵀQd + gᵀd`` s.t. ``G_S d = 0``,
        ``G_W d ≤ 0``, ``A d = 0``, batched with the rows of ``S`` and ``W`` gathered (padded to the
        batch's largest counts with zero rows): its size is that of the two sets, not of ``G``.
        Its per-element ``status`` says which elements were solved (below float64 after a float64
        re-solve of the failing ones); nothing is raised here."""
        Q, q, G, h, A, b = params
        B = z.shape[0]
        g = g.expand_as(z)
        Gb = _with_batch(G, 2)
        iw, vw = _rows_of(weak)
        i_s, vs = _rows_of(strong)
        Gw = _gather_rows(Gb, iw) * vw.unsqueeze(-1).to(G.dtype)
        hw = (~vw).to(G.dtype)                       # padding rows read 0ᵀd ≤ 1
        Gs = _gather_rows(Gb, i_s) * vs.unsqueeze(-1).to(G.dtype)
        p = 0 if A is None else A.shape[-2]
        Aeq = Gs if A is None else torch.cat([A.expand(B, *A.shape[-2:]), Gs], dim=-2)
        beq = Aeq.new_zeros(Aeq.shape[:-1])
        if Aeq.shape[-2] == 0:
            Aeq = beq = None
        # the solution is positively homogeneous in g (its constraints are cones): solved for
        # g/‖g‖∞ and scaled back — a small g (e.g. 1e-6 after equilibration) fell below the
        # solver's absolute tolerances, and ∇q came out up to 250% off in float32
        gscale = _abs_max(g, keepdim=True)
        gscale = torch.where(gscale > 0, gscale, 1.0)
        data = (Q, g / gscale, Gw, hw, Aeq, beq)
        sol = self._solve(data, None, options=self._inner_options)
        bad = ~sol.solved
        if z.dtype != torch.float64 and bool(bad.any()):
            # below float64, a weakly active row that nearly repeats a strongly active one (to
            # rounding) leaves the backward QP's multipliers undetermined at the dtype's precision:
            # those elements are solved again in float64 (the tangent is returned in the dtype)
            sol = self._backward_qp_float64(sol, bad, data)
        nu = sol.duals.get("nu")
        dlam = z.new_zeros(weak.shape).scatter_add(1, iw, sol.duals["lam"] * gscale * vw)
        if i_s.shape[-1]:
            dlam = dlam.scatter_add(1, i_s, nu[..., p:] * gscale * vs)
        dnu = nu[..., :p] * gscale if p else z.new_zeros(B, 0)
        return Solution(z=sol.z * gscale, duals={"lam": dlam, "nu": dnu}, status=sol.status,
                        iterations=sol.iterations, residuals=sol.residuals)

    def _backward_qp_float64(self, sol: Solution, bad: torch.Tensor, data) -> Solution:
        """``sol`` with its elements ``bad`` replaced by the float64 solve of their backward QP
        ``data = (Q, g, G_W, h_W, A_eq, b_eq)`` (unbatched ones shared)."""
        idx = torch.nonzero(bad).reshape(-1)
        redo = solve_qp_ipm(*(None if t is None else t.double() for t in _select(data, idx, _QP_CORES)),
                            options=self._inner_options)

        def put(a, b_):
            return a.index_copy(0, idx, b_.to(a.dtype))
        return Solution(z=put(sol.z, redo.z), duals={k: put(v, redo.duals[k]) for k, v in sol.duals.items()},
                        status=put(sol.status, redo.status), iterations=put(sol.iterations, redo.iterations),
                        residuals={k: put(v, redo.residuals[k]) for k, v in sol.residuals.items()})
