"""The ``torch.autograd.Function`` objects through which every declared problem is differentiated.

Their forward calls ``problem.solve``; their backward hands the cotangent ``g = ∂ℓ/∂z`` to the
gradient mode's ``vjp``. Problems never contain a backward and modes never contain a solver, so a
new problem gets every mode and a new mode works for every problem that declares what it needs.

Two Functions, one protocol:

* ``ClosedFormFunction`` for problems with ``closed_form = True`` (the activations): one tensor in
  the problem's own shape out, written in torch ops only. ``torch.compile`` traces its forward and
  the mode's backward into the graph (``fullgraph=True`` works), and ``torch.func.vmap`` batches it
  through the public rule ``generate_vmap_rule = True``. Eagerly, outside ``torch.func``
  transforms, ``apply_argmin_function`` runs the same forward and backward through
  ``_EagerClosedFormFunction`` (the combined ``forward(ctx, ...)`` form), which ``Function.apply``
  calls without binding the arguments to the forward's signature.
* ``ArgminFunction`` for iterative solvers: ``z`` is its output, the rest of the ``Solution``
  (multipliers, statuses, solver caches) is handed to the caller beside it and saved for the
  backward. Solvers check convergence on the host and run data-dependent loops, so
  ``apply_argmin_function`` runs them outside ``torch.compile``'s graph
  (``torch.compiler.disable``: one clean graph break; the model around the layer still compiles,
  and autograd connects the compiled parts with the solver's backward). No ``torch.func``
  transform runs them either (their host reads): ``ArgminFunction`` takes the combined
  ``forward(ctx, ...)`` form, which ``Function.apply`` calls without binding the arguments.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch

from .broadcasting import sum_to_shape
from .second_derivatives import (detached, refused_when_differentiated, second_order_notes, with_notes,
                                 with_zero_derivatives)
from .solution import Solution


def _with_cached_signature(forward):
    # ``Function.apply`` binds its arguments to ``inspect.signature(forward)`` on every call when
    # ``setup_context`` is defined; a precomputed ``__signature__`` spares recomputing it (the
    # binding itself remains, a few µs per call).
    forward.__signature__ = inspect.signature(forward)
    return forward


def _vjp_grads(problem, mode, params, solution, g, needs):
    """The mode's gradients summed back to each parameter's own shape (``None`` where not needed)."""
    grads = mode.vjp(problem, params, solution, g, needs)
    return [sum_to_shape(grad, p.shape) if need and grad is not None else None
            for grad, need, p in zip(grads, needs, params)]


class ClosedFormFunction(torch.autograd.Function):
    """``z* = argmin_z E(z; θ)`` for a problem whose forward is a closed form in torch ops.

    Inputs: ``problem, mode, *params``; output: ``z`` (``problem.solve(params).z``).
    """

    generate_vmap_rule = True

    @staticmethod
    @_with_cached_signature
    def forward(problem, mode, *params):
        return problem.solve(params).z

    @staticmethod
    def setup_context(ctx, inputs, output):
        # Kept lean: this and ``backward`` run once per layer per training step (bench_fenchel.py).
        ctx.problem, ctx.mode = inputs[0], inputs[1]
        ctx.save_for_backward(*inputs[2:], output)

    @staticmethod
    def backward(ctx, g):
        *params, z = ctx.saved_tensors
        problem = ctx.problem
        if torch.is_grad_enabled():
            # Double backward (create_graph=True): the closed form re-solved in torch ops makes the
            # backward's dependence on z* exact. Through the saved output it would be differentiated
            # by this mode's own vjp, so e.g. Contrastive's second derivative would mix in its O(β) bias.
            solution = problem.solve(params)
        else:
            solution = Solution(z=z)
        needs = ctx.needs_input_grad[2:]
        return (None, None, *_vjp_grads(problem, ctx.mode, params, solution, g, needs))


class _EagerClosedFormFunction(torch.autograd.Function):
    """``ClosedFormFunction`` in the combined ``forward(ctx, ...)`` form, for eager calls.

    Same inputs, output, saved tensors and gradients; a first-order backward takes a shorter path
    (no gradient lists; ``needs`` is ``(True,)`` for one parameter), a ``create_graph`` one the
    re-solving path of ``ClosedFormFunction.backward``. ``Function.apply`` binds the arguments of a
    Function that defines ``setup_context`` to its forward's signature on every call (a few µs per
    activation per step); this form skips that. ``torch.func`` transforms accept only the
    ``setup_context`` form: under them ``apply`` raises before running anything
    (``_FUNCTORCH_REFUSAL``), and ``apply_closed_form`` uses ``ClosedFormFunction``.
    """

    @staticmethod
    def forward(ctx, problem, mode, *params):
        z = problem.solve(params).z
        ctx.problem, ctx.mode = problem, mode
        ctx.save_for_backward(*params, z)
        return z

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved_tensors
        if torch.is_grad_enabled() or len(saved) != 2:
            # double backward (the re-solving path) and several parameters: ``ClosedFormFunction``'s
            return ClosedFormFunction.backward(ctx, g)
        # ``ClosedFormFunction.backward`` with the Python work of a call cut down (it runs once per
        # activation per training step). With one parameter (every activation) ``needs`` is
        # ``(True,)``: autograd calls a backward only when some input needs a gradient.
        a, z = saved
        (grad,) = ctx.mode.vjp(ctx.problem, (a,), Solution(z=z), g, _NEEDS_ONE)
        return None, None, sum_to_shape(grad, a.shape)


#: ``needs`` of a one-parameter closed form whose backward runs
_NEEDS_ONE = (True,)


#: the part of the message with which ``Function.apply`` refuses a ``forward(ctx, ...)`` Function
#: under a ``torch.func`` transform (vmap, grad, jacrev, ...), before running it
_FUNCTORCH_REFUSAL = "must override the setup_context"


def apply_closed_form(problem, mode, params) -> torch.Tensor:
    """``z = problem.solve(params).z``, differentiable through ``mode``: through
    ``ClosedFormFunction`` under ``torch.compile`` and ``torch.func`` transforms, through
    ``_EagerClosedFormFunction`` otherwise (same values and gradients, less per-call overhead)."""
    if not torch.compiler.is_compiling():
        try:
            return _EagerClosedFormFunction.apply(problem, mode, *params)
        except RuntimeError as err:
            if _FUNCTORCH_REFUSAL not in str(err):
                raise
    return ClosedFormFunction.apply(problem, mode, *params)


def _save(ctx, problem, mode, params, sol: Solution, z: torch.Tensor) -> None:
    """What ``ArgminFunction.backward`` reads: the parameters, ``z``, the status, the duals and the
    cache saved by position (``ctx.layout``), the diagnostics on the context."""
    ctx.problem, ctx.mode = problem, mode
    ctx.layout = (len(params), tuple(sol.duals), tuple(sol.cache))
    ctx.diagnostics = (sol.iterations, sol.residuals)
    ctx.save_for_backward(*params, z, sol.status, *sol.duals.values(), *sol.cache.values())


class ArgminFunction(torch.autograd.Function):
    """``z* = argmin_z E(z; θ)`` for an iterative solver, as an autograd node.

    Inputs: ``problem, mode, warm_start, box, *params``. ``box`` is a list into which the forward
    puts the whole ``Solution``, so that the caller receives its other tensors (multipliers,
    statuses, solver caches); they are not differentiable (made without gradient tracking). The
    backward's ``Solution`` is the whole one: ``z``, ``status``, ``duals`` and ``cache`` saved
    beside the parameters (by position), ``iterations`` and ``residuals`` (diagnostics, which no
    built-in ``vjp`` reads but a ``SolverError`` raised in a backward reports) kept on the context.
    Output: ``z`` alone — a Function's cost per call grows with its number of outputs (each is
    wrapped and marked), which at batch size 1 is a sizeable part of a small solve.
    """

    @staticmethod
    def forward(ctx, problem, mode, warm_start, box, *params):
        sol = problem.solve(params, warm_start=warm_start)
        box.append(sol)
        _save(ctx, problem, mode, params, sol, sol.z)
        return sol.z

    @staticmethod
    def backward(ctx, g):
        n, dual_keys, cache_keys = ctx.layout
        saved = ctx.saved_tensors
        k = n + 2 + len(dual_keys)
        iterations, residuals = ctx.diagnostics
        solution = Solution(z=saved[n], duals=dict(zip(dual_keys, saved[n + 2:k])), status=saved[n + 1],
                            iterations=iterations, residuals=residuals, cache=dict(zip(cache_keys, saved[k:])))
        needs = ctx.needs_input_grad[4:]
        params = saved[:n]
        if torch.is_grad_enabled():
            grads = _graph_building_vjp(ctx.problem, ctx.mode, params, solution, g, needs)
        else:
            grads = _vjp_grads(ctx.problem, ctx.mode, params, solution, g, needs)
        return (None, None, None, None, *grads)

    @staticmethod
    def jvp(ctx, *tangents):
        raise NotImplementedError(
            "forward-mode differentiation (torch.func.jvp, jacfwd, hessian; torch.autograd.forward_ad) "
            f"through {type(ctx.problem).__name__}'s solver is not implemented: use reverse mode "
            "(torch.func.grad, torch.func.vjp, torch.autograd).")


#: the message for a batching transform (vmap, jacrev, ...) over a solver layer
_BATCHING_REFUSAL = (
    "torch.func.vmap (and jacrev, jacfwd, hessian, which batch with it) cannot run {}'s solver or its "
    "backward: they read values on the host (convergence tests, data-dependent loops). Pass the batch "
    "as the leading dimension of the parameters instead (every solver layer is batched), and use "
    "torch.func.grad, torch.func.vjp or torch.autograd for gradients.")


#: the message for a torch.func transform over a solver that differentiates with torch.autograd
_AUTOGRAD_INSIDE_REFUSAL = (
    "torch.func transforms (grad, vjp, ...) cannot run {}'s solver or its backward: they differentiate "
    "your function with torch.autograd inside (gradients, vector-Jacobian products), which a "
    "transformed function may not do. Use torch.autograd (loss.backward(), torch.autograd.grad); "
    "QP, lasso and activation layers work under torch.func.grad and torch.func.vjp.")


def _refuse_transform(err: RuntimeError, problem) -> None:
    """Raise the library's ``NotImplementedError`` for a ``torch.func`` transform's refusal
    ``err`` (batching, or torch.autograd inside a transformed function); return for other errors."""
    text = str(err)
    if "vmap" in text or "Batching rule" in text:
        raise NotImplementedError(_BATCHING_REFUSAL.format(type(problem).__name__)) from err
    if "functorch transform" in text:
        raise NotImplementedError(_AUTOGRAD_INSIDE_REFUSAL.format(type(problem).__name__)) from err


def _graph_building_vjp(problem, mode, params, solution, g, needs):
    """The gradients of a backward that builds a graph of its own (``create_graph=True``, and every
    backward under ``torch.func.grad``). Where ``problem`` differentiates ``mode``'s gradient exactly
    (``ArgminProblem.second_derivative_modes``; ``FirstOrder``, whose gradient is zero), the
    multipliers and factorisations, constants for autograd, are replaced by the problem's
    differentiable expression of its solution. Elsewhere the first-order gradients are returned
    with a node that raises ``NotImplementedError`` when they are differentiated: a first-order use
    works, a second derivative is refused instead of being wrong."""
    name = getattr(mode, "name", None)
    anchors = (*params, g)   # (the helpers keep those that require grad)
    if name == "first_order":   # zero gradients, whose derivatives are zero
        return with_zero_derivatives(_vjp_grads(problem, mode, params, solution, g, needs), anchors)
    if name in problem.second_derivative_modes:
        with second_order_notes() as notes:
            solution = problem.differentiable_solution(solution, params)
            grads = _vjp_grads(problem, mode, params, solution, g, needs)
        # a gradient left without a graph (every element's derivatives dropped) gets zero ones; the
        # notes of elements whose second-order terms were dropped are warned about when used
        return with_notes(with_zero_derivatives(grads, anchors), notes, anchors)
    with torch.no_grad():
        grads = _vjp_grads(problem, mode, detached(params), solution.detach(), g.detach(), needs)
    supported = sorted(problem.second_derivative_modes)
    message = (
        f"second derivatives (a backward with create_graph=True, or nested torch.func.grad) through "
        f"{type(problem).__name__} with {mode!r} are not implemented: its gradient is computed from "
        "solver iterates that are constants for autograd, so the gradient's own derivative would be "
        "wrong. " + (f"Modes with exact second derivatives for this problem: {supported}. " if supported else "")
        + "For a fixed-point or energy layer, differentiate through the iterations with mode=Unrolled(t).")
    return refused_when_differentiated(grads, message, anchors)


class _TransformArgminFunction(torch.autograd.Function):
    """``ArgminFunction`` in the ``setup_context`` form, which ``torch.func`` transforms require:
    ``torch.func.grad`` and ``torch.func.vjp`` run the solver and the mode's backward as autograd
    does. Transforms that batch the function (``vmap``, and ``jacrev``/``jacfwd``/``hessian``,
    built on it) are refused with a ``NotImplementedError``: the solvers read values on the host
    (convergence tests, data-dependent loops), which a batching transform cannot trace — pass the
    batch as a leading dimension instead. Same inputs, output, saved tensors and gradients."""

    @staticmethod
    @_with_cached_signature
    def forward(problem, mode, warm_start, box, *params):
        sol = problem.solve(params, warm_start=warm_start)
        box.append(sol)
        return sol.z

    @staticmethod
    def setup_context(ctx, inputs, output):
        problem, mode, _, box, *params = inputs
        _save(ctx, problem, mode, params, box[-1], output)

    @staticmethod
    def backward(ctx, g):
        try:
            return ArgminFunction.backward(ctx, g)
        except RuntimeError as err:   # a transform refusing the backward: the library's message
            _refuse_transform(err, ctx.problem)
            raise

    @staticmethod
    def vmap(info, in_dims, problem, *args):
        raise NotImplementedError(_BATCHING_REFUSAL.format(type(problem).__name__))

    jvp = staticmethod(ArgminFunction.jvp)


class _Box(list):
    """The list into which the forward puts its ``Solution`` (``ArgminFunction``'s ``box``): a
    subclass, which ``torch.func`` transforms pass as it is (a plain list they rebuild, and the
    forward's ``Solution`` would not reach ``setup_context``)."""


@torch.compiler.disable
def _apply_solver_function(problem, mode, params, warm_start: Solution | None) -> Solution:
    box: list[Solution] = _Box()
    try:
        z = ArgminFunction.apply(problem, mode, warm_start, box, *params)
    except RuntimeError as err:   # under a torch.func transform (refused before anything ran)
        if _FUNCTORCH_REFUSAL not in str(err):
            raise
        try:
            z = _TransformArgminFunction.apply(problem, mode, warm_start, box, *params)
        except RuntimeError as inner:
            _refuse_transform(inner, problem)
            raise
    sol = box[0]
    others = [sol.status, sol.iterations, *sol.duals.values(), *sol.residuals.values(), *sol.cache.values()]
    if any(t is not None and t.requires_grad for t in others):
        # a parameter passed through by the solver: cut from the graph (only z is differentiable)
        return dataclasses.replace(sol.detach(), z=z)
    return Solution(z=z, duals=sol.duals, status=sol.status, iterations=sol.iterations,
                    residuals=sol.residuals, cache=sol.cache)


def apply_argmin_function(problem, mode, params, warm_start: Solution | None = None) -> Solution:
    """Solve ``problem`` at ``params`` and return a ``Solution`` whose ``z`` is differentiable
    through ``mode``.

    Closed forms (``problem.closed_form``) go through ``apply_closed_form`` and compile into a
    ``torch.compile`` graph; iterative solvers go through ``ArgminFunction``, run outside it.
    """
    if problem.closed_form:
        return Solution(z=apply_closed_form(problem, mode, params))
    return _apply_solver_function(problem, mode, params, warm_start)
