r"""``ConvexCHL``: contrastive Hebbian learning with proximal (jointly convex) layer energies."""

from __future__ import annotations

import math

import torch

from declarative.minimizer import minimize

from .inference import (LearningMethod, check_discount, check_inference_options, check_method_beta, usable, zero_unusable,
                        worse_status)

__all__ = ["ConvexCHL", "convex_chl_energy"]


def _split(phi: torch.Tensor, widths: list[int]) -> list[torch.Tensor]:
    return list(torch.split(phi, widths, dim=-1))


def convex_chl_energy(net, output, z, x, y, beta: float, discount: float) -> torch.Tensor:
    r"""``P_β(z) = β ℓ̃(z_L, y) + Σ_k γ^{k−L} ½‖z_k − W_k z_{k−1} − b_k‖²`` per element (hidden ``z_k``
    in their boxes, ``z_L`` the logit state)."""
    depth = net.depth
    total = beta * output.logit_loss(z[-1], y) if beta else torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    prev = x
    for k in range(1, depth + 1):
        a = net.preactivation(k, prev)
        total = total + discount ** (k - depth) * 0.5 * ((z[k - 1] - a) ** 2).sum(-1)
        prev = z[k - 1]
    return total


class ConvexCHL(LearningMethod):
    r"""Convex contrastive Hebbian learning: bottom-up expansion with proximal layer energies.

    **Energy.** Each level is written as a proximal problem, ``z_k = argmin_{z ∈ C_k} ½‖z − a_k‖²``
    (``C_k`` the activation's box; ``= f_k(a_k)``). Its energy ``½‖z_k − W_k z_{k−1} − b_k‖² + ι_{C_k}(z_k)``
    is *jointly* convex in ``(z_k, z_{k−1})`` (a convex quadratic of an affine map), so with the
    bottom-up expansion and a common feedback parameter γ (Prop. 4, eq. 25) the free and clamped
    energies

    .. math::

        P(z) = \sum_{k=1}^L \gamma^{k-L}\,\tfrac12\|z_k - W_k z_{k-1} - b_k\|^2, \qquad
        P_\beta(z) = P(z) + \beta\,\tilde\ell(z_L, y),

    over ``z_k ∈ C_k`` (``z_L`` the logit state) are jointly convex: both phases are convex problems
    (Table 1, "Convex CHL: convex inference"). The contrastive loss
    ``J = (1/β)[min P_β − min P]`` is a min–max in ``(θ, z)``; because ``P`` is convex,
    ``−min_z P(z) = min_λ −D(λ)`` for its concave dual ``D`` (strong duality), which makes learning a
    min–min problem in ``(θ, ẑ, λ)`` (Zach & Estellers 2019). The gradient needs only the two
    minimisers (envelope theorem), computed here in the primal by the library's batched projected
    L-BFGS ``declarative.minimize`` (box bounds of the hidden layers), free phase from the forward
    pass, clamped phase warm-started from the free one:

    .. math::

        \nabla W_k = \frac{\gamma^{k-L}}{\beta}\operatorname{mean}_b\Big[(\bar z_k - \bar a_k)\bar z_{k-1}^\top
            - (\hat z_k - \hat a_k)\hat z_{k-1}^\top\Big],\qquad a_k = W_k z_{k-1} + b_k .

    **Limit.** The free phase departs from the forward pass only through dead/saturated units
    (``½ dist(a_k, C_k)²`` that the layer below may reduce), weighted by γ: as γ → 0 and β → 0 the
    gradient tends to back-propagation's.

    Args:
        beta: loss weight β > 0.
        discount: feedback factor γ in (0, 1].
        max_iter: iteration limit of each phase's solve.
        tol: each phase stops when its projected-gradient norm is ``≤ tol·β`` (``minimize``'s test).
        output: ``"softmax"`` (cross-entropy on the logit state, default) or ``"squared"``.

    References:
        C. Zach, V. Estellers, *Contrastive learning for lifted networks*, BMVC 2019.
    """

    name = "convex_chl"
    iterative = True

    def __init__(self, beta: float, discount: float = 0.1, max_iter: int = 200, tol: float = 1e-4,
                 output="softmax"):
        super().__init__(output)
        self.beta = check_method_beta(beta, self.name)
        self.discount = check_discount(discount)
        self.tol, self.max_iter = check_inference_options(tol, max_iter)

    def _bounds(self, net, like):
        lo, hi = [], []
        for act, n in zip(net.activations, net.widths[1:-1]):
            lo.append(torch.full((n,), act.lo, dtype=like.dtype, device=like.device))
            hi.append(torch.full((n,), act.hi, dtype=like.dtype, device=like.device))
        n_out = net.widths[-1]
        lo.append(torch.full((n_out,), -math.inf, dtype=like.dtype, device=like.device))
        hi.append(torch.full((n_out,), math.inf, dtype=like.dtype, device=like.device))
        return torch.cat(lo), torch.cat(hi)

    def phases(self, net, x, y):
        """``(free, clamped, status, iterations)`` of the two convex phases."""
        widths = net.widths[1:]
        a, z = net.forward(x)
        start = torch.cat(z[1:] + [a[-1]], dim=-1)
        lower, upper = self._bounds(net, x)
        tol = self.tol * self.beta

        def energy(beta):
            return lambda phi: convex_chl_energy(net, self.output, _split(phi, widths), x, y, beta, self.discount)

        free = minimize(energy(0.0), start, lower=lower, upper=upper, tol=tol, max_iter=self.max_iter)
        clamped = minimize(energy(self.beta), free.z, lower=lower, upper=upper, tol=tol, max_iter=self.max_iter)
        status = worse_status(free.status_tensor(), clamped.status_tensor())
        iters = free.iterations + clamped.iterations
        return _split(free.z, widths), _split(clamped.z, widths), status, iters

    def contrastive_loss(self, net, x, y) -> torch.Tensor:
        """``J_β`` per element (``(B,)``) from freshly solved phases."""
        free, clamped, _, _ = self.phases(net, x, y)
        return (convex_chl_energy(net, self.output, clamped, x, y, self.beta, self.discount)
                - convex_chl_energy(net, self.output, free, x, y, 0.0, self.discount)) / self.beta

    def _layer_grads(self, net, x, y):
        free, clamped, status, iters = self.phases(net, x, y)
        free, clamped = zero_unusable(free, status), zero_unusable(clamped, status)
        ok = usable(status).to(x.dtype)
        grads, depth = [], net.depth
        for k in range(1, depth + 1):
            scale = self.discount ** (k - depth) / self.beta
            pre_f = x if k == 1 else free[k - 2]
            pre_c = x if k == 1 else clamped[k - 2]
            r_f = (free[k - 1] - net.preactivation(k, pre_f)) * ok
            r_c = (clamped[k - 1] - net.preactivation(k, pre_c)) * ok
            gw_f, gb_f = self._hebbian(r_f, pre_f, scale)
            gw_c, gb_c = self._hebbian(r_c, pre_c, scale)
            grads.append((gw_f - gw_c, gb_f - gb_c))
        return grads, self._forward_report(net, x, y, status, iters)

    def __repr__(self):
        return f"ConvexCHL(beta={self.beta:g}, discount={self.discount:g})"
