"""``QPOptions``: tolerances and numerical settings of the batched interior-point QP solver."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

#: Default relative tolerances per dtype (primal residual, dual residual, duality gap).
DEFAULT_TOL = {torch.float64: 1e-8, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
#: Default static regularisation of the reduced KKT matrix (relative to its diagonal scale).
DEFAULT_REG = {torch.float64: 1e-11, torch.float32: 1e-7, torch.float16: 1e-3, torch.bfloat16: 1e-3}
#: Default absolute tolerance ``eps_abs`` on the original problem, per dtype.
DEFAULT_EPS_ABS = {torch.float64: 1e-8, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
#: Default relative tolerance ``eps_rel`` on the original problem, per dtype.
DEFAULT_EPS_REL = {torch.float64: 0.0, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
#: Default tolerance of the infeasibility certificates per dtype.
DEFAULT_TOL_INFEASIBLE = {torch.float64: 1e-8, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}


def _unpolished_threshold(dtype, tol: float, eps_abs: float, contract: bool) -> float:
    """The default weakly-active threshold of unpolished answers (``QPProblem``): in float64
    ``√a``, ``a`` the accuracy they have — the iterations' ``tol``, or the contract's ``eps_abs``
    where that is tighter (elements iterate on to meet it); below float64 ``tol^¼``.

    ``QPProblem.classify_constraints`` raises the multipliers' threshold to ``30√μ̂`` where an
    element's complementarity says its accuracy is lower. Measured against the exact (polished) gradients: at the float64
    defaults ``√a = 1e-4`` keeps the multipliers of random problems (down to 1e-3) strongly
    active, where ``tol^¼ = 1e-2`` bent gradients by up to 18 times their size. In float32 the
    real multipliers reach down to ~√μ and no threshold separates them from weakly active pairs;
    ``tol^¼`` (0.1) keeps the weak pairs (errors ~1e-2 on degenerate problems, O(1) on random
    ones either way)."""
    if dtype != torch.float64:
        return tol ** 0.25
    return (min(tol, eps_abs) if contract else tol) ** 0.5


@dataclass(frozen=True)
class QPOptions:
    r"""Numerical settings of the QP solver (every field has a per-dtype default).

    **The SOLVED contract.** A batch element is reported ``Status.SOLVED`` only if its answer
    ``(z, λ, ν)`` meets the tolerances ``eps_abs``, ``eps_rel`` on the *original* problem (the
    data as given, before any equilibration), with residuals evaluated in float64 (∞-norms; the
    definitions of qpbenchmark / ``qpsolvers.Solution``):

    .. math::

        r_p &= \max(\|[Gz - h]_+\|_\infty,\ \|Az - b\|_\infty)
            \le \epsilon_{abs} + \epsilon_{rel} \max(\|Gz\|_\infty, \|h\|_\infty,
            \|Az\|_\infty, \|b\|_\infty) \\
        r_d &= \|Qz + q + G^T\lambda + A^T\nu\|_\infty
            \le \epsilon_{abs} + \epsilon_{rel} \max(\|Qz\|_\infty, \|q\|_\infty,
            \|G^T\lambda\|_\infty, \|A^T\nu\|_\infty) \\
        r_g &= |z^TQz + q^Tz + h^T\lambda + b^T\nu|
            \le \epsilon_{abs} + \epsilon_{rel} \max(|z^TQz|, |q^Tz|, |h^T\lambda|, |b^T\nu|)

    (``λ ≥ 0``; ``r_g`` is the difference of the primal and dual objectives), each right-hand side
    plus ``64·u·a``. An element whose iterations stop without meeting them is
    ``Status.INACCURATE`` (or ``MAX_ITERATIONS`` at the iteration limit); ``Solution.residuals``
    holds ``r_p``, ``r_d``, ``r_g`` of the original problem.

    ``u·a`` is the rounding of the residual's own evaluation: ``u`` the unit roundoff of the
    answer's dtype, ``a`` the same sums with every term in absolute value (see
    ``declarative.qp.residuals``) — without it a minimiser of size 1e8 along a near-null direction of
    ``Q`` (``zᵀQz`` cancelling from terms of 1e15) could never be SOLVED, however exact.

    Defaults: float64 ``eps_abs = 1e-8``, ``eps_rel = 0``; float32 ``eps_abs = 1e-4``,
    ``eps_rel = 1e-5``. In float64 the test is absolute (plus the rounding term): a relative
    tolerance lets a large problem pass with a large absolute error — with ``eps_rel = 1e-10``,
    Maros–Meszaros problems with objectives of 1e4–1e8 were SOLVED with absolute duality gaps of
    1e-5 to 1e-3 — while polished answers, exact to rounding, meet the absolute test at any scale
    through the rounding term. float32 keeps a relative part: its rounding, ~6e-8 per operation,
    accumulates to ~1e-6 relative over sums of a few hundred products.
    Setting only ``tol`` (its meaning before ``eps_abs``/``eps_rel`` existed: a relative
    tolerance with ``1 +`` in the denominators, i.e. absolute for data of unit size) sets
    ``eps_abs = tol`` and leaves ``eps_rel`` at its default.

    **The iterations** stop on relative residuals of the (equilibrated) problem they work on,
    below ``tol`` (default ``1e-8`` float64, ``1e-4`` float32; the largest of ``eps_abs`` and
    ``eps_rel`` caps it when those are given): ``s = h − Gz`` is the slack,

    * primal: ``max(‖Gz + s − h‖ / (1 + max(‖Gz‖, ‖s‖, ‖h‖)), ‖Az − b‖ / (1 + max(‖Az‖, ‖b‖)))``
    * dual:   ``‖Qz + q + Gᵀλ + Aᵀν‖ / (1 + max(‖Qz‖, ‖q‖, ‖Gᵀλ‖, ‖Aᵀν‖))``
    * gap:    ``sᵀλ / (1 + |½zᵀQz + qᵀz|)``

    An element that stops there but misses the contract above is solved again with a hundred
    times tighter iteration tolerances (at most twice) before it is called ``INACCURATE``.

    Attributes:
        eps_abs: absolute tolerance of the SOLVED contract (None: ``1e-8`` float64, ``1e-4``
            float32; ``tol`` if only that is given).
        eps_rel: relative tolerance of the SOLVED contract (None: ``0`` float64, ``1e-5``
            float32). 0: an absolute test (up to the rounding term).
        contract: check the SOLVED contract on the original problem (default). False: SOLVED
            means the iterations' relative tolerances are met — for inner solves whose accuracy
            their caller judges (the implicit backward's QP), not for answers given to users.
        tol: relative tolerance of the iterations for all three residuals (None: ``1e-8``
            float64, ``1e-4`` float32, at most ``max(eps_abs, eps_rel)`` when those are given).
        tol_primal, tol_dual, tol_gap: override ``tol`` for one residual.
        max_iter: iteration limit (elements not converged get ``Status.MAX_ITERATIONS``).
        reg: static regularisation ``δ`` added to the diagonal of the reduced KKT matrix
            ``Q + GᵀWG + ρAᵀA`` (scaled by ``1 + max|diag|``) and of the equality Schur
            complement; it keeps the Cholesky factorisation defined for positive semidefinite
            ``Q``. None: ``1e-11`` float64, ``1e-7`` float32.
        rho: weight of the augmented term ``ρAᵀA`` (makes the reduced matrix definite when ``Q`` is
            only definite on the null space of ``A``).
        tol_infeasible: tolerance of the iterations' infeasibility detection (None: ``1e-8``
            float64, ``1e-5`` float32); a detected certificate is then verified on the original
            data at ``residuals.CERTIFICATE_TOL`` (``1e-10`` float64, ``1e-5`` float32) before it
            is reported.
        step_fraction: fraction of the step to the boundary of the positive orthant.
        active_tol: relative threshold of the weakly-active classification used by the implicit
            gradient (see ``QPProblem``). None: for polished solutions ``√eps`` in float64
            (``1.5e-8``) and ``eps^¾`` below (``6.4e-6`` in float32); for unpolished answers
            (``polish=False``, or where the polish failed) ``√min(tol, eps_abs)`` in float64
            (``√tol`` with ``contract=False``; ``1e-4`` by default) and ``tol ** 0.25`` below
            (``0.1`` in float32), the multipliers' threshold raised to ``30√μ̂`` where the
            element's complementarity is larger (``_unpolished_threshold``). Setting it fixes
            every threshold (no ``30√μ̂``).
        warm_start_margin: a warm start's slacks and multipliers are lifted to at least this value
            (times the data scale), so that the iterate is interior.
        polish: after convergence, solve the equality-constrained QP on the guessed active set
            exactly and keep it if it is primal feasible with non-negative multipliers (removes the
            ``O(√tol)`` error of interior-point iterates at weakly active constraints).
        polish_tol: with ``polish``, the interior-point iterations stop at this looser relative
            tolerance (or ``tol`` if larger) and the polished solution must meet ``tol``; elements
            whose polish fails continue to ``polish_tol / 100`` and are polished again, then to
            ``tol`` (polished a last time). None (default): ``1e-1``, which usually identifies the
            active set in fewer iterations (a wrong guess costs another polish round), or ``1e-2``
            when ``mixed_precision`` applies: its float32 iterations cost about half of a float64
            one, so a closer iterate, whose guess is right more often, saves float64 polish rounds
            (measured: 20–30% less time at B = 128, n = 30–100); ``1e-3`` where at least ``2n``
            rows of ``G`` can be active together (a variable's two bound rows counted once): their
            guesses need several polish rounds at a looser iterate (measured: random QPs with
            m = 2n–3n 1.3–2.3× faster, QPs with few active rows among them 0.86–0.90×).
        mixed_precision: float64 problems with inequalities and ``polish``: run the first
            interior-point phase (to ``polish_tol``) in float32 — about half the time of its
            factorisations and matrix–vector products — and everything after it in float64: the
            polish, its KKT check against ``tol``, the retries and the backward. The float32
            iterate only guides the polish to the active set, so the result meets the same
            tolerances. Elements the float32 phase does not bring to ``polish_tol`` (an
            infeasibility certificate, non-finite steps, 30 iterations) are solved again in
            float64 from the cold start, so their statuses are those of the float64 solver.
            None (default): on when ``B·n·(n + m) ≥ 65536`` (below that the cost is per-operation
            overhead, and float32 saves nothing); True: whenever it applies; False: never.
            float32 problems (with ``polish``, or without inequalities) are solved as float64
            problems in the same way — float32 phase 1 where this applies, the rest in float64,
            with the float32 tolerances — and answered in float32 (``ipm._solve_upcast``).
        active_set: one problem (batch size 1) with ``n + m + p ≤ 128`` and positive definite ``Q``
            is solved by the dual active-set method (``qp.active_set``: a few small dense solves,
            exact, no polish) instead of the interior-point method, which takes over whenever it
            does not apply or does not succeed. Used by ``QPProblem`` (the layer and ``solve_qp``),
            not by the raw ``solve_qp_ipm``. False: always the interior-point method.
        proximal_max_iter: iteration limit of the second solver: elements (with inequalities)
            that the interior-point method leaves ``INACCURATE`` — or ``NON_FINITE`` although
            their data are finite — are solved again from the cold start by the proximal
            interior-point method (``qp.proximal_ipm``), whose answer replaces theirs (as
            ``SOLVED``) where it meets the contract; its iterations add to ``Solution.iterations``.
            The limit holds per run: an element it leaves unsolved on the equilibrated problem
            is run once more on the original data (at most twice this many iterations in all).
            0: no second solver. Needs ``contract`` (it stops on the contract).
        least_norm_multipliers: polished answers at a degenerate vertex whose multipliers cancel
            (terms ``10⁴`` times the gradient they balance) and whose dual residual's rounding
            matters against ``eps_abs`` get the least-norm non-negative multipliers of their active
            rows (``qp.least_norm``: one more, strictly convex, QP solve of those elements), where
            these are no worse on the original problem. ``z`` is unchanged. False: the polished
            multipliers as they are.
    """

    eps_abs: float | None = None
    eps_rel: float | None = None
    tol: float | None = None
    tol_primal: float | None = None
    tol_dual: float | None = None
    tol_gap: float | None = None
    max_iter: int = 50
    reg: float | None = None
    rho: float = 1.0
    tol_infeasible: float | None = None
    step_fraction: float = 0.99
    active_tol: float | None = None
    warm_start_margin: float = 1e-3
    polish: bool = True
    polish_tol: float | None = None
    mixed_precision: bool | None = None
    active_set: bool = True
    contract: bool = True
    proximal_max_iter: int = 150
    least_norm_multipliers: bool = True

    def __post_init__(self):
        for name in ("tol", "tol_primal", "tol_dual", "tol_gap", "reg", "tol_infeasible", "active_tol",
                     "polish_tol", "eps_abs"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1):
                raise ValueError(f"QPOptions.{name}: expected a number in (0, 1) or None, got {v!r}")
        v = self.eps_rel
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1):
            raise ValueError(f"QPOptions.eps_rel: expected a number in [0, 1) or None, got {v!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"QPOptions.max_iter: expected an integer >= 1, got {self.max_iter!r}")
        if not 0 < self.step_fraction < 1:
            raise ValueError(f"QPOptions.step_fraction: expected a number in (0, 1), got {self.step_fraction!r}")
        if not self.rho >= 0:
            raise ValueError(f"QPOptions.rho: expected a number >= 0, got {self.rho!r}")
        if self.mixed_precision not in (None, True, False):
            raise ValueError(f"QPOptions.mixed_precision: expected True, False or None, got {self.mixed_precision!r}")
        if not isinstance(self.contract, bool):
            raise ValueError(f"QPOptions.contract: expected True or False, got {self.contract!r}")
        if not isinstance(self.least_norm_multipliers, bool):
            raise ValueError(f"QPOptions.least_norm_multipliers: expected True or False, got "
                             f"{self.least_norm_multipliers!r}")
        if not isinstance(self.active_set, bool):
            raise ValueError(f"QPOptions.active_set: expected True or False, got {self.active_set!r}")
        if (isinstance(self.proximal_max_iter, bool) or not isinstance(self.proximal_max_iter, int)
                or self.proximal_max_iter < 0):
            raise ValueError(f"QPOptions.proximal_max_iter: expected an integer >= 0, got {self.proximal_max_iter!r}")
        if not self.warm_start_margin > 0:
            raise ValueError(f"QPOptions.warm_start_margin: expected a number > 0, got {self.warm_start_margin!r}")

    def resolved(self, dtype: torch.dtype) -> "QPOptions":
        """A copy with every ``None`` replaced by its default for ``dtype`` (built once per dtype
        and kept on the instance: a ``replace`` costs about as much as ten small tensor ops, and
        every solve and backward asks for it)."""
        cache = self.__dict__.get("_resolved")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_resolved", cache)   # not a field: eq, hash, repr ignore it
        out = cache.get(dtype)
        if out is None:
            out = cache[dtype] = self._resolve(dtype)
        return out

    def _resolve(self, dtype: torch.dtype) -> "QPOptions":
        eps_given = self.eps_abs is not None or self.eps_rel is not None
        if self.eps_abs is not None:
            eps_abs = self.eps_abs
        elif self.tol is not None:
            eps_abs = self.tol                  # ``tol`` alone: absolute for data of unit size
        else:
            eps_abs = DEFAULT_EPS_ABS.get(dtype, 1e-8)
        eps_rel = self.eps_rel if self.eps_rel is not None else DEFAULT_EPS_REL.get(dtype, 0.0)
        tol = self.tol if self.tol is not None else DEFAULT_TOL.get(dtype, 1e-8)
        if self.tol is None and eps_given:
            tol = min(tol, max(eps_abs, eps_rel))
        return replace(
            self,
            eps_abs=eps_abs,
            eps_rel=eps_rel,
            tol=tol,
            tol_primal=self.tol_primal if self.tol_primal is not None else tol,
            tol_dual=self.tol_dual if self.tol_dual is not None else tol,
            tol_gap=self.tol_gap if self.tol_gap is not None else tol,
            reg=self.reg if self.reg is not None else DEFAULT_REG.get(dtype, 1e-11),
            tol_infeasible=(self.tol_infeasible if self.tol_infeasible is not None
                            else DEFAULT_TOL_INFEASIBLE.get(dtype, 1e-5)),
            active_tol=(self.active_tol if self.active_tol is not None
                        else _unpolished_threshold(dtype, tol, eps_abs, self.contract)),
        )
