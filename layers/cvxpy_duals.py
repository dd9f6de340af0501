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

* a weakly active constraint (``λ_i ≤ τ ȳ`` and ``s_i = h_i − G_i z ≤ τ s̄``, with the
  multipliers' scale ``ȳ = max(‖(λ, ν)‖∞, max(max|Q|·‖z‖∞, ‖q‖∞) / max|C|)``,
  ``s̄ = ‖h‖∞ + ‖G‖∞‖z‖∞`` and ``τ = ε^{1/3}``, 6e-6 in float64, 5e-3 in float32): the
  multipliers are not differentiable there (the one-sided derivatives differ);
* linearly dependent active constraints (the smallest eigenvalue of ``C Cᵀ`` below
  ``ε^{3/4} max|C|²``, one Cholesky factorisation) or multipliers of the formula that differ from
  the solver's by more than ``τ ȳ`` (multipliers not unique, or a solution not accurate enough
  to tell the active set).

Elements the solver did not solve get a zero gradient, as for the primal outputs.
"""

from __future__ import annotations

import torch

__all__ = ["differentiable_duals"]


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
                       f"multipliers have no derivative there) in batch elements {_indices(hit & weak)}")
        if bool((hit & dependent).any()):
            why.append(f"linearly dependent active constraints, or multipliers the solution does not "
                       f"determine to tolerance, in batch elements {_indices(hit & dependent)}")
        if why:
            raise RuntimeError("CvxpyLayer: gradient through multipliers (constraints or dual variables "
                               "in `variables`) not defined: " + "; ".join(why)
                               + ". The primal outputs' gradients are defined; detach the multipliers "
                               "of those elements")
        return grad, None, None


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
    tau = torch.finfo(dtype).eps ** (1 / 3)
    m = 0 if G is None else G.shape[-2]
    p = 0 if A is None else A.shape[-2]
    z = torch.where(solved.unsqueeze(-1), z, 0.0)
    r = _mv(Q, z) + q
    zd = z.detach()
    rows, diag, values = [], [], []
    scale_y = zd.new_zeros(B)
    for y in (lam, nu):
        if y is not None and y.shape[-1]:
            scale_y = torch.maximum(scale_y, y.detach().abs().amax(-1))
    # floor: the multipliers' natural scale max(max|Q|·‖z‖∞, ‖q‖∞) / max|C|, what Cᵀy balances
    # (all multipliers may be zero, and the solver's error on them is relative to that scale)
    c_max = None
    for t in (G, A):
        if t is not None:
            t_max = t.detach().abs().amax(dim=(-2, -1))
            c_max = t_max if c_max is None else torch.maximum(c_max, t_max)
    if c_max is not None:
        with torch.no_grad():
            terms = torch.maximum(Q.abs().amax(dim=(-2, -1)) * zd.abs().amax(-1), q.abs().amax(-1))
            floor = terms / c_max.clamp(min=torch.finfo(dtype).tiny)
        scale_y = torch.maximum(scale_y, floor)
    weak = torch.zeros(B, dtype=torch.bool, device=z.device)
    both = torch.zeros_like(weak)
    if m:
        Gb = _batch(G, B, 2)
        with torch.no_grad():
            s = _batch(h, B, 1) - _mv(G, zd)
            s_bar = h.abs().amax(-1).expand(B) + G.abs().sum(-1).amax(-1).expand(B) * zd.abs().amax(-1)
            lam_small = lam.detach() <= tau * scale_y.unsqueeze(-1)
            s_small = s <= tau * s_bar.unsqueeze(-1)
            weak = (lam_small & s_small).any(-1)
            both = (~lam_small & ~s_small).any(-1)
            active = ~lam_small
        rows.append(Gb * active.unsqueeze(-1).to(dtype))
        diag.append((~active).to(dtype))
        values.append(lam.detach())
    if p:
        Ab = _batch(A, B, 2)
        zero_row = (Ab.detach().abs().amax(-1) == 0)
        rows.append(Ab)
        diag.append(zero_row.to(dtype))
        values.append(nu.detach())
    C = torch.cat(rows, -2)                                     # (B, m + p, n)
    c2 = (c_max * c_max).reshape(-1, 1) if c_max.dim() else c_max * c_max
    M = C @ C.mT + torch.diag_embed(torch.cat(diag, -1) * c2)
    # dependent rows: C Cᵀ singular to rounding — the smallest eigenvalue of M below eps^¾·max|C|²
    # (the padding rows' c2 keep M's scale); one Cholesky of the shifted matrix tells
    shift = (torch.finfo(dtype).eps ** 0.75 * c2).reshape(-1, 1, 1) if c_max.dim() else \
        torch.finfo(dtype).eps ** 0.75 * c2
    eye = torch.eye(M.shape[-1], dtype=dtype, device=z.device)
    dependent = (torch.linalg.cholesky_ex(M.detach() - shift * eye).info > 0) | both
    # elements without a formula (dependent rows, not solved: possibly non-finite) get I and zeros,
    # so that their (zero) cotangent cannot meet a NaN in the backward
    skip = (dependent | ~solved).view(-1, 1, 1)
    M = torch.where(skip, eye, M)
    rhs = torch.where(skip, 0.0, -(C @ r.unsqueeze(-1)))
    y = torch.cholesky_solve(rhs, torch.linalg.cholesky(M)).squeeze(-1)
    value = torch.cat(values, -1)
    with torch.no_grad():
        off = (y - value).abs().amax(-1) > tau * scale_y
    dependent = dependent | (off & ~weak)
    y = torch.where(solved.unsqueeze(-1), y, y.detach())
    y = y + (value - y).detach()                                # the solver's values, the formula's gradient
    y = _NoDerivativeGuard.apply(y, weak & solved, dependent & solved)
    return (y[:, :m] if m else None), (y[:, m:] if p else None)
