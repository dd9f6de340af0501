r"""Output layers with their loss: the conjugate pair ``(ψ_L, ψ_L*)`` and ``ℓ(z_L, y)``.

Every method needs, for the last layer, the activation ``f_L = ∇ψ_L*``, its Fenchel–Young gap, the
loss ``ℓ`` on the output ``z_L`` and the *clamped* output

.. math::

    \hat z_L = \operatorname*{argmin}_z\ \psi_L(z) - a^\top z + t\,\ell(z, y), \qquad t \ge 0,

(``t = 0`` gives ``f_L(a)``), and — for the methods whose output state is the logits
(predictive coding, penalty BP, convex CHL, equilibrium propagation) — the same loss written on the
logits, ``ℓ̃(u, y) = ℓ(f_L(u), y)``, with its gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


__all__ = ["Output", "SoftmaxCrossEntropy", "SquaredError", "make_output", "OUTPUTS"]


class Output:
    """Base class: an output activation ``f_L = ∇ψ_L*`` with a loss ``ℓ(z_L, y) ≥ 0``."""

    name = "output"

    def f(self, a):
        raise NotImplementedError

    def psi(self, z):
        raise NotImplementedError

    def psi_conj(self, a):
        raise NotImplementedError

    def fenchel_gap(self, z, a):
        """``ψ(z) + ψ*(a) − zᵀa`` per batch element (≥ 0, zero iff ``z = f(a)``)."""
        return self.psi(z) + self.psi_conj(a) - (z * a).sum(-1)

    def loss(self, z, y):
        raise NotImplementedError

    def clamped(self, a, y, t: float):
        raise NotImplementedError

    def logit_loss(self, u, y):
        """``ℓ̃(u, y) = ℓ(f(u), y)`` per batch element."""
        return self.loss(self.f(u), y)

    def logit_loss_grad(self, u, y):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class SoftmaxCrossEntropy(Output):
    r"""Softmax output with cross-entropy: ``ψ(z) = Σ z_i log z_i + ι_Δ(z)``, ``ψ*(a) = logsumexp(a)``,
    ``f = softmax``, ``ℓ(z, y) = −log z_y``; on logits ``ℓ̃(u, y) = logsumexp(u) − u_y``.

    **Clamped output.** ``min_{z∈Δ} Σ z_i log z_i − aᵀz − t log z_y``. Stationarity with the
    multiplier μ of ``1ᵀz = 1`` gives ``z_i = e^{a_i − 1 − μ}`` for ``i ≠ y`` and
    ``log s − t/s = a_y − 1 − μ`` for ``s = z_y``; eliminating μ by ``Σ_{i≠y} z_i = 1 − s`` leaves one
    scalar equation in ``u = log(s/(1 − s))``:

    .. math::

        h(u) = u - t\,(1 + e^{-u}) - r = 0, \qquad r = a_y - \operatorname{logsumexp}_{i \ne y} a_i,

    with ``h' = 1 + t e^{−u} > 0`` and ``h'' ≥ 0``: the root is unique and Newton's method started
    at ``u_0 = max(0, r + 2t)`` (where ``h(u_0) ≥ 0``) decreases monotonically to it, quadratically
    (at most ``max_iter`` steps; an element with non-finite logits yields a non-finite output).
    Then ``z_y = σ(u)`` and ``z_i = σ(−u) softmax(a_{−y})_i``. For ``t = 0``, ``z = softmax(a)``.
    """

    name = "softmax"

    def f(self, a):
        return torch.softmax(a, -1)

    def psi(self, z):
        return torch.special.xlogy(z, z).sum(-1)

    def psi_conj(self, a):
        return torch.logsumexp(a, -1)

    def fenchel_gap(self, z, a):
        # KL(z ‖ softmax(a)), written to stay ≥ 0 in floating point
        return (torch.special.xlogy(z, z) - z * torch.log_softmax(a, -1)).sum(-1)

    def loss(self, z, y):
        return -torch.log(z.gather(-1, y[:, None]).squeeze(-1))

    def logit_loss(self, u, y):
        return F.cross_entropy(u, y, reduction="none")

    def logit_loss_grad(self, u, y):
        return torch.softmax(u, -1) - F.one_hot(y, u.shape[-1]).to(u.dtype)

    def clamped(self, a, y, t: float, max_iter: int = 100):
        if t == 0:
            return self.f(a)
        onehot = F.one_hot(y, a.shape[-1]).bool()
        others = a.masked_fill(onehot, float("-inf"))
        r = a.gather(-1, y[:, None]).squeeze(-1) - torch.logsumexp(others, -1)
        u = torch.clamp(r + 2 * t, min=0.0)
        eps = torch.finfo(a.dtype).eps
        for _ in range(max_iter):
            e = torch.exp(-u)
            h = u - t * (1 + e) - r
            step = h / (1 + t * e)
            u = u - step
            # per element: converged, or non-finite (NaN/inf logits: the caller's loop reports
            # NON_FINITE for that element only)
            if bool(((step.abs() <= 4 * eps * (1 + u.abs())) | ~torch.isfinite(step)).all()):
                break
        return torch.where(onehot, torch.sigmoid(u)[:, None], torch.sigmoid(-u)[:, None] * torch.softmax(others, -1))


class SquaredError(Output):
    r"""Identity output with squared error: ``ψ(z) = ψ*(z) = ½‖z‖²``, ``f = id``,
    ``ℓ(z, y) = ½‖z − e_y‖²`` (``e_y`` the one-hot target). Clamped output
    ``argmin ½‖z‖² − aᵀz + (t/2)‖z − e_y‖² = (a + t e_y)/(1 + t)``.
    """

    name = "squared"

    def f(self, a):
        return a

    def psi(self, z):
        return 0.5 * (z * z).sum(-1)

    def psi_conj(self, a):
        return 0.5 * (a * a).sum(-1)

    def fenchel_gap(self, z, a):
        return 0.5 * ((z - a) ** 2).sum(-1)

    def loss(self, z, y):
        return 0.5 * ((z - F.one_hot(y, z.shape[-1]).to(z.dtype)) ** 2).sum(-1)

    def logit_loss_grad(self, u, y):
        return u - F.one_hot(y, u.shape[-1]).to(u.dtype)

    def clamped(self, a, y, t: float):
        return (a + t * F.one_hot(y, a.shape[-1]).to(a.dtype)) / (1 + t)


OUTPUTS = {"softmax": SoftmaxCrossEntropy, "squared": SquaredError}


def make_output(output: str | Output) -> Output:
    """An ``Output`` from its name (``"softmax"`` or ``"squared"``) or itself."""
    if isinstance(output, Output):
        return output
    if output not in OUTPUTS:
        raise ValueError(f"output: expected one of {', '.join(map(repr, OUTPUTS))} or an Output, got {output!r}")
    return OUTPUTS[output]()


