r"""``EquilibriumProp``: equilibrium propagation on the layered (Hopfield) energy."""

from __future__ import annotations

import math

import torch

from ..equilibrium import equilibrium_propagation
from ..finite_difference import ESTIMATORS
from .inference import LearningMethod, check_discount, check_inference_options, check_method_beta, usable

__all__ = ["EquilibriumProp"]


class EquilibriumProp(LearningMethod):
    r"""Equilibrium propagation (Scellier & Bengio 2017) on the layered energy of ``CHL``.

    **Energy.** The discounted layered energy with quadratic ``ψ_k = ½‖·‖²`` on each layer's box and
    the logit state ``z_L`` (``ψ_L = ½‖·‖²``, no box):

    .. math::

        H(z;\theta) = \sum_{k=1}^L \gamma^{k-L}\big[\tfrac12\|z_k\|^2 - z_k^\top(W_k z_{k-1} + b_k)\big],
        \qquad \mathcal L(z, \theta, \beta) = H(z;\theta) + \beta\,\tilde\ell(z_L, y),

    and the phases ``ẑ_{nβ} = argmin_z 𝓛(z, θ, nβ)`` over the hidden boxes, solved by the library's
    ``equilibrium_propagation`` (batched projected L-BFGS ``declarative.minimize``, each phase
    warm-started from the previous one). With ``F(β) = ∂_θ𝓛(ẑ_β, θ, β)``:

    * ``estimator="forward"``, ``points=2``: ``(F(β) − F(0))/β`` — exactly the gradient of ``CHL``'s
      contrastive loss on this energy (same free and clamped problems), bias O(β);
    * ``"centered"``: ``(F(β) − F(−β))/(2β)``, bias O(β²) away from kinks (the −β phase maximises the
      loss; an element whose ``𝓛`` is unbounded below gets a non-``SOLVED`` status);
    * ``"forward"``, ``points = p``: bias ``O(β^{p−1})``.

    As β → 0 the estimate tends to ``∇_θ ℓ̃(z*_L(θ))`` at the free equilibrium ``z*`` (which includes
    the top-down feedback); as also γ → 0, ``z*`` tends to the forward pass and the estimate to
    back-propagation's gradient.

    Args:
        beta: nudging strength β > 0.
        discount: feedback factor γ in (0, 1].
        estimator: ``"forward"`` or ``"centered"`` (default).
        points: phases of the forward estimator (default 2).
        max_iter: iteration limit of each phase.
        tol: each phase stops when its projected-gradient norm is ``≤ tol·β``.
        output: ``"softmax"`` (cross-entropy on the logit state, default) or ``"squared"``.

    References:
        B. Scellier, Y. Bengio, *Equilibrium propagation*, Front. Comput. Neurosci. 2017.
        A. Laborieux et al., *Scaling equilibrium propagation to deep ConvNets*, 2021 (centered).
    """

    name = "equilibrium_prop"
    iterative = True

    def __init__(self, beta: float, discount: float = 0.1, estimator: str = "centered", points: int | None = None,
                 max_iter: int = 200, tol: float = 1e-4, output="softmax"):
        super().__init__(output)
        self.beta = check_method_beta(beta, self.name)
        self.discount = check_discount(discount)
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator: expected one of {', '.join(map(repr, ESTIMATORS))}, got {estimator!r}")
        self.estimator, self.points = estimator, points
        self.tol, self.max_iter = check_inference_options(tol, max_iter)

    def _energy(self, net):
        widths, depth, gamma = net.widths[1:], net.depth, self.discount

        def energy(phi, *params):
            x = params[-1]
            z = torch.split(phi, widths, dim=-1)
            total, prev = 0.0, x
            for k in range(1, depth + 1):
                w, b = params[2 * k - 2], params[2 * k - 1]
                a = torch.nn.functional.linear(prev, w, b)
                total = total + gamma ** (k - depth) * (0.5 * (z[k - 1] ** 2).sum(-1) - (z[k - 1] * a).sum(-1))
                prev = z[k - 1]
            return total
        return energy

    def _bounds(self, net, like):
        lo = [torch.full((n,), act.lo, dtype=like.dtype, device=like.device)
              for act, n in zip(net.activations, net.widths[1:-1])]
        hi = [torch.full((n,), act.hi, dtype=like.dtype, device=like.device)
              for act, n in zip(net.activations, net.widths[1:-1])]
        n_out = net.widths[-1]
        lo.append(torch.full((n_out,), -math.inf, dtype=like.dtype, device=like.device))
        hi.append(torch.full((n_out,), math.inf, dtype=like.dtype, device=like.device))
        return torch.cat(lo), torch.cat(hi)

    def _layer_grads(self, net, x, y):
        params = []
        for lin in net.linears:
            params.append(lin.weight.detach().requires_grad_())
            b = lin.bias
            params.append((torch.zeros(lin.out_features, dtype=x.dtype, device=x.device) if b is None
                           else b.detach()).requires_grad_())
        widths = net.widths[1:]
        out = self.output

        def loss(phi, *_):
            return out.logit_loss(phi[:, -widths[-1]:], y)

        a, z = net.forward(x)
        phi0 = torch.cat(z[1:] + [a[-1]], dim=-1)
        lower, upper = self._bounds(net, x)
        with torch.enable_grad():
            est = equilibrium_propagation(self._energy(net), loss, phi0, (*params, x), beta=self.beta,
                                          estimator=self.estimator, points=self.points, lower=lower,
                                          upper=upper, tol=self.tol * self.beta, max_iter=self.max_iter,
                                          reduction="none", check=False)
            keep = usable(est.status)[:, 0] & torch.isfinite(est.surrogate)
            total = torch.where(keep, est.surrogate, torch.zeros_like(est.surrogate)).sum() / x.shape[0]
            got = torch.autograd.grad(total, params, allow_unused=True, materialize_grads=True)
        grads = [(got[2 * i], got[2 * i + 1]) for i in range(net.depth)]
        iters = sum(sol.iterations for _, sol in est.phases)
        return grads, self._forward_report(net, x, y, est.status, iters)

    def __repr__(self):
        return f"EquilibriumProp(beta={self.beta:g}, discount={self.discount:g}, estimator={self.estimator!r})"
