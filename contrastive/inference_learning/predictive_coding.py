r"""``PredictiveCoding``: the quadratic-penalty (MAC / predictive-coding) objective, eq. 30."""

from __future__ import annotations

import torch

from .inference import LearningMethod, check_inference_options, check_method_beta, iterate, usable, zero_unusable
from ._common import spectral_norm_sq

__all__ = ["PredictiveCoding", "pc_energy"]


def pc_energy(net, output, z, x, y, beta: float) -> torch.Tensor:
    r"""``F(z) = Σ_k ½‖z_k − f_k(W_k z_{k−1} + b_k)‖² + β ℓ̃(z_L, y)`` per batch element
    (``z = [z_1, …, z_L]``, ``z_0 = x``, ``f_L = id``: ``z_L`` is the logit state)."""
    total = beta * output.logit_loss(z[-1], y)
    prev = x
    for k in range(1, net.depth + 1):
        a = net.preactivation(k, prev)
        pred = a if k == net.depth else net.activations[k - 1].f(a)
        total = total + 0.5 * ((z[k - 1] - pred) ** 2).sum(-1)
        prev = z[k - 1]
    return total


class PredictiveCoding(LearningMethod):
    r"""Predictive coding / method of auxiliary coordinates with the quadratic penalty (eq. 30).

    **Objective.** The constraints ``z_k = f_k(a_k)`` of the nested problem are replaced by the
    quadratic penalizer (Carreira-Perpiñán & Wang 2014; Whittington & Bogacz 2017):

    .. math::

        F_\beta(z) = \beta\,\tilde\ell(z_L, y)
            + \sum_{k=1}^{L} \tfrac12 \|\varepsilon_k\|^2, \qquad
        \varepsilon_k = z_k - f_k(W_k z_{k-1} + b_k),

    with ``z_0 = x`` and the logit state ``z_L`` (``f_L = id``). Inference is gradient descent on the
    states ``z_1 … z_L`` from the forward pass (where every ``ε_k = 0``):

    .. math::

        \nabla_{z_k} F = \varepsilon_k - W_{k+1}^\top\big(f_{k+1}'(a_{k+1}) \odot \varepsilon_{k+1}\big),
        \qquad \nabla_{z_L} F = \varepsilon_L + \beta \nabla\tilde\ell(z_L),

    with the step ``η = 1 / max_k(1 + ‖W_k‖ + ‖W_{k+1}‖ + ‖W_{k+1}‖²)`` (``‖W_1‖`` and ``‖W_{L+1}‖``
    read as 0: a block-Gershgorin bound on the curvature of the block-tridiagonal Hessian, whose
    diagonal blocks are ``I + W_{k+1}ᵀD W_{k+1}`` and off-diagonal ones ``−D W_k``, with ``0 ≤ D ≤ I``
    the activations' derivatives; plus β/2 for the loss's curvature), until ``‖∇F‖_∞ ≤ tol·β`` or ``steps``
    steps. The learning signal is the θ-gradient of the surrogate ``F_β(ẑ)/β`` at the equilibrium ẑ:

    .. math::

        \nabla W_k = -\frac1\beta \operatorname{mean}_b\,(f_k'(a_k) \odot \varepsilon_k)\, z_{k-1}^\top .

    **Limit.** At equilibrium ``ε_L = −β∇ℓ̃(z_L)`` and ``ε_k = W_{k+1}ᵀ(f'⊙ε_{k+1})``: as β → 0 the
    states tend to the forward pass and ``−ε_k/β`` to back-propagation's ``∂ℓ/∂z_k``, so the gradient is
    BP's up to O(β) (Whittington & Bogacz 2017; Zach 2021 Cor. 2) — away from activation kinks.
    Inference is non-convex in general (Table 1, "MAC: non-convex").

    Args:
        beta: loss weight β > 0.
        steps: inference step limit (≥ 1).
        tol: stop when ``‖∇F‖_∞ ≤ tol·β`` per element.
        output: ``"softmax"`` (cross-entropy on the logit state, default) or ``"squared"``.
    """

    name = "predictive_coding"
    iterative = True

    def __init__(self, beta: float, steps: int = 200, tol: float = 1e-3, output="softmax"):
        super().__init__(output)
        self.beta = check_method_beta(beta, self.name)
        self.tol, self.steps = check_inference_options(tol, steps)

    def rate(self, net) -> float:
        """The gradient step η (see the class docstring)."""
        # ‖W_{k+1}‖ couples z_k and z_{k+1}; W_1 multiplies the fixed input only
        norms = [0.0] + [spectral_norm_sq(w) ** 0.5 for w in net.weights()[1:]] + [0.0]
        curv = max(1 + norms[k] + norms[k + 1] + norms[k + 1] ** 2 for k in range(net.depth))
        return 1.0 / (curv + self.beta * (0.5 if self.output.name == "softmax" else 1.0))

    def infer(self, net, x, y):
        """Equilibrium states ``[z_1, …, z_L]``, status and iterations (``(B,)`` each)."""
        a, z = net.forward(x)
        state = z[1:] + [a[-1]]
        weights, eta = net.weights(), self.rate(net)
        depth, beta, out = net.depth, self.beta, self.output

        def step(s):
            prev, eps, derivs = x, [], []
            for k in range(1, depth + 1):
                ak = net.preactivation(k, prev)
                if k == depth:
                    eps.append(s[k - 1] - ak)
                    derivs.append(None)
                else:
                    act = net.activations[k - 1]
                    eps.append(s[k - 1] - act.f(ak))
                    derivs.append(act.derivative(ak))
                prev = s[k - 1]
            new = []
            for k in range(1, depth + 1):
                g = eps[k - 1].clone()
                if k < depth:
                    up = eps[k] if derivs[k] is None else derivs[k] * eps[k]
                    g -= up @ weights[k]
                else:
                    g += beta * out.logit_loss_grad(s[-1], y)
                new.append(s[k - 1] - eta * g)
            return new

        state, status, iters = iterate(state, step, tol=self.tol * beta * eta, max_iter=self.steps)
        return state, status, iters

    def _layer_grads(self, net, x, y):
        state, status, iters = self.infer(net, x, y)
        state = zero_unusable(state, status)
        ok = usable(status).to(x.dtype)
        grads, prev = [], x
        for k in range(1, net.depth + 1):
            ak = net.preactivation(k, prev)
            if k == net.depth:
                g = -(state[k - 1] - ak)
            else:
                act = net.activations[k - 1]
                g = -act.derivative(ak) * (state[k - 1] - act.f(ak))
            grads.append(self._hebbian(g * ok, prev, 1.0 / self.beta))
            prev = state[k - 1]
        return grads, self._forward_report(net, x, y, status, iters)

    def __repr__(self):
        return f"PredictiveCoding(beta={self.beta:g}, steps={self.steps})"
