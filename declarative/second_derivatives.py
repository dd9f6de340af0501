"""Second derivatives through solver layers: the pieces a backward that builds a graph of its own
(``create_graph=True``, every backward under ``torch.func.grad``) uses, ``docs/guide/modes.md``.

A solver's gradient is computed from things autograd sees as constants (multipliers saved beside
``z``, the forward's factorisations, a linear solve's iterates). Problems that re-express their
solution in torch ops (``ArgminProblem.differentiable_solution``) give exact second derivatives;
here are the rest of the rules:

* ``second_order`` — whether a backward is building a graph through data that need gradients;
* ``derivative_of`` — a value with another expression's derivative (``v + (x − x.detach())``);
* ``with_zero_derivatives`` — gradients left without a graph get exactly-zero derivatives (rather
  than autograd's "does not require grad");
* ``note_zeroed_second_derivatives`` / ``second_order_notes`` / ``with_notes`` — elements whose
  solution maps lose their second-order terms are named in a ``RuntimeWarning`` emitted when a
  derivative is actually taken through the gradients, not on a first-order use;
* ``refused_when_differentiated`` — gradients of modes without exact second derivatives raise
  ``NotImplementedError`` when differentiated, with respect to any input.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings

import torch

__all__ = ["building_graph", "derivative_of", "detached", "note_zeroed_second_derivatives",
           "refused_when_differentiated", "second_order", "second_order_notes", "with_notes",
           "with_zero_derivatives"]


def second_order(params, g: torch.Tensor | None = None) -> bool:
    """Whether a backward is building a graph of its own (``create_graph=True``) through data that
    need gradients: autograd runs a backward with gradient mode on only then."""
    return torch.is_grad_enabled() and bool(_live((*params, g)))


def detached(tensors) -> tuple:
    """The tensors detached (None stays None): data for a solve inside a backward."""
    return tuple(None if t is None else t.detach() for t in tensors)


def derivative_of(x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Zeros carrying ``x``'s derivative on the batch elements ``keep`` (``(B,)`` bool; None: all)
    and none on the others: added to a value, it lends that value ``x``'s derivative without
    changing it (``v + (x − x.detach())``)."""
    d = x - x.detach()
    return d if keep is None else torch.where(keep.reshape(-1, *([1] * (x.dim() - 1))), d, 0.0)


def _live(anchors) -> list:
    return [a for a in anchors if a is not None and a.requires_grad]


def with_zero_derivatives(grads, anchors):
    """``grads`` where each tensor without a graph is joined to every one of ``anchors`` that
    requires grad by a term that is exactly zero with zero derivatives (sums of none of their
    entries): a second derivative taken through it, with respect to any of them, is zero, as
    documented, rather than autograd's "does not require grad" or "not used in the graph"."""
    live = _live(anchors)
    if not live:
        return grads
    zero = sum(a.reshape(-1)[:0].sum() for a in live)
    return tuple(t if t is None or t.requires_grad else t + zero.to(t.dtype) for t in grads)


class _Warning:
    """One warning shared by the nodes of one backward's gradients: emitted once, by the first of
    them that a differentiation reaches (a plain object: ``torch.func`` passes it as it is)."""

    def __init__(self, message: str):
        self.message, self.sent = message, False


class _WarnWhenDifferentiated(torch.autograd.Function):
    """A zero scalar joined to ``anchors``; its backward (taken only when a derivative passes
    through it) emits the shared ``warning`` (once) and returns zeros."""

    @staticmethod
    def forward(warning, like, *anchors):
        return like.new_zeros(())

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.warning = inputs[0]

    @staticmethod
    def backward(ctx, _):
        if not ctx.warning.sent:
            ctx.warning.sent = True
            warnings.warn(ctx.warning.message, RuntimeWarning, stacklevel=2)
        return None, None, *([None] * (len(ctx.needs_input_grad) - 2))


#: the notes of a backward that builds a graph (``second_order_notes``), else None
_NOTES: contextvars.ContextVar = contextvars.ContextVar("second_order_notes", default=None)


@contextlib.contextmanager
def second_order_notes():
    """Collect, during a backward that builds a graph, the notes of ``note_zeroed_second_derivatives``
    (yields the list of messages)."""
    notes: list[str] = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def building_graph() -> bool:
    """Whether this runs inside a backward that builds a graph of its own (``second_order_notes``:
    ``create_graph=True``, every backward under ``torch.func.grad``) — not merely with gradient
    mode on, as a direct call of a problem's methods usually is."""
    return _NOTES.get() is not None


def note_zeroed_second_derivatives(zeroed: torch.Tensor, why: str, what: str) -> None:
    """Record that the solution maps of the batch elements ``zeroed`` (``(B,)`` bool) have their
    second-order terms dropped, and why (a cotangent that depends on θ still contributes through
    the first-order gradient). Inside ``second_order_notes`` (a backward that builds a graph) the
    message waits for ``with_notes``, which emits it when a derivative is taken through the
    gradients — not on a first-order use (``torch.func.grad``, a gradient penalty elsewhere in the
    model); elsewhere it is a ``RuntimeWarning`` at once."""
    if not bool(zeroed.any()):
        return
    idx = torch.nonzero(zeroed).reshape(-1).tolist()
    shown = ", ".join(map(str, idx[:20])) + (", ..." if len(idx) > 20 else "")
    message = (f"{what} second derivatives (create_graph=True, nested torch.func.grad): {why} for "
               f"{len(idx)} solved batch element(s), batch indices [{shown}]; the second-order terms "
               "of their solution maps are zero — the derivatives of their gradients are zero for a "
               "loss linear in the output (their gradients and the other elements' derivatives are exact)")
    notes = _NOTES.get()
    if notes is None:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    else:
        notes.append(message)


def with_notes(grads, notes: list, anchors):
    """``grads`` (same values), each joined to ``anchors`` by a zero term whose backward emits the
    ``notes`` as one ``RuntimeWarning``, once: at the first differentiation that reaches any of
    them."""
    live = _live(anchors)
    if not notes or not live:
        return grads
    warning = _Warning("; ".join(dict.fromkeys(notes)))
    out = []
    for t in grads:
        out.append(t if t is None else t + _WarnWhenDifferentiated.apply(warning, t, *live).to(t.dtype))
    return tuple(out)


class _RefuseWhenDifferentiated(torch.autograd.Function):
    """Identity on the gradients (copies) whose backward raises ``NotImplementedError(message)``:
    inputs ``message, k, *anchors, *grads`` with ``k`` anchors — every input that requires grad,
    so that a derivative with respect to any of them meets it."""

    @staticmethod
    def forward(message, k, *tensors):
        return tuple(t.clone() for t in tensors[k:])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.message = inputs[0]

    @staticmethod
    def backward(ctx, *_):
        raise NotImplementedError(ctx.message)


def refused_when_differentiated(grads, message: str, anchors):
    """``grads`` (same values, copies) joined to every one of ``anchors`` that requires grad by a
    node whose backward raises ``NotImplementedError(message)``."""
    live = _live(anchors)
    present = [i for i, t in enumerate(grads) if t is not None]
    if not live or not present:
        return grads
    marked = _RefuseWhenDifferentiated.apply(message, len(live), *live, *(grads[i] for i in present))
    out = list(grads)
    for i, t in zip(present, marked):
        out[i] = t
    return tuple(out)
