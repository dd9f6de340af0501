"""Contrastive differentiation: nudged solves and everything built on contrasting solutions.

Importing this package registers the mode names ``"contrastive"`` and ``"symmetric"``.
"""

from .equilibrium import EquilibriumEstimate, equilibrium_gradient, equilibrium_propagation
from .equilibrium_mode import EquilibriumProp
from .finite_difference import ep_stencil, forward_difference_coefficients
from . import inference_learning
from .inference_learning import BP, CHL, LPOM, ConvexCHL, FenchelBP, LearningMethod, PenaltyBP, PredictiveCoding
from .modes import Contrastive, Symmetric

__all__ = [
    "Contrastive", "EquilibriumEstimate", "EquilibriumProp", "Symmetric", "ep_stencil",
    "equilibrium_gradient", "equilibrium_propagation", "forward_difference_coefficients",
    # inference learning (Zach 2021, Table 1); its EquilibriumProp is inference_learning.EquilibriumProp
    "BP", "CHL", "ConvexCHL", "FenchelBP", "LPOM", "LearningMethod", "PenaltyBP", "PredictiveCoding",
    "inference_learning",
]
