"""``minimize``: a batched (projected) L-BFGS minimiser of per-element energies, in pure torch.

It solves, independently for every batch element ``b``,

    z*_b = argmin_z  E_b(z)   s.t.  lower ≤ z ≤ upper,

where ``fun(z)`` returns the ``(B,)`` energies of a ``(B, *event)`` batch of points and element
``b``'s energy depends only on ``z[b]`` (the minimiser relies on this: it differentiates
``fun(z).sum()``). Gradients are computed by autograd inside ``torch.enable_grad()``, so ``fun`` can
be any differentiable torch expression; it may close over tensors that require gradients (the
returned ``z`` is detached — differentiate through ``argmin``/``fixed_point`` for that).

Method (one code path for the unconstrained and the box-constrained case):

* **Direction** – L-BFGS two-loop recursion (Nocedal & Wright 2006, Alg. 7.4) with ``history``
  pairs and the initial scaling ``γ = sᵀy / yᵀy``. With bounds it is the two-metric projected
  quasi-Newton scheme (Bertsekas 1982; Kim, Sra & Dhillon 2010): coordinates at a bound whose
  gradient pushes outward (the *binding* set, within ``ε = min(1e-3, ‖proj. grad‖)``) take the
  scaled gradient step ``−γ g_i`` (the projection stops them at the bound), the quasi-Newton
  direction is computed on the gradient restricted to the free coordinates and restricted to
  them again. If this is not a descent direction the memory of that
  element is reset and its steepest descent direction is used.
* **Line search** – per-element backtracking (halving) along the projection arc
  ``z(t) = P(z + t d)`` until the Armijo condition ``E(z(t)) ≤ E(z) + c₁ ∇Eᵀ(z(t) − z)`` holds
  (``c₁ = 1e-4``), or its approximate form of Hager & Zhang (2005) once the decrease is below the
  round-off of E (``E(z(t)) ≤ E(z) + 100·eps·(|E|+1)`` and ``∇E(z(t))ᵀs ≤ 0.8|∇E(z)ᵀs|`` for the
  step ``s``); trial points with a non-finite energy or gradient are rejected. A pair with
  ``sᵀy ≤ 1e-10 ‖s‖‖y‖`` is not stored; if such a step was accepted without backtracking (the
  energy looks linear along ``d``), ``γ`` is doubled so that a descent without bound is detected
  in O(log) iterations rather than O(linear).
* **Statuses** (per element, ``Status`` codes):
  ``SOLVED`` when the projected-gradient norm ``‖z − P(z − ∇E(z))‖₂ ≤ tol`` (the gradient norm
  without bounds); ``UNBOUNDED_BELOW`` when the energy falls below ``-unbounded_below``
  (default ``1e20``) or reaches ``-inf``; ``NON_FINITE`` when the energy or gradient at the warm
  start is NaN/inf (or the point is stuck where every trial point is non-finite);
  ``MAX_ITERATIONS`` when ``max_iter`` iterations pass, or when no progress is possible any more
  (the line search fails along steepest descent — usually ``tol`` below the attainable precision;
  ``residuals["stalled"]`` flags these).
  Elements are frozen as soon as they leave the running state: their iterates no longer change,
  though ``fun`` is still evaluated on the whole batch (it may close over batched tensors).
* **Cost / syncs** – one ``fun`` evaluation and one backward per line-search trial (usually one
  per iteration); one host synchronisation per iteration when every element accepts its first
  trial (it reads both the acceptance and the convergence check: the accepted points and the
  statuses are computed before it), otherwise one more per extra trial and one for the convergence check; after
  an iteration that backtracked, the next one reads its acceptance and its convergence separately.

Tolerance guidance: the default ``tol`` is ``sqrt(eps)`` of the dtype (≈1.5e-8 in float64, ≈3.5e-4
in float32), an absolute bound on the gradient norm; scale it with the magnitude of your energy.
In float32 gradients carry round-off of about ``1e-7·|E|``, so much tighter tolerances stall.

Shape:
    - z0: ``(B, *event)``; lower/upper broadcastable to it (floats, ``±inf`` for no bound).
    - fun(z) for z of shape ``(B, *event)``: ``(B,)``.
    - Solution.z: ``(B, *event)``; status, iterations: ``(B,)``;
      residuals ``"grad_norm"``, ``"energy"``: ``(B,)``, ``"stalled"``: ``(B,)`` bool.

References:
    J. Nocedal, S. Wright. Numerical Optimization, 2nd ed., 2006, §7.2.
    D. Bertsekas. Projected Newton methods for optimization problems with simple constraints.
    SIAM J. Control Optim. 20(2), 1982.
    D. Kim, S. Sra, I. Dhillon. Tackling box-constrained optimization via a new projected
    quasi-Newton approach. SIAM J. Sci. Comput. 32(6), 2010.
    W. Hager, H. Zhang. A new conjugate gradient method with guaranteed descent and an efficient
    line search. SIAM J. Optim. 16(1), 2005.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .solution import Solution
from .status import Status
from .validation import (check_callable, check_count, check_energies, check_positive,
                         check_same_dtype_device, check_start, check_tensor)

__all__ = ["minimize", "default_tol"]

_C1 = 1e-4
_MAX_LINE_SEARCH = 40
_ROUNDOFF = 100.0
_RUNNING = -1


def default_tol(dtype: torch.dtype) -> float:
    """The default absolute gradient-norm tolerance for a dtype: ``sqrt(machine eps)``."""
    return math.sqrt(torch.finfo(dtype).eps)


def _bound_tensor(name, value, like: torch.Tensor) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = torch.tensor(float(value), dtype=like.dtype, device=like.device)
    check_tensor(name, value)
    check_same_dtype_device(z0=like, **{name: value})
    if torch.isnan(value).any():
        raise ValueError(f"{name}: expected numbers or ±inf, found NaN")
    try:
        value = torch.broadcast_to(value, like.shape)
    except RuntimeError:
        raise ValueError(f"{name}: shape {tuple(value.shape)} does not broadcast to z0's shape "
                         f"{tuple(like.shape)}") from None
    return value.reshape(like.shape[0], like.shape[1:].numel())


def _energy_and_grad(fun, z_flat: torch.Tensor, shape) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        zz = z_flat.detach().reshape(shape).requires_grad_(True)
        f = check_energies("fun", fun(zz), shape[0])
        (g,) = torch.autograd.grad(f.sum(), zz, allow_unused=True)
    if g is None:
        g = torch.zeros_like(zz)
    return f.detach().to(z_flat.dtype), g.detach().reshape(z_flat.shape)


def minimize(fun: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, *,
             lower=None, upper=None, tol: float | None = None, max_iter: int = 500,
             method: str = "lbfgs", history: int = 10,
             unbounded_below: float = 1e20) -> Solution:
    """Minimise per-element energies ``fun(z) -> (B,)`` from the warm start ``z0`` (batched).

    ``min_z E_b(z)  s.t.  lower ≤ z ≤ upper``  for every batch element ``b`` (see module docstring
    for the method and the statuses).

    Args:
        fun: ``fun(z)`` with ``z`` of shape ``(B, *event)`` returns the ``(B,)`` energies; element
            ``b`` must depend on ``z[b]`` only. Differentiable by autograd.
        z0: ``(B, *event)`` warm start (projected onto the bounds first).
        lower, upper: optional bounds, floats or tensors broadcastable to ``z0``; ``±inf`` entries
            mean no bound.
        tol: absolute tolerance on the (projected) gradient 2-norm per element; default
            ``default_tol(z0.dtype)``.
        max_iter: iteration limit (≥ 0; 0 only evaluates the statuses at ``z0``).
        method: ``"lbfgs"`` (projected L-BFGS; the only method).
        history: number of L-BFGS pairs kept (≥ 1).
        unbounded_below: an element whose energy falls below ``-unbounded_below`` is reported
            ``UNBOUNDED_BELOW``.

    Returns:
        ``Solution`` with ``z`` (detached, shape of ``z0``), ``status`` and ``iterations`` ``(B,)``,
        ``residuals = {"grad_norm", "energy", "stalled"}``. It never raises for a numerical
        failure: call ``.raise_for_status()``.

    Shape:
        z0: ``(B, *event)``, fun(z): ``(B,)``.
    """
    check_callable("fun", fun, "fun(z) -> (B,)")
    check_start("z0", z0)
    if method != "lbfgs":
        raise ValueError(f"method: expected 'lbfgs', got {method!r}")
    check_count("max_iter", max_iter)
    check_count("history", history, minimum=1)
    tol = default_tol(z0.dtype) if tol is None else check_positive("tol", tol)
    check_positive("unbounded_below", unbounded_below)
    shape = z0.shape
    B = shape[0]
    lo = _bound_tensor("lower", lower, z0)
    hi = _bound_tensor("upper", upper, z0)
    bounded = lo is not None or hi is not None
    if lo is not None and hi is not None and bool((lo > hi).any()):
        raise ValueError("lower/upper: expected lower <= upper everywhere")

    def project(x):
        if lo is not None:
            x = torch.maximum(x, lo)
        if hi is not None:
            x = torch.minimum(x, hi)
        return x

    z = project(z0.detach().reshape(B, shape[1:].numel()).clone())
    n = z.shape[1]
    dtype, device = z.dtype, z.device
    f, g = _energy_and_grad(fun, z, shape)

    def proj_grad(z, g):
        # z − P(z − g) = clamp(g, z − upper, z − lower), written so that it stays exact far from
        # the bounds (z − (z − g) loses g to round-off when |z| ≫ |g|)
        if lo is not None:
            g = torch.minimum(g, z - lo)
        if hi is not None:
            g = torch.maximum(g, z - hi)
        return g

    pg = proj_grad(z, g)
    pgn = pg.norm(dim=1)
    finite = torch.isfinite(f) & torch.isfinite(g).all(dim=1)
    status = torch.full((B,), _RUNNING, dtype=torch.int64, device=device)
    status = torch.where(~finite, Status.NON_FINITE, status)
    status = torch.where(finite & (f < -unbounded_below), Status.UNBOUNDED_BELOW, status)
    status = torch.where((status == _RUNNING) & (pgn <= tol), Status.SOLVED, status)
    iterations = torch.zeros(B, dtype=torch.int64, device=device)
    stalled = torch.zeros(B, dtype=torch.bool, device=device)

    m = history
    S = torch.zeros(m, B, n, dtype=dtype, device=device)
    Y = torch.zeros(m, B, n, dtype=dtype, device=device)
    rho = torch.zeros(m, B, dtype=dtype, device=device)  # 0 marks an empty / rejected slot
    gnorm0 = torch.nan_to_num(g.norm(dim=1), nan=1.0, posinf=1.0)
    gamma = 1.0 / gnorm0.clamp_min(1.0)
    slot = 0
    failed_once = torch.zeros(B, dtype=torch.bool, device=device)

    def remember(active, accepted, z_new, g_new, first_trial):
        """The memory update once the line search has stopped: the new pair ``(s, y, 1/sᵀy)``
        (zero where it is not stored), ``γ``, the elements whose memory is reset and the
        failure flags. Nothing is written in place (the caller commits the memory slot)."""
        moved = active & accepted
        ls_failed = active & ~accepted
        s = z_new - z
        y = g_new - g
        sy = (s * y).sum(1)
        curvature = sy > 1e-10 * s.norm(dim=1) * y.norm(dim=1)
        store = moved & curvature & torch.isfinite(sy) & (sy > 0)
        pair = (torch.where(store[:, None], s, 0.0), torch.where(store[:, None], y, 0.0),
                torch.where(store, 1.0 / torch.where(store, sy, 1.0), 0.0))
        yy = (y * y).sum(1)
        gamma_ = torch.where(store, sy / torch.where(store, yy, 1.0), gamma)
        gamma_ = torch.where(moved & ~store & first_trial, 2.0 * gamma_, gamma_)
        # a failed line search: reset the memory once, then declare the element stalled
        reset = ls_failed & ~failed_once
        gamma_ = torch.where(reset, 1.0 / g.norm(dim=1).clamp_min(1.0), gamma_)
        failed_ = ~moved & (failed_once | ls_failed)
        return pair, reset, gamma_, failed_

    def classify(active, accepted, z_new, f_new, g_new, unbounded):
        """The accepted points and the statuses once the line search has stopped (nothing written
        in place: a result computed before the line search is known to be over can be dropped)."""
        moved = active & accepted
        now_stalled = active & ~accepted & failed_once
        z_ = torch.where(moved[:, None], z_new, z)
        f_ = torch.where(moved, f_new, f)
        g_ = torch.where(moved[:, None], g_new, g)
        pgn_ = torch.where(active, proj_grad(z_, g_).norm(dim=1), pgn)
        unb = moved & (unbounded | (f_ < -unbounded_below))
        status_ = torch.where(unb, Status.UNBOUNDED_BELOW, status)
        status_ = torch.where((status_ == _RUNNING) & moved & (pgn_ <= tol), Status.SOLVED, status_)
        finite_pt = torch.isfinite(f_) & torch.isfinite(g_).all(dim=1)
        status_ = torch.where((status_ == _RUNNING) & ~finite_pt, Status.NON_FINITE, status_)
        stalled_ = stalled | (now_stalled & (status_ == _RUNNING))
        status_ = torch.where((status_ == _RUNNING) & now_stalled, Status.MAX_ITERATIONS, status_)
        return z_, f_, g_, pgn_, status_, stalled_

    # the convergence check: whether any element still runs (read once here, then once per
    # iteration together with the line search's acceptance)
    any_running = max_iter > 0 and bool((status == _RUNNING).any())
    # whether the last iteration's line search ended at the first trial (then this one likely does)
    speculate = True
    for _ in range(max_iter):
        if not any_running:
            break
        active = status == _RUNNING
        # -- direction ---------------------------------------------------------------------------
        if bounded:
            eps = pgn.clamp_max(1e-3)[:, None]
            binding = torch.zeros_like(z, dtype=torch.bool)
            if lo is not None:
                binding |= (z <= lo + eps) & (g > 0)
            if hi is not None:
                binding |= (z >= hi - eps) & (g < 0)
            free = (~binding).to(dtype)
            q = g * free
        else:
            q = g
        order = [(slot - 1 - i) % m for i in range(m)]  # newest first
        alphas = []
        for j in order:
            a = rho[j] * (S[j] * q).sum(1)
            q = q - a[:, None] * Y[j]
            alphas.append(a)
        r = gamma[:, None] * q
        for j, a in zip(reversed(order), reversed(alphas)):
            bcoef = rho[j] * (Y[j] * r).sum(1)
            r = r + (a - bcoef)[:, None] * S[j]
        d = -r
        if bounded:
            # two-metric projection: binding coordinates take a scaled gradient step (the
            # projection stops them at the bound); freezing them would stall an element whose
            # only non-zero projected-gradient entries sit within eps of a bound
            d = d * free - (1 - free) * gamma[:, None] * g
        slope = (g * d).sum(1)
        # not a descent direction: reset the memory of these elements, steepest descent (applied
        # by masks, without asking the host whether there are any)
        bad = ~(slope < 0) | ~torch.isfinite(slope)
        rho = rho.masked_fill(bad, 0.0)
        gamma = torch.where(bad, 1.0 / g.norm(dim=1).clamp_min(1.0), gamma)
        d = torch.where(bad[:, None], -g * gamma[:, None], d)
        # -- per-element backtracking line search along the projection arc ------------------------
        t = torch.ones(B, dtype=dtype, device=device)
        accepted = ~active
        first_trial = torch.zeros(B, dtype=torch.bool, device=device)
        z_new, f_new, g_new = z, f, g  # replaced (never written in place) where a trial is accepted
        f_noise = _ROUNDOFF * torch.finfo(dtype).eps * (f.abs() + 1)
        unbounded = torch.zeros(B, dtype=torch.bool, device=device)
        done = None
        for trial in range(_MAX_LINE_SEARCH):
            zt = z + t[:, None] * d
            if bounded:
                zt = project(zt)
            ft, gt = _energy_and_grad(fun, zt, shape)
            ok_vals = torch.isfinite(ft) & torch.isfinite(gt).all(dim=1)
            step = zt - z
            gs = (g * step).sum(1)
            armijo = ft <= f + _C1 * gs
            # approximate Armijo (Hager & Zhang 2005): near a minimiser the decrease is below the
            # round-off of E, so accept a point where E did not rise beyond round-off and the
            # slope along the step is still bounded by (1 - 2δ)|slope at 0|, δ = 0.1.
            approx = (ft <= f + f_noise) & ((gt * step).sum(1) <= -0.8 * gs)
            armijo = (armijo | approx) & (step != 0).any(1)
            neg_inf = (ft == -math.inf) & ~accepted
            ok = ~accepted & ((ok_vals & armijo) | neg_inf)
            unbounded |= neg_inf
            z_new = torch.where(ok[:, None], zt, z_new)
            f_new = torch.where(ok, ft, f_new)
            g_new = torch.where(ok[:, None], gt, g_new)
            if trial == 0:
                first_trial = ok
            accepted = accepted | ok
            if trial == 0 and speculate:
                # the common case, every element accepts its first trial: the accepted points and
                # the statuses are computed before asking, and one host synchronisation reads both
                # whether every element accepted and whether any still runs afterwards
                done = classify(active, accepted, z_new, f_new, g_new, unbounded)
                all_accepted, any_running = (bool(v) for v in torch.stack(
                    [accepted.all(), (done[4] == _RUNNING).any()]).tolist())
                if all_accepted:
                    break
                done = None
            elif bool(accepted.all()):
                break
            t = torch.where(accepted, t, 0.5 * t)
        # after an iteration that backtracked, the next one's statuses are not computed before its
        # line search is known to be over (an iteration that backtracks computes them twice)
        speculate = done is not None or trial == 0
        if done is None:
            done = classify(active, accepted, z_new, f_new, g_new, unbounded)
            any_running = bool((done[4] == _RUNNING).any())
        pair, reset, gamma, failed_once = remember(active, accepted, z_new, g_new, first_trial)
        z, f, g, pgn, status, stalled = done
        S[slot], Y[slot], rho[slot] = pair
        rho = rho.masked_fill(reset, 0.0)
        slot = (slot + 1) % m
        iterations = iterations + active.to(torch.int64)

    status = torch.where(status == _RUNNING, Status.MAX_ITERATIONS, status)
    return Solution(z=z.reshape(shape), status=status, iterations=iterations,
                    residuals={"grad_norm": pgn, "energy": f, "stalled": stalled})
