"""Contrastive gradient modes: finite-β differences of the Lagrangian at nudged solutions."""

from __future__ import annotations

from declarative.modes import GradientMode, check_beta, register_mode


def nudged_solve(problem, params, g, beta: float, warm_start, mode: GradientMode):
    """``ẑ_β = argmin_z E(z; θ) + β gᵀz`` by ``problem.solve_nudged``; a ``SolverError`` naming the
    failing batch elements, β and ``mode`` if some element is not solved."""
    sol = problem.solve_nudged(params, g, beta, warm_start=warm_start)
    if sol.status is None:  # a closed form (activations: the per-layer hot path), solved by construction
        return sol
    return sol.raise_for_status(f"nudged re-solve (beta={beta:g}) of {mode!r}")


class Contrastive(GradientMode):
    """One-sided contrastive gradient (Zach 2021, Def. 2; DESIGN.md §3.1, formula (C)):

        ∇_θ ≈ (1/β) [ ∂_θ𝓛(ẑ_β, λ̂_β; θ) − ∂_θ𝓛(z*, λ*; θ) ],   ẑ_β = argmin_z E(z;θ) + β gᵀz,

    the exact gradient of the linearised contrastive surrogate. Bias O(β) where the solution map is
    smooth; as β → 0⁺ it tends to ``Implicit()`` (including the one-sided rule at kinks). For large β
    the "error" passed down is a finite difference over a target, which is what lets Fenchel BP
    escape dead ReLUs.

    Args:
        beta: nudging strength, a finite float > 0.
    """

    name = "contrastive"

    def __init__(self, beta: float):
        self.beta = check_beta(beta, self.name)

    def vjp(self, problem, params, solution, g, needs):
        nudged = nudged_solve(problem, params, g, self.beta, solution, self)
        return problem.lagrangian_grads_contrast(nudged, solution, params, needs, self.beta)

    def __repr__(self):
        return f"Contrastive(beta={self.beta:g})"


class Symmetric(GradientMode):
    """Symmetric (centered) contrastive gradient (DESIGN.md §3.1):

        ∇_θ ≈ (1/2β) [ ∂_θ𝓛(ẑ_β) − ∂_θ𝓛(ẑ_{−β}) ],

    bias O(β²) where the solution map is smooth. At a kink it averages the two one-sided
    derivatives instead of choosing the one of ``Implicit``.

    Args:
        beta: nudging strength, a finite float > 0 (both ±β are solved).
    """

    name = "symmetric"

    def __init__(self, beta: float):
        self.beta = check_beta(beta, self.name)

    def vjp(self, problem, params, solution, g, needs):
        plus = nudged_solve(problem, params, g, self.beta, solution, self)
        minus = nudged_solve(problem, params, g, -self.beta, solution, self)
        return problem.lagrangian_grads_contrast(plus, minus, params, needs, 2 * self.beta)

    def __repr__(self):
        return f"Symmetric(beta={self.beta:g})"


register_mode("contrastive", Contrastive, takes_beta=True)
register_mode("symmetric", Symmetric, takes_beta=True)
