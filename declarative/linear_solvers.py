"""Matrix-free batched linear solvers shared by every gradient mode (one implementation each).

Vectors have shape ``(B, *event)``; an operator is a callable mapping such a vector to one of the
same shape, applied to the whole batch at once (no Python loop over the batch). Inner products are
per batch element. Both solvers run either a fixed number of steps (``rtol = atol = 0``: exactly
``max_iter`` steps, no host sync — what the AID modes ``ConjugateGradient(k)``/``FixedPoint(k)``
need) or to a tolerance ``‖r_b‖ ≤ max(atol, rtol·‖b_b‖)`` per element (converged elements are frozen;
one host sync per step on the CPU, per 4 steps on an accelerator).

* ``conjugate_gradient`` – CG (Hestenes & Stiefel 1952) for ``A x = b`` with ``A`` symmetric
  positive definite per element. Curvature is judged against a scale ``λ̂``: the larger of
  ``‖Av‖/‖v‖`` for a fixed pseudo-random ``v`` (one product before the loop: a scale of ``A``
  independent of the Krylov space of ``b``) and the largest Rayleigh quotient ``pᵀAp/‖p‖²`` of the
  element's CG directions so far. An element whose curvature is not positive beyond round-off
  (``pᵀAp ≤ 100·eps·λ̂‖p‖²``: breakdown — ``A`` not positive definite on the Krylov space, a
  direction in the null space of a positive *semi*definite ``A``, or an exactly solved system) is
  frozen rather than stepped by round-off over round-off; where the curvature is *negative* beyond
  round-off (``pᵀAp < −√eps·λ̂‖p‖²``: ``A`` is indefinite, so CG's answer is not the solution) the
  element is flagged in ``LinearSolve.negative_curvature`` and ``check_curvature`` raises a
  ``SolverError`` (``Status.INDEFINITE``) naming it (or, without ``check``, zeroes it with a
  warning). Against ``‖p‖‖Ap‖`` instead, a convex energy with flat directions was flagged at random
  once CG's direction lay in the null space, where ``Ap`` is round-off; a negative eigenvalue of
  size ``≳ √eps·λ̂`` is still flagged. For an operator positive semidefinite by construction
  (``semidefinite=True``: the normal equations) the fixed-step solve (``rtol = atol = 0``) skips
  the product for ``λ̂`` and the negative-curvature flags; the solve to a tolerance ignores
  ``semidefinite`` (one product for ``λ̂``, flags computed). Products: ``k`` steps plus one for
  ``λ̂`` (none for a fixed-step semidefinite solve) plus one for the initial residual ``b − A x₀``
  where ``x0`` is given; on the normal equations each counts two products of ``A``/``Aᵀ``.
* ``fixed_point_iteration`` – ``x ← T x + b`` (the Neumann series ``Σ Tⁱ b`` from ``x₀ = 0``),
  which converges to ``(I − T)⁻¹ b`` when the spectral radius of ``T`` is below one.
* ``normal_equations`` – wraps ``A``/``Aᵀ`` into the symmetric positive (semi)definite operator
  ``A Aᵀ`` for CG on the normal equations ``A Aᵀ u = b``, ``x = Aᵀ u`` (CGNE, for non-symmetric
  ``A``; Craig's method).

Shape:
    b, x0, x: ``(B, *event)``; ``iterations``, ``residual``, ``converged``: ``(B,)``.

References:
    M. Hestenes, E. Stiefel. Methods of conjugate gradients for solving linear systems. J. Res.
    NBS 49(6), 1952.
    Y. Saad. Iterative Methods for Sparse Linear Systems, 2nd ed., 2003, §6.7 and §8.3.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import SolverError
from .status import Status

__all__ = ["LinearSolve", "conjugate_gradient", "fixed_point_iteration", "normal_equations", "batch_dot",
           "check_curvature", "default_cg_rtol", "warn_unconverged"]

Operator = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LinearSolve:
    """Result of a batched linear solve: solution ``x``, per-element iteration counts, final
    residual norms ``‖b − A x‖`` (for the fixed-point iteration: ``‖x_k − x_{k−1}‖``), and whether
    the tolerance was met (all True when run for a fixed number of steps without a tolerance);
    for conjugate gradient, the elements that met negative curvature (``None`` for other solvers)."""

    x: torch.Tensor
    iterations: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    negative_curvature: torch.Tensor | None = None


def default_cg_rtol(dtype: torch.dtype) -> float:
    """The default relative tolerance of the implicit gradients' CG solves: ``1e-10`` in float64,
    ``1e-5`` in float32."""
    return 1e-10 if dtype == torch.float64 else 1e-5


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-element inner product of two ``(B, *event)`` tensors, shape ``(B,)``."""
    if a.dim() == 2:
        return torch.linalg.vecdot(a, b)
    return torch.linalg.vecdot(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1))


