r"""``LPOM``: lifted proximal operator machines / Fenchel lifted networks (Zach 2021, §3.2.2)."""

from __future__ import annotations

import torch

from .inference import LearningMethod, check_inference_options, check_method_beta, iterate, usable, zero_unusable
from ._common import next_activation, spectral_norm_sq

__all__ = ["LPOM", "lpom_objective"]


def lpom_objective(net, output, z, x, y, beta: float) -> torch.Tensor:
    r"""``G(z) = β ℓ(z_L, y) + Σ_k E_k(z_k, W_k z_{k−1} + b_k)`` per batch element, with the
    Fenchel–Young gaps ``E_k`` of the layers' activations (``z = [z_1, …, z_L]``, ``z_0 = x``)."""
    total = beta * output.loss(z[-1], y)
    prev = x
    for k in range(1, net.depth + 1):
        a = net.preactivation(k, prev)
        gap = output.fenchel_gap if k == net.depth else net.activations[k - 1].fenchel_gap
        total = total + gap(z[k - 1], a)
        prev = z[k - 1]
    return total


class LPOM(LearningMethod):
    r"""Lifted proximal operator machine / Fenchel lifted network, softmax output by its conjugate pair.

    **Objective** (eqs. 31–35). With the Fenchel–Young gap ``E_k(z, a) = ψ_k(z) + ψ_k*(a) − zᵀa ≥ 0``
    (zero iff ``z = f_k(a)``) of every layer, the top-down expansion of the nested problem gives the
    lifted objective

    .. math::

        G_\beta(z) = \beta\,\ell(z_L, y) + \sum_{k=1}^L E_k(z_k,\ W_k z_{k-1} + b_k),

    over ``z_k ∈ dom ψ_k`` (the box of a hidden projection, the simplex for the softmax output).
    ``ψ*`` is convex and ``zᵀWz'`` bilinear, so ``G`` is convex in each ``z_k`` with the others fixed
    (block-convex), not jointly. Collecting the terms of ``z_k`` (eq. 35):

    .. math::

        \phi_k(z) = \psi_k(z) - a_k^\top z + \psi_{k+1}^*(W_{k+1} z + b_{k+1}) - z_{k+1}^\top W_{k+1} z,
        \qquad \nabla\phi_k = z - a_k + W_{k+1}^\top\big(f_{k+1}(W_{k+1} z + b_{k+1}) - z_{k+1}\big)

    for a hidden projection layer (``ψ_k = ½‖·‖²`` on its box). **Block-coordinate minimisation**, one
    sweep top-down: the output block ``min_{z∈Δ} ψ_L(z) − a_Lᵀz + β ℓ(z)`` exactly (the softmax
    pair's one-dimensional Newton root, ``SoftmaxCrossEntropy.clamped``), then each hidden block by
    ``inner`` projected-gradient steps ``z ← P(z − ∇φ_k / (1 + ‖W_{k+1}‖²))`` (``f_{k+1}`` is
    1-Lipschitz, so the step is below the inverse curvature and every step decreases ``G``); sweeps
    until no coordinate moves by more than ``tol·β``. The start is the forward pass (``G = βℓ``).

    **Gradient.** The learning signal is ``∇_θ min_z G_β(z)/β`` (envelope theorem; ``min G/β ≤ ℓ`` at
    the forward pass), with ``∂_{W_k}E_k(z_k, a_k) = (f_k(a_k) − z_k) z_{k−1}ᵀ``:

    .. math::

        \nabla W_k = \frac1\beta \operatorname{mean}_b\,\big(f_k(\hat a_k) - \hat z_k\big)\hat z_{k-1}^\top,
        \qquad \hat a_k = W_k \hat z_{k-1} + b_k .

    As β → 0, ``(f_k(â_k) − ẑ_k)/β`` tends to back-propagation's error at ``a_k`` (Zach 2021, Cor. 2);
    for a large β targets cross the ReLU kink, so dead units receive a signal.

    Args:
        beta: loss weight β > 0.
        max_iter: sweep limit (≥ 1).
        tol: stop when a sweep moves no coordinate by more than ``tol·β``.
        inner: projected-gradient steps per hidden block and sweep (≥ 1).
        output: ``"softmax"`` (default) or ``"squared"``.

    References:
        J. Li, C. Fang, Z. Lin, *Lifted proximal operator machines*, AAAI 2019.
        F. Gu, A. Askari, L. El Ghaoui, *Fenchel lifted networks*, AISTATS 2020.
    """

    name = "lpom"
    iterative = True

    def __init__(self, beta: float, max_iter: int = 100, tol: float = 1e-3, inner: int = 1, output="softmax"):
        super().__init__(output)
        self.beta = check_method_beta(beta, self.name)
        self.tol, self.max_iter = check_inference_options(tol, max_iter)
        self.inner = check_inference_options(1.0, inner)[1]

    # -- blocks -----------------------------------------------------------------------------------
    def block_gradient(self, net, z, x, k: int, zk: torch.Tensor) -> torch.Tensor:
        """``∇φ_k`` at ``zk`` for the hidden block ``k`` (1-based, ``k < L``) with the others in ``z``."""
        prev = x if k == 1 else z[k - 2]
        a_k = net.preactivation(k, prev)
        f_next = next_activation(net, self.output, k)
        return zk - a_k + (f_next(net.preactivation(k + 1, zk)) - z[k]) @ net.weights()[k]

    def hidden_step(self, net, z, x, k: int, zk: torch.Tensor, step: float) -> torch.Tensor:
        """One projected-gradient step on block ``k``."""
        return net.activations[k - 1].project(zk - step * self.block_gradient(net, z, x, k, zk))

    def steps(self, net) -> list[float]:
        """Step ``1/(1 + ‖W_{k+1}‖²)`` of every hidden block."""
        return [1.0 / (1.0 + spectral_norm_sq(w)) for w in net.weights()[1:]]

    def sweep(self, net, z, x, y, steps=None) -> list[torch.Tensor]:
        """One block-coordinate sweep (output block, then hidden blocks top-down); returns new states."""
        steps = self.steps(net) if steps is None else steps
        z = list(z)
        depth = net.depth
        z[-1] = self.output.clamped(net.preactivation(depth, x if depth == 1 else z[-2]), y, self.beta)
        for k in range(depth - 1, 0, -1):
            zk = z[k - 1]
            for _ in range(self.inner):
                zk = self.hidden_step(net, z, x, k, zk, steps[k - 1])
            z[k - 1] = zk
        return z

    def infer(self, net, x, y):
        """Minimise ``G_β``: states ``[ẑ_1, …, ẑ_L]``, status and sweeps (``(B,)`` each)."""
        a, z = net.forward(x)
        state = z[1:] + [self.output.f(a[-1])]
        steps = self.steps(net)
        return iterate(state, lambda s: self.sweep(net, s, x, y, steps), tol=self.tol * self.beta,
                       max_iter=self.max_iter)

    def _layer_grads(self, net, x, y):
        state, status, iters = self.infer(net, x, y)
        state = zero_unusable(state, status)
        ok = usable(status).to(x.dtype)
        grads, prev = [], x
        for k in range(1, net.depth + 1):
            a = net.preactivation(k, prev)
            f = self.output.f if k == net.depth else net.activations[k - 1].f
            grads.append(self._hebbian((f(a) - state[k - 1]) * ok, prev, 1.0 / self.beta))
            prev = state[k - 1]
        return grads, self._forward_report(net, x, y, status, iters)

    def __repr__(self):
        return f"LPOM(beta={self.beta:g}, inner={self.inner})"
