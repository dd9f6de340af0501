"""Contrastive differentiation: nudged solves and everything built on contrasting solutions.

Its gradient modes are also reachable by name from every entry point (``mode="contrastive"`` or
``"symmetric"`` with ``beta``), whether or not this package was imported first.
"""

from .equilibrium import EquilibriumEstimate, equilibrium_gradient, equilibrium_propagation
from .equilibrium_mode import EquilibriumProp
from .finite_difference import ep_stencil, forward_difference_coefficients
from .modes import Contrastive, Symmetric

__all__ = [
    "Contrastive", "EquilibriumEstimate", "EquilibriumProp", "Symmetric", "ep_stencil",
    "equilibrium_gradient", "equilibrium_propagation", "forward_difference_coefficients",
]
