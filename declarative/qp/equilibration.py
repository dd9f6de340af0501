"""Equilibration of QP data: the objective, the constraint rows and the variables brought to unit size.

The solver's convergence tests, its polish and the weak-activity classification of the backward
measure residuals, multipliers and slacks against ``1 + scale``; the ``1`` makes them absolute when
the data are small. An objective of size 1e-6 then passes as converged 1% away from its minimiser,
with the wrong active set (and the wrong gradient). ``QPProblem`` therefore solves the equivalent
problem in ``z = t z'``

    minimize ½ z'ᵀ(σt²Q)z' + (σtq)ᵀz'   s.t.   (D_G tG) z' ≤ D_G h,   (D_A tA) z' = D_A b

The variable scale ``t`` estimates the size of the minimiser: the median over the constraint rows
of ``|h_i| / ‖G_i‖∞`` and ``|b_j| / ‖A_j‖∞`` (``max|q| / max|Q|`` without rows), used when it is
outside ``[1/BAND, BAND]`` — without it a minimiser of size 1e-8 (``q``, ``h``, ``b`` small against
``Q``, ``G``) met the tolerances only absolutely, and its active rows were classified as weakly
active (wrong gradients). Then ``σ = 1 / max(t² max|Q|, t max|q|)``,
``D_G = diag(1 / max(t‖G_i‖∞, |h_i|))`` and ``D_A = diag(1 / max(t‖A_j‖∞, |b_j|))`` (all-zero rows
keep 1). Every entry of the scaled data is then at most 1 in magnitude — including the right-hand
sides, which the tolerances are measured against: a row scaled by its ``G_i`` alone would turn a
nearly vacuous row (``10⁻⁸ gᵀz ≤ 1``) into ``gᵀz ≤ 10⁸`` and loosen every tolerance of its element
by ``10⁸``, while with ``h_i`` in the maximum the same row — and a big-M bound ``z_k ≤ 10⁸`` —
becomes harmless (``10⁻⁸ gᵀz ≤ 1``). The scales are clipped to ``[1/c, c]`` with ``c = 1/√tiny``
of the dtype, so the scaled data stay finite.

The scaled problem's minimiser is ``z' = z*/t``; its multipliers are ``λ' = σλ / d_G`` and
``ν' = σν / d_A``. The derivative of ``z*`` along a nudge ``q → q + βg`` is ``t`` times that of the
scaled problem along ``σtg`` (``dλ = d_G dλ' / σ``, ``dν = d_A dν' / σ``), so every gradient mode
works on the scaled problem and maps back exactly; the scales are constants for the gradient
(``z*`` does not depend on them).

Data whose scales all lie in ``[1/BAND, BAND]`` are left as they are (``equilibration`` returns
None): the solver handles them directly, and bit-for-bit as without this module.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..solution import Solution
from .linalg import _one_problem

__all__ = ["Equilibration", "equilibration"]

#: scales within ``[1/BAND, BAND]`` need no equilibration
BAND = 100.0


class Equilibration(NamedTuple):
    """The scales of one QP batch (see the module docstring).

    Shape:
        - cost ``σ``: ``()`` when ``Q`` is unbatched (one scale for the batch: ``Q`` stays
          unbatched), else ``(B,)``
        - ineq ``d_G``: like ``h`` without its last axis plus ``m``: ``(m,)`` or ``(B, m)``; None
          without inequalities
        - eq ``d_A``: ``(p,)`` or ``(B, p)``; None without equalities
        - var ``t``: like ``σ``
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

    # -- data ----------------------------------------------------------------------------------------
    @staticmethod
    def _per_element(c: torch.Tensor, dims: int) -> torch.Tensor:
        """``c`` (``()`` or ``(B,)``) shaped to broadcast against a tensor with ``dims`` core axes."""
        return c.reshape(*c.shape, *([1] * dims)) if c.dim() else c

    def params(self, params):
        """``(σt²Q, σtq, D_G tG, D_G h, D_A tA, D_A b)`` (None blocks stay None)."""
        Q, q, G, h, A, b = params
        c = self._per_element(self.cost, 0)
        t = self._per_element(self.var, 0)
        ct = c * t
        Qs = Q * self._per_element(ct * t, 2)
        qs = q * self._per_element(ct, 1)
        Gs = hs = As = bs = None
        if G is not None:
            Gs, hs = G * (self.ineq * self._per_element(t, 1)).unsqueeze(-1), h * self.ineq
        if A is not None:
            As, bs = A * (self.eq * self._per_element(t, 1)).unsqueeze(-1), b * self.eq
        return Qs, qs, Gs, hs, As, bs

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        """The nudge direction of the scaled problem, ``σtg``."""
        return g * self._per_element(self.cost * self.var, 1)

    # -- multipliers ---------------------------------------------------------------------------------
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

    def scaled_solution(self, sol: Solution) -> Solution:
        """``sol`` (in the original units) as a solution of the scaled problem: ``z' = z / t`` and
        its multipliers; the cache, which the solver filled for the scaled problem, is shared."""
        return Solution(z=sol.z / self._per_element(self.var, 1), duals=self.scale_duals(sol.duals),
                        status=sol.status, iterations=sol.iterations, residuals=sol.residuals, cache=sol.cache)

    def unscaled_solution(self, sol: Solution) -> Solution:
        """``sol`` of the scaled problem in the original units (``z = t z'``; also for tangents,
        which map like solutions; cache shared)."""
        return Solution(z=sol.z * self._per_element(self.var, 1), duals=self.unscale_duals(sol.duals),
                        status=sol.status, iterations=sol.iterations, residuals=sol.residuals, cache=sol.cache)


