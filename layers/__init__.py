"""``torch.nn.Module`` wrappers around declared argmin problems, usable in ``nn.Sequential``.

Data-parallel training helpers are in the submodule ``layers.ddp``.
"""

from declarative._version import __version__

from . import ddp
from .activation import ArgminActivation
from .cvxpy_layer import CvxpyLayer
from . import cvxpy_references as _cvxpy_references  # noqa: F401  (registers check_against_cvxpy references)
from .box import ArgminBox, ArgminHardsigmoid, ArgminHardtanh
from .lasso import LassoLayer
from .fenchel_mlp import fenchel_mlp, negative_glorot_uniform_
from .qp import QPLayer
from .relu import ArgminReLU
from .simplex import ArgminSoftmax, ArgminSparsemax

__all__ = [
    "__version__",
    "ArgminActivation", "ArgminBox", "ArgminQPSolver", "ArgminHardsigmoid", "ArgminHardtanh", "ArgminReLU",
    "ArgminSoftmax", "ArgminSparsemax", "CvxpyLayer", "LassoLayer", "QPLayer", "fenchel_mlp", "negative_glorot_uniform_",
]


def __getattr__(name):
    # ``ArgminQPSolver`` subclasses cvxpylayers' SolverInterface: imported on first use only, so
    # that ``import layers`` does not import cvxpylayers (and cvxpy)
    if name == "ArgminQPSolver":
        from .cvxpylayers_backend import ArgminQPSolver
        return ArgminQPSolver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
