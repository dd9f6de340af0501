"""Contrastive differentiation: nudged solves and everything built on contrasting solutions.

Importing this package registers the mode names ``"contrastive"`` and ``"symmetric"``.
"""

from .equilibrium_mode import EquilibriumProp
from .finite_difference import ep_stencil, forward_difference_coefficients
from .modes import Contrastive, Symmetric

__all__ = ["Contrastive", "EquilibriumProp", "Symmetric", "ep_stencil", "forward_difference_coefficients"]
