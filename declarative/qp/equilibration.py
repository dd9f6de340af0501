r"""Equilibration of QP data: the objective, the constraint rows and the variables brought to unit size.

The solver's convergence tests, its polish and the weak-activity classification of the backward
measure residuals, multipliers and slacks against ``1 + scale``; the ``1`` makes them absolute when
the data are small. An objective of size 1e-6 then passes as converged 1% away from its minimiser,
with the wrong active set (and the wrong gradient); variables of sizes 1e-4 and 1e4 in one problem
leave the Newton systems near singular along some of them (false DUAL_INFEASIBLE verdicts,
non-finite iterates). ``QPProblem`` therefore solves the equivalent problem in ``z = Dz'``, ``D``
a positive diagonal (one entry per variable),

.. math::

    \min_{z'} \tfrac12 z'^\top (\sigma DQD) z' + (\sigma Dq)^\top z'
    \quad\text{s.t.}\quad (D_G G D) z' \le D_G h,\quad (D_A A D) z' = D_A b .

**Variables.** ``D = t D_r``: ``D_r`` from ``RUIZ_ITERATIONS`` Ruiz iterations on the KKT
matrix ``[[cQ, Gᵀ, Aᵀ], [G, 0, 0], [A, 0, 0]]`` (each pass divides every column and row by the
square root of its ∞-norm, the objective block normalised to ``max|cDQD| = 1``: its overall size
is the cost scale's business), so that every variable's column ``max(‖(DQD)_{:,j}‖∞, ‖(GD)_{:,j}‖∞,
‖(AD)_{:,j}‖∞)`` is of unit size relative to the others; ``t`` a common factor, an estimate of the
size of the Ruiz-scaled minimiser: the median over the constraint rows of ``|h_i| / ‖(GD_r)_i‖∞``
and ``|b_j| / ‖(AD_r)_j‖∞`` (``max|D_r q| / max|D_r Q D_r|`` without rows), used when it is
outside ``[1/BAND, BAND]`` — without it a minimiser of size 1e-8 (``q``, ``h``, ``b`` small against
``Q``, ``G``) met the tolerances only absolutely, and its active rows were classified as weakly
active (wrong gradients).

**Objective and rows**, on the data in ``z'``: ``σ = 1 / max(max|DQD|, max|Dq|)``,
``D_G = diag(1 / max(‖(GD)_i‖∞, |h_i|))`` and ``D_A = diag(1 / max(‖(AD)_j‖∞, |b_j|))`` (all-zero
rows keep 1). Every entry of the scaled data is then at most 1 in magnitude — including the
right-hand sides, which the tolerances are measured against: a row scaled by its ``G_i`` alone
would turn a nearly vacuous row (``10⁻⁸ gᵀz ≤ 1``) into ``gᵀz ≤ 10⁸`` and loosen every tolerance of
its element by ``10⁸``, while with ``h_i`` in the maximum the same row — and a big-M bound
``z_k ≤ 10⁸`` — becomes harmless (``10⁻⁸ gᵀz ≤ 1``). The scales are clipped to ``[1/c, c]`` with
``c = 1/√tiny`` of the dtype, so the scaled data stay finite. All scales, and the in-band test
below, ignore non-finite data (a norm that a NaN or inf reaches counts as 0; the Ruiz iterations
skip just the non-finite entries): a NaN or inf in one element stays in that element (which the
solver reports as ``Status.NON_FINITE``) and leaves the scales of the others — shared ones
included — and the decision to scale as they would be without it.

When ``Q`` is unbatched, ``σ`` and ``D`` are one scaling for the whole batch (column norms are
maxima over it), so that ``Q`` stays unbatched; else they are per element. One exception: when the
elements' objective sizes ``max(max|Q|, max|q|)`` differ by more than ``BAND²``, one ``σ`` would
leave the small ones at the rounding level of the large one, so ``σ`` and ``t`` are per element
(``D = t·D_r`` then has shape ``(B, n)``, and the scaled ``Q``, ``G`` and ``A`` are batched: the
solver's shared-matrix products are lost for that batch) while ``D_r`` stays shared. The Ruiz iterations are
a fixed number of batched reductions (no host synchronisation) on ``|Q|``, ``|G|``, ``|A|`` and the
scale vectors (no scaled copy of the data per pass). When the KKT columns of the data as given
already lie within a factor ``BAND`` of each other, ``D_r = I`` (no iterations; decided in the
in-band test's host synchronisation).

**Mapping back.** The scaled problem's minimiser is ``z' = D⁻¹z*``; its multipliers are
``λ' = σλ / d_G`` and ``ν' = σν / d_A``. The derivative of ``z*`` along a nudge ``q → q + βg`` is
``D`` times that of the scaled problem along ``σDg`` (``dλ = d_G dλ' / σ``, ``dν = d_A dν' / σ``),
so every gradient mode works on the scaled problem and maps back exactly; the scales are constants
for the gradient (``z*`` does not depend on them).

Data whose block sizes ``max(max|Q|, max|q|)``, ``max(‖G_i‖∞, |h_i|)``, ``max(‖A_j‖∞, |b_j|)`` and
the ratio of the largest right-hand side (``q``, ``h``, ``b``) to the largest matrix entry (``Q``,
``G``, ``A``; a cheap bound for the minimiser's size) all lie in ``[1/BAND, BAND]`` (or are zero)
are left as they are (``equilibration`` returns None): the solver handles them directly, and
bit-for-bit as without this module.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..solution import Solution
from .linalg import _abs_max, _one_problem, _select

__all__ = ["Equilibration", "equilibration"]

#: scales within ``[1/BAND, BAND]`` need no equilibration
BAND = 100.0


class Equilibration(NamedTuple):
    """The scales of one QP batch (see the module docstring).

    Shape:
        - cost ``σ``: ``()`` when ``Q`` is unbatched (one scale for the batch: ``Q`` stays
          unbatched), else ``(B,)`` (also for an unbatched ``Q`` whose batch's objective sizes
          differ by more than ``BAND²``: see the module docstring)
        - ineq ``d_G``: ``(m,)`` or ``(B, m)`` (``(B, m)`` when ``h`` or ``G`` is batched, or ``σ``
          is per element); None without inequalities
        - eq ``d_A``: ``(p,)`` or ``(B, p)``; None without equalities
        - var ``D`` (the diagonal): ``(n,)`` when ``σ`` is ``()``, else ``(B, n)``
    """

    cost: torch.Tensor
    ineq: torch.Tensor | None
    eq: torch.Tensor | None
    var: torch.Tensor

    # -- in a Solution's cache (which travels through autograd as tensors) ---------------------------
    def store(self, cache: dict) -> None:
        """Put the scales into a solver cache (keys ``eq_cost``, ``eq_var``, ``eq_ineq``, ``eq_eq``)."""
        cache["eq_cost"] = self.cost
        cache["eq_var"] = self.var
        for key, t in (("eq_ineq", self.ineq), ("eq_eq", self.eq)):
            if t is not None:
                cache[key] = t

    @classmethod
    def stored(cls, cache: dict) -> "Equilibration | None":
        """The scales put into ``cache`` by ``store``, or None."""
        if "eq_cost" not in cache:
            return None
        return cls(cache["eq_cost"], cache.get("eq_ineq"), cache.get("eq_eq"), cache["eq_var"])

    def select(self, ix: torch.Tensor) -> "Equilibration":
        """The scales of the batch elements ``ix`` (shared scales stay shared)."""
        return Equilibration(_select(self.cost, ix), _select(self.ineq, ix, 1), _select(self.eq, ix, 1),
                             _select(self.var, ix, 1))

    # -- data ----------------------------------------------------------------------------------------
    @staticmethod
    def _per_element(c: torch.Tensor, dims: int) -> torch.Tensor:
        """``c`` (``()`` or ``(B,)``) shaped to broadcast against a tensor with ``dims`` core axes."""
        return c.reshape(*c.shape, *([1] * dims)) if c.dim() else c

    def params(self, params):
        """``(σDQD, σDq, D_G G D, D_G h, D_A A D, D_A b)`` (None blocks stay None)."""
        Q, q, G, h, A, b = params
        c = self._per_element(self.cost, 0)
        D = self.var
        # the matrices' second product in place on the first's result (the same values: at
        # (128, 500, 500) a fresh temporary per product cost 0.5–1.4 s of allocation); out of
        # place where autograd records it
        inplace = not torch.is_grad_enabled() or not any(
            t is not None and t.requires_grad for t in (Q, G, A, self.cost, self.var, self.ineq, self.eq))
        scale = self._per_element(c, 2) * D.unsqueeze(-1) * D.unsqueeze(-2)
        Qs = scale.mul_(Q) if inplace and scale.shape == torch.broadcast_shapes(scale.shape, Q.shape) else Q * scale
        qs = q * (self._per_element(c, 1) * D)
        Gs = hs = As = bs = None
        if G is not None:
            Gs, hs = _rows_then_columns(G, self.ineq, D, inplace), h * self.ineq
        if A is not None:
            As, bs = _rows_then_columns(A, self.eq, D, inplace), b * self.eq
        return Qs, qs, Gs, hs, As, bs

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        """The nudge direction of the scaled problem, ``σDg``."""
        return g * (self._per_element(self.cost, 1) * self.var)

    # -- variables and multipliers -------------------------------------------------------------------
    def unscale_z(self, z: torch.Tensor) -> torch.Tensor:
        """``z = Dz'`` (also for rays and tangents)."""
        return z * self.var

    def scale_z(self, z: torch.Tensor) -> torch.Tensor:
        """``z' = D⁻¹z``."""
        return z / self.var

    def _ratio(self, d: torch.Tensor) -> torch.Tensor:
        c = self.cost
        return d / (c.unsqueeze(-1) if c.dim() else c)

    def unscale_duals(self, duals: dict) -> dict:
        """``λ = d_G λ' / σ``, ``ν = d_A ν' / σ`` (keys ``lam``, ``nu``; empty blocks unchanged)."""
        out = dict(duals)
        if self.ineq is not None and "lam" in duals:
            out["lam"] = duals["lam"] * self._ratio(self.ineq)
        if self.eq is not None and "nu" in duals:
            out["nu"] = duals["nu"] * self._ratio(self.eq)
        return out

    def scale_duals(self, duals: dict) -> dict:
        """The inverse of ``unscale_duals``."""
        out = dict(duals)
        if self.ineq is not None and "lam" in duals:
            out["lam"] = duals["lam"] / self._ratio(self.ineq)
        if self.eq is not None and "nu" in duals:
            out["nu"] = duals["nu"] / self._ratio(self.eq)
        return out

    def unscale_point(self, z: torch.Tensor, lam, nu):
        """``(z, λ, ν)`` of the scaled problem in the original units (``unscale_z``,
        ``unscale_duals``)."""
        d = self.unscale_duals({"lam": lam, "nu": nu})
        return self.unscale_z(z), d["lam"], d["nu"]

    def scale_point(self, z: torch.Tensor, lam, nu):
        """The inverse of ``unscale_point``."""
        d = self.scale_duals({"lam": lam, "nu": nu})
        return self.scale_z(z), d["lam"], d["nu"]

    def scaled_solution(self, sol: Solution) -> Solution:
        """``sol`` (in the original units) as a solution of the scaled problem: ``z' = D⁻¹z`` and
        its multipliers; the cache, which the solver filled for the scaled problem, is shared."""
        return Solution(z=self.scale_z(sol.z), duals=self.scale_duals(sol.duals),
                        status=sol.status, iterations=sol.iterations, residuals=sol.residuals, cache=sol.cache)

    def unscaled_solution(self, sol: Solution) -> Solution:
        """``sol`` of the scaled problem in the original units (``z = Dz'``; also for tangents,
        which map like solutions; cache shared)."""
        return Solution(z=self.unscale_z(sol.z), duals=self.unscale_duals(sol.duals),
                        status=sol.status, iterations=sol.iterations, residuals=sol.residuals, cache=sol.cache)


