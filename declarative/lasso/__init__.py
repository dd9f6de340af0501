"""The batched lasso / elastic-net layer: solver, declared problem, functional entry point."""

from .functional import solve_lasso
from .problem import LassoProblem
from .solver import LassoOptions, lasso_fista_polish

__all__ = ["LassoOptions", "LassoProblem", "lasso_fista_polish", "solve_lasso"]
