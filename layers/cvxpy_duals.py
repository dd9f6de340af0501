r"""Differentiable multipliers of a solved QP (``CvxpyLayer`` outputs that are constraints' duals).

At a solution ``z`` of ``min ½zᵀQz + qᵀz s.t. Gz ≤ h, Az = b`` with strict complementarity (every
active inequality has a positive multiplier) and linearly independent active constraints
``C = [G_K; A]`` (``K`` the active inequalities), stationarity determines the multipliers:

.. math::

    C^\top y = -(Qz + q), \qquad
    y = (\lambda_K, \nu) = -(C C^\top)^{-1} C\,(Qz + q), \qquad \lambda_{K^c} = 0,

and the active set is locally constant, so this identity holds in a neighbourhood of the
parameters: differentiating it (autograd, through ``z`` — whose own backward is the QP's gradient
mode — and through ``Q, q, G, A``) gives the exact derivative of the multipliers. It is the
same as solving the transposed KKT system with the cotangents of ``(z, λ_K, ν)`` on its right-hand
side. The returned values are the solver's multipliers; only their gradient comes from the
formula.

**Where there is no derivative**, a backward that sends a nonzero cotangent into the multipliers
of such a batch element raises a ``RuntimeError`` naming the elements and the reason (the primal
outputs keep their gradient, and elements whose cotangent on the multipliers is zero pass):

* a weakly active constraint: a row whose multiplier and slack are both small on the row's own
  scale, ``λ̂_i = λ_i‖G_i‖₂ / g ≤ τ`` and ``ŝ_i = s_i / (|h_i| + ‖G_i‖₁‖z‖∞) ≤ τ``, with
  ``s_i = h_i − G_i z``, the gradient's scale ``g = max(max|Q|·‖z‖₂, ‖q‖₂, max_j |y_j|‖C_j‖₂)``
  and ``τ = ε^{1/3}`` (6e-6 in float64, 5e-3 in float32), unless one of the two exceeds the
  other by ``1/τ`` and exceeds ``τ²`` (complementarity then tells the side: strictly active, or
  inactive). Every quantity is invariant under a scaling of the row (``k·Gx ≤ k·h``). The
  multipliers are not differentiable there (the one-sided derivatives differ). An epigraph
  constraint (``abs(x) ≤ 1``: cvxpy's ``x ≤ t, −x ≤ t, t ≤ 1`` with ``t`` absent from the
  objective) has such rows wherever the solver picks ``t = |x|``, even where the user's
  multipliers are unique: write the bound without the epigraph (``x ≤ 1, x ≥ −1``);
* linearly dependent active constraints (the smallest eigenvalue of the row-normalised
  ``D^{-1} C Cᵀ D^{-1}``, ``D`` the rows' norms, below ``ε^{3/4}``, one Cholesky factorisation)
  or multipliers of the formula that differ from the solver's by more than ``τ g / ‖C_i‖₂``
  (multipliers not unique, or a solution not accurate enough to tell the active set).

Elements the solver did not solve get a zero gradient, as for the primal outputs.
"""

from __future__ import annotations

import torch

__all__ = ["differentiable_duals", "lazy_differentiable_duals"]


