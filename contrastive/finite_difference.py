"""Finite-difference stencils in the nudging strength β (equilibrium propagation, ``docs/guide/modes.md``).

Equilibrium propagation writes the outer gradient as a derivative in a *scalar*,
``∇_θ = d/dβ F(β)|_{β=0}`` with ``F(β) = ∂_θ𝓛(φ*_β, θ, β)``, and estimates it from a few phases
``F(n_i β)``:

    ∇_θ ≈ (1/β) Σ_i w_i F(n_i β).

A ``Stencil`` holds the nudges ``n_i`` (multiples of β, in the order the phases are solved), the
weights ``w_i`` and which earlier phase warm-starts each one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ESTIMATORS", "Stencil", "check_points", "ep_stencil", "forward_difference_coefficients"]

#: Names accepted by ``ep_stencil``.
ESTIMATORS = ("forward", "centered")


def check_points(points) -> int:
    if isinstance(points, bool) or not isinstance(points, int):
        raise TypeError(f"points: expected an int >= 2, got {type(points).__name__}")
    if points < 2:
        raise ValueError(f"points: expected an int >= 2 (a derivative needs at least two phases), "
                         f"got {points}")
    return points


def forward_difference_coefficients(points: int) -> torch.Tensor:
    """Weights ``α`` of the p-point forward difference ``f'(0) ≈ (1/β) Σ_{i<p} α_i f(iβ)``.

    They solve the Vandermonde system (Zucchet & Sacramento 2022, App. C, eq. 26)

        Σ_{i=0}^{p-1} α_i i^k = [k = 1],   k = 0, …, p − 1,

    which cancels every Taylor term of order 0 and 2…p−1, so the estimate has bias O(β^{p−1}).
    p = 2 gives (−1, 1), p = 3 (−3/2, 2, −1/2), p = 4 (−11/6, 3, −3/2, 1/3).

    Args:
        points: number of phases p ≥ 2 (the free phase counts as one).

    Returns:
        ``(p,)`` float64 tensor on the CPU (a constant of the estimator, not of the data).

    Shape:
        - Output: ``(points,)``.
    """
    p = check_points(points)
    i = torch.arange(p, dtype=torch.float64)
    k = torch.arange(p, dtype=torch.float64)
    vandermonde = i.unsqueeze(0) ** k.unsqueeze(1)  # [k, i] = i^k, with 0^0 = 1
    rhs = torch.zeros(p, dtype=torch.float64)
    rhs[1] = 1.0
    return torch.linalg.solve(vandermonde, rhs)


@dataclass(frozen=True)
class Stencil:
    """Phases of an equilibrium-propagation estimator.

    Attributes:
        nudges: multiples ``n_i`` of β at which ``𝓛(·, θ, n_i β)`` is minimised, in solve order;
            ``nudges[0] == 0`` is always the free phase.
        weights: ``w_i`` with ``∇_θ ≈ (1/β) Σ_i w_i F(n_i β)``; ``Σ w_i = 0`` and ``Σ w_i n_i = 1``.
        warm_from: for each phase, the index of the earlier phase it starts from (``None`` for
            the free phase, which starts from the user's initial point).
    """

    nudges: tuple[float, ...]
    weights: tuple[float, ...]
    warm_from: tuple[int | None, ...]


def ep_stencil(estimator: str = "forward", points: int | None = None) -> Stencil:
    """The stencil of a named estimator.

    Args:
        estimator: ``"forward"`` — phases ``0, β, …, (p−1)β``, each warm-started from the previous
            one, weights from ``forward_difference_coefficients(p)`` (p = 2 is the classic
            two-phase estimator, bias O(β)); ``"centered"`` — phases ``0, +β, −β`` (both nudged
            phases warm-started from the free one), ``(F(β) − F(−β))/(2β)``, bias O(β²).
        points: p for ``"forward"`` (default 2). ``"centered"`` always uses ±β (pass None or 3).

    Raises:
        ValueError: unknown estimator (the message lists the valid ones) or ``points < 2``.
    """
    if not isinstance(estimator, str) or estimator.lower() not in ESTIMATORS:
        valid = ", ".join(repr(e) for e in ESTIMATORS)
        raise ValueError(f"unknown equilibrium-propagation estimator {estimator!r}; valid ones are {valid}")
    estimator = estimator.lower()
    if estimator == "centered":
        if points is not None and check_points(points) != 3:
            raise ValueError(f"points: the centered estimator uses the phases 0, +β, −β "
                             f"(pass points=None or 3), got {points}")
        return Stencil(nudges=(0.0, 1.0, -1.0), weights=(0.0, 0.5, -0.5), warm_from=(None, 0, 0))
    p = 2 if points is None else check_points(points)
    alpha = forward_difference_coefficients(p).tolist()
    return Stencil(nudges=tuple(float(i) for i in range(p)), weights=tuple(alpha),
                   warm_from=(None,) + tuple(range(p - 1)))