def _expand(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s.reshape((-1,) + (1,) * (like.dim() - 1))


def _norm(v: torch.Tensor) -> torch.Tensor:
    """Per-element Euclidean norm, ``(B,)``, without overflow of the squares."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)


def _sync_every(device: torch.device, sync_every: int | None) -> int:
    """How often a solve to a tolerance asks whether any element is still active (a host sync):
    ``sync_every`` if given, else every step on the CPU, where the question is free, and every 4th
    step on an accelerator, where it stalls the queue. Converged elements are frozen, so the extra
    steps change no result; they cost at most ``sync_every − 1`` products after the last element
    converged."""
    if sync_every is not None:
        if not isinstance(sync_every, int) or isinstance(sync_every, bool) or sync_every < 1:
            raise ValueError(f"sync_every: expected a positive int, got {sync_every!r}")
        return sync_every
    return 1 if device.type == "cpu" else 4


def _threshold(b: torch.Tensor, rtol: float, atol: float) -> torch.Tensor | None:
    if rtol <= 0 and atol <= 0:
        return None
    return torch.clamp(rtol * batch_dot(b, b).sqrt(), min=atol)


#: a direction whose Rayleigh quotient is below this many eps times the curvature scale is flat
#: (round-off): the element stops there instead of stepping by round-off over round-off
_FLAT = 100.0


def _curvature_scale(matvec: Operator, b: torch.Tensor) -> torch.Tensor:
    """``‖Av‖/‖v‖`` per element for a fixed pseudo-random ``v`` (one product): the operator's scale,
    independent of the Krylov space of ``b`` (which can lie in the null space of a PSD ``A``)."""
    gen = torch.Generator(device=b.device).manual_seed(0)
    v = torch.randn(b.shape, generator=gen, device=b.device, dtype=b.dtype)
    Av = matvec(v)
    scale = (batch_dot(Av, Av) / batch_dot(v, v)).sqrt()
    return torch.where(torch.isfinite(scale), scale, torch.zeros_like(scale))


def _curvature(pAp: torch.Tensor, p: torch.Tensor,
               scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(negative, positive, scale′)`` per element: ``pᵀAp < −√eps·λ̂‖p‖²`` (negative beyond
    round-off), ``pᵀAp > 100·eps·λ̂‖p‖²`` (positive beyond round-off: a step is meaningful), with
    ``λ̂ = scale``; and ``λ̂`` raised to this direction's Rayleigh quotient ``pᵀAp/‖p‖²``."""
    eps = torch.finfo(p.dtype).eps
    pp = batch_dot(p, p)
    negative = pAp < -(eps ** 0.5) * scale * pp
    positive = pAp > _FLAT * eps * scale * pp
    rayleigh = pAp / torch.where(pp > 0, pp, torch.ones_like(pp))
    scale = torch.where(torch.isfinite(rayleigh) & (rayleigh > scale), rayleigh, scale)
    return negative, positive, scale


def _cg_fixed_steps(matvec: Operator, b: torch.Tensor, x: torch.Tensor, r: torch.Tensor, p: torch.Tensor,
                    rs: torch.Tensor, max_iter: int, semidefinite: bool) -> LinearSolve:
    """Exactly ``max_iter`` CG steps, no host sync: an element stops moving at breakdown (its
    curvature ``pᵀAp`` not positive beyond round-off, see ``_curvature``) or once its residual
    reached round-off (``‖r‖ ≤ eps·‖b‖``: further steps divide round-off by round-off and, in
    float32, can blow the iterate up). Few operations per step: at small sizes the per-operation
    overhead, not the arithmetic, is what a step costs beyond its product — hence ``‖p‖²`` by
    the recurrence ``‖p_{i+1}‖² = ‖r_{i+1}‖² + β_i²‖p_i‖²`` rather than an inner product."""
    B = b.shape[0]
    ok = torch.ones(B, dtype=torch.bool, device=b.device)
    eps = torch.finfo(b.dtype).eps
    if semidefinite:
        negative = None
        scale = torch.zeros(B, dtype=b.dtype, device=b.device)
    else:
        negative = torch.zeros(B, dtype=torch.bool, device=b.device)
        scale = _curvature_scale(matvec, b)
    zero = torch.zeros((), dtype=b.dtype, device=b.device)
    floor = (eps ** 2) * batch_dot(b, b)
    pp = batch_dot(p, p)
    oks = []   # each step's mask (ok only falls): the iteration counts are their sum, one operation
    for _ in range(max_iter):
        Ap = matvec(p)
        pAp = batch_dot(p, Ap)
        # the Rayleigh quotient raises the scale λ̂ (fmax: a 0/0 of a zero direction is ignored)
        scale = torch.fmax(scale, (pAp / pp).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0))
        spp = scale * pp
        if negative is not None:
            negative = negative | (ok & (pAp < -(eps ** 0.5) * spp))
        ok = ok & (pAp > _FLAT * eps * spp) & (rs > floor)   # rs > floor ≥ 0 and pAp > 0 where ok
        # the inner where keeps 0/0 out of the discarded branch: its NaN would reach the gradient
        # of a backward through the iteration (autograd differentiates both branches of a where)
        alpha = _expand(torch.where(ok, rs / torch.where(ok, pAp, 1.0), zero), x)
        x = torch.addcmul(x, alpha, p)
        r = torch.addcmul(r, alpha, Ap, value=-1)
        rs_new = batch_dot(r, r)
        beta = torch.where(ok, rs_new / torch.where(ok, rs, 1.0), zero)
        p = torch.addcmul(r, _expand(beta, p), p)
        # ‖p‖² by CG's recurrence (rᵀp_old = 0): only a scale for the round-off thresholds
        pp = torch.addcmul(rs_new, beta * beta, pp)
        rs = rs_new
        oks.append(ok)
    iterations = (torch.stack(oks).sum(0) if oks else torch.zeros(B, dtype=torch.int64, device=b.device))
    return LinearSolve(x, iterations, rs.sqrt(), torch.ones(B, dtype=torch.bool, device=b.device), negative)


