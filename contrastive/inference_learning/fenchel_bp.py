r"""``FenchelBP``: Fenchel back-propagation (Zach 2021, §4.2) through the learning-method interface."""

from __future__ import annotations

import math

import torch

from declarative.activations import BoxProblem, ReLUProblem

from ..modes import Contrastive
from .inference import LearningMethod, check_method_beta

__all__ = ["FenchelBP"]


class FenchelBP(LearningMethod):
    r"""Fenchel back-propagation: the contrastive backward at every hidden activation.

    With the Fenchel–Young penalizer ``E_k(z_k, a_k) = ψ_k(z_k) + ψ_k*(a_k) − z_kᵀa_k`` the target of
    level ``k`` is ``ẑ_k = argmin_z ψ_k(z) − (a_k − β δ_k)ᵀz = f_k(a_k − β δ_k)`` and the error handed
    down is a finite difference, not a derivative (eqs. 49–53):

    .. math::

        e_k = \frac{f_k(a_k) - f_k(a_k - \beta\delta_k)}{\beta}, \qquad
        \nabla W_k = \operatorname{mean}_b\, e_k z_{k-1}^\top, \qquad \delta_{k-1} = W_k^\top e_k,

    starting from ``δ`` at the logits (the output layer is differentiated exactly). This is what
    autograd computes with the library's ``Contrastive(beta)`` mode at each activation, which is how it
    is run here. As β → 0 it is back-propagation with one-sided derivatives; a large β lets dead ReLUs
    pass an error. β multiplies the *per-example* gradient (``layers.fenchel_mlp`` with a batch-mean
    loss nudges by ``β δ / B``: its β is this β times the batch size).

    Args:
        beta: nudging strength β > 0.
        output: ``"softmax"`` (default) or ``"squared"``.
    """

    name = "fenchel_bp"

    def __init__(self, beta: float, output="softmax"):
        super().__init__(output)
        self.beta = check_method_beta(beta, self.name)

    def _layer_grads(self, net, x, y):
        # The batch-mean loss hands each activation the cotangent δ/B; nudging with β·B keeps the
        # per-example target f(a − βδ), and the contrastive quotient then carries the 1/B of the mean.
        mode = Contrastive(self.beta * x.shape[0])
        params = [(lin.weight.detach().requires_grad_(), None if lin.bias is None else lin.bias.detach().requires_grad_())
                  for lin in net.linears]
        with torch.enable_grad():
            h = x
            for k, (w, b) in enumerate(params):
                h = torch.nn.functional.linear(h, w, b)
                if k < net.depth - 1:
                    h = self._activate(net.activations[k], h, mode)
            per_example = self.output.logit_loss(h, y)
            flat = [t for pair in params for t in pair if t is not None]
            got = iter(torch.autograd.grad(per_example.mean(), flat))
        grads = [(next(got), None if b is None else next(got)) for _, b in params]
        report = self._forward_report(net, x, y, logits=h.detach())
        return grads, report

    @staticmethod
    def _activate(proj, a, mode):
        if math.isinf(proj.lo) and math.isinf(proj.hi):
            return a
        problem = ReLUProblem() if (proj.lo == 0.0 and math.isinf(proj.hi)) else BoxProblem(proj.lo, proj.hi)
        return mode.apply(problem, (a,)).z

    def __repr__(self):
        return f"FenchelBP(beta={self.beta:g})"
