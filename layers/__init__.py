"""``torch.nn.Module`` wrappers around declared argmin problems, usable in ``nn.Sequential``."""

from .activation import ArgminActivation
from .cvxpy_layer import CvxpyLayer
from .box import ArgminBox, ArgminHardsigmoid, ArgminHardtanh
from .lasso import LassoLayer
from .fenchel_mlp import fenchel_mlp, negative_glorot_uniform_
from .qp import QPLayer
from .relu import ArgminReLU
from .simplex import ArgminSoftmax, ArgminSparsemax

__all__ = [
    "ArgminActivation", "ArgminBox", "ArgminHardsigmoid", "ArgminHardtanh", "ArgminReLU",
    "ArgminSoftmax", "ArgminSparsemax", "CvxpyLayer", "LassoLayer", "QPLayer", "fenchel_mlp", "negative_glorot_uniform_",
]
