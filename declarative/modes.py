"""Gradient modes: objects that say *how* a declared argmin problem is differentiated.

A mode's ``vjp(problem, params, solution, g, needs)`` maps the cotangent ``g = ∂ℓ/∂z*`` to the
gradients of the parameters, using only what the problem declares (see ``ArgminProblem``). Its
``apply`` runs the forward; the default routes through the shared ``ArgminFunction``, and modes
that differentiate in another way (e.g. through the solver's iterations) override it.

Strings are resolved by ``resolve_mode``; other packages register their modes by name (the
``contrastive`` package registers ``"contrastive"`` and ``"symmetric"`` on import).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch

from .argmin_function import apply_argmin_function
from .errors import SolverError
from .problem import ArgminProblem, Grads
from .solution import Solution
from .status import Status


class GradientMode:
    """Base class of gradient modes."""

    name: str = "mode"
    #: True when the forward is a truncated iteration whose unconverged output is the intended one
    #: (``Unrolled``): ``check_layer_solution`` then does not raise for ``MAX_ITERATIONS``.
    truncated: bool = False

    def apply(self, problem: ArgminProblem, params, warm_start: Solution | None = None) -> Solution:
        return apply_argmin_function(problem, self, params, warm_start)

    def vjp(self, problem: ArgminProblem, params, solution: Solution, g: torch.Tensor,
            needs: Sequence[bool]) -> Grads:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Implicit(GradientMode):
    """Exact implicit differentiation: the β → 0⁺ limit of the contrastive gradient (C).

    With the one-sided tangent ``(dz, dλ, dν) = lim_{β→0⁺} (ŝ_β − s*)/β`` of the nudged problem
    ``argmin E(z;θ) + β gᵀz``, the gradient is

        ∇_θ = ∂²_{θz}𝓛 · dz + (∂_θ c)ᵀ dλ .

    Under strict complementarity ``dz`` solves the KKT linear system (the classic implicit-function
    gradient); at weakly active constraints (active with zero multiplier) it solves the backward
    QP ``min ½dᵀHd + gᵀd`` s.t. ``∇c_iᵀd = 0`` (strongly active), ``∇c_iᵀd ≤ 0`` (weakly active)
    — the one-sided derivative, which exists where the two-sided one does not (Zach 2021, Prop. 2).

    Failures are per element: the tangent of an element whose solve failed is zero, and a problem
    whose tangent fails for a solved element documents what that element gets (``QPProblem``: a
    zero tangent and a ``RuntimeWarning`` naming the batch indices; the batch never raises).
    """

    name = "implicit"

    def vjp(self, problem, params, solution, g, needs):
        return problem.implicit_vjp(solution, params, g, needs)


def check_layer_solution(sol: Solution, mode: GradientMode, what: str) -> None:
    """Raise a ``SolverError`` naming the failing batch elements of a layer's solve; for truncated
    modes (``mode.truncated``, e.g. ``Unrolled``) an unconverged ``w_t`` is the intended output, so
    only other failures raise."""
    status = sol.status_tensor()
    if mode.truncated:
        status = torch.where(status == Status.MAX_ITERATIONS, Status.SOLVED, status)
    err = SolverError.from_status(status, sol, what)
    if err is not None:
        raise err


def check_beta(beta, mode_name: str) -> float:
    """Validate a nudging strength: a finite positive number."""
    if beta is None:
        raise ValueError(f"mode {mode_name!r} needs a nudging strength: pass beta=<positive float>")
    if isinstance(beta, torch.Tensor):
        if beta.numel() != 1:
            raise ValueError(f"beta must be a positive scalar, got a tensor of shape {tuple(beta.shape)}")
        beta = beta.item()
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):  # numpy scalars are Real
        raise TypeError(f"beta must be a positive float, got {type(beta).__name__}")
    beta = float(beta)
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite positive float, got {beta}")
    return beta


_REGISTRY: dict[str, tuple[Callable, bool]] = {}


def register_mode(name: str, factory: Callable, takes_beta: bool) -> None:
    """Make ``resolve_mode(name, beta)`` build ``factory(beta)`` (or ``factory()``)."""
    _REGISTRY[name] = (factory, takes_beta)


register_mode("implicit", Implicit, takes_beta=False)


def resolve_mode(mode: "str | GradientMode" = "implicit", beta: float | None = None) -> GradientMode:
    """Turn ``mode=``/``beta=`` arguments into a ``GradientMode`` object.

    Raises:
        ValueError: unknown mode name (the message lists the valid ones), a missing or non-positive
            ``beta`` for a mode that needs one, or a ``beta`` given where it would be ignored.
    """
    if isinstance(mode, GradientMode):
        if beta is not None:
            raise ValueError(f"beta={beta} given together with the mode object {mode!r}; "
                             "set beta on the mode object instead")
        return mode
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a string or a GradientMode object, got {type(mode).__name__}")
    key = mode.lower()
    if key not in _REGISTRY:
        valid = ", ".join(repr(k) for k in sorted(_REGISTRY))
        raise ValueError(f"unknown gradient mode {mode!r}; valid modes are {valid} "
                         "(or pass a GradientMode object)")
    factory, takes_beta = _REGISTRY[key]
    if takes_beta:
        return factory(beta)
    if beta is not None:
        raise ValueError(f"mode {mode!r} does not use beta (got beta={beta})")
    return factory()
