"""Base module for activations declared as argmin problems."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd import forward_ad

from declarative import ActivationProblem, GradientMode, Implicit, resolve_mode
from declarative.argmin_function import apply_closed_form
from declarative.validation import check_instance, check_tensor


#: whether a ``torch.func`` transform is running (no public query exists; where this build lacks
#: it, the other checks and the refusal of ``Tensor.item`` by ``vmap`` remain)
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def _native_implicit(problem: ActivationProblem, x: torch.Tensor) -> torch.Tensor | None:
    """``problem.native_implicit(x)``, or ``None`` (the closed-form Function then runs) wherever
    its data-dependent check must not decide the graph: under ``torch.jit.trace`` (the trace would
    fix the branch of the example input for every later input), for tensor subclasses (fake and
    functional tensors of ``make_fx`` and export), for dual tensors of forward-mode AD (whose
    support must not depend on the input's values), and wherever reading the value is refused
    (``torch.func.vmap``, ``make_fx``'s proxy mode, data-dependent symbolic guards); also under
    every ``torch.func`` transform (nested forward-mode levels, ``functionalize``), where the
    wrapped input shows neither its tangent nor its wrapper type. A ``RuntimeError`` from
    ``native_implicit`` means "use the Function" (which is correct for every input)."""
    if (type(x) is not torch.Tensor or torch.jit.is_tracing() or _transforms_active()
            or forward_ad.unpack_dual(x).tangent is not None):
        return None
    try:
        return problem.native_implicit(x)
    except RuntimeError:   # the value read was refused: the general path, correct everywhere
        return None


class ArgminActivation(nn.Module):
    """``z = argmin_z ψ(z) − aᵀz`` applied to the input, differentiated by a gradient mode.

    The closed form and the mode's backward are torch operations in a ``torch.autograd.Function``
    with ``setup_context``: ``torch.compile(..., fullgraph=True)`` traces both into the graph, and
    ``torch.func.vmap`` batches them (``generate_vmap_rule``). Eager calls outside ``torch.func``
    transforms run the same forward and backward without ``Function.apply``'s argument binding
    (``declarative.argmin_function.apply_closed_form``); in the ``Implicit`` mode, where the
    problem has a natively differentiable form with the same gradient at the input
    (``ActivationProblem.native_implicit``: ReLU on a CPU input without 0 or NaN, outside tracing
    and forward-mode AD), they run that instead, with no Python backward.

    Args:
        problem: the ``ActivationProblem`` (closed form and one-sided derivative).
        mode: ``"implicit"`` (exact one-sided derivative), ``"contrastive"`` or ``"symmetric"``
            (finite nudging strength ``beta``), or a ``GradientMode`` object.
        beta: nudging strength for the contrastive modes (required there, rejected otherwise).

    Shape:
        - Input: ``(*)``, float32 or float64 (``(*, n, *)`` with the simplex over ``dim`` for the
          simplex activations).
        - Output: same shape, dtype and device as the input.
    """

    def __init__(self, problem: ActivationProblem, mode: str | GradientMode = "implicit",
                 beta: float | None = None):
        super().__init__()
        self.problem = check_instance("problem", problem, ActivationProblem, optional=False)
        self.mode = resolve_mode(mode, beta, problem=problem)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("input", x)
        mode, problem = self.mode, self.problem
        # a closed form under a mode that does not run its own forward (no ``apply`` override on
        # its class or instance): straight to the closed-form Function
        if problem.closed_form and getattr(mode.apply, "__func__", None) is GradientMode.apply:
            if type(mode) is Implicit and not torch.compiler.is_compiling():
                z = _native_implicit(problem, x)
                if z is not None:
                    return z
            return apply_closed_form(problem, mode, (x,))
        return mode.apply(problem, (x,)).z

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
