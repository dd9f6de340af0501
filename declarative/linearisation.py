"""``FixedPointLinearisation``: the Jacobian products of a fixed-point map ``Φ(w, θ)`` at a point,
by reverse-mode autodiff, never forming a matrix.

The graph of ``Φ(w, θ)`` is built once (``w`` and the parameters that need gradients are detached
leaves) and reused for every product:

* ``jt(v) = ∂_wΦᵀ v``  – one backward (a VJP);
* ``j(u)  = ∂_wΦ u``   – a JVP by the double-VJP trick: ``∂_wΦ u = ∂_x ⟨∂_wΦᵀ x, u⟩`` with the
  VJP built once with ``create_graph=True`` (so reverse mode only);
* ``jacobian()``  = ``∂_wΦ`` as a dense ``(B, D, D)`` matrix, ``D`` VJPs in one vmapped backward
  (``declarative.dense_jacobian`` decides when that beats ``k`` separate products);
* ``params_vjp(v) = ∂_θΦᵀ v`` – the final product of the AID hypergradient
  ``∇_θ = ∂_θΦᵀ v``, with ``v`` the (approximate) solution of ``(I − ∂_wΦᵀ) v = g``;
* ``solve_adjoint(g, ...)`` – that ``v`` by conjugate gradient (on the system itself when ``∂_wΦ``
  is symmetric, else on the normal equations), shared by ``ConjugateGradient(k)`` and the implicit
  gradient of ``declarative.fixed_point``.

Shape:
    w, v, u: ``(B, *event)``; the parameter VJPs have each parameter's shape (already summed over
    the batch where the parameter is broadcast).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from .linear_solvers import LinearSolve, conjugate_gradient, normal_equations
from .problem import ArgminProblem

__all__ = ["FixedPointLinearisation"]


def param_leaves(params: Sequence, needs: Sequence[bool] | None = None) -> list:
    """Detached copies of the tensors in ``params`` (other entries, e.g. None or data objects, as
    they are); the floating ones with ``needs[i]`` become leaves that require grad."""
    if needs is None:
        return [p.detach() if isinstance(p, torch.Tensor) else p for p in params]
    out = []
    for p, need in zip(params, needs):
        if not isinstance(p, torch.Tensor):
            out.append(p)
        elif need and p.is_floating_point():
            out.append(p.detach().requires_grad_(True))
        else:
            out.append(p.detach())
    return out


def grads_or_zeros(outputs: torch.Tensor, leaves: Sequence, grad_outputs: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor | None, ...]:
    """The VJP of ``outputs`` with every leaf of ``param_leaves`` that requires grad (zeros where
    ``outputs`` does not depend on it), ``None`` for the other entries."""
    idx = [i for i, p in enumerate(leaves) if isinstance(p, torch.Tensor) and p.requires_grad]
    res: list[torch.Tensor | None] = [None] * len(leaves)
    if not idx:
        return tuple(res)
    if outputs.requires_grad:
        grads = torch.autograd.grad(outputs, [leaves[i] for i in idx], grad_outputs,
                                    retain_graph=True, allow_unused=True)
    else:
        grads = [None] * len(idx)
    for i, g in zip(idx, grads):
        res[i] = torch.zeros_like(leaves[i]) if g is None else g
    return tuple(res)


class FixedPointLinearisation:
    """Products with the Jacobians of ``Φ(·, θ)`` at ``w`` (see the module docstring).

    Args:
        problem: provides ``fixed_point_map(params, at)``.
        params: the parameters ``θ``.
        w: the point (detached inside).
        needs: which parameters need a gradient.
    """

    def __init__(self, problem: ArgminProblem, params: Sequence[torch.Tensor | None], w: torch.Tensor,
                 needs: Sequence[bool]):
        w = w.detach()
        phi = problem.fixed_point_map(params, at=w)
        with torch.enable_grad():
            self.w = w.requires_grad_(True)
            self.params = param_leaves(params, needs)
            self.out = phi(self.w, *self.params)
        if self.out.shape != w.shape:
            raise ValueError(f"fixed-point map: expected Φ(w) of the shape of w {tuple(w.shape)}, "
                             f"got {tuple(self.out.shape)}")
        self._vjp_graph = None

    def value(self) -> torch.Tensor:
        """``Φ(w, θ)`` (detached)."""
        return self.out.detach()

    def jt(self, v: torch.Tensor) -> torch.Tensor:
        """``∂_wΦᵀ v``."""
        if not self.out.requires_grad:
            return torch.zeros_like(v)
        (r,) = torch.autograd.grad(self.out, self.w, v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(v) if r is None else r

    def j(self, u: torch.Tensor) -> torch.Tensor:
        """``∂_wΦ u`` by the double-VJP trick."""
        if not self.out.requires_grad:
            return torch.zeros_like(u)
        if self._vjp_graph is None:
            with torch.enable_grad():
                x = torch.zeros_like(self.out, requires_grad=True)
                (y,) = torch.autograd.grad(self.out, self.w, x, create_graph=True, allow_unused=True)
            self._vjp_graph = (x, y)
        x, y = self._vjp_graph
        if y is None or not y.requires_grad:
            return torch.zeros_like(u)
        (r,) = torch.autograd.grad(y, x, u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(u) if r is None else r

    def jacobian(self) -> torch.Tensor:
        """``∂_wΦ`` per element as a dense matrix, row ``i`` = ``e_iᵀ ∂_wΦ`` (the VJP of the ``i``-th
        unit vector); all ``D`` VJPs in one backward batched by vmap (``is_grads_batched``).

        Shape:
            ``(B, D, D)`` with ``D = w[0].numel()``.
        """
        B = self.w.shape[0]
        D = self.w[0].numel()
        if not self.out.requires_grad:
            return self.w.new_zeros(B, D, D)
        eye = torch.eye(D, dtype=self.w.dtype, device=self.w.device)
        basis = eye.reshape((D, 1) + tuple(self.w.shape[1:])).expand((D,) + tuple(self.w.shape))
        (rows,) = torch.autograd.grad(self.out, self.w, basis, retain_graph=True, allow_unused=True,
                                      is_grads_batched=True)
        if rows is None:
            return self.w.new_zeros(B, D, D)
        return rows.reshape(D, B, D).transpose(0, 1)

    def params_vjp(self, v: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """``∂_θΦᵀ v`` for each parameter that needs a gradient (``None`` for the others; zeros
        for parameters ``Φ`` does not depend on)."""
        return grads_or_zeros(self.out, self.params, v)

    def solve_adjoint(self, g: torch.Tensor, *, symmetric: bool, max_iter: int,
                      rtol: float = 0.0) -> LinearSolve:
        """``v`` with ``(I − ∂_wΦᵀ) v = g`` by conjugate gradient from ``v = 0``.

        With ``symmetric`` (``∂_wΦ`` symmetric) CG runs on the system itself; otherwise on the
        normal equations ``(I − ∂_wΦᵀ)(I − ∂_wΦ) u = g`` and ``v = (I − ∂_wΦ) u`` (CGNE). ``rtol = 0``
        runs exactly ``max_iter`` steps (AID-CG); otherwise an element stops at ``‖r‖ ≤ rtol‖g‖``.

        Returns:
            the ``LinearSolve`` of the system CG ran on, with ``x`` replaced by ``v``.
        """
        a_t = lambda v: v - self.jt(v)  # noqa: E731  (I − ∂_wΦᵀ)
        if symmetric:
            return conjugate_gradient(a_t, g, max_iter=max_iter, rtol=rtol)
        a = lambda u: u - self.j(u)  # noqa: E731  (I − ∂_wΦ)
        res = conjugate_gradient(normal_equations(a_t, a), g, max_iter=max_iter, rtol=rtol)
        return dataclasses.replace(res, x=a(res.x))
