"""Declarative core: problems declare, solvers return a ``Solution``, gradient modes are objects.

Imports nothing from ``contrastive`` or ``layers`` at import time (the mode names ``"contrastive"``
and ``"symmetric"`` import ``contrastive.modes`` by name on first use). Exceptions follow one
policy (``declarative.errors``): ``TypeError`` for wrong types and dtypes, ``ValueError`` for wrong
values and shapes, ``SolverError`` for numerical failure.

Internals are reached through their submodules (e.g. ``declarative.argmin_function``,
``declarative.broadcasting``, ``declarative.validation``), not from this namespace.
"""

from ._version import __version__
from .activations import ActivationProblem, BoxProblem, ReLUProblem, SoftmaxProblem, SparsemaxProblem
from .argmin_layer import argmin, argmin_solution
from .energy_problem import EnergyProblem
from .errors import SolverError
from .fixed_point_layer import FixedPointProblem, fixed_point, fixed_point_solution
from .hypergradient_modes import ConjugateGradient, FirstOrder, FixedPoint, Unrolled
from .lasso import LassoOptions, LassoProblem, solve_lasso
from .minimizer import minimize
from .modes import GradientMode, Implicit, register_mode, resolve_mode
from .norm_ball_projection import project_inf_norm_ball, project_spectral_ball
from .problem import ArgminProblem
from .qp import QPOptions, QPProblem, solve_qp, solve_qp_ipm
from .solution import Solution
from .status import Status
from .stochastic_hypergradient import StochasticHypergradient, decreasing_steps, stochastic_hypergradient

__all__ = [
    "__version__",
    # functions: differentiable argmin / fixed point / QP / lasso, and the plain minimiser
    "argmin", "argmin_solution", "fixed_point", "fixed_point_solution", "minimize",
    "solve_lasso", "solve_qp", "solve_qp_ipm",
    # gradient modes
    "ConjugateGradient", "FirstOrder", "FixedPoint", "GradientMode", "Implicit", "Unrolled",
    "register_mode", "resolve_mode",
    # bilevel utilities: norm-ball projections, stochastic hypergradients
    "project_inf_norm_ball", "project_spectral_ball",
    "StochasticHypergradient", "decreasing_steps", "stochastic_hypergradient",
    # problems
    "ActivationProblem", "ArgminProblem", "BoxProblem", "EnergyProblem", "FixedPointProblem",
    "LassoProblem", "QPProblem", "ReLUProblem", "SoftmaxProblem", "SparsemaxProblem",
    # options, results, errors
    "LassoOptions", "QPOptions", "Solution", "SolverError", "Status",
]