def _rows_then_columns(M: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``(M · rows[:, None]) · cols[None, :]``, the second product in place where allowed."""
    out = M * rows.unsqueeze(-1)
    c_ = cols.unsqueeze(-2)
    return out.mul_(c_) if inplace and out.shape == torch.broadcast_shapes(out.shape, c_.shape) else out * c_


def _spread_apart(size: torch.Tensor) -> torch.Tensor:
    """Whether the batch elements' objective sizes ``max(max|Q|, max|q|)`` (``(B,)``; zeros, which
    have no scale, ignored) differ by more than ``BAND²``: a ``()`` bool tensor, no host sync."""
    if not size.dim() or size.shape[0] < 2:
        return torch.zeros((), dtype=torch.bool, device=size.device)
    low = torch.where(size > 0, size, torch.full_like(size, math.inf)).amin()
    return size.amax() > BAND * BAND * low


def _inverse(size: torch.Tensor, cap: float) -> torch.Tensor:
    """``1 / size`` clipped to ``[1/cap, cap]``; 1 where ``size`` is 0 (sizes ignore non-finite
    data: never NaN)."""
    inv = torch.where(size > 0, size, torch.ones_like(size)).reciprocal()
    return inv.clamp(1 / cap, cap)


def _solution_scale(sQ, sq, rows, shared: bool) -> torch.Tensor:
    """An estimate ``t`` of the size of the minimiser: the median over the constraint rows of
    ``|h_i| / ‖G_i‖∞`` and ``|b_j| / ‖A_j‖∞`` (rows with a zero side skipped, and those whose side is
    below ``_NEGLIGIBLE_RHS`` times the largest side of the element; a median, so that a few big-M or
    tiny rows do not set it), or ``max|q| / max|Q|`` without such rows, or 1.
    From the reductions ``equilibration`` forms, of the Ruiz-scaled data (``D_r Q D_r``, ``D_r q``,
    ``G D_r``, ``A D_r``): ``sQ = max|Q|``, ``sq = max|q|`` (per element) and ``rows``:
    ``(‖M_i‖∞, |r_i|)`` for ``(G, h)`` and ``(A, b)`` (or None). ``()`` when ``Q`` is
    unbatched and the batch shares one scaling (``shared``), else ``(B,)``."""
    ratios = []
    present = [r_ for r_ in rows if r_ is not None and r_[0].shape[-1] > 0]
    # right-hand sides at the rounding level of the largest one (e.g. 1e-16 beside 18: the
    # remainders of a data conversion) count as zero sides: a median over them set a minimiser
    # size of 1e-15 (Maros–Meszaros QBORE3D: the scaled problem's minimiser was then 1e16)
    floor = None
    for r_ in present:
        top = torch.broadcast_tensors(*r_)[1].amax(-1, keepdim=True)
        floor = top if floor is None else torch.maximum(floor, top)
    for r_ in present:
        rowmax, ra = torch.broadcast_tensors(*r_)
        big = ra > _NEGLIGIBLE_RHS * floor
        ratios.append(torch.where((rowmax > 0) & (ra > 0) & big, ra / rowmax, float("nan")))
    obj = torch.where((sQ > 0) & (sq > 0), sq / torch.where(sQ > 0, sQ, 1.0), 1.0)
    if shared:
        obj = obj.amax() if obj.dim() else obj
    if not ratios:
        return obj
    R = torch.cat(ratios, -1)
    if shared:
        R = R.reshape(-1)
    t = R.nanmedian(-1).values if R.dim() > 1 else R.nanmedian()
    return torch.where(torch.isnan(t), obj, t)


#: right-hand sides below this fraction of the largest one are left out of ``_solution_scale``:
#: rounding remainders of float64 data (``1e4·u``: sides computed from values up to 1e4 times the
#: largest side), small enough that real small sides, and those beside big-M bounds of 1e8, count
_NEGLIGIBLE_RHS = 1e-12


#: up to this many data entries (one problem), the in-band test runs on the host
HOST_TEST_SIZE = 4096


def _small_problem(*data) -> bool:
    """At most ``HOST_TEST_SIZE`` entries in all the data."""
    return sum(t.numel() for t in data if t is not None) <= HOST_TEST_SIZE


def _one_small_problem(*data) -> bool:
    """One problem (batch size 1 or unbatched) of at most ``HOST_TEST_SIZE`` entries."""
    return _small_problem(*data) and _one_problem(*data)


def _in_band_on_host(Q, q, G, h, A, b) -> bool:
    """``equilibration``'s in-band test for one problem, with the reductions brought to the host
    in one transfer (seven operations instead of thirty); the test itself is ``in_band``.
    Non-finite data go to the tensor test."""
    parts = [torch.linalg.vector_norm(Q.reshape(-1), float("inf")).reshape(1),
             torch.linalg.vector_norm(q.reshape(-1), float("inf")).reshape(1)]
    for M, r in ((G, h), (A, b)):
        if M is not None and M.shape[-2] > 0:
            parts += [torch.linalg.vector_norm(M.reshape(-1, M.shape[-1]), float("inf"), -1), r.reshape(-1).abs()]
    return in_band(torch.cat(parts).tolist(), [part.shape[0] for part in parts[2::2]])


def in_band(v: list[float], rows: list[int]) -> bool:
    """Whether one problem's data are in band, from its reductions on the host: ``max(max|Q|,
    max|q|)``, ``max(‖G_i‖∞, |h_i|)``, ``max(‖A_j‖∞, |b_j|)`` and the cheap bound (largest
    right-hand side over largest matrix entry) in ``[1/BAND, BAND]`` or zero. False when some value
    is not finite (the tensor test, which ignores non-finite data, decides then).

    ``v``: ``[max|Q|, max|q|]`` followed, for each constraint block with rows (``(G, h)`` then
    ``(A, b)``), by its rows' ∞-norms and the absolute values of its right-hand side; ``rows``:
    those blocks' row counts."""
    if not math.isfinite(sum(v)):
        return False                             # non-finite data: the tensor test decides
    mats, rhs = [v[0]], [v[1]]
    sizes = [max(v[0], v[1])]
    at = 2
    for k in rows:
        block, rs = v[at:at + k], v[at + k:at + 2 * k]
        at += 2 * k
        mats += block
        rhs += rs
        sizes += map(max, block, rs)
    top, big = max(rhs), max(mats)
    sizes.append(top / big if big > 0 else (math.inf if top > 0 else 0.0))
    # every size (≥ 0) at most BAND, and the positive ones at least 1/BAND
    return max(sizes) <= BAND and min((x for x in sizes if x > 0), default=1.0) >= 1 / BAND


