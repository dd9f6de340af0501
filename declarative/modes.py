"""Gradient modes: objects that say *how* a declared argmin problem is differentiated.

A mode's ``vjp(problem, params, solution, g, needs)`` maps the cotangent ``g = ∂ℓ/∂z*`` to the
gradients of the parameters, using only what the problem declares (see ``ArgminProblem``). Its
``apply`` runs the forward; the default routes through the shared ``ArgminFunction``, and modes
that differentiate in another way (e.g. through the solver's iterations) override it.

Strings are resolved by ``resolve_mode`` from one registry that knows every built-in name,
whichever packages were imported: ``"implicit"``, ``"first_order"``, and ``"contrastive"`` /
``"symmetric"`` (defined in the ``contrastive`` package, imported by qualified name on first use).
Each mode class says what it needs from a problem (``requires``, names of ``CAPABILITIES``), so a
mode that a problem cannot support is rejected with a message naming the missing capability.
"""

from __future__ import annotations

import importlib
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
    #: what the mode needs from a problem (names of ``CAPABILITIES``), checked by ``resolve_mode``
    requires: frozenset[str] = frozenset()
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
    requires = frozenset({"implicit"})

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


class _ModeName:
    """A registered mode name: how to build the mode (a callable, or the qualified name
    ``"package.module:Class"`` imported on first use) and whether it takes ``beta``."""

    def __init__(self, factory: "Callable | str", takes_beta: bool):
        self.factory = factory
        self.takes_beta = takes_beta

    def load(self) -> Callable:
        if isinstance(self.factory, str):
            module, attr = self.factory.split(":")
            self.factory = getattr(importlib.import_module(module), attr)
        return self.factory

    def build(self, name: str, beta) -> "GradientMode":
        factory = self.load()
        if self.takes_beta:
            return factory(beta)
        if beta is not None:
            raise ValueError(f"mode {name!r} does not use beta (got beta={beta})")
        return factory()

    def requires(self) -> frozenset[str]:
        factory = self.load()
        return getattr(factory, "requires", frozenset()) if isinstance(factory, type) else frozenset()


# Every built-in name is known here, whichever packages were imported: the contrastive modes live
# in the ``contrastive`` package (which builds on this one) and are imported by name on first use.
_REGISTRY: dict[str, _ModeName] = {
    "implicit": _ModeName("declarative.modes:Implicit", takes_beta=False),
    "first_order": _ModeName("declarative.hypergradient_modes:FirstOrder", takes_beta=False),
    "contrastive": _ModeName("contrastive.modes:Contrastive", takes_beta=True),
    "symmetric": _ModeName("contrastive.modes:Symmetric", takes_beta=True),
}
# Modes whose accuracy is a number of steps: no string can carry it, so they are objects only.
_OBJECT_ONLY = {
    "fixed_point": "declarative.FixedPoint(k=...)",
    "conjugate_gradient": "declarative.ConjugateGradient(k=...)",
    "unrolled": "declarative.Unrolled(t=...)",
}


def register_mode(name: str, factory: Callable, takes_beta: bool) -> None:
    """Make ``resolve_mode(name, beta)`` build ``factory(beta)`` (or ``factory()``).

    For modes defined outside this library; the built-in names are always known.

    Raises:
        ValueError: ``name`` is a built-in mode name.
    """
    key = name.lower()
    if key in _BUILTIN_NAMES or key in _OBJECT_ONLY:
        raise ValueError(f"name: {name!r} is a built-in gradient mode name and cannot be re-registered")
    _REGISTRY[key] = _ModeName(factory, takes_beta)


_BUILTIN_NAMES = frozenset(_REGISTRY)


def _names_for(problem) -> list[str]:
    """The registered names whose modes work for ``problem`` (any, when ``problem`` is None)."""
    if problem is None:
        return sorted(_REGISTRY)
    caps = problem_capabilities(problem)
    return sorted(k for k, entry in _REGISTRY.items() if entry.requires() <= caps)


def _unknown_mode_message(mode: str, problem) -> str:
    what = "" if problem is None else f" for {_problem_name(problem)}"
    valid = ", ".join(repr(k) for k in _names_for(problem))
    caps = None if problem is None else problem_capabilities(problem)
    objects = ", ".join(v for k, v in _OBJECT_ONLY.items()
                        if caps is None or "fixed_point_map" in caps)
    if mode.lower() in _OBJECT_ONLY:
        head = (f"gradient mode {mode!r} needs its number of steps, which a string cannot carry: pass "
                f"the object {_OBJECT_ONLY[mode.lower()]}")
        if caps is not None and "fixed_point_map" not in caps:
            head += f" (it needs {CAPABILITIES['fixed_point_map']}, which {_problem_name(problem)} does not declare)"
        return head + f". Mode names that work{what}: {valid}"
    msg = f"unknown gradient mode {mode!r}; mode names that work{what}: {valid}"
    if "contrastive" in _names_for(problem):
        msg += " ('contrastive' and 'symmetric' with beta=...)"
    if objects:
        msg += f"; modes with a number of steps are passed as objects: {objects}"
    return msg + "; or pass any GradientMode object"


