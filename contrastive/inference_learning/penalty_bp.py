r"""``PenaltyBP``: the top-down linearised penalty family of Zach (2021), §4.1."""

from __future__ import annotations

import numbers

from .backprop import backprop_grads
from .inference import LearningMethod, check_method_beta

__all__ = ["PenaltyBP"]


class PenaltyBP(LearningMethod):
    r"""Top-down linearised contrastive surrogate with the quadratic penalizer (Zach 2021, §4.1).

    **Derivation.** Each nesting level ``z_k = f_k(a_k)`` is replaced by the penalizer
    ``E_k(z_k; z_{k−1}) = ½‖z_k − f_k(W_k z_{k−1} + b_k)‖²`` (its minimiser is the forward pass) and
    the levels are unravelled from the top with the *linearised* contrastive surrogate (Def. 2,
    Prop. 7). At level ``k`` the outer loss is linearised at the forward state with slope ``ε_k``;
    the nudged ("target") problem ``argmin_z E_k(z; z_{k−1}) + β ε_kᵀz`` has the closed form

    .. math::

        \hat z_k = f_k(a_k) - \beta\,\varepsilon_k ,

    and the contrast ``(1/β)[E_k(ẑ_k; z_{k−1}) − E_k(z_k; z_{k−1})]`` is the loss handed to the level
    below. Its gradients at the forward state are

    .. math::

        \nabla_{a_k} = f_k'(a_k) \odot \frac{z_k - \hat z_k}{\beta} = f_k'(a_k) \odot \varepsilon_k =: g_k,
        \qquad \nabla_{z_{k-1}} = W_k^\top g_k, \qquad \nabla_{W_k} = g_k z_{k-1}^\top,

    starting from ``ε_L = ∇ℓ̃(a_L)`` (the output state is the logits, ``f_L = id``). Because the
    penalizer is quadratic in ``z_k`` the target is exactly linear in β and **β cancels**: every β
    gives the same direction (β is kept as the target's step size, and validated). The family's
    parameter is the *feedback* strength ``γ`` with which the lower layer's slope is formed,
    ``ε_{k−1} = γ W_kᵀ g_k`` — the inference rate of a predictive-coding network in its first
    inference step under the fixed-prediction assumption (Millidge et al. 2020; Song et al. 2020):

    * ``γ = 1``: exactly back-propagation (``ε_k`` is BP's ``∂ℓ/∂z_k``);
    * ``γ > 0``, ``γ ≠ 1``: layer ``k`` receives ``γ^{L−k}`` times BP's gradient — a positive
      block-diagonal rescaling, hence a descent direction
      (``⟨d, ∇⟩ = Σ_k γ^{L−k}‖∇_{θ_k}‖² > 0``), but not the steepest one.

    Closed form: no inference iterations.

    Args:
        beta: target step β > 0.
        feedback: γ > 0 (default 1, back-propagation).
        output: ``"softmax"`` (default) or ``"squared"``.
    """

    name = "penalty_bp"

    def __init__(self, beta: float, feedback: float = 1.0, output="softmax"):
        super().__init__(output)
        self.beta = check_method_beta(beta, self.name)
        if isinstance(feedback, bool) or not isinstance(feedback, numbers.Real) or not float(feedback) > 0 \
                or float(feedback) == float("inf"):
            raise ValueError(f"feedback: expected a finite float > 0, got {feedback!r}")
        self.feedback = float(feedback)

    def _layer_grads(self, net, x, y):
        grads, logits = backprop_grads(net, self.output, x, y, feedback=self.feedback, beta=self.beta)
        return grads, self._forward_report(net, x, y, logits=logits)

    def __repr__(self):
        return f"PenaltyBP(beta={self.beta:g}, feedback={self.feedback:g})"