def conjugate_gradient(matvec: Operator, b: torch.Tensor, *, x0: torch.Tensor | None = None,
                       max_iter: int, rtol: float = 0.0, atol: float = 0.0,
                       semidefinite: bool = False, sync_every: int | None = None) -> LinearSolve:
    """Batched conjugate gradient for ``A x = b`` (A symmetric positive definite per element).

    Args:
        matvec: ``v ↦ A v`` on ``(B, *event)`` tensors.
        b: right-hand side.
        x0: initial guess (default 0, as in the AID analysis of Grazzi et al. 2020).
        max_iter: number of steps (exactly this many when ``rtol = atol = 0``).
        rtol, atol: stop an element when ``‖r‖ ≤ max(atol, rtol‖b‖)``.
        semidefinite: ``A`` is positive semidefinite by construction (e.g. ``normal_equations``),
            so negative curvature is round-off: with a fixed number of steps (``rtol = atol =
            0``), no product for the curvature scale (``λ̂`` is the largest Rayleigh quotient of
            the CG directions alone — a right-hand side in the null space of ``A`` is then not
            recognised as flat) and ``negative_curvature`` is None. Ignored with a tolerance
            (one product for ``λ̂``, ``negative_curvature`` computed).
        sync_every: with a tolerance, test for remaining active elements (a host sync) every this
            many steps (default: 1 on the CPU, 4 elsewhere); results do not depend on it.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = batch_dot(r, r)
    thresh = _threshold(b, rtol, atol)
    if thresh is None:
        return _cg_fixed_steps(matvec, b, x, r, p, rs, max_iter, semidefinite)
    B = b.shape[0]
    active = rs.sqrt() > thresh
    iterations = torch.zeros(B, dtype=torch.int64, device=b.device)
    negative = torch.zeros(B, dtype=torch.bool, device=b.device)
    scale = _curvature_scale(matvec, b)
    every = _sync_every(b.device, sync_every)
    for i in range(max_iter):
        if i % every == 0 and not bool(active.any()):
            break
        Ap = matvec(p)
        pAp = batch_dot(p, Ap)
        neg, positive, scale = _curvature(pAp, p, scale)
        negative = negative | (active & neg)
        ok = active & positive & torch.isfinite(pAp)
        alpha = torch.where(ok, rs / torch.where(ok, pAp, torch.ones_like(pAp)), torch.zeros_like(rs))
        x = x + _expand(alpha, x) * p
        r = r - _expand(alpha, r) * Ap
        rs_new = batch_dot(r, r)
        beta = torch.where(ok, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)),
                           torch.zeros_like(rs))
        p = torch.where(_expand(ok, p), r + _expand(beta, p) * p, p)
        rs = torch.where(ok, rs_new, rs)
        iterations = iterations + ok.to(torch.int64)
        active = ok & (rs.sqrt() > thresh)
    res = rs.sqrt()
    return LinearSolve(x, iterations, res, res <= thresh, negative)


def fixed_point_iteration(apply_t: Operator, b: torch.Tensor, *, x0: torch.Tensor | None = None,
                          max_iter: int, rtol: float = 0.0, atol: float = 0.0,
                          sync_every: int | None = None) -> LinearSolve:
    """Batched fixed-point iteration ``x ← T x + b`` from ``x0`` (default 0).

    After ``k`` steps from 0, ``x_k = Σ_{i<k} Tⁱ b`` (the truncated Neumann series of
    ``(I − T)⁻¹ b``). With a tolerance, an element stops when ``‖x_k − x_{k−1}‖ ≤ max(atol,
    rtol‖b‖)``; an element whose step ``‖x_k − x_{k−1}‖`` is not finite (the iteration
    overflowed) stops there, unconverged, with the non-finite step as its residual. Norms are
    computed overflow-safely (``torch.linalg.vector_norm``), so a finite but huge iterate is not
    mistaken for an overflow. ``sync_every``: as in ``conjugate_gradient``.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    thresh = _threshold(b, rtol, atol)
    B = b.shape[0]
    step = torch.full((B,), float("inf"), dtype=b.dtype, device=b.device)
    if thresh is None:  # a fixed number of steps: no bookkeeping
        x_prev = x
        for _ in range(max_iter):
            x_prev, x = x, apply_t(x) + b
        if max_iter > 0:
            step = _norm(x - x_prev)
        return LinearSolve(x, torch.full((B,), max_iter, dtype=torch.int64, device=b.device), step,
                           torch.ones(B, dtype=torch.bool, device=b.device))
    active = torch.ones(B, dtype=torch.bool, device=b.device)
    iterations = torch.zeros(B, dtype=torch.int64, device=b.device)
    every = _sync_every(b.device, sync_every)
    for i in range(max_iter):
        if i % every == 0 and not bool(active.any()):
            break
        x_new = apply_t(x) + b
        diff = _norm(x_new - x)
        x = torch.where(_expand(active, x), x_new, x)
        step = torch.where(active, diff, step)
        iterations = iterations + active.to(torch.int64)
        active = active & (diff > thresh) & torch.isfinite(diff)
    return LinearSolve(x, iterations, step, step <= thresh)


