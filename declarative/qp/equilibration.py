"""Equilibration of QP data: the objective and the constraint rows brought to unit size.

The solver's convergence tests, its polish and the weak-activity classification of the backward
measure residuals, multipliers and slacks against ``1 + scale``; the ``1`` makes them absolute when
the data are small. An objective of size 1e-6 then passes as converged 1% away from its minimiser,
with the wrong active set (and the wrong gradient). ``QPProblem`` therefore solves the equivalent
problem

    minimize ½ zᵀ(σQ)z + (σq)ᵀz   s.t.   (D_G G) z ≤ D_G h,   (D_A A) z = D_A b

with ``σ = 1 / max(max|Q|, max|q|)``, ``D_G = diag(1 / max(‖G_i‖∞, |h_i|))`` and
``D_A = diag(1 / max(‖A_j‖∞, |b_j|))`` (all-zero rows keep 1). Every entry of the scaled data is
then at most 1 in magnitude — including the right-hand sides, which the tolerances are measured
against: a row scaled by its ``G_i`` alone would turn a nearly vacuous row (``10⁻⁸ gᵀz ≤ 1``) into
``gᵀz ≤ 10⁸`` and loosen every tolerance of its element by ``10⁸``, while with ``h_i`` in the
maximum the same row — and a big-M bound ``z_k ≤ 10⁸`` — becomes harmless (``10⁻⁸ gᵀz ≤ 1``).
The scales are clipped to ``[1/c, c]`` with ``c = 1/√tiny`` of the dtype, so the scaled data stay
finite. The scaled problem has the same minimiser ``z*``; its multipliers
are ``λ' = σλ / d_G`` and ``ν' = σν / d_A``. The derivative of ``z*`` along a nudge ``q → q + βg``
is that of the scaled problem along ``σg`` (same ``dz``; ``dλ = d_G dλ' / σ``, ``dν = d_A dν' / σ``),
so every gradient mode works on the scaled problem and maps back exactly; the scales are
constants for the gradient (``z*`` does not depend on them).

What this does not fix: a solution far smaller than the data's natural scale (``q`` and ``h``
both ``10⁻⁶`` of ``Q`` and ``G``, so ``z* ~ 10⁻⁶``) still meets the ``1 + scale`` tolerances
absolutely (a scaling of ``z`` itself would be needed).

Data whose scales all lie in ``[1/BAND, BAND]`` are left as they are (``equilibration`` returns
None): the solver handles them directly, and bit-for-bit as without this module.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..solution import Solution

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
    """

    cost: torch.Tensor
    ineq: torch.Tensor | None
    eq: torch.Tensor | None

    # -- in a Solution's cache (which travels through autograd as tensors) ---------------------------
    def store(self, cache: dict) -> None:
        """Put the scales into a solver cache (keys ``eq_cost``, ``eq_ineq``, ``eq_eq``)."""
        cache["eq_cost"] = self.cost
        for key, t in (("eq_ineq", self.ineq), ("eq_eq", self.eq)):
            if t is not None:
                cache[key] = t

    @classmethod
    def stored(cls, cache: dict) -> "Equilibration | None":
        """The scales put into ``cache`` by ``store``, or None."""
        if "eq_cost" not in cache:
            return None
        return cls(cache["eq_cost"], cache.get("eq_ineq"), cache.get("eq_eq"))

    # -- data ----------------------------------------------------------------------------------------
    def params(self, params):
        """``(σQ, σq, D_G G, D_G h, D_A A, D_A b)`` (None blocks stay None)."""
        Q, q, G, h, A, b = params
        c = self.cost
        Qs = Q * (c.reshape(*c.shape, 1, 1) if c.dim() else c)
        qs = q * (c.unsqueeze(-1) if c.dim() else c)
        Gs = hs = As = bs = None
        if G is not None:
            Gs, hs = G * self.ineq.unsqueeze(-1), h * self.ineq
        if A is not None:
            As, bs = A * self.eq.unsqueeze(-1), b * self.eq
        return Qs, qs, Gs, hs, As, bs

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        """The nudge direction of the scaled problem, ``σg``."""
        return g * (self.cost.unsqueeze(-1) if self.cost.dim() else self.cost)

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
        """``sol`` (in the original units) with the multipliers of the scaled problem; the cache,
        which the solver filled for the scaled problem, is shared."""
        return Solution(z=sol.z, duals=self.scale_duals(sol.duals), status=sol.status,
                        iterations=sol.iterations, residuals=sol.residuals, cache=sol.cache)

    def unscaled_solution(self, sol: Solution) -> Solution:
        """``sol`` of the scaled problem in the original units (same ``z``; cache shared)."""
        return Solution(z=sol.z, duals=self.unscale_duals(sol.duals), status=sol.status,
                        iterations=sol.iterations, residuals=sol.residuals, cache=sol.cache)


def _inverse(size: torch.Tensor, cap: float) -> torch.Tensor:
    """``1 / size`` clipped to ``[1/cap, cap]``; 1 where ``size`` is 0 (NaN stays NaN)."""
    inv = torch.where(size > 0, size, torch.ones_like(size)).reciprocal()
    return inv.clamp(1 / cap, cap)


def equilibration(Q, q, G=None, h=None, A=None, b=None) -> Equilibration | None:
    """The scales ``σ, d_G, d_A`` of the module docstring, or None when they all lie in
    ``[1/BAND, BAND]`` (then nothing needs scaling). NaN data give NaN scales for their own batch
    elements only (which the solver reports as ``Status.NON_FINITE``).

    Shape:
        Q ``(B, n, n)|(n, n)``, q ``(B, n)|(n,)``, G ``(B, m, n)|(m, n)``, h ``(B, m)|(m,)``,
        A ``(B, p, n)|(p, n)``, b ``(B, p)|(p,)``; the scales as in ``Equilibration``.
    """
    sQ = Q.abs().amax((-2, -1))
    sq = q.abs().amax(-1)
    if Q.dim() == 2:
        sq = sq.amax() if sq.dim() else sq      # one scale for the batch: Q stays unbatched
    sizes = [torch.maximum(sQ, sq)]             # the objective's, then every row's [G_i, h_i], [A_j, b_j]
    for M, r in ((G, h), (A, b)):
        sizes.append(None if M is None else torch.maximum(M.abs().amax(-1), r.abs()))
    flat = torch.cat([t.reshape(-1) for t in sizes if t is not None])
    # in band (zero sizes keep the scale 1): nothing to do — one host sync, no scales formed
    if not bool(((flat > BAND) | ((flat > 0) & (flat < 1 / BAND))).any()):
        return None
    cap = torch.finfo(Q.dtype).tiny ** -0.5
    cost, ineq, eq = (None if t is None else _inverse(t, cap) for t in sizes)
    return Equilibration(cost, ineq, eq)
