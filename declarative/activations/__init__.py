"""Activations declared as argmin problems (DESIGN.md §3.3)."""

from .base import ActivationProblem
from .box import BoxProblem
from .relu import ReLUProblem
from .softmax import SoftmaxProblem
from .sparsemax import SparsemaxProblem

__all__ = ["ActivationProblem", "BoxProblem", "ReLUProblem", "SoftmaxProblem", "SparsemaxProblem"]
