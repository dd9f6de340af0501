"""Stochastic implicit differentiation (SID): the hypergradient of a bilevel problem whose inner map
and outer loss are averages over data, with minibatch solvers for both the inner problem and the
linear system (Grazzi, Pontil & Salzo 2021).

The problem is

.. math::

    \\min_\\lambda f(\\lambda) = E(w(\\lambda), \\lambda), \\qquad
    w(\\lambda) = \\Phi(w(\\lambda), \\lambda), \\qquad
    \\Phi = \\mathbb{E}_\\zeta[\\hat\\Phi(\\cdot, \\cdot, \\zeta)], \\;
    E = \\mathbb{E}_\\xi[\\hat E(\\cdot, \\cdot, \\xi)],

with ``Φ(·, λ)`` a contraction (e.g. ``Φ̂(w, λ, ζ) = w − α∇_w ĝ(w, λ, ζ)``, an SGD step on a
minibatch ``ζ``). SID computes

1. ``w_t`` by ``t`` steps of the stochastic fixed-point iteration
   ``w_{i+1} = w_i + η_i (Φ̂(w_i, λ, ζ_i) − w_i)`` from ``w_0``;
2. ``ḡ = ∇_w Ē(w_t, λ)`` on a minibatch of size ``J``;
3. ``v_k`` by ``k`` steps of the stochastic fixed-point iteration for the linear system
   ``(I − ∂_wΦ(w_t, λ)ᵀ) v = ḡ``: ``v_{i+1} = v_i + η_i (∂_wΦ̂(w_t, λ, ζ′_i)ᵀ v_i + ḡ − v_i)``;
4. the estimate

   .. math::

       \\hat\\nabla f(\\lambda) = \\nabla_\\lambda \\bar E(w_t, \\lambda)
       + \\partial_\\lambda \\bar\\Phi(w_t, \\lambda)^\\top v_k ,

   with ``∇_λĒ`` and ``∂_λΦ̄`` on a fresh minibatch of size ``J`` (the same one for both).

With the decreasing steps ``η_i = β/(γ + i)`` (``β > 1/(1 − q²)``, ``γ ≥ β(1 + σ₂)``, ``q`` the
contraction constant) both iterations converge in mean square as ``O(1/i)`` and the mean squared
error of the estimate is ``O(1/J + 1/t + 1/k)``. With a constant step the iterates stall at a
noise floor ``O(η)``.

Every step is one batched torch expression: the batch dimension of ``w`` holds independent
problems (e.g. replicates), and the sampler may draw a different minibatch for each of them.

Shape:
    w0: ``(B, *event)``; ``phi_hat(w, *params, batch)``: ``(B, *event)``;
    ``outer_hat(w, *params, batch)``: ``(B,)``; the gradients: each parameter's shape.

References:
    R. Grazzi, M. Pontil, S. Salzo. Convergence properties of stochastic hypergradients. AISTATS 2021.
    L. Bottou, F. Curtis, J. Nocedal. Optimization methods for large-scale machine learning.
    SIAM Review 60(2), 2018, Thm. 4.7 (the decreasing step sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .linearisation import grads_or_zeros, param_leaves
from .validation import check_count, check_start

__all__ = ["StochasticHypergradient", "decreasing_steps", "stochastic_hypergradient"]


@dataclass
class StochasticHypergradient:
    """The SID estimate: ``grads`` (one entry per parameter, ``None`` for those that need no
    gradient), the inner iterate ``w`` (``w_t``) and the linear system's iterate ``v`` (``v_k``)."""

    grads: tuple
    w: torch.Tensor
    v: torch.Tensor


def decreasing_steps(beta: float, gamma: float) -> Callable[[int], float]:
    """The step sizes ``η_i = β / (γ + i)`` (capped at 1) of the ``O(1/i)`` mean-square rate."""
    if not (beta > 0 and gamma >= 0):
        raise ValueError(f"decreasing_steps: expected beta > 0 and gamma >= 0, got beta={beta}, gamma={gamma}")
    return lambda i: min(1.0, beta / (gamma + i))


def _inner(phi_hat, w, params, sampler, batch_size, t, steps):
    """``t`` steps of ``w ← w + η_i (Φ̂(w, ζ_i) − w)`` without a graph."""
    with torch.no_grad():
        for i in range(t):
            eta = steps(i)
            w = torch.lerp(w, phi_hat(w, *params, sampler(batch_size)), eta)
    return w


