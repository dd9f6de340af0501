"""Batched convex quadratic programs: solver, declared problem, differentiable solve."""

from .ipm import solve_qp_ipm
from .options import QPOptions

__all__ = ["QPOptions", "solve_qp_ipm"]
