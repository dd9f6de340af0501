"""Batched convex quadratic programs: solver, declared problem, differentiable solve.

``solve_qp_ipm`` is the raw batched interior-point solver (not differentiable); ``QPProblem``
declares the QP for the gradient modes; ``solve_qp`` validates inputs and returns a differentiable
``Solution``.
"""

from .functional import solve_qp
from .ipm import solve_qp_ipm
from .options import QPOptions
from .problem import QPProblem

__all__ = ["QPOptions", "QPProblem", "solve_qp", "solve_qp_ipm"]