def _linear_system(phi_hat, w, params, g, sampler, batch_size, k, steps):
    """``k`` steps of ``v ← v + η_i (∂_wΦ̂(w, ζ_i)ᵀ v + g − v)`` from 0; one VJP per step, each on
    its own minibatch."""
    v = torch.zeros_like(g)
    for i in range(k):
        with torch.enable_grad():
            wl = w.detach().requires_grad_(True)
            out = phi_hat(wl, *params, sampler(batch_size))
            (jt_v,) = torch.autograd.grad(out, wl, v, allow_unused=True)
        jt_v = torch.zeros_like(v) if jt_v is None else jt_v
        v = torch.lerp(v, jt_v + g, steps(i))
    return v


def stochastic_hypergradient(phi_hat: Callable[..., torch.Tensor], outer_hat: Callable[..., torch.Tensor],
                             w0: torch.Tensor, params: Sequence[Any], *, sampler: Callable[[int], Any],
                             t: int, k: int, J: int, batch_size: int = 1,
                             inner_steps: Callable[[int], float] | None = None,
                             linear_steps: Callable[[int], float] | None = None) -> StochasticHypergradient:
    """The SID estimate of ``∇_λ f`` (see the module docstring).

    Args:
        phi_hat: ``phi_hat(w, *params, batch) -> (B, *event)``, the inner map on a minibatch.
        outer_hat: ``outer_hat(w, *params, batch) -> (B,)``, the outer loss on a minibatch (its
            per-problem mean over the minibatch).
        w0: ``(B, *event)`` start of the inner iteration (e.g. the previous outer step's ``w_t``).
        params: the hyperparameters λ (tensors; gradients for those that require grad) and any
            other arguments of ``phi_hat``/``outer_hat``.
        sampler: ``sampler(m)`` draws a minibatch of ``m`` examples (any object ``phi_hat`` and
            ``outer_hat`` accept, e.g. a ``(B, m)`` index tensor: one minibatch per problem).
        t, k: steps of the inner and of the linear-system iteration.
        J: minibatch size of the estimates of ``∇_wĒ``, ``∇_λĒ`` and ``∂_λΦ̄``.
        batch_size: minibatch size of each inner and linear-system step.
        inner_steps, linear_steps: step-size schedules ``i ↦ η_i`` (default: ``η_i = 1``, the plain
            fixed-point iteration; pass ``decreasing_steps(β, γ)`` for the ``O(1/t + 1/k)`` rates).

    Returns:
        ``StochasticHypergradient(grads, w, v)``.

    Raises:
        ValueError: negative ``t``/``k``, ``J < 1`` or ``batch_size < 1``, a bad ``w0``.
        TypeError: ``sampler``, ``phi_hat`` or ``outer_hat`` not callable.

    Shape:
        - w0, w, v: ``(B, *event)``; grads: each parameter's shape.

    Examples::

        >>> est = stochastic_hypergradient(sgd_step, val_loss, w0, (lam, X, y), sampler=draw,
        ...                                t=1000, k=1000, J=256,
        ...                                inner_steps=decreasing_steps(4.0, 8.0),
        ...                                linear_steps=decreasing_steps(4.0, 8.0))
        >>> lam_grad = est.grads[0]
    """
    for name, fn in (("phi_hat", phi_hat), ("outer_hat", outer_hat), ("sampler", sampler)):
        if not callable(fn):
            raise TypeError(f"{name}: expected a callable, got {type(fn).__name__}")
    check_start("w0", w0)
    check_count("t", t)
    check_count("k", k)
    check_count("J", J, minimum=1)
    check_count("batch_size", batch_size, minimum=1)
    params = tuple(params)
    needs = [isinstance(p, torch.Tensor) and p.requires_grad for p in params]
    inner_steps = inner_steps or (lambda i: 1.0)
    linear_steps = linear_steps or (lambda i: 1.0)
    fixed = param_leaves(params)
    w = _inner(phi_hat, w0.detach(), fixed, sampler, batch_size, t, inner_steps)
    with torch.enable_grad():                      # ∇_wĒ(w_t) on a minibatch of size J
        wl = w.requires_grad_(True)
        (g,) = torch.autograd.grad(outer_hat(wl, *fixed, sampler(J)).sum(), wl, allow_unused=True)
    w = w.detach()
    g = torch.zeros_like(w) if g is None else g
    v = _linear_system(phi_hat, w, fixed, g, sampler, batch_size, k, linear_steps)
    leaves = param_leaves(params, needs)
    with torch.enable_grad():                      # ∇_λĒ + ∂_λΦ̄ᵀ v on a fresh minibatch of size J
        batch = sampler(J)
        direct = grads_or_zeros(outer_hat(w, *leaves, batch).sum(), leaves)
        through = grads_or_zeros(phi_hat(w, *leaves, batch), leaves, v)
    grads = tuple(None if a is None else a + b for a, b in zip(direct, through))
    return StochasticHypergradient(grads=grads, w=w, v=v.detach())
