"""Contrastive gradient modes: finite-β differences of the Lagrangian at nudged solutions."""

from __future__ import annotations

import torch

from declarative.errors import SolverError
from declarative.modes import GradientMode, check_beta
from declarative.solution import Solution
from declarative.status import Status


def nudged_solve(problem, params, g, beta: float, warm_start, mode: GradientMode):
    """``ẑ_β = argmin_z E(z; θ) + β gᵀz`` by ``problem.solve_nudged``, warm-started from the forward
    solution ``warm_start``.

    Elements the forward did not solve (a caller that passed ``check=False`` receives their
    statuses) are not differentiated: their nudged solution is replaced by the forward one, so that
    their contrast — and their share of the gradient of unbatched parameters — is exactly zero, as
    in ``Implicit``. A ``SolverError`` names the elements (with β and ``mode``) that the forward
    solved and the nudged re-solve did not.
    """
    sol = problem.solve_nudged(params, g, beta, warm_start=warm_start)
    if sol.status is None:  # a closed form (activations: the per-layer hot path), solved by construction
        return sol
    what = f"nudged re-solve (beta={beta:g}) of {mode!r}"
    if warm_start is None or warm_start.status is None:
        return sol.raise_for_status(what)
    forward_ok = warm_start.solved
    if bool(forward_ok.all()):
        return sol.raise_for_status(what)
    err = SolverError.from_status(torch.where(forward_ok, sol.status_tensor(), Status.SOLVED), sol, what)
    if err is not None:
        raise err
    return _keep_unsolved(sol, warm_start, forward_ok)


def _keep_unsolved(nudged: Solution, forward: Solution, ok: torch.Tensor) -> Solution:
    """``nudged`` with the forward's ``z`` and multipliers where ``ok`` is False."""

    def pick(a, b):
        return torch.where(ok.reshape(-1, *([1] * (a.dim() - 1))), a, b)
    duals = {k: pick(v, forward.duals[k]) if k in forward.duals else v for k, v in nudged.duals.items()}
    return Solution(z=pick(nudged.z, forward.z), duals=duals, status=forward.status,
                    iterations=nudged.iterations, residuals=nudged.residuals, cache=nudged.cache)


class Contrastive(GradientMode):
    """One-sided contrastive gradient (Zach 2021, Def. 2; formula (C) of ``docs/guide/modes.md``):

        ∇_θ ≈ (1/β) [ ∂_θ𝓛(ẑ_β, λ̂_β; θ) − ∂_θ𝓛(z*, λ*; θ) ],   ẑ_β = argmin_z E(z;θ) + β gᵀz,

    the exact gradient of the linearised contrastive surrogate. Bias O(β) where the solution map is
    smooth; as β → 0⁺ it tends to ``Implicit()`` (including the one-sided rule at kinks). For large β
    the "error" passed down is a finite difference over a target, which is what lets Fenchel BP
    escape dead ReLUs.

    Args:
        beta: nudging strength, a finite float > 0.
    """

    name = "contrastive"
    requires = frozenset({"nudged"})

    def __init__(self, beta: float):
        self.beta = check_beta(beta, self.name)

    def vjp(self, problem, params, solution, g, needs):
        nudged = nudged_solve(problem, params, g, self.beta, solution, self)
        return problem.lagrangian_grads_contrast(nudged, solution, params, needs, self.beta)

    def __repr__(self):
        return f"Contrastive(beta={self.beta:g})"


class Symmetric(GradientMode):
    """Symmetric (centered) contrastive gradient (``docs/guide/modes.md``):

        ∇_θ ≈ (1/2β) [ ∂_θ𝓛(ẑ_β) − ∂_θ𝓛(ẑ_{−β}) ],

    bias O(β²) where the solution map is smooth. At a kink it averages the two one-sided
    derivatives instead of choosing the one of ``Implicit``.

    Args:
        beta: nudging strength, a finite float > 0 (both ±β are solved).
    """

    name = "symmetric"
    requires = frozenset({"nudged"})

    def __init__(self, beta: float):
        self.beta = check_beta(beta, self.name)

    def vjp(self, problem, params, solution, g, needs):
        plus = nudged_solve(problem, params, g, self.beta, solution, self)
        minus = nudged_solve(problem, params, g, -self.beta, solution, self)
        return problem.lagrangian_grads_contrast(plus, minus, params, needs, 2 * self.beta)

    def __repr__(self):
        return f"Symmetric(beta={self.beta:g})"

