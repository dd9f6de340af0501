"""``EquilibriumProp(beta, points)``: the p-point forward EP estimator as a gradient mode."""

from __future__ import annotations

import warnings

import torch

from declarative.energy_problem import EnergyProblem
from declarative.errors import SolverError
from declarative.linearisation import param_leaves
from declarative.modes import GradientMode, check_beta
from declarative.status import Status

from .finite_difference import check_points, forward_difference_coefficients
from .modes import _keep_unsolved, nudged_solve
from .phase_curvature import phase_curvature, warn_no_second_derivative

__all__ = ["EquilibriumProp"]


class EquilibriumProp(GradientMode):
    """p-point forward equilibrium propagation on the linearised loss (``docs/guide/modes.md``).

    Inside a layer's backward only the cotangent ``g = ∂ℓ/∂z*`` is known, so the outer loss is
    linearised, ``ℓ(z) ≈ ℓ(z*) + gᵀ(z − z*)``, and the phases are the nudged problems

        ẑ_{iβ} = argmin_z E(z; θ) + iβ gᵀz   (same constraints),   i = 0, …, p − 1,

    solved in order, each warm-started from the previous one. With ``F(iβ) = ∂_θ𝓛(ẑ_{iβ})`` (the
    linearised loss does not depend on θ)

        ∇_θ ≈ (1/β) Σ_{i<p} α_i F(iβ),    Σ_i α_i i^k = [k = 1], k < p,

    bias O(β^{p−1}) where the solution map is smooth. ``points=2`` is ``Contrastive(beta)``; the
    centered ±β estimator on the linearised loss is ``Symmetric(beta)``. Works for every problem
    with ``solve_nudged`` and ``lagrangian_grads``. For a full, non-linearised outer loss use
    ``equilibrium_propagation``.

    On an energy problem (``declarative.argmin``) a free phase that is not a minimum along a
    nudged phase's displacement (a saddle point or maximum that the solver stopped at; the energy
    curves down there, ``phase_curvature``) is ``Status.INDEFINITE``: with the layer's ``check`` a
    ``SolverError`` names the batch elements, without it a ``RuntimeWarning`` names them and their
    nudged phases are replaced by the free one (their contributions are zero, as the implicit
    gradient zeroes such elements). An element is flagged when its free phase curves down along
    any of its nudged phases' displacements, and then all its nudged phases are replaced. The test
    costs two Hessian-vector products and two energy evaluations per nudged phase and one host
    sync per backward; where the energy has no second derivative in φ (``torch.cdist``, a
    ``once_differentiable`` backward) it is skipped with a ``RuntimeWarning``.

    Args:
        beta: nudging step β > 0 (the phases use β, 2β, …, (p − 1)β).
        points: number of phases p ≥ 2, the free one included (default 3).
        curvature_check: run the test above (default True); with False the phases are used as
            solved and EP needs only first derivatives of the energy.

    References:
        Zucchet & Sacramento (2022), App. C, Algorithm 2.
    """

    name = "equilibrium"

    def __init__(self, beta: float, points: int = 3, curvature_check: bool = True):
        self.beta = check_beta(beta, self.name)
        self.points = check_points(points)
        self.alpha = forward_difference_coefficients(self.points).tolist()
        self.curvature_check = bool(curvature_check)

    def vjp(self, problem, params, solution, g, needs):
        phases = [solution]
        for i in range(1, self.points):
            phases.append(nudged_solve(problem, params, g, i * self.beta, phases[-1], self))
        phases = self._check_curvature(problem, params, phases)
        total = None
        for alpha, phase in zip(self.alpha, phases):
            grads = problem.lagrangian_grads(phase, params, needs)
            total = ([None if a is None else alpha * a for a in grads] if total is None else
                     [None if t is None else t + alpha * a for t, a in zip(total, grads)])
        return tuple(None if t is None else t / self.beta for t in total)

    def _check_curvature(self, problem, params, phases):
        """``phases``, after the curvature test between each nudged phase and the free one on an
        ``EnergyProblem`` (other problems, or ``curvature_check=False``: unchanged); an element
        flagged at any nudged phase has every nudged phase replaced by the free one. One host sync
        where something could be flagged. See the class docstring."""
        if not (self.curvature_check and isinstance(problem, EnergyProblem)):
            return phases
        free = phases[0]
        p = param_leaves(params)
        shape, B = free.z.shape, free.z.shape[0]

        def flat(bound):
            return None if bound is None else bound.expand(shape).reshape(B, -1)

        flagged = torch.zeros(B, dtype=torch.bool, device=free.z.device)
        for phase in phases[1:]:
            pc = phase_curvature(lambda z: problem._energies(z.reshape(shape), p), free.z.reshape(B, -1),
                                 phase.z.reshape(B, -1), flat(problem.lower), flat(problem.upper))
            if pc.unavailable is not None:
                warn_no_second_derivative(repr(self), pc.unavailable, stacklevel=6)
                return phases
            flagged = flagged | pc.negative
        if not bool(flagged.any()):
            return phases
        what = (f"free phase of {self!r} — a stationary point that is not a minimum: the energy curves "
                "down along a nudged phase's displacement")
        if problem.check:
            status = torch.where(flagged, int(Status.INDEFINITE), int(Status.SOLVED))
            raise SolverError.from_status(status, free, what)
        bad = flagged.nonzero().reshape(-1).tolist()
        warnings.warn(f"{what}: {Status.INDEFINITE.name} for batch indices {bad[:20]}; their "
                      "contributions are set to zero", RuntimeWarning, stacklevel=6)
        return [free] + [_keep_unsolved(phase, free, ~flagged) for phase in phases[1:]]

    def __repr__(self):
        extra = "" if self.curvature_check else ", curvature_check=False"
        return f"EquilibriumProp(beta={self.beta:g}, points={self.points}{extra})"