def resolve_mode(mode: "str | GradientMode" = "implicit", beta: float | None = None,
                 problem=None) -> GradientMode:
    """Turn ``mode=``/``beta=`` arguments into a ``GradientMode`` object.

    Every built-in name resolves whichever packages were imported before: ``"implicit"``,
    ``"first_order"``, ``"contrastive"`` and ``"symmetric"`` (the last two need ``beta``). The modes
    with a number of steps (``FixedPoint(k)``, ``ConjugateGradient(k)``, ``Unrolled(t)``) are
    passed as objects.

    Args:
        mode: a registered name (case-insensitive) or a ``GradientMode`` object.
        beta: the nudging strength of the contrastive modes given by name.
        problem: optional ``ArgminProblem`` (instance or class) the mode is for: the mode is checked
            against what the problem declares (``problem_capabilities``), and the error for an
            unknown name lists only the names that work for it.

    Raises:
        TypeError: ``mode`` is neither a string nor a ``GradientMode``.
        ValueError: unknown mode name, a mode that ``problem`` cannot support (the message names
            the missing capability), a missing or non-positive ``beta`` for a mode that needs one,
            or a ``beta`` given where it would be ignored.
    """
    if isinstance(mode, GradientMode):
        if beta is not None:
            raise ValueError(f"beta={beta} given together with the mode object {mode!r}; "
                             "set beta on the mode object instead")
        resolved = mode
    elif isinstance(mode, str):
        entry = _REGISTRY.get(mode.lower())
        if entry is None:
            raise ValueError(_unknown_mode_message(mode, problem))
        if problem is not None:   # before building: the missing capability is the first thing to say
            _check_requirements(repr(mode), entry.requires(), problem)
        resolved = entry.build(mode, beta)
    else:
        raise TypeError(f"mode must be a string or a GradientMode object, got {type(mode).__name__}")
    if problem is not None:
        check_mode_supports(resolved, problem)
    return resolved


# -- capabilities: what a mode needs from a problem -----------------------------------------------------
#: capability -> what it is, in words (for messages)
CAPABILITIES = {
    "implicit": "an implicit derivative (implicit_vjp, or implicit_tangent with lagrangian_grads_tangent)",
    "nudged": "an energy with a nudged solve (solve_nudged with lagrangian_grads)",
    "fixed_point_map": "a fixed-point map Φ(w, θ) (fixed_point_map)",
}


def _problem_name(problem) -> str:
    return (problem if isinstance(problem, type) else type(problem)).__name__


def problem_capabilities(problem) -> frozenset[str]:
    """What ``problem`` (an ``ArgminProblem`` instance or class) declares, as a set of the names in
    ``CAPABILITIES``: the methods of the protocol it implements (overrides)."""
    cls = problem if isinstance(problem, type) else type(problem)

    def has(method):
        return getattr(cls, method) is not getattr(ArgminProblem, method)

    caps = set()
    if has("implicit_vjp") or (has("implicit_tangent") and has("lagrangian_grads_tangent")):
        caps.add("implicit")
    if has("solve_nudged") and (has("lagrangian_grads") or has("lagrangian_grads_contrast")):
        caps.add("nudged")
    if has("fixed_point_map"):
        caps.add("fixed_point_map")
    return frozenset(caps)


def check_mode_supports(mode: GradientMode, problem) -> None:
    """Raise a ``ValueError`` naming ``mode`` and the capability ``problem`` lacks, if any (the
    mode's ``repr`` is taken for the message only)."""
    requires = type(mode).requires
    if not problem_capabilities(problem).issuperset(requires):   # any iterable of names
        _check_requirements(repr(mode), requires, problem)


def _check_requirements(mode: str, requires: frozenset[str], problem) -> None:
    missing = [c for c in sorted(requires) if c not in problem_capabilities(problem)]
    if missing:
        needs = "; ".join(CAPABILITIES[c] for c in missing)
        raise ValueError(f"mode: {mode} needs {needs}, which {_problem_name(problem)} does not "
                         f"declare; modes that work for it: "
                         + ", ".join(repr(k) for k in _names_for(problem))
                         + (", " + ", ".join(_OBJECT_ONLY.values())
                            if "fixed_point_map" in problem_capabilities(problem) else ""))
