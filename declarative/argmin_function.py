"""The one ``torch.autograd.Function`` through which every declared problem is differentiated.

Its forward calls ``problem.solve``; its backward hands the cotangent ``g = ∂ℓ/∂z`` to the gradient
mode's ``vjp``. Problems never contain a backward and modes never contain a solver, so a new
problem gets every mode and a new mode works for every problem that declares what it needs.
"""

from __future__ import annotations

import torch
from torch._functorch.autograd_function import custom_function_call

from .broadcasting import sum_to_shape
from .solution import Solution


class ArgminFunction(torch.autograd.Function):
    """``z* = argmin_z E(z; θ)`` as an autograd node (forward + ``setup_context`` + backward).

    Inputs: ``problem, mode, warm_start, names_box, *params``. ``names_box`` is a list that the
    forward fills with the names of the flattened ``Solution`` fields, so that the caller can
    rebuild the ``Solution`` from the tuple of output tensors.
    Outputs: ``(z, *other solution tensors)``; only ``z`` is differentiable.
    """

    generate_vmap_rule = True

    @classmethod
    def apply(cls, *args):
        # ``Function.apply`` binds the arguments with ``inspect.signature`` on every call when
        # ``setup_context`` is defined (~50 µs); ``forward`` has no defaults or keywords, so the
        # binding is the identity and is skipped here. Everything else is as in ``Function.apply``.
        if not torch._C._are_functorch_transforms_active():
            return super(torch.autograd.Function, cls).apply(*args)
        return custom_function_call(cls, *args)

    @staticmethod
    def forward(problem, mode, warm_start, names_box, *params):
        sol = problem.solve(params, warm_start=warm_start)
        names, tensors = sol.flatten()
        names_box[:] = names
        return tuple(tensors)

    @staticmethod
    def setup_context(ctx, inputs, output):
        # Kept lean: this and ``backward`` run once per layer per training step (bench_fenchel.py).
        ctx.problem, ctx.mode, ctx.names = inputs[0], inputs[1], tuple(inputs[3])
        ctx.n_params = len(inputs) - 4
        if len(output) > 1:
            ctx.mark_non_differentiable(*output[1:])
            # only z is differentiable: no zero cotangents materialised for the other outputs
            ctx.set_materialize_grads(False)
        ctx.save_for_backward(*inputs[4:], *output)

    @staticmethod
    def backward(ctx, g, *_aux_grads):
        saved = ctx.saved_tensors
        n = ctx.n_params
        params = saved[:n]
        solution = Solution.unflatten(ctx.names, saved[n:])
        if g is None:   # (materialize_grads off: z received no cotangent)
            g = torch.zeros_like(solution.z)
        if ctx.problem.closed_form and torch.is_grad_enabled():
            # Double backward (create_graph=True): a closed form re-solved in torch ops makes the
            # backward's dependence on z* exact. Through the saved output it would be differentiated
            # by this mode's own vjp, so e.g. Contrastive's second derivative would mix in its O(β) bias.
            solution = ctx.problem.solve(params)
        needs = ctx.needs_input_grad[4:]
        grads = ctx.mode.vjp(ctx.problem, params, solution, g, needs)
        # Each gradient is summed back to its parameter's shape (the saved parameter; None ones need none).
        return (None, None, None, None,
                *[sum_to_shape(grad, p.shape) if need and grad is not None else None
                  for grad, need, p in zip(grads, needs, params)])


def apply_argmin_function(problem, mode, params, warm_start: Solution | None = None) -> Solution:
    """Solve ``problem`` at ``params`` and return a ``Solution`` whose ``z`` is differentiable
    through ``mode``."""
    names: list[str] = []
    outputs = ArgminFunction.apply(problem, mode, warm_start, names, *params)
    if not isinstance(outputs, tuple):
        outputs = (outputs,)
    return Solution.unflatten(names, outputs)