def normal_equations(matvec: Operator, rmatvec: Operator) -> Operator:
    """The operator ``u ↦ A Aᵀ u`` from ``A`` (``matvec``) and ``Aᵀ`` (``rmatvec``).

    Solve ``A x = b`` for non-symmetric ``A`` by CG on ``A Aᵀ u = b`` and ``x = Aᵀ u`` (CGNE); the
    condition number is squared, so prefer the symmetric form when ``A`` is symmetric.
    """
    return lambda u: matvec(rmatvec(u))


def warn_unconverged(res: LinearSolve, what: str, rtol: float, max_iter: int, hint: str = "",
                     stacklevel: int = 2, method: str = "conjugate gradient") -> None:
    """Warn (``RuntimeWarning``, naming up to 20 batch indices) if a solve to a tolerance did not
    converge for every element (one host sync). ``method`` names the solver in the message;
    ``stacklevel`` counts from the caller, as in ``warnings.warn``."""
    if not bool(res.converged.all()):
        bad = (~res.converged).nonzero().reshape(-1).tolist()
        warnings.warn(f"{what}: {method} did not reach rtol={rtol:g} in {max_iter} steps for "
                      f"batch indices {bad[:20]}{hint}", RuntimeWarning, stacklevel=stacklevel + 1)


def check_curvature(res: LinearSolve, what: str, *, check: bool = True, stacklevel: int = 2) -> torch.Tensor:
    """The solve's ``x``, after a check for negative curvature met by conjugate gradient (the
    operator is not positive definite: the element's CG iterate was frozen there and is not the
    solution). One host sync.

    With ``check`` a flagged element raises a ``SolverError`` (``Status.INDEFINITE``, naming the
    batch indices; the other elements are available through ``SolverError.solution``, the
    ``LinearSolve``). Without it the flagged elements' ``x`` is set to zero and a ``RuntimeWarning``
    names them (``stacklevel`` counts from the caller): their gradients are zero, the other
    elements' are unaffected."""
    if res.negative_curvature is None or not bool(res.negative_curvature.any()):
        return res.x
    bad = res.negative_curvature.nonzero().reshape(-1).tolist()
    if check:
        raise SolverError(bad, [Status.INDEFINITE] * len(bad), res, what)
    shown = ", ".join(map(str, bad[:20])) + (", ..." if len(bad) > 20 else "")
    warnings.warn(f"{what}: {Status.INDEFINITE.name} for {len(bad)} batch element(s), batch indices "
                  f"[{shown}] ({Status.INDEFINITE.message}); their gradients are set to zero (the other "
                  "elements' are unaffected)", RuntimeWarning, stacklevel=stacklevel + 1)
    return torch.where(_expand(~res.negative_curvature, res.x), res.x, torch.zeros_like(res.x))