#: Ruiz iterations on the KKT matrix (a fixed number: no host synchronisation)
RUIZ_ITERATIONS = 10


def _size_of(x: torch.Tensor) -> torch.Tensor:
    """``|x|`` with non-finite entries as 0: the scales are formed from the finite data (a NaN in
    one element, which the solver flags, must not reach a scale shared by the batch, nor turn the
    in-band test off)."""
    return x.abs().nan_to_num_(0.0, 0.0)


def _finite(x: torch.Tensor) -> torch.Tensor:
    """``x`` (non-negative reductions) with its non-finite entries as 0."""
    return x.nan_to_num(0.0, 0.0)


def _reduce_to(x: torch.Tensor, dims: int) -> torch.Tensor:
    """``x`` reduced by maxima over its leading axes to ``dims`` axes."""
    while x.dim() > dims:
        x = x.amax(0)
    return x


def _root_inverse(norm: torch.Tensor, cap: float) -> torch.Tensor:
    """``1/√norm`` with ``norm`` clipped to ``[1/cap, cap]``; 1 where ``norm`` is 0."""
    return torch.where(norm > 0, norm, torch.ones_like(norm)).clamp(1 / cap, cap).rsqrt()


def _scaled_rows(aM: torch.Tensor, D: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``‖(MD)_i‖∞`` (``aM = |M|``), through the buffer ``out`` (no new matrix), which keeps
    ``|M| D``."""
    return torch.mul(aM, D.unsqueeze(-2), out=out).amax(-1)


def _objective_columns(aQ: torch.Tensor, D: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``‖(DQD)_{:,j}‖∞ = D_j max_i |Q_ij| D_i`` (``aQ = |Q|``), through the buffer ``out``."""
    return torch.mul(aQ, D.unsqueeze(-1), out=out).amax(-2) * D


def _buffer(a: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """An empty tensor of the shape of ``a * D`` (``D`` broadcast along the matrix's rows)."""
    return a.new_empty(torch.broadcast_shapes(a.shape, D.unsqueeze(-2).shape))


def _first_columns(qc, block_cols, dims: int) -> torch.Tensor:
    """The KKT columns ``max(‖cQ_{:,j}‖∞, ‖G_{:,j}‖∞, ‖A_{:,j}‖∞)`` of the unscaled data
    (``max|cQ| = 1``) from ``qc = ‖Q_{:,j}‖∞`` and the blocks' column norms, the first Ruiz pass's,
    reduced over the batch to ``dims`` axes (1 when ``Q`` is unbatched)."""
    top = qc.amax(-1, keepdim=True)
    col = qc / torch.where(top > 0, top, torch.ones_like(top))
    for c in block_cols:
        col = torch.maximum(col, c)
    return _reduce_to(col, dims)


def _ruiz_variable_scale(aQ, blocks, cap: float, bufQ, bufs) -> torch.Tensor:
    r"""The diagonal ``D`` of ``RUIZ_ITERATIONS`` Ruiz iterations on the KKT matrix

    .. math::

        K = \begin{bmatrix} c_k Q & G^\top & A^\top \\ G & 0 & 0 \\ A & 0 & 0 \end{bmatrix},
        \qquad D \leftarrow D / \sqrt{\|K_{:,j}\|_\infty},\quad
        E \leftarrow E / \sqrt{\|K_{i,:}\|_\infty},

    each pass measured on ``diag(D, E) K diag(D, E)``, with the objective block normalised to
    ``max|c_k DQD| = 1`` at each pass (its overall size is the cost scale's business, not the
    variables'). The row scales ``E`` are discarded: ``equilibration`` forms its own,
    right-hand-side aware. Zero columns keep 1; norms are clipped to ``[1/cap, cap]``.
    Works on ``aQ = |Q|`` and ``blocks`` ``[|G|, |A|]`` (finite entries, non-empty blocks) and
    the scale vectors only: ``‖(DQD)_{:,j}‖∞ = D_j max_i |Q_ij| D_i``,
    ``‖(EMD)_i‖∞ = E_i ‖(MD)_i‖∞`` and ``‖(EMD)_{:,j}‖∞ = max_i E_i (|M| D)_{ij}``, each pass
    through the buffers ``bufQ`` (like ``aQ``) and ``bufs`` (one per block, ``_buffer``).

    Shape:
        ``(n,)`` when ``Q`` is unbatched (one scaling for the batch: column norms are maxima over
        it), else ``(B, n)``.
    """
    dims = 1 if aQ.dim() == 2 else 2
    D = aQ.new_ones(aQ.shape[:-1] if dims == 2 else aQ.shape[-1:])
    E = [None] * len(blocks)
    for _ in range(RUIZ_ITERATIONS):
        qc = _objective_columns(aQ, D, bufQ)
        top = qc.amax(-1, keepdim=True)
        col = qc / torch.where(top > 0, top, torch.ones_like(top))
        for k, (aM, buf) in enumerate(zip(blocks, bufs)):
            rows = _scaled_rows(aM, D, buf)
            if E[k] is None:
                E[k] = _root_inverse(rows, cap)
                cols = buf.amax(-2)
            else:
                cols = buf.mul_(E[k].unsqueeze(-1)).amax(-2)
                E[k] = E[k] * _root_inverse(rows * E[k], cap)
            col = torch.maximum(col, cols)
        D = D * _root_inverse(_reduce_to(col, dims), cap)
    return D


@torch.no_grad()
def equilibration(Q, q, G=None, h=None, A=None, b=None) -> Equilibration | None:
    """The scales ``D, σ, d_G, d_A`` of the module docstring, or None when the data are in band
    (every block's size and the ratio of the largest right-hand side to the largest matrix entry
    in ``[1/BAND, BAND]``: then nothing needs scaling). The scales ignore non-finite data
    (a norm they reach counts as 0): non-finite data stay non-finite in their own batch elements (which the solver reports
    as ``Status.NON_FINITE``) and do not change the scales of the others.

    Shape:
        Q ``(B, n, n)|(n, n)``, q ``(B, n)|(n,)``, G ``(B, m, n)|(m, n)``, h ``(B, m)|(m,)``,
        A ``(B, p, n)|(p, n)``, b ``(B, p)|(p,)``; the scales as in ``Equilibration``.
    """
    if _one_small_problem(Q, q, G, h, A, b) and _in_band_on_host(Q, q, G, h, A, b):
        return None
    unbatched = Q.dim() == 2
    # the reductions of |Q|, |q|, |G|, |h|, |A|, |b|; one reached by a non-finite entry counts as 0
    qc = _finite(_abs_max(Q, -2))
    sQ = qc.amax(-1)
    sq_el = _finite(q.abs().amax(-1))           # per element
    sq = sq_el.amax() if unbatched and sq_el.dim() else sq_el   # one scale for the batch: Q stays unbatched
    rows, block_cols = [], []
    for M, r in ((G, h), (A, b)):
        if M is None:
            rows.append(None)
            continue
        rows.append((_finite(_abs_max(M, -1)), _size_of(r)))
        if M.shape[-2] > 0:
            block_cols.append(_finite(_abs_max(M, -2)))
    sizes = [torch.maximum(sQ, sq)] + [None if r_ is None else torch.maximum(*r_) for r_ in rows]
    # a cheap bound for the minimiser's size: the largest right-hand side (q, h, b) over the
    # largest matrix entry (Q, G, A)
    rhs = [sq.amax()] + [r_[1].amax() for r_ in rows if r_ is not None and r_[1].numel()]
    mat = [sQ.amax()] + [r_[0].amax() for r_ in rows if r_ is not None and r_[0].numel()]
    ratio = (torch.stack(rhs).amax() / torch.stack(mat).amax()).reshape(1)
    flat = torch.cat([s_.reshape(-1) for s_ in sizes if s_ is not None] + [ratio])
    out_of_band = ((flat > BAND) | ((flat > 0) & (flat < 1 / BAND))).any()
    # the variables' columns already within a factor BAND of each other: no Ruiz iterations
    col = _first_columns(qc, block_cols, 1 if unbatched else 2)
    spread = col.amax(-1) > BAND * torch.where(col > 0, col, torch.full_like(col, math.inf)).amin(-1)
    # an unbatched Q with a batch whose objectives differ in size by more than BAND² between
    # elements: one cost scale for all would leave the small ones at rounding level (q of 1e9
    # beside q of 1, or of 0, made a whole batch INACCURATE that solves element by element); then
    # σ and the minimiser size t are per element (the scaled Q becomes batched), D_r stays shared
    apart = (_spread_apart(torch.maximum(sQ, sq_el)) if unbatched
             else torch.zeros((), dtype=torch.bool, device=Q.device))
    # one host sync for the decisions; in band: nothing to do, no scales formed
    out_of_band, unbalanced, apart = torch.stack([out_of_band, spread.any(), apart]).tolist()
    if not out_of_band:
        return None
    shared = unbatched and not apart            # one cost scale and one t for the batch
    cap = torch.finfo(Q.dtype).tiny ** -0.5
    if unbalanced:
        aQ = _size_of(Q)
        blocks = [_size_of(M) for M in (G, A) if M is not None and M.shape[-2] > 0]
        bufQ = torch.empty_like(aQ)
        bufs = [_buffer(aM, col) for aM in blocks]
        D = _ruiz_variable_scale(aQ, blocks, cap, bufQ, bufs)
        # the reductions of the Ruiz-scaled data (Q DQD, q Dq, rows G_i D, A_j D)
        sQ = _objective_columns(aQ, D, bufQ).amax(-1)
        sq_el = (_size_of(q) * D).amax(-1)
        scaled = iter([_scaled_rows(aM, D, buf) for aM, buf in zip(blocks, bufs)])
        rows = [None if r_ is None else (next(scaled) if r_[0].shape[-1] else r_[0], r_[1]) for r_ in rows]
    else:
        D = Q.new_ones(col.shape)
    t = _solution_scale(sQ, sq_el, rows, shared)
    t = torch.where((t > BAND) | (t < 1 / BAND), t, torch.ones_like(t))   # in band: no common factor
    tc = t.reshape(*t.shape, 1) if t.dim() else t
    sQt, sqt = sQ * t * t, sq_el * t
    if shared:
        sqt = sqt.amax() if sqt.dim() else sqt
    sizes = [torch.maximum(sQt, sqt)] + [None if r_ is None else torch.maximum(r_[0] * tc, r_[1])
                                        for r_ in rows]
    cost, ineq, eq = (None if s_ is None else _inverse(s_, cap) for s_ in sizes)
    return Equilibration(cost, ineq, eq, (D * tc).clamp(1 / cap, cap))