def _inverse(size: torch.Tensor, cap: float) -> torch.Tensor:
    """``1 / size`` clipped to ``[1/cap, cap]``; 1 where ``size`` is 0 (NaN stays NaN)."""
    inv = torch.where(size > 0, size, torch.ones_like(size)).reciprocal()
    return inv.clamp(1 / cap, cap)


def _solution_scale(sQ, sq, rows, unbatched_q: bool) -> torch.Tensor:
    """An estimate ``t`` of the size of the minimiser: the median over the constraint rows of
    ``|h_i| / ‖G_i‖∞`` and ``|b_j| / ‖A_j‖∞`` (rows with a zero side skipped; a median, so that a
    few big-M or tiny rows do not set it), or ``max|q| / max|Q|`` without such rows, or 1.
    From the reductions ``equilibration`` forms: ``sQ = max|Q|``, ``sq = max|q|`` (per element)
    and ``rows``: ``(‖M_i‖∞, |r_i|)`` for ``(G, h)`` and ``(A, b)`` (or None). ``()`` when ``Q`` is
    unbatched (``unbatched_q``: one scale for the batch), else ``(B,)``."""
    ratios = []
    for r_ in rows:
        if r_ is not None and r_[0].shape[-1] > 0:
            rowmax, ra = torch.broadcast_tensors(*r_)
            ratios.append(torch.where((rowmax > 0) & (ra > 0), ra / rowmax, float("nan")))
    obj = torch.where((sQ > 0) & (sq > 0), sq / torch.where(sQ > 0, sQ, 1.0), 1.0)
    if unbatched_q:
        obj = obj.amax() if obj.dim() else obj
    if not ratios:
        return obj
    R = torch.cat(ratios, -1)
    if unbatched_q:
        R = R.reshape(-1)
    t = R.nanmedian(-1).values if R.dim() > 1 else R.nanmedian()
    return torch.where(torch.isnan(t), obj, t)


#: up to this many data entries (one problem), the in-band test runs on the host
HOST_TEST_SIZE = 4096


def _one_small_problem(*data) -> bool:
    """One problem (batch size 1 or unbatched) of at most ``HOST_TEST_SIZE`` entries."""
    return sum(t.numel() for t in data if t is not None) <= HOST_TEST_SIZE and _one_problem(*data)


