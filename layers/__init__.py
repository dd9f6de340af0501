"""``torch.nn.Module`` wrappers around declared argmin problems, usable in ``nn.Sequential``.

Data-parallel training helpers are in the submodule ``layers.ddp``.
"""

from declarative._version import __version__

from . import ddp
from .activation import ArgminActivation
from .box import ArgminBox, ArgminHardsigmoid, ArgminHardtanh
from .lasso import LassoLayer
from .fenchel_mlp import fenchel_mlp, negative_glorot_uniform_
from .qp import QPLayer
from .relu import ArgminReLU
from .simplex import ArgminSoftmax, ArgminSparsemax

__all__ = [
    "__version__",
    "ArgminActivation", "ArgminBox", "ArgminHardsigmoid", "ArgminHardtanh", "ArgminReLU",
    "ArgminSoftmax", "ArgminSparsemax", "LassoLayer", "QPLayer", "fenchel_mlp", "negative_glorot_uniform_",
]