def _mv(M: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``M x`` for ``M (…, r, k)``, ``x (B, k)``."""
    return x @ M.mT if M.dim() == 2 else (M @ x.unsqueeze(-1)).squeeze(-1)


def _batch(t: torch.Tensor | None, B: int, core: int) -> torch.Tensor | None:
    return None if t is None else t.expand(B, *t.shape[t.dim() - core:])


def _indices(mask: torch.Tensor) -> str:
    idx = torch.nonzero(mask).reshape(-1).tolist()
    return "[" + ", ".join(map(str, idx[:20])) + (", ..." if len(idx) > 20 else "") + "]"


class _NoDerivativeGuard(torch.autograd.Function):
    """Identity; its backward raises where a nonzero cotangent reaches an element flagged
    ``weak`` or ``dependent``."""

    @staticmethod
    def forward(y, weak, dependent):
        return y.view_as(y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1], inputs[2])

    @staticmethod
    def backward(ctx, grad):
        weak, dependent = ctx.saved_tensors
        hit = (grad != 0).any(-1)
        why = []
        if bool((hit & weak).any()):
            why.append(f"weakly active constraints (an active inequality with a zero multiplier: the "
                       f"multipliers have no derivative there) in batch elements {_indices(hit & weak)} (an "
                       f"epigraph bound such as `cp.abs(x) <= 1` has such rows wherever its auxiliary "
                       f"variable is not unique: write it as `x <= 1, x >= -1`)")
        if bool((hit & dependent).any()):
            why.append(f"linearly dependent active constraints, or multipliers the solution does not "
                       f"determine to tolerance, in batch elements {_indices(hit & dependent)}")
        if why:
            raise RuntimeError("CvxpyLayer: gradient through multipliers (constraints or dual variables "
                               "in `variables`) not defined: " + "; ".join(why)
                               + ". The primal outputs' gradients are defined; detach the multipliers "
                               "of those elements")
        return grad, None, None


def _vector_norm(x: torch.Tensor) -> torch.Tensor:
    """``‖x‖₂`` over the last dimension (for a matrix: its rows' norms)."""
    return torch.linalg.vector_norm(x, dim=-1)


def differentiable_duals(blocks, z: torch.Tensor, lam: torch.Tensor | None, nu: torch.Tensor | None,
                         solved: torch.Tensor):
    """The multipliers ``(λ (B, m), ν (B, p))`` with the values ``lam``, ``nu`` (the solver's) and
    the gradient of the stationarity formula (module docstring).

    Args:
        blocks: the canonical ``(Q, q, G, h, A, b)`` (differentiable; unbatched ones shared; G/h or
            A/b None when absent).
        z: ``(B, n)`` the canonical minimiser (differentiable).
        lam, nu: ``(B, m)``, ``(B, p)`` the solver's multipliers (or None when absent).
        solved: ``(B,)`` the elements the solver solved.
    """
    Q, q, G, h, A, b = blocks
    B, n = z.shape
    dtype = z.dtype
    eps = torch.finfo(dtype).eps
    tau = eps ** (1 / 3)
    m = 0 if G is None else G.shape[-2]
    p = 0 if A is None else A.shape[-2]
    z = torch.where(solved.unsqueeze(-1), z, 0.0)
    r = _mv(Q, z) + q
    zd = z.detach()
    rows, inactive, values, norms = [], [], [], []
    if m:
        rows.append(_batch(G, B, 2))
        values.append(lam.detach())
        norms.append(_vector_norm(G.detach()).expand(B, m))
    if p:
        rows.append(_batch(A, B, 2))
        values.append(nu.detach())
        norms.append(_vector_norm(A.detach()).expand(B, p))
    value = torch.cat(values, -1)                               # (B, m + p)
    norm = torch.cat(norms, -1)
    with torch.no_grad():
        # the gradient's scale: that of the terms stationarity Qz + q + Cᵀy = 0 balances,
        # max|Q|·‖z‖, ‖q‖ and each row's contribution |y_i|·‖C_i‖ (row-scale invariant; Qz + q
        # and the multipliers may all be zero)
        contrib = value.abs() * norm
        Q_max = Q.detach().abs().amax(dim=(-2, -1))
        scale_g = torch.maximum(torch.maximum(Q_max * _vector_norm(zd), _vector_norm(q.detach()).expand(B)),
                                contrib.amax(-1))
        scale_g = scale_g.clamp(min=torch.finfo(dtype).tiny).unsqueeze(-1)
        y_hat = contrib / scale_g                               # each multiplier, relative
    weak = torch.zeros(B, dtype=torch.bool, device=z.device)
    both = torch.zeros_like(weak)
    if m:
        with torch.no_grad():
            Gd, hd = G.detach(), h.detach()
            s = _batch(hd, B, 1) - _mv(Gd, zd)
            # each row's slack relative to its own scale |h_i| + ‖G_i‖₁‖z‖∞ (that of its rounding)
            s_bar = hd.abs() + Gd.abs().sum(-1) * zd.abs().amax(-1, keepdim=True)
            s_hat = torch.where(s <= 0, 0.0, s / s_bar)        # (s̄_i = 0 only where z = 0, h_i = 0)
            lam_hat = y_hat[:, :m]
            lam_small = lam_hat <= tau
            s_small = s_hat <= tau
            # a row whose relative multiplier exceeds its relative slack by 1/τ and the floor
            # 10√eps₆₄ (or conversely) is strictly active (inactive): complementarity tells the
            # side. Below the floor the QP backward, which classifies the primal side at √eps₆₄ of
            # its own (equilibrated) scales — float32 problems are solved and differentiated in
            # float64 — may call the row weakly active and choose its side by the cotangent: a
            # fixed side here would mix the two
            floor = 10 * torch.finfo(torch.float64).eps ** 0.5
            lam_dominates = (lam_hat * tau > s_hat) & (lam_hat > floor)
            s_dominates = (s_hat * tau > lam_hat) & (s_hat > floor)
            weak = (lam_small & s_small & ~lam_dominates & ~s_dominates).any(-1)
            both = (~lam_small & ~s_small).any(-1)
            active = ~lam_small | (s_small & lam_dominates)
        inactive.append(~active)
    if p:
        inactive.append(norm[:, m:] == 0)                       # all-zero equality rows
    C = torch.cat(rows, -2)                                     # (B, m + p, n)
    out = torch.cat(inactive, -1)
    # rows normalised (D⁻¹ C Cᵀ D⁻¹, D the row norms; rows out of K get a unit diagonal):
    # row-scale invariant tests and a well-scaled solve
    d_inv = torch.where(out | (norm == 0), 0.0, 1.0 / norm.clamp(min=torch.finfo(dtype).tiny))
    Cn = C * d_inv.unsqueeze(-1)
    M = Cn @ Cn.mT + torch.diag_embed(out.to(dtype))
    # dependent rows: the normalised Gram matrix singular to rounding — its smallest eigenvalue
    # below eps^¾ (its diagonal is 1); one Cholesky of the shifted matrix tells
    eye = torch.eye(M.shape[-1], dtype=dtype, device=z.device)
    dependent = (torch.linalg.cholesky_ex(M.detach() - eps ** 0.75 * eye).info > 0) | both
    # elements without a formula (dependent rows, not solved: possibly non-finite) get I and zeros,
    # so that their (zero) cotangent cannot meet a NaN in the backward
    skip = (dependent | ~solved).view(-1, 1, 1)
    M = torch.where(skip, eye, M)
    rhs = torch.where(skip, 0.0, -(Cn @ r.unsqueeze(-1)))
    y = torch.cholesky_solve(rhs, torch.linalg.cholesky(M)).squeeze(-1) * d_inv
    with torch.no_grad():
        off = ((y - value).abs() * norm / scale_g).amax(-1) > tau
    dependent = dependent | (off & ~weak)
    y = torch.where(solved.unsqueeze(-1), y, y.detach())
    y = y + (value - y).detach()                                # the solver's values, the formula's gradient
    y = _NoDerivativeGuard.apply(y, weak & solved, dependent & solved)
    return (y[:, :m] if m else None), (y[:, m:] if p else None)


class _LazyDuals(torch.autograd.Function):
    """The multipliers ``y = (λ, ν)`` as given (forward: no extra work); the backward builds
    ``differentiable_duals``'s graph and sends the cotangent of ``y`` through it to ``z`` and the
    blocks."""

    @staticmethod
    def forward(y, split, solved, z, *blocks):
        return y.view_as(y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        y, split, solved, z, *blocks = inputs
        ctx.split = split
        ctx.absent = [b is None for b in blocks]
        ctx.save_for_backward(y, solved, z, *[b for b in blocks if b is not None])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        y, solved, z, *present = ctx.saved_tensors
        it = iter(present)
        inputs = [z] + [None if a else next(it) for a in ctx.absent]
        need = ctx.needs_input_grad[3:]
        (m, has_lam), (_, has_nu) = ctx.split
        lam = y[:, :m] if has_lam else None
        nu = y[:, m:] if has_nu else None
        with torch.enable_grad():
            leaves = [None if t is None else t.detach().requires_grad_(n) for t, n in zip(inputs, need)]
            lam_d, nu_d = differentiable_duals(leaves[1:], leaves[0], lam, nu, solved)
            outs, cots = [], []
            for t, cot in ((lam_d, grad[:, :m]), (nu_d, grad[:, m:])):
                if t is not None:
                    outs.append(t)
                    cots.append(cot)
            wanted = [t for t in leaves if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(outs, wanted, cots, allow_unused=True)) if wanted else iter(())
        return (None, None, None, *[next(grads) if t is not None and t.requires_grad else None for t in leaves])


class _FirstOrderOnly(torch.autograd.Function):
    """Identity whose backward refuses ``create_graph``: the multipliers' gradient is built on
    detached inputs (``_LazyDuals``), so a second derivative through it would silently miss
    terms — raise instead."""

    @staticmethod
    def forward(y):
        return y.view_as(y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            raise NotImplementedError("CvxpyLayer: the multipliers (constraints or dual variables in `variables`) "
                               "are differentiable once: a backward with create_graph=True through them is "
                               "not supported (the primal outputs are twice differentiable as their mode is)")
        return grad


def lazy_differentiable_duals(blocks, z: torch.Tensor, lam: torch.Tensor | None, nu: torch.Tensor | None,
                              solved: torch.Tensor):
    """``differentiable_duals`` with its graph built in the backward, only when a cotangent
    reaches the multipliers (the forward returns the values and records nothing else; same
    arguments and gradient; differentiable once: a ``create_graph`` backward through the
    multipliers raises)."""
    B = z.shape[0]
    m = 0 if lam is None else lam.shape[-1]
    parts = [t.detach() for t in (lam, nu) if t is not None]
    y = torch.cat(parts, -1) if parts else z.new_zeros(B, 0)
    split = ((m, lam is not None), (y.shape[-1] - m, nu is not None))
    y = _FirstOrderOnly.apply(_LazyDuals.apply(y, split, solved, z, *blocks))
    return (y[:, :m] if lam is not None else None), (y[:, m:] if nu is not None else None)
