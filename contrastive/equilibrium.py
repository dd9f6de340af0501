"""Equilibrium propagation with a full (non-linearised) outer loss (``docs/guide/modes.md``).

For an energy ``E(φ, θ)`` and an outer loss ``ℓ(φ, θ)``, the augmented loss and its minimisers are

    𝓛(φ, θ, β) = E(φ, θ) + β ℓ(φ, θ),        φ̂_β = argmin_φ 𝓛(φ, θ, β),

and the outer gradient ``∇_θ ℓ(φ*_θ, θ)`` (with ``φ*_θ = φ̂_0``) equals ``d/dβ F(β)|_{β=0}``,
``F(β) = ∂_θ𝓛(φ̂_β, θ, β)`` (the equilibrium-propagation theorem). The estimators here are finite
differences of ``F`` in the scalar β (see ``finite_difference``).

**Surrogate.** Every estimator is the θ-gradient of the scalar

    S_β(θ) = (1/β) Σ_i w_i 𝓛(sg(φ̂_{n_i β}), θ, n_i β),

where ``sg`` stops the gradient: by the envelope theorem ``∂_θ`` of each term is ``F(n_i β)``.
For the two-point estimator ``S_β`` *is* the contrastive surrogate of Zach (2021, Def. 1)

    L_β(θ) = (1/β) [ min_φ 𝓛(φ, θ, β) − min_φ 𝓛(φ, θ, 0) ],

which satisfies ``L_β ≤ ℓ(φ*)`` and, for convex ℓ and μ-strongly convex E,
``L_β ≥ ℓ(φ*) − β/(2μ) ‖∇_φ ℓ(φ*)‖²`` (Prop. 3). For every stencil, because
``d/dβ min_φ 𝓛 = ℓ(φ̂_β)``, the value of ``S_β`` is itself a finite-difference estimate of
``ℓ(φ*)`` with the same order as the gradient estimate.

References:
    N. Zucchet, J. Sacramento, *Beyond backpropagation: bilevel optimization through implicit
    differentiation and equilibrium propagation*, Neural Computation 2022, Sec. 3.2 and App. C.
    B. Scellier, Y. Bengio, *Equilibrium propagation*, Front. Comput. Neurosci. 2017.
    A. Laborieux et al., *Scaling equilibrium propagation to deep ConvNets*, 2021 (centered).
    C. Zach, *Bilevel programs meet deep learning*, 2021, Def. 1 and Prop. 3.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from declarative.errors import SolverError
from declarative.minimizer import minimize
from declarative.modes import check_beta
from declarative.solution import Solution
from declarative.status import Status
from declarative.validation import check_batched, check_finite, check_same_dtype_device, check_tensor

from .finite_difference import Stencil, ep_stencil
from .phase_curvature import phase_curvature, warn_no_second_derivative

__all__ = ["EquilibriumEstimate", "equilibrium_propagation", "equilibrium_gradient"]

Energy = Callable[..., torch.Tensor]
_REDUCTIONS = ("mean", "sum", "none")


@dataclass
class EquilibriumEstimate:
    """What ``equilibrium_propagation`` returns.

    Attributes:
        surrogate: ``S_β(θ)``, reduced over the batch as asked (``(B,)`` for ``"none"``); its
            ``backward()`` accumulates the estimate into every θ that requires grad. For the
            two-point estimator it is the contrastive surrogate ``L_β``.
        free: the free phase ``φ* = φ̂_0`` (detached ``Solution``; ``free.z`` is the prediction).
        free_loss: ``ℓ(φ*, θ)``, ``(B,)``, detached.
        phases: ``((β_i, Solution), …)`` for every phase in solve order (the free phase first).
        status: ``(B,)`` the first non-``SOLVED`` status over the phases of each element, then
            ``INDEFINITE`` where the free phase is not a minimum along a nudged phase's
            displacement (``phase_curvature``: the energy curves down there — a saddle point or
            maximum, at which the estimate is no minimiser's derivative).
        beta: the nudging strength β; ``stencil``: the estimator's phases and weights.
        mismatch: ``(B,)`` the largest mismatch between the energy along a nudged phase's
            displacement and its second-order model at the free phase (``phase_curvature``):
            ``O(β)`` while the phases stay in one quadratic neighbourhood; above
            ``MISMATCH_WARN`` the nudged phase jumped (another basin, or β too large) and a
            ``RuntimeWarning`` names the elements; 0 where it cannot be judged, and everywhere
            when the curvature check is off or skipped (``curvature_check``).
    """

    surrogate: torch.Tensor
    free: Solution
    free_loss: torch.Tensor
    phases: tuple[tuple[float, Solution], ...]
    status: torch.Tensor
    beta: float
    stencil: Stencil
    mismatch: torch.Tensor | None = None


def _check_output(name: str, value, batch: int) -> None:
    if not isinstance(value, torch.Tensor) or value.shape != (batch,):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name}: expected a tensor of shape (B,) = ({batch},) with one value per "
                         f"batch element, got {got}")


def _check_inputs(energy, loss, phi0, params, reduction) -> tuple:
    if not callable(energy):
        raise TypeError(f"energy: expected a callable energy(phi, *params) -> (B,), got "
                        f"{type(energy).__name__}")
    if not callable(loss):
        raise TypeError(f"loss: expected a callable loss(phi, *params) -> (B,), got {type(loss).__name__}")
    check_tensor("phi0", phi0)
    if not check_batched("phi0", phi0, "n"):
        raise ValueError(f"phi0: expected shape (B, n), got ({phi0.shape[0]},); "
                         "add a batch dimension with phi0.unsqueeze(0)")
    if phi0.shape[1] == 0:
        raise ValueError(f"phi0: expected a non-empty problem (n >= 1), got shape {tuple(phi0.shape)}")
    check_finite("phi0", phi0)
    if isinstance(params, torch.Tensor):
        raise TypeError("params: expected a sequence of parameters, got a single tensor; "
                        "pass (tensor,)")
    params = tuple(params)
    tensors = {f"params[{i}]": p for i, p in enumerate(params) if isinstance(p, torch.Tensor)
               and p.is_floating_point()}
    check_same_dtype_device(phi0=phi0, **tensors)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {', '.join(map(repr, _REDUCTIONS))}, got {reduction!r}")
    return params


def _augmented(energy: Energy, loss: Energy, params: tuple, nudge: float):
    if nudge == 0.0:
        return lambda z: energy(z, *params)
    return lambda z: energy(z, *params) + nudge * loss(z, *params)


def equilibrium_propagation(energy: Energy, loss: Energy, phi0: torch.Tensor, params: Sequence = (), *,
                            beta: float, estimator: str = "forward", points: int | None = None,
                            lower: torch.Tensor | None = None, upper: torch.Tensor | None = None,
                            tol: float | None = None, max_iter: int | None = None,
                            reduction: str = "mean", check: bool = True,
                            curvature_check: bool = True) -> EquilibriumEstimate:
    """Solve the phases of an equilibrium-propagation estimator and build its surrogate.

    Each phase minimises ``𝓛(φ, θ, n_i β) = E(φ, θ) + n_i β ℓ(φ, θ)`` over ``lower ≤ φ ≤ upper``
    with ``declarative.minimize`` (θ held fixed), warm-started from the previous phase. Then

        S_β(θ) = (1/β) Σ_i w_i 𝓛(sg(φ̂_{n_i β}), θ, n_i β),     ∇_θ S_β = (1/β) Σ_i w_i F(n_i β),

    with ``F(β) = ∂_θ𝓛(φ̂_β, θ, β)``:

    * ``estimator="forward", points=2`` (default): ``(F(β) − F(0))/β`` and ``S_β = L_β``, the
      contrastive surrogate; bias O(β);
    * ``estimator="centered"``: ``(F(β) − F(−β))/(2β)``, bias O(β²). The phase at −β maximises the
      loss: ``E − βℓ`` may be unbounded below (e.g. a quadratic ℓ with more curvature than E/β).
      Such elements get ``Status.UNBOUNDED_BELOW`` (or ``NON_FINITE``) from the minimiser and are
      reported by a ``SolverError`` naming them;
    * ``estimator="forward", points=p``: ``(1/β) Σ_{i<p} α_i F(iβ)`` with the Vandermonde weights
      of ``forward_difference_coefficients``; bias O(β^{p−1}); only positive nudges.

    The phases run without building a graph on θ; only the final evaluation of ``𝓛`` at the
    detached minimisers is differentiable, so memory does not grow with the solver's iterations.
    With a bounded feasible box the envelope argument still holds (the bounds do not depend on θ),
    but the set of active bounds may change between the phases: ``F`` is then only piecewise
    smooth in β, and the centered and p-point estimators keep their higher order only for β below
    the distance to the nearest such kink (beyond it they are O(β) like the two-point one; e.g.
    ReLU hidden units whose pre-activation is within O(β) of 0).

    Args:
        energy: ``E(phi, *params) -> (B,)``, batched torch energy (the inner loss).
        loss: ``ℓ(phi, *params) -> (B,)``, the full outer loss (may depend on θ directly).
        phi0: ``(B, n)`` initial point of the free phase.
        params: θ and any data (tensors or other objects) passed to ``energy`` and ``loss``; the
            estimate flows into the tensors that require grad.
        beta: nudging strength β > 0.
        estimator: ``"forward"`` or ``"centered"``.
        points: number of phases p ≥ 2 of the forward estimator (default 2).
        lower, upper: optional bounds on φ, broadcastable to ``(B, n)`` (passed to ``minimize``).
        tol, max_iter: solver tolerance and iteration limit (``minimize``'s defaults if None).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` over the batch for ``surrogate``.
        check: raise a ``SolverError`` naming the failing batch elements and the phase when a phase
            is not solved or the free phase is not a minimum (``INDEFINITE``), and warn when a
            nudged phase jumped; with False, they are only recorded in ``status`` / ``mismatch``.
        curvature_check: test the free phase's curvature along each nudged phase's displacement
            (``phase_curvature``: two Hessian-vector products and two energy evaluations per
            nudged phase, the only second derivatives EP needs). With False, or where the energy
            has no second derivative in φ (an op like ``torch.cdist``, a ``once_differentiable``
            backward; a ``RuntimeWarning`` says so), ``status`` is what the solver said and
            ``mismatch`` is 0.

    Returns:
        An ``EquilibriumEstimate``; ``estimate.surrogate.backward()`` yields the estimate.

    Raises:
        ValueError / TypeError: bad input (β ≤ 0, p < 2, unknown estimator, shapes, dtypes).
        SolverError: a phase failed (``check=True``); for a negative phase the message says that
            ``E − βℓ`` is unbounded below and suggests a smaller β or the forward estimator;
            ``Status.INDEFINITE`` where the free phase is a saddle point or maximum (the energy
            curves down along a nudged phase's displacement, ``phase_curvature``).

    Warns:
        RuntimeWarning: (``check=True``) a nudged phase left the free phase's quadratic
            neighbourhood (``estimate.mismatch > MISMATCH_WARN``): the estimate's bias is not O(β).
            Also (once per call) when ``curvature_check`` is on but the energy has no second
            derivative in φ: the check is skipped.

    Shape:
        - phi0: ``(B, n)``; ``energy``/``loss`` outputs: ``(B,)``.
        - surrogate: ``()`` (``(B,)`` with ``reduction="none"``); ``free.z``: ``(B, n)``.

    Example::

        >>> def energy(phi, A, b):      # ½ φᵀAφ − bᵀφ, batched
        ...     return 0.5 * (phi @ A * phi).sum(-1) - (phi * b).sum(-1)
        >>> est = equilibrium_propagation(energy, loss, torch.zeros(B, n), (A, b), beta=0.1,
        ...                               estimator="centered")
        >>> est.surrogate.backward()    # A.grad, b.grad hold the centered EP estimate
    """
    beta = check_beta(beta, "equilibrium propagation")
    params = _check_inputs(energy, loss, phi0, params, reduction)
    stencil = ep_stencil(estimator, points)
    batch = phi0.shape[0]
    detached = tuple(p.detach() if isinstance(p, torch.Tensor) else p for p in params)
    with torch.no_grad():
        _check_output("energy", energy(phi0, *detached), batch)
        _check_output("loss", loss(phi0, *detached), batch)

    options = {"lower": lower, "upper": upper, "tol": tol}
    if max_iter is not None:
        options["max_iter"] = max_iter
    solutions: list[Solution] = []
    status = torch.full((batch,), int(Status.SOLVED), dtype=torch.int64, device=phi0.device)
    for nudge, warm in zip(stencil.nudges, stencil.warm_from):
        start = phi0 if warm is None else solutions[warm].z
        # minimize differentiates under its own enable_grad and returns detached tensors
        sol = minimize(_augmented(energy, loss, detached, nudge * beta), start, **options)
        phase_status = sol.status_tensor().reshape(batch)
        finite = torch.isfinite(sol.z).all(dim=-1)
        phase_status = torch.where(finite, phase_status, torch.full_like(phase_status, int(Status.NON_FINITE)))
        sol.status = phase_status
        if check:
            _raise_for_phase(phase_status, sol, nudge * beta, estimator)
        status = torch.where(status == int(Status.SOLVED), phase_status, status)
        solutions.append(sol)
    if curvature_check:
        status, mismatch = _curvature_status(energy, detached, solutions, stencil, status, lower, upper, check)
    else:
        mismatch = torch.zeros_like(solutions[0].z[:, 0])

    surrogate = None
    for nudge, weight, sol in zip(stencil.nudges, stencil.weights, solutions):
        if weight == 0.0:
            continue
        term = (weight / beta) * _augmented(energy, loss, params, nudge * beta)(sol.z)
        surrogate = term if surrogate is None else surrogate + term
    if reduction == "mean":
        surrogate = surrogate.mean()
    elif reduction == "sum":
        surrogate = surrogate.sum()
    with torch.no_grad():
        free_loss = loss(solutions[0].z, *detached)
    phases = tuple((nudge * beta, sol) for nudge, sol in zip(stencil.nudges, solutions))
    return EquilibriumEstimate(surrogate=surrogate, free=solutions[0], free_loss=free_loss,
                               phases=phases, status=status, beta=beta, stencil=stencil, mismatch=mismatch)


#: a Taylor-model mismatch (``phase_curvature``) above this: the nudged phase left the free
#: phase's quadratic neighbourhood
MISMATCH_WARN = 0.5


def _curvature_status(energy: Energy, params: tuple, solutions: list[Solution], stencil: Stencil,
                      status: torch.Tensor, lower, upper, check: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(status, mismatch)``: ``status`` with ``INDEFINITE`` for the solved elements whose free
    phase is not a minimum along the displacement of some nudged phase, and the largest Taylor
    mismatch over the nudged phases (``phase_curvature``). With ``check`` a ``SolverError`` names
    the indefinite elements and a ``RuntimeWarning`` those with a mismatch above
    ``MISMATCH_WARN`` (one host sync each)."""
    free = solutions[0].z
    indefinite = torch.zeros_like(status, dtype=torch.bool)
    mismatch = torch.zeros_like(free[:, 0])
    for nudge, sol in zip(stencil.nudges[1:], solutions[1:]):
        if nudge != 0.0:
            pc = phase_curvature(lambda z: energy(z, *params), free, sol.z, lower, upper)
            if pc.unavailable is not None:
                warn_no_second_derivative("equilibrium propagation", pc.unavailable, stacklevel=3)
                return status, torch.zeros_like(mismatch)
            indefinite = indefinite | pc.negative
            mismatch = torch.fmax(mismatch, pc.mismatch)
    status = torch.where(indefinite & (status == int(Status.SOLVED)), int(Status.INDEFINITE), status)
    if check:
        err = SolverError.from_status(torch.where(status == int(Status.INDEFINITE), status, int(Status.SOLVED)),
                                      solutions[0], "free phase of equilibrium propagation — a stationary point "
                                      "that is not a minimum: the energy curves down along the nudged "
                                      "phase's displacement (a saddle point or maximum), so the estimate is "
                                      "not the derivative of a minimiser; start the free phase elsewhere")
        if err is not None:
            raise err
        far = (mismatch > MISMATCH_WARN) & (status == int(Status.SOLVED))
        if bool(far.any()):
            bad = far.nonzero().reshape(-1).tolist()
            warnings.warn(f"equilibrium propagation: for batch indices {bad[:20]} a nudged phase left the "
                          "free phase's quadratic neighbourhood (the energy along the displacement misses "
                          f"its second-order model by more than {MISMATCH_WARN:g} of the curvature term; "
                          "estimate.mismatch) — it jumped to another basin or beta is too large for the "
                          "curvature there, and the estimate's bias is not O(beta); use a smaller beta",
                          RuntimeWarning, stacklevel=4)
    return status, mismatch


def _raise_for_phase(status: torch.Tensor, sol: Solution, nudge: float, estimator: str) -> None:
    if nudge == 0.0:
        what = "free phase (beta = 0) of equilibrium propagation"
    elif nudge < 0:
        what = (f"negative phase (beta = {nudge:g}) of the {estimator} equilibrium-propagation "
                f"estimator — E − {-nudge:g}·loss is unbounded below or diverged for these elements; "
                "use a smaller beta or the forward estimator (positive nudges only)")
    else:
        what = f"nudged phase (beta = {nudge:g}) of the {estimator} equilibrium-propagation estimator"
    err = SolverError.from_status(status, sol, what)
    if err is not None:
        raise err


def equilibrium_gradient(energy: Energy, loss: Energy, phi0: torch.Tensor, params: Sequence = (), *,
                         beta: float, estimator: str = "forward", points: int | None = None,
                         lower: torch.Tensor | None = None, upper: torch.Tensor | None = None,
                         tol: float | None = None, max_iter: int | None = None, reduction: str = "mean",
                         check: bool = True, curvature_check: bool = True) -> tuple[torch.Tensor | None, ...]:
    """The equilibrium-propagation estimate of ``∇_θ`` of the reduced outer loss, directly.

    Same arguments as ``equilibrium_propagation``; returns ``(1/β) Σ_i w_i F(n_i β)`` for each
    entry of ``params``: a tensor of the parameter's shape for tensors that require grad (zeros
    if the energy and loss do not depend on it), ``None`` for the others. With
    ``reduction="none"`` the gradient is that of the sum over the batch. Does not touch ``.grad``.

    Shape:
        - Output: one entry per ``params`` entry, each with that parameter's shape (or None).
    """
    est = equilibrium_propagation(energy, loss, phi0, params, beta=beta, estimator=estimator,
                                  points=points, lower=lower, upper=upper, tol=tol, max_iter=max_iter,
                                  reduction=reduction, check=check, curvature_check=curvature_check)
    params = tuple(params)
    wanted = [i for i, p in enumerate(params) if isinstance(p, torch.Tensor) and p.requires_grad]
    out: list[torch.Tensor | None] = [None] * len(params)
    if not wanted:
        return tuple(out)
    scalar = est.surrogate.sum() if reduction == "none" else est.surrogate
    grads = torch.autograd.grad(scalar, [params[i] for i in wanted], allow_unused=True,
                                materialize_grads=True)
    for i, g in zip(wanted, grads):
        out[i] = g
    return tuple(out)
