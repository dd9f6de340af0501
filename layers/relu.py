"""``ArgminReLU``: ReLU as an argmin layer."""

from __future__ import annotations

from declarative import GradientMode, ReLUProblem

from .activation import ArgminActivation


class ArgminReLU(ArgminActivation):
    r"""ReLU written as the projection ``z = argmin_z ½‖z − x‖²  s.t.  z ≥ 0 = max(0, x)``.

    The forward equals ``torch.relu``; the backward depends on ``mode``:

    * ``"implicit"``: the exact one-sided derivative — ``g`` where ``x > 0``, ``0`` where ``x < 0``,
      and at the kink ``x = 0``: ``g`` if ``g < 0`` (the loss decreases by leaving the constraint),
      else ``0``.
    * ``"contrastive"`` (Fenchel back-propagation): ``(max(0, x) − max(0, x − βg))/β``.
    * ``"symmetric"``: ``(max(0, x + βg) − max(0, x − βg))/(2β)``.

    Args:
        mode: ``"implicit"``, ``"contrastive"``, ``"symmetric"`` or a ``GradientMode`` object.
        beta: nudging strength, required by the contrastive modes.

    Shape:
        - Input: ``(*)``, any shape, float32 or float64.
        - Output: ``(*)``, same shape, dtype and device.

    Examples::

        >>> import torch, layers
        >>> act = layers.ArgminReLU(mode="contrastive", beta=0.5)
        >>> x = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
        >>> act(x).sum().backward()
    """

    def __init__(self, mode: str | GradientMode = "implicit", beta: float | None = None):
        super().__init__(ReLUProblem(), mode, beta)
