"""Simplex-valued activations: ``ArgminSparsemax`` and ``ArgminSoftmax``."""

from __future__ import annotations

from declarative import GradientMode, SoftmaxProblem, SparsemaxProblem

from .activation import ArgminActivation


class ArgminSparsemax(ArgminActivation):
    r"""Sparsemax ``z = argmin_z ½‖z − x‖²  s.t.  z ≥ 0, 1ᵀz = 1`` over ``dim``.

    ``"implicit"`` uses the backward QP on the simplex, so coordinates exactly at the threshold
    (zero output, weakly active) may enter the support in the direction that lowers the loss.

    Shape:
        - Input: ``(*, n, *)`` with the simplex over ``dim``; Output: same shape.
    """

    def __init__(self, dim: int = -1, mode: str | GradientMode = "implicit", beta: float | None = None):
        super().__init__(SparsemaxProblem(dim), mode, beta)

    def extra_repr(self) -> str:
        return f"dim={self.problem.dim}, " + super().extra_repr()


class ArgminSoftmax(ArgminActivation):
    r"""Softmax ``z = argmin_z Σ z_i log z_i − xᵀz  s.t.  1ᵀz = 1`` over ``dim``.

    Smooth, so ``"implicit"`` equals the usual softmax backward ``z ⊙ (g − ⟨g, z⟩)``.

    Shape:
        - Input: ``(*, n, *)`` with the simplex over ``dim``; Output: same shape.
    """

    def __init__(self, dim: int = -1, mode: str | GradientMode = "implicit", beta: float | None = None):
        super().__init__(SoftmaxProblem(dim), mode, beta)

    def extra_repr(self) -> str:
        return f"dim={self.problem.dim}, " + super().extra_repr()
