r"""The layered network every inference-learning method works on.

A network of ``L`` layers maps ``z_0 = x`` through

.. math::

    a_k = W_k z_{k-1} + b_k, \qquad z_k = f_k(a_k) = \nabla\psi_k^*(a_k), \qquad k = 1, \dots, L,

where every hidden activation is a projection ``f_k = clamp(·, lo_k, hi_k)`` — ReLU
(``[0, ∞)``), box / hard-tanh / hard-sigmoid (``[lo, hi]``) or the identity — i.e.

.. math::

    \psi_k(z) = \tfrac12\|z\|^2 + \iota_{[lo_k, hi_k]}(z), \qquad
    \psi_k^*(a) = a^\top c - \tfrac12\|c\|^2,\ c = \mathrm{clamp}(a, lo_k, hi_k),

and the last layer is the output described by an ``Output`` (softmax + cross-entropy, or identity
+ squared error). The description is read from an ``nn.Sequential`` of ``nn.Linear`` layers and
activation modules (``nn.ReLU``, ``nn.Hardtanh``, ``nn.Identity`` or the library's argmin
activations whose problem is a ``ReLUProblem`` or ``BoxProblem``), ending with an ``nn.Linear``
whose output are the logits ``a_L``. The methods read and write the ``nn.Linear`` parameters;
they never call the modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from declarative.activations import BoxProblem, ReLUProblem
from declarative.validation import check_finite, check_tensor

__all__ = ["Projection", "LayeredNetwork", "layered_network"]


@dataclass(frozen=True)
class Projection:
    r"""A hidden activation ``f(a) = clamp(a, lo, hi) = argmin_{lo ≤ z ≤ hi} ½‖z − a‖²``.

    Its Fenchel–Young gap is

    .. math::

        E(z, a) = \psi(z) + \psi^*(a) - z^\top a
                = \tfrac12\|z - a\|^2 - \tfrac12\|a - f(a)\|^2 \ \ge 0, \qquad lo \le z \le hi,

    zero iff ``z = f(a)`` (expand ``ψ*(a) = aᵀf(a) − ½‖f(a)‖²``).

    Attributes:
        lo, hi: the bounds (``-inf``/``inf`` for none); ReLU is ``(0, inf)``.
    """

    lo: float
    hi: float

    def f(self, a: torch.Tensor) -> torch.Tensor:
        """The activation ``clamp(a, lo, hi)``."""
        return torch.clamp(a, None if math.isinf(self.lo) else self.lo, None if math.isinf(self.hi) else self.hi)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Projection onto ``[lo, hi]`` (the same map as ``f``)."""
        return self.f(z)

    def derivative(self, a: torch.Tensor) -> torch.Tensor:
        """``f'(a)``: 1 strictly inside the box, 0 outside and at the bounds (as ``torch.relu``'s
        backward at 0)."""
        return ((a > self.lo) & (a < self.hi)).to(a.dtype)

    def psi(self, z: torch.Tensor) -> torch.Tensor:
        """``ψ(z) = ½‖z‖²`` summed over the last dimension (``z`` in the box)."""
        return 0.5 * (z * z).sum(-1)

    def psi_conj(self, a: torch.Tensor) -> torch.Tensor:
        """``ψ*(a) = aᵀc − ½‖c‖²``, ``c = f(a)``, summed over the last dimension."""
        c = self.f(a)
        return (a * c - 0.5 * c * c).sum(-1)

    def fenchel_gap(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """``E(z, a) = ½‖z − a‖² − ½‖a − f(a)‖²`` per batch element."""
        return 0.5 * ((z - a) ** 2).sum(-1) - 0.5 * ((a - self.f(a)) ** 2).sum(-1)

    @property
    def lower_bound(self) -> float:
        return self.lo

    @property
    def upper_bound(self) -> float:
        return self.hi


_IDENTITY = Projection(-math.inf, math.inf)
_RELU = Projection(0.0, math.inf)


def _projection_of(module: nn.Module) -> Projection | None:
    """The ``Projection`` a module computes, or None when it is not a supported activation."""
    if isinstance(module, nn.ReLU):
        return _RELU
    if isinstance(module, nn.Identity):
        return _IDENTITY
    if isinstance(module, nn.Hardtanh):
        return Projection(float(module.min_val), float(module.max_val))
    problem = getattr(module, "problem", None)
    if isinstance(problem, ReLUProblem):
        return _RELU
    if isinstance(problem, BoxProblem):
        return Projection(problem.lo, problem.hi)
    return None


@dataclass
class LayeredNetwork:
    """The layered view of an ``nn.Sequential``: its ``nn.Linear`` layers and hidden projections.

    Attributes:
        linears: ``L`` ``nn.Linear`` layers (``W_k = linears[k-1].weight``).
        activations: ``L − 1`` hidden projections, ``Projection`` (the output is the method's ``Output``).

    Shape:
        - Input ``x``: ``(B, n_0)``; the forward's ``a[k]``, ``z[k]``: ``(B, n_{k+1})``.
    """

    linears: list[nn.Linear]
    activations: list[Projection]

    @property
    def depth(self) -> int:
        """The number of layers ``L``."""
        return len(self.linears)

    @property
    def widths(self) -> list[int]:
        """``[n_0, n_1, …, n_L]``."""
        return [self.linears[0].in_features] + [lin.out_features for lin in self.linears]

    def parameters(self) -> list[torch.Tensor]:
        """``[W_1, b_1, …, W_L, b_L]`` (a missing bias is skipped)."""
        out = []
        for lin in self.linears:
            out.append(lin.weight)
            if lin.bias is not None:
                out.append(lin.bias)
        return out

    def weights(self) -> list[torch.Tensor]:
        """Detached ``W_k``."""
        return [lin.weight.detach() for lin in self.linears]

    def biases(self) -> list[torch.Tensor | None]:
        """Detached ``b_k`` (None where the layer has no bias)."""
        return [None if lin.bias is None else lin.bias.detach() for lin in self.linears]

    def preactivation(self, k: int, z_prev: torch.Tensor) -> torch.Tensor:
        """``a_k = W_k z_{k−1} + b_k`` with detached parameters; ``k`` is 1-based."""
        lin = self.linears[k - 1]
        return torch.nn.functional.linear(z_prev, lin.weight.detach(),
                                          None if lin.bias is None else lin.bias.detach())

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Detached forward pass: ``(a, z)`` with ``a = [a_1, …, a_L]`` and
        ``z = [z_0 = x, z_1, …, z_{L−1}]`` (hidden activations only; ``a_L`` are the logits)."""
        a, z = [], [x]
        for k in range(1, self.depth + 1):
            a.append(self.preactivation(k, z[-1]))
            if k < self.depth:
                z.append(self.activations[k - 1].f(a[-1]))
        return a, z

    def check_input(self, x, y, n_classes: int) -> None:
        """Validate a mini-batch against the network (TypeError / ValueError naming the argument)."""
        check_tensor("x", x)
        w = self.linears[0].weight
        if x.dtype != w.dtype or x.device != w.device:
            raise TypeError(f"x: expected dtype {w.dtype} on {w.device} (the model's), got {x.dtype} on {x.device}")
        if x.dim() != 2 or x.shape[1] != self.widths[0] or x.shape[0] == 0:
            raise ValueError(f"x: expected shape (B, {self.widths[0]}) with B ≥ 1, got {tuple(x.shape)}")
        if not bool(torch.isfinite(x.sum())):  # fast path: one reduction; the full check names the count
            check_finite("x", x)
            raise ValueError("x: expected finite values; its entries overflow when summed")
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y: expected an int64 tensor of class indices, got {type(y).__name__}")
        if y.dtype != torch.int64:
            raise TypeError(f"y: expected an int64 tensor of class indices, got dtype {y.dtype}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y: expected shape (B,) = ({x.shape[0]},), one class per input, got {tuple(y.shape)}")
        if y.device != x.device:
            raise TypeError(f"y: expected device {x.device}, got {y.device}")
        if bool(((y < 0) | (y >= n_classes)).any()):
            raise ValueError(f"y: expected class indices in [0, {n_classes}) (the model's {n_classes} outputs), "
                             f"got values in [{int(y.min())}, {int(y.max())}]")


def layered_network(model: nn.Module) -> LayeredNetwork:
    """Read a ``LayeredNetwork`` from ``model``.

    Args:
        model: an ``nn.Sequential`` ``Linear, act, Linear, act, …, Linear`` whose activations are
            projections (see the module docstring); consecutive widths must agree.

    Returns:
        The ``LayeredNetwork`` sharing ``model``'s ``nn.Linear`` modules.

    Raises:
        TypeError: ``model`` is not an ``nn.Sequential``.
        ValueError: it is not layered as above (names the offending position and module).
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model: expected an nn.Sequential of nn.Linear layers and activations "
                        f"(a layered network), got {type(model).__name__}")
    mods = list(model)
    if len(mods) % 2 != 1:
        raise ValueError(f"model: expected Linear, activation, …, Linear (an odd number of modules), "
                         f"got {len(mods)} modules: {[type(m).__name__ for m in mods]}")
    linears, acts = [], []
    for i, m in enumerate(mods):
        if i % 2 == 0:
            if not isinstance(m, nn.Linear):
                raise ValueError(f"model[{i}]: expected nn.Linear (a layered network alternates Linear "
                                 f"and activation), got {type(m).__name__}")
            if linears and linears[-1].out_features != m.in_features:
                raise ValueError(f"model[{i}]: in_features {m.in_features} does not match the previous "
                                 f"layer's out_features {linears[-1].out_features}")
            linears.append(m)
        else:
            proj = _projection_of(m)
            if proj is None:
                raise ValueError(f"model[{i}]: unsupported activation {type(m).__name__}; expected "
                                 "nn.ReLU, nn.Hardtanh, nn.Identity, or an argmin ReLU/box activation")
            acts.append(proj)
    return LayeredNetwork(linears, acts)
