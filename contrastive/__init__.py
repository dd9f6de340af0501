"""Contrastive differentiation: nudged solves and everything built on contrasting solutions.

Its gradient modes are also reachable by name from every entry point (``mode="contrastive"`` or
``"symmetric"`` with ``beta``), whether or not this package was imported first. The
finite-difference stencils of equilibrium propagation are in ``contrastive.finite_difference``.
"""

from declarative._version import __version__

from .equilibrium import EquilibriumEstimate, equilibrium_gradient, equilibrium_propagation
from .equilibrium_mode import EquilibriumProp
from . import inference_learning
from .inference_learning import BP, CHL, LPOM, ConvexCHL, FenchelBP, LearningMethod, PenaltyBP, PredictiveCoding
from .modes import Contrastive, Symmetric

__all__ = [
    "__version__",
    "Contrastive", "EquilibriumEstimate", "EquilibriumProp", "Symmetric",
    "equilibrium_gradient", "equilibrium_propagation",
    # inference learning (Zach 2021, Table 1); its EquilibriumProp is inference_learning.EquilibriumProp
    "BP", "CHL", "ConvexCHL", "FenchelBP", "LPOM", "LearningMethod", "PenaltyBP", "PredictiveCoding",
    "inference_learning",
]
