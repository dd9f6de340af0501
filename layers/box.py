"""Box-projection activations: ``ArgminBox``, ``ArgminHardtanh``, ``ArgminHardsigmoid``."""

from __future__ import annotations

from declarative import BoxProblem, GradientMode

from .activation import ArgminActivation


class ArgminBox(ArgminActivation):
    r"""``z = argmin_z ½‖z − x‖²  s.t.  lo ≤ z ≤ hi = clamp(x, lo, hi)``.

    ``"implicit"`` passes ``g`` strictly inside the box, ``0`` strictly outside, and at a bound the
    one-sided rule: at ``x = lo`` only ``g < 0`` passes (it moves z up, into the box), at ``x = hi``
    only ``g > 0``. The contrastive modes use ``clamp(x ∓ βg, lo, hi)``.

    Args:
        lo, hi: bounds, ``lo < hi``.
        mode, beta: as for ``ArgminReLU``.

    Shape:
        - Input: ``(*)``; Output: ``(*)``, same shape, dtype and device.
    """

    def __init__(self, lo: float = -1.0, hi: float = 1.0, mode: str | GradientMode = "implicit",
                 beta: float | None = None):
        super().__init__(BoxProblem(lo, hi), mode, beta)

    def extra_repr(self) -> str:
        return f"lo={self.problem.lo:g}, hi={self.problem.hi:g}, " + super().extra_repr()


class ArgminHardtanh(ArgminBox):
    """Hard-tanh: ``ArgminBox`` on ``[−1, 1]``."""

    def __init__(self, mode: str | GradientMode = "implicit", beta: float | None = None):
        super().__init__(-1.0, 1.0, mode, beta)


class ArgminHardsigmoid(ArgminBox):
    """Hard-sigmoid: ``ArgminBox`` on ``[0, 1]`` (the clamp itself; no affine pre-scaling)."""

    def __init__(self, mode: str | GradientMode = "implicit", beta: float | None = None):
        super().__init__(0.0, 1.0, mode, beta)
