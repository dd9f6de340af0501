"""Declarative core: problems declare, solvers return a ``Solution``, gradient modes are objects.

Imports nothing from ``contrastive`` or ``layers``.
"""

from .activations import ActivationProblem, BoxProblem, ReLUProblem, SoftmaxProblem, SparsemaxProblem
from .argmin_layer import argmin, argmin_solution
from .argmin_function import ArgminFunction, apply_argmin_function
from .broadcasting import sum_to_shape
from .energy_problem import EnergyProblem
from .errors import SolverError
from .fixed_point_layer import FixedPointProblem, fixed_point, fixed_point_solution
from .hypergradient_modes import ConjugateGradient, FirstOrder, FixedPoint, Unrolled
from .lasso import LassoOptions, LassoProblem, solve_lasso
from .minimizer import minimize
from .norm_ball_projection import project_inf_norm_ball, project_spectral_ball
from .modes import GradientMode, Implicit, check_beta, register_mode, resolve_mode
from .problem import ArgminProblem
from .qp import QPOptions, QPProblem, solve_qp, solve_qp_ipm
from .solution import Solution
from .status import Status
from .stochastic_hypergradient import StochasticHypergradient, decreasing_steps, stochastic_hypergradient

__all__ = [
    "ActivationProblem", "ArgminFunction", "ArgminProblem", "BoxProblem", "GradientMode",
    "Implicit", "LassoOptions", "LassoProblem", "ReLUProblem", "SoftmaxProblem", "Solution", "SolverError", "SparsemaxProblem",
    "ConjugateGradient", "EnergyProblem", "FirstOrder", "FixedPoint", "FixedPointProblem", "Unrolled",
    "argmin", "argmin_solution", "fixed_point", "fixed_point_solution", "minimize",
    "project_inf_norm_ball", "project_spectral_ball",
    "StochasticHypergradient", "decreasing_steps", "stochastic_hypergradient",
    "QPOptions", "QPProblem", "solve_qp", "solve_qp_ipm",
    "Status", "apply_argmin_function", "check_beta", "register_mode", "resolve_mode", "solve_lasso", "sum_to_shape",
]
