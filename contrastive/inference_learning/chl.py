r"""``CHL``: layered contrastive Hebbian learning (Xie & Seung 2003; Zach 2021, §3.1, Prop. 4, eq. 25)."""

from __future__ import annotations

import torch

from .inference import (LearningMethod, check_discount, check_inference_options, check_method_beta, iterate,
                        usable, zero_unusable, worse_status)

__all__ = ["CHL", "chl_energy"]


def chl_energy(net, output, z, x, y, beta: float, discount: float) -> torch.Tensor:
    r"""``H_β(z) = β ℓ(z_L, y) + Σ_k γ^{k−L} [ψ_k(z_k) − z_kᵀ(W_k z_{k−1} + b_k)]`` per element."""
    depth = net.depth
    total = beta * output.loss(z[-1], y) if beta else torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    prev = x
    for k in range(1, depth + 1):
        a = net.preactivation(k, prev)
        psi = output.psi if k == depth else net.activations[k - 1].psi
        total = total + discount ** (k - depth) * (psi(z[k - 1]) - (z[k - 1] * a).sum(-1))
        prev = z[k - 1]
    return total


class CHL(LearningMethod):
    r"""Layered contrastive Hebbian learning with discounted feedback.

    **Energy.** The bottom-up expansion (Prop. 4) replaces each level ``z_k = argmin_z ψ_k(z) − zᵀa_k``
    by its objective divided by the level's feedback parameter; with one common parameter γ (eq. 25)
    and the layers' Fenchel terms ``ψ_k(z_k) − z_kᵀa_k`` (Xie & Seung's energy, whose ``ψ_k`` is the
    integral of the inverse activation):

    .. math::

        H(z) = \sum_{k=1}^L \gamma^{k-L}\big[\psi_k(z_k) - z_k^\top (W_k z_{k-1} + b_k)\big],
        \qquad H_\beta(z) = H(z) + \beta\,\ell(z_L, y).

    Later layers are discounted relative to earlier ones (``γ < 1``). The **free** phase minimises
    ``H``, the **clamped** phase ``H_β``; each block is convex with a closed-form minimiser, so
    inference is block-coordinate descent (sweeps bottom-up):

    .. math::

        z_k \leftarrow f_k\big(W_k z_{k-1} + b_k + \gamma W_{k+1}^\top z_{k+1}\big)\ (k < L), \qquad
        z_L \leftarrow \operatorname*{argmin}_z \psi_L(z) - a_L^\top z + \beta\ell(z, y),

    the last one ``f_L(a_L)`` in the free phase and the output's clamped solution otherwise
    (softmax: the Newton root of ``SoftmaxCrossEntropy.clamped``). ``H`` is jointly convex when
    ``γ`` is small enough (the coupling ``√γ‖W_k‖`` below the curvature 1 of ``ψ``); the free phase
    starts at the forward pass, the clamped one at the free solution.

    **Globally contrastive loss and gradient.**

    .. math::

        J_\beta(\theta) = \frac1\beta\Big[\min_z H_\beta(z) - \min_z H(z)\Big] \ \ge 0
        \quad(\ell \ge 0),

    and, by the envelope theorem, with free ``z̄`` and clamped ``ẑ``:

    .. math::

        \nabla W_k = \frac{\gamma^{k-L}}{\beta}\operatorname{mean}_b
            \big(\bar z_k \bar z_{k-1}^\top - \hat z_k \hat z_{k-1}^\top\big), \qquad
        \nabla b_k = \frac{\gamma^{k-L}}{\beta}\operatorname{mean}_b (\bar z_k - \hat z_k),

    Xie & Seung's learning rule. ``J = 0`` iff clamped = free (when ``H`` is strictly convex and the
    minimum of ℓ, 0, is attained: then ``J = 0`` forces ``ℓ(ẑ_L) = 0`` and ``H(ẑ) = min H``). **Limit:**
    the clamped–free difference at layer ``k`` is ``O(βγ^{L−k})`` and the feedback shifts the free
    phase by ``O(γ)``, so the gradient is back-propagation's up to ``O(γ) + O(β)``: CHL equals BP
    in the limit γ → 0, β → 0 (Xie & Seung 2003, with ``β ≪ 1``).

    Args:
        beta: nudging strength β > 0.
        discount: feedback factor γ in (0, 1].
        max_iter: sweep limit per phase.
        tol: stop a phase when a sweep moves no coordinate by more than ``tol·β·γ^{L−1}``
            (the clamped–free difference of the first layer is O(βγ^{L−1})).
        output: ``"softmax"`` (default) or ``"squared"``.

    References:
        X. Xie, H. S. Seung, *Equivalence of backpropagation and contrastive Hebbian learning in a
        layered network*, Neural Computation 15(2), 2003.
    """

    name = "chl"
    iterative = True

    def __init__(self, beta: float, discount: float = 0.1, max_iter: int = 100, tol: float = 1e-3,
                 output="softmax"):
        super().__init__(output)
        self.beta = check_method_beta(beta, self.name)
        self.discount = check_discount(discount)
        self.tol, self.max_iter = check_inference_options(tol, max_iter)

    def sweep(self, net, z, x, y, beta: float) -> list[torch.Tensor]:
        """One bottom-up block-coordinate sweep of ``H_β`` (``beta = 0``: the free energy)."""
        z = list(z)
        weights, depth, gamma = net.weights(), net.depth, self.discount
        prev = x
        for k in range(1, depth + 1):
            a = net.preactivation(k, prev)
            if k < depth:
                z[k - 1] = net.activations[k - 1].f(a + gamma * (z[k] @ weights[k]))
            else:
                z[k - 1] = self.output.clamped(a, y, beta)
            prev = z[k - 1]
        return z

    def phases(self, net, x, y):
        """``(free, clamped, status, iterations)``: the two phases' states and their reports."""
        a, z = net.forward(x)
        start = z[1:] + [self.output.f(a[-1])]
        tol = self.tol * self.beta * self.discount ** (net.depth - 1)
        free, s0, i0 = iterate(start, lambda s: self.sweep(net, s, x, y, 0.0), tol=tol, max_iter=self.max_iter)
        clamped, s1, i1 = iterate(free, lambda s: self.sweep(net, s, x, y, self.beta), tol=tol,
                                  max_iter=self.max_iter)
        return free, clamped, worse_status(s0, s1), i0 + i1

    def contrastive_loss(self, model_or_net, x, y) -> torch.Tensor:
        """``J_β`` per batch element (``(B,)``), from freshly inferred phases."""
        from .network import LayeredNetwork, layered_network
        net = model_or_net if isinstance(model_or_net, LayeredNetwork) else layered_network(model_or_net)
        with torch.no_grad():
            free, clamped, _, _ = self.phases(net, x, y)
            h1 = chl_energy(net, self.output, clamped, x, y, self.beta, self.discount)
            h0 = chl_energy(net, self.output, free, x, y, 0.0, self.discount)
        return (h1 - h0) / self.beta

    def _layer_grads(self, net, x, y):
        free, clamped, status, iters = self.phases(net, x, y)
        free, clamped = zero_unusable(free, status), zero_unusable(clamped, status)
        ok = usable(status).to(x.dtype)
        grads, depth = [], net.depth
        for k in range(1, depth + 1):
            scale = self.discount ** (k - depth) / self.beta
            pre_f = x if k == 1 else free[k - 2]
            pre_c = x if k == 1 else clamped[k - 2]
            gw_f, gb_f = self._hebbian(free[k - 1] * ok, pre_f, scale)
            gw_c, gb_c = self._hebbian(clamped[k - 1] * ok, pre_c, scale)
            grads.append((gw_f - gw_c, gb_f - gb_c))
        return grads, self._forward_report(net, x, y, status, iters)

    def __repr__(self):
        return f"CHL(beta={self.beta:g}, discount={self.discount:g})"
