r"""``BP``: back-propagation on the layered network, the reference of every other method."""

from __future__ import annotations

from .inference import LearningMethod

__all__ = ["BP"]


class BP(LearningMethod):
    r"""Standard error back-propagation (Table 1, "BP": penalizer, top-down, linearised, closed form).

    With ``g_L = ∂ℓ̃/∂a_L`` (``softmax(a_L) − e_y`` for cross-entropy) and, for ``k = L, …, 2``,

    .. math::

        g_{k-1} = f_{k-1}'(a_{k-1}) \odot W_k^\top g_k, \qquad
        \nabla W_k = \operatorname{mean}_b\, g_k z_{k-1}^\top, \quad \nabla b_k = \operatorname{mean}_b\, g_k,

    with ``f'`` = 1 strictly inside the activation's box and 0 elsewhere (the convention of
    ``torch.relu``'s backward at 0). Written out rather than taken from autograd so that the tests can
    compare it with autograd on the ``nn.Sequential`` itself.

    Args:
        output: ``"softmax"`` (default) or ``"squared"``.

    Examples::

        >>> method = BP()
        >>> opt.zero_grad(); report = method(model, x, y); opt.step()
    """

    name = "bp"

    def _layer_grads(self, net, x, y):
        grads, logits = backprop_grads(net, self.output, x, y, feedback=1.0)
        return grads, self._forward_report(net, x, y, logits=logits)


def backprop_grads(net, output, x, y, *, feedback: float = 1.0, beta: float | None = None):
    """Per-layer ``(∇W_k, ∇b_k)`` of back-propagation and the logits; ``feedback`` γ multiplies the error handed to
    each lower layer (``γ = 1``: BP). With ``beta`` the errors are formed as the differences of
    targets ``ẑ_k = z_k − β ε_k`` divided by β (``PenaltyBP``), which is the same up to rounding."""
    a, z = net.forward(x)
    weights = net.weights()
    depth = net.depth
    eps = output.logit_loss_grad(a[-1], y)
    grads = [None] * depth
    for k in range(depth, 0, -1):
        if k == depth:
            deriv = None
            state = a[-1]
        else:
            deriv = net.activations[k - 1].derivative(a[k - 1])
            state = z[k]
        if beta is not None:  # target of layer k and its (linearised) penalty gradient
            target = state - beta * eps
            eps = (state - target) / beta
        g = eps if deriv is None else deriv * eps
        grads[k - 1] = LearningMethod._hebbian(g, z[k - 1])
        if k > 1:
            eps = g @ weights[k - 1]
            if feedback != 1.0:
                eps = eps * feedback
    return grads, a[-1]
