"""Activations declared as argmin problems (``docs/guide/problems.md``)."""

from .base import ActivationProblem
from .box import BoxProblem
from .relu import ReLUProblem
from .softmax import SoftmaxProblem
from .sparsemax import SparsemaxProblem

__all__ = ["ActivationProblem", "BoxProblem", "ReLUProblem", "SoftmaxProblem", "SparsemaxProblem"]
