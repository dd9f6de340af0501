"""Contrastive differentiation: nudged solves and everything built on contrasting solutions.

Importing this package registers the mode names ``"contrastive"`` and ``"symmetric"``.
"""

from .equilibrium import EquilibriumEstimate, equilibrium_gradient, equilibrium_propagation
from .equilibrium_mode import EquilibriumProp
from .finite_difference import ep_stencil, forward_difference_coefficients
from .modes import Contrastive, Symmetric

__all__ = [
    "Contrastive", "EquilibriumEstimate", "EquilibriumProp", "Symmetric", "ep_stencil",
    "equilibrium_gradient", "equilibrium_propagation", "forward_difference_coefficients",
]
