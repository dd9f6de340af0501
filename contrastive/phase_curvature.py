r"""Whether equilibrium propagation's free phase is a minimum along the way its nudged phase went.

Equilibrium propagation differentiates a *minimiser*: ``φ* = argmin_φ E(φ, θ)``. A minimiser of
``E`` stops at any stationary point it is started on, a saddle point or a maximum included (its
gradient there is zero), and reports it solved; the nudged phase ``φ̂_β`` then descends away from
it, into the basin of another minimum, and the contrast ``(F(β) − F(0))/β`` is finite but has no
relation to the derivative of any branch of solutions (``O(1/β)`` where the jump is ``O(1)``).

The test: with ``d = φ̂_β − φ*`` the displacement of a nudged phase, the curvature of the energy
at the free phase along it,

.. math::

    c = d^\\top \\nabla^2_\\varphi E(\\varphi^*, \\theta)\\, d ,

one Hessian-vector product. At a strict minimum ``c > 0``; where ``c`` is negative beyond
round-off, the free phase is not a minimum along the direction the estimate measures, and the
element is ``Status.INDEFINITE`` — as conjugate gradient reports it for the implicit gradient.
Round-off is judged against the Hessian's scale ``λ̂ = ‖∇²E v‖/‖v‖`` for a fixed pseudo-random
``v`` (a second product), not against ``‖∇²E d‖`` (itself round-off when ``d`` lies in a flat
direction of a convex energy, whose sign is then arbitrary): negative beyond round-off is
``c < −√eps · max(λ̂, |c|/‖d‖²) · ‖d‖²``.

A second reading of the same product: the energy along ``d`` against its second-order Taylor
model at the free phase,

.. math::

    m = \frac{|E(\hat\varphi_\beta) - E(\varphi^*) - \nabla E(\varphi^*)^\top d - \tfrac12 c|}{\tfrac12 |c|},

is ``O(‖d‖)`` (the third-order term) while ``φ̂_β`` stays in the free phase's quadratic neighbourhood,
where the estimate's bias is ``O(β)``; ``m ≳ 1`` means the nudged phase left it — into another
basin (near a fold, where the barrier is below ``β·|∂ℓ|``) or with ``β`` too large for the
curvature. Where ``½|c|`` is within round-off of the energies, or where a coordinate at a bound
moved, ``m`` is set to 0: the difference cannot be judged. The round-off is the larger of
``100·eps·(|E(φ*)| + |E(φ̂_β)| + |∇E(φ*)ᵀd|)`` and ``NOISE_FACTOR`` times the measured rounding of
a difference of two energies near ``φ*`` (``_evaluation_noise``: the miss of the second-order
model along a step ``√eps``-small relative to ``‖φ*‖ + ‖d‖`` in the direction ``v``, zero in exact
arithmetic up to ``O(eps^{3/2})``). The second term sees the cancellation of large terms inside
``E`` (e.g. ``½‖φ‖² − ½k‖φ‖²`` with ``k`` near 1 in float32), which the values of ``E`` do not
show. One more energy evaluation.

With bounds ``lower ≤ φ ≤ upper`` only the coordinates inside the bounds in both phases enter
(``d`` and ``v`` are zero on the others): along an active bound the energy may curve down at a
constrained minimum. A coordinate within ``ACTIVE_RTOL·(1 + |bound|)`` of a finite bound is at it,
as in ``declarative.energy_problem`` (a solver stops just inside a bound it converges to).

Equilibrium propagation itself needs only first derivatives of ``E``. Where the energy has no
second derivative in φ (the double backward raises, e.g. ``torch.cdist``; or ``∇E`` is not
connected to φ in the graph, e.g. a ``once_differentiable`` backward — also an energy affine in
φ), nothing is judged: ``negative`` is all False, ``mismatch`` all 0 and ``unavailable`` says why;
the callers skip the check for the call with a ``RuntimeWarning`` (``warn_no_second_derivative``),
and their ``curvature_check=False`` skips it without one. An energy that adds such an op to differentiable
ones is not detected: its curvature is the differentiable terms' only (torch drops the others).

Shape:
    free, nudged: ``(B, n)``; ``negative``, ``mismatch``: ``(B,)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["PhaseCurvature", "phase_curvature", "warn_no_second_derivative"]


#: a coordinate within this relative distance of a finite bound is at the bound (as in
#: ``declarative.energy_problem``'s active sets): a solver stops just inside a bound it converges to
ACTIVE_RTOL = 1e-12


def _free_coordinates(z: torch.Tensor, lower, upper) -> torch.Tensor:
    mask = torch.ones_like(z, dtype=torch.bool)
    if lower is not None:
        lower = torch.as_tensor(lower, dtype=z.dtype, device=z.device)
        mask = mask & ~(torch.isfinite(lower) & (z <= lower + ACTIVE_RTOL * (1 + lower.abs())))
    if upper is not None:
        upper = torch.as_tensor(upper, dtype=z.dtype, device=z.device)
        mask = mask & ~(torch.isfinite(upper) & (z >= upper - ACTIVE_RTOL * (1 + upper.abs())))
    return mask


@dataclass
class PhaseCurvature:
    """``negative``: ``dᵀ∇²E d`` negative beyond round-off (``(B,)`` bool); ``mismatch``: ``m``,
    the Taylor-model mismatch of the energy along ``d`` (``(B,)``, 0 where it cannot be judged);
    ``unavailable``: None, or why the energy has no second derivative in φ (then ``negative`` is
    all False and ``mismatch`` all 0: nothing was judged)."""

    negative: torch.Tensor
    mismatch: torch.Tensor
    unavailable: str | None = None


class _NoSecondDerivative(Exception):
    pass


def _derivatives(energy: Callable[[torch.Tensor], torch.Tensor], at: torch.Tensor,
                 directions: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """``(E(at), ∇E(at), (∇²E(at) u for u in directions))``, detached. Raises
    ``_NoSecondDerivative`` where the double backward fails (an op without a second derivative,
    e.g. ``torch.cdist``) or ``∇E`` is not connected to φ (a ``once_differentiable`` backward;
    also an energy affine in φ, whose curvature is zero)."""
    with torch.enable_grad():
        z = at.detach().requires_grad_(True)
        value = energy(z)
        try:
            (grad,) = torch.autograd.grad(value.sum(), z, create_graph=True)
            flat = _NoSecondDerivative("its gradient does not depend on phi through a differentiable graph "
                                       "(a once_differentiable backward, or an energy affine in phi)")
            if not grad.requires_grad:
                raise flat
            out = []
            for i, u in enumerate(directions):
                (hu,) = torch.autograd.grad(grad, z, u, retain_graph=i + 1 < len(directions), allow_unused=True)
                if hu is None:
                    raise flat
                out.append(hu.detach())
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as err:      # NotImplementedError included
            raise _NoSecondDerivative(f"the double backward failed: {type(err).__name__}: "
                                      f"{str(err).splitlines()[0] if str(err) else ''}") from err
    return value.detach(), grad.detach(), tuple(out)


def _evaluation_noise(energy, at: torch.Tensor, value: torch.Tensor, grad: torch.Tensor,
                      v: torch.Tensor, hv: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """The round-off of a difference of two evaluations of ``E`` near ``at``, measured: the miss
    of the energy's second-order model along ``δ = t v``,

    .. math::

        \\nu = |E(\\varphi^* + t v) - E(\\varphi^*) - t\\,\\nabla E^\\top v - \\tfrac12 t^2 v^\\top \\nabla^2 E\\, v|,
        \\qquad t = \\sqrt{eps}\\, \\frac{\\text{size}}{\\|v\\|},

    exact zero for a quadratic energy in exact arithmetic, ``O(eps^{3/2})`` relative from the
    third-order term otherwise; what remains is rounding, which grows with the magnitude of the
    energy's terms, cancelled ones included. The step is large enough that the two evaluations
    round differently (a step of a few ulps does not: their rounding errors coincide). A
    non-finite value (a step outside the energy's domain) is NaN and ignored by the caller.
    ``(B,)``."""
    eps = torch.finfo(at.dtype).eps
    t = (eps ** 0.5) * size / torch.linalg.vector_norm(v, dim=-1).clamp_min(torch.finfo(at.dtype).tiny)
    with torch.no_grad():
        moved = energy(at + t[:, None] * v)
    model = t * torch.linalg.vecdot(grad, v) + 0.5 * t * t * torch.linalg.vecdot(v, hv)
    miss = (moved - value - model).abs()
    return torch.where(torch.isfinite(miss), miss, torch.nan)


def phase_curvature(energy: Callable[[torch.Tensor], torch.Tensor], free: torch.Tensor,
                    nudged: torch.Tensor, lower: torch.Tensor | None = None,
                    upper: torch.Tensor | None = None) -> PhaseCurvature:
    """The curvature ``c = dᵀ∇²E(free) d`` of ``energy`` along ``d = nudged − free`` (on the
    coordinates inside the bounds in both points), judged against round-off, and the mismatch of
    the energy's second-order model along ``d`` (module docstring). Two Hessian-vector products
    and two energies near ``free``, one at ``nudged``; no host sync. Where the energy has no
    second derivative in φ, nothing is judged and ``unavailable`` says why.

    Args:
        energy: ``φ ↦ E(φ, θ)``, ``(B, n) → (B,)``, θ fixed (detached).
        free: the free phase ``φ*``; nudged: a nudged phase ``φ̂_β``.
        lower, upper: the bounds of the phases (broadcastable to ``(B, n)``) or None.

    Examples::

        >>> E = lambda phi: (phi ** 4 - phi ** 2).sum(-1)          # a maximum at 0
        >>> phase_curvature(E, torch.zeros(1, 1), torch.full((1, 1), 0.7)).negative
        tensor([True])
    """
    tiny = torch.finfo(free.dtype).tiny
    eps = torch.finfo(free.dtype).eps
    mask = _free_coordinates(free, lower, upper) & _free_coordinates(nudged, lower, upper)
    d = torch.where(mask, nudged - free, torch.zeros_like(free))
    gen = torch.Generator(device=free.device).manual_seed(0)
    v = torch.randn(free.shape, generator=gen, device=free.device, dtype=free.dtype)
    v = torch.where(mask, v, torch.zeros_like(v))
    try:
        e0, grad, (hd, hv) = _derivatives(energy, free, (d, v))
    except _NoSecondDerivative as why:
        nothing = torch.zeros_like(free[:, 0])
        return PhaseCurvature(negative=nothing.bool(), mismatch=nothing, unavailable=str(why))
    dd = torch.linalg.vecdot(d, d)
    c = torch.linalg.vecdot(d, hd)
    scale = torch.linalg.vector_norm(hv, dim=-1) / torch.linalg.vector_norm(v, dim=-1).clamp_min(tiny)
    scale = torch.fmax(torch.nan_to_num(scale, nan=0.0, posinf=0.0), c.abs() / dd.clamp_min(tiny))
    negative = (dd > 0) & (c < -(eps ** 0.5) * scale * dd)
    nudged = nudged.detach()
    with torch.no_grad():
        e1 = energy(nudged)
    slope = torch.linalg.vecdot(grad, d)
    remainder = (e1 - e0 - slope - 0.5 * c).abs()
    size = torch.linalg.vector_norm(free, dim=-1) + torch.linalg.vector_norm(d, dim=-1)
    measured = _evaluation_noise(energy, free.detach(), e0, grad, v, hv, size)
    noise = torch.fmax(100 * eps * (e0.abs() + e1.abs() + slope.abs()), NOISE_FACTOR * measured)
    # E(nudged) − E(free) is the change along d only where no coordinate at a bound moved
    along_d = torch.where(mask, torch.zeros_like(d), nudged - free).eq(0).all(-1)
    judged = along_d & (0.5 * c.abs() > noise)
    mismatch = torch.where(judged, remainder / (0.5 * c.abs()).clamp_min(tiny), torch.zeros_like(c))
    return PhaseCurvature(negative=negative, mismatch=mismatch)


#: the measured rounding of a difference of two energies (``_evaluation_noise``, one sample) is
#: scaled by this before ``½|c|`` is compared with it: a single sample of a rounding error can be small
NOISE_FACTOR = 10.0


def warn_no_second_derivative(what: str, why: str, stacklevel: int) -> None:
    """The ``RuntimeWarning`` of a caller that skips the curvature check: the energy has no
    second derivative in φ (``PhaseCurvature.unavailable`` says why)."""
    warnings.warn(f"{what}: the curvature check of the free phase is skipped — the energy has no second "
                  f"derivative in phi ({why}); the status is the solver's (a saddle point or maximum "
                  "is not detected). Pass curvature_check=False to skip it without this warning",
                  RuntimeWarning, stacklevel=stacklevel + 1)