def _in_band_on_host(Q, q, G, h, A, b) -> bool:
    """``equilibration``'s in-band test for one problem, with the reductions brought to the host
    in one transfer (seven operations instead of thirty): ``max(max|Q|, max|q|)``,
    ``max(‖G_i‖∞, |h_i|)``, ``max(‖A_j‖∞, |b_j|)`` and the cheap bound (largest right-hand side
    over largest matrix entry) in ``[1/BAND, BAND]`` or zero. Non-finite data go to the tensor test."""
    parts = [torch.linalg.vector_norm(Q.reshape(-1), float("inf")).reshape(1),
             torch.linalg.vector_norm(q.reshape(-1), float("inf")).reshape(1)]
    for M, r in ((G, h), (A, b)):
        if M is not None and M.shape[-2] > 0:
            parts += [torch.linalg.vector_norm(M.reshape(-1, M.shape[-1]), float("inf"), -1), r.reshape(-1).abs()]
    v = torch.cat(parts).tolist()
    if not math.isfinite(sum(v)):
        return False                             # non-finite data: the tensor test decides
    mats, rhs = [v[0]], [v[1]]
    sizes = [max(v[0], v[1])]
    at = 2
    for part_m, part_r in zip(parts[2::2], parts[3::2]):
        k = part_m.shape[0]
        rows, rs = v[at:at + k], v[at + k:at + 2 * k]
        at += 2 * k
        mats += rows
        rhs += rs
        sizes += [max(a, c) for a, c in zip(rows, rs)]
    top, big = max(rhs), max(mats)
    sizes.append(top / big if big > 0 else (math.inf if top > 0 else 0.0))
    return all(not (x > BAND or 0 < x < 1 / BAND) for x in sizes)


def equilibration(Q, q, G=None, h=None, A=None, b=None) -> Equilibration | None:
    """The scales ``t, σ, d_G, d_A`` of the module docstring, or None when they all lie in
    ``[1/BAND, BAND]`` (then nothing needs scaling). NaN data give NaN scales for their own batch
    elements only (which the solver reports as ``Status.NON_FINITE``).

    Shape:
        Q ``(B, n, n)|(n, n)``, q ``(B, n)|(n,)``, G ``(B, m, n)|(m, n)``, h ``(B, m)|(m,)``,
        A ``(B, p, n)|(p, n)``, b ``(B, p)|(p,)``; the scales as in ``Equilibration``.
    """
    if _one_small_problem(Q, q, G, h, A, b) and _in_band_on_host(Q, q, G, h, A, b):
        return None
    sQ = Q.abs().amax((-2, -1))
    sq_el = q.abs().amax(-1)                    # per element
    sq = sq_el.amax() if Q.dim() == 2 and sq_el.dim() else sq_el   # one scale for the batch: Q stays unbatched
    rows = [None if M is None else (M.abs().amax(-1), r.abs()) for M, r in ((G, h), (A, b))]
    sizes = [torch.maximum(sQ, sq)] + [None if r_ is None else torch.maximum(*r_) for r_ in rows]
    # a cheap bound for the minimiser's size: the largest right-hand side (q, h, b) over the
    # largest matrix entry (Q, G, A); the median estimate ``_solution_scale`` only when it is far
    # from 1
    rhs = [sq.amax()] + [r_[1].amax() for r_ in rows if r_ is not None and r_[1].numel()]
    mat = [sQ.amax()] + [r_[0].amax() for r_ in rows if r_ is not None and r_[0].numel()]
    ratio = (torch.stack(rhs).amax() / torch.stack(mat).amax()).reshape(1)
    flat = torch.cat([s_.reshape(-1) for s_ in sizes if s_ is not None] + [ratio])
    # in band (zero sizes keep the scale 1): nothing to do — one host sync, no scales formed
    if not bool(((flat > BAND) | ((flat > 0) & (flat < 1 / BAND))).any()):
        return None
    t = _solution_scale(sQ, sq_el, rows, Q.dim() == 2)
    t = torch.where((t > BAND) | (t < 1 / BAND), t, torch.ones_like(t))   # in band: no variable scaling
    if bool((t != 1).any()):
        tc = t.reshape(*t.shape, 1) if t.dim() else t
        sQt, sqt = sQ * t * t, sq_el * t
        if Q.dim() == 2:
            sqt = sqt.amax() if sqt.dim() else sqt
        sizes = [torch.maximum(sQt, sqt)] + [None if r_ is None else torch.maximum(r_[0] * tc, r_[1])
                                            for r_ in rows]
    cap = torch.finfo(Q.dtype).tiny ** -0.5
    cost, ineq, eq = (None if s_ is None else _inverse(s_, cap) for s_ in sizes)
    return Equilibration(cost, ineq, eq, t.clamp(1 / cap, cap))
