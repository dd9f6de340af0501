"""Inference learning: the methods of Zach (2021, Table 1) on one layered-network API.

A *learning method* turns a mini-batch ``(x, y)`` into weight gradients in ``.grad`` of an
``nn.Sequential`` of ``nn.Linear`` layers and projection activations, so that any torch optimizer
steps it::

    method = LPOM(beta=1.0)
    opt.zero_grad(); report = method(model, x, y); opt.step()

``report.status`` says per element whether the inference converged; ``report.mean_iterations``
how many sweeps it took.
"""

from .backprop import BP
from .chl import CHL, chl_energy
from .convex_chl import ConvexCHL, convex_chl_energy
from .equilibrium_prop import EquilibriumProp
from .fenchel_bp import FenchelBP
from .inference import InferenceReport, LearningMethod, iterate
from .lpom import LPOM, lpom_objective
from .network import LayeredNetwork, Projection, layered_network
from .outputs import Output, SoftmaxCrossEntropy, SquaredError, make_output
from .penalty_bp import PenaltyBP
from .predictive_coding import PredictiveCoding, pc_energy

__all__ = [
    "BP", "CHL", "ConvexCHL", "EquilibriumProp", "FenchelBP", "InferenceReport", "LPOM", "LayeredNetwork",
    "LearningMethod", "Output", "PenaltyBP", "PredictiveCoding", "Projection", "SoftmaxCrossEntropy",
    "SquaredError", "chl_energy", "convex_chl_energy", "iterate", "layered_network", "lpom_objective",
    "make_output", "pc_energy",
]
