r"""Shared machinery of the inference-learning methods: the batched inference loop with per-element
statuses, the report every method returns, and the step from per-layer errors to ``.grad``.

**The loop.** Every iterative inference here is a map ``z ← T(z)`` on the list of layer states
(a block-coordinate sweep, a projected-gradient step, a gradient step), iterated until the largest
change of any coordinate is at most ``tol · β`` (the nudged states differ from the free ones by
O(β) and every method divides their difference by β, so the tolerance is relative to β) or until
``max_iter`` sweeps. Each batch element is frozen as soon as it converges; its status is

* ``SOLVED``: converged within ``max_iter``;
* ``MAX_ITERATIONS``: still moving at the limit (its gradient is used, approximate);
* ``NON_FINITE``: an iterate became NaN/inf (the element is frozen at its last finite iterate and
  contributes nothing to the gradient).

One element's failure never affects the others: the map is applied to the whole batch, but frozen
elements keep their state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from declarative.errors import SolverError
from declarative.modes import check_beta
from declarative.status import Status
from declarative.validation import check_count, check_positive

from .network import LayeredNetwork, layered_network
from .outputs import Output, make_output

__all__ = ["InferenceReport", "LearningMethod", "iterate", "check_discount"]


@dataclass
class InferenceReport:
    """What a learning method returns for one mini-batch.

    Attributes:
        loss: ``(B,)`` the loss of the forward pass (the network's prediction), detached.
        logits: ``(B, n_L)`` the forward pass's last pre-activation ``a_L``.
        status: ``(B,)`` int64 ``Status`` codes of the inference (all ``SOLVED`` for closed forms).
        iterations: ``(B,)`` int64 inference sweeps per element, summed over the phases
            (0 for closed forms).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    status: torch.Tensor
    iterations: torch.Tensor

    @property
    def mean_iterations(self) -> float:
        """The batch mean of ``iterations`` (host sync)."""
        return float(self.iterations.double().mean())

    @property
    def converged(self) -> torch.Tensor:
        """``(B,)`` bool, the elements whose inference reached the tolerance."""
        return self.status == int(Status.SOLVED)

    def raise_for_status(self, what: str = "inference") -> "InferenceReport":
        """Raise a ``SolverError`` naming the elements that did not converge; return self otherwise."""
        err = SolverError.from_status(self.status, None, what)
        if err is not None:
            raise err
        return self


def check_discount(discount) -> float:
    """A discount (feedback) factor γ in (0, 1]."""
    if isinstance(discount, bool) or not isinstance(discount, (int, float)):
        raise TypeError(f"discount: expected a float in (0, 1], got {type(discount).__name__}")
    discount = float(discount)
    if not (0.0 < discount <= 1.0):
        raise ValueError(f"discount: expected a float in (0, 1], got {discount}")
    return discount


def iterate(state: list[torch.Tensor], update: Callable[[list[torch.Tensor]], list[torch.Tensor]], *,
            tol: float, max_iter: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Iterate ``state ← update(state)`` per batch element until ``max_k ‖Δz_k‖_∞ ≤ tol``.

    Args:
        state: the layer states, each ``(B, n_k)``.
        update: one sweep of the method, applied to the whole batch.
        tol: absolute tolerance on the largest change of a sweep.
        max_iter: sweep limit.

    Returns:
        ``(state, status, iterations)`` with ``(B,)`` int64 status codes and sweep counts.

    Shape:
        - state entries: ``(B, n_k)``; status, iterations: ``(B,)``.
    """
    batch, device = state[0].shape[0], state[0].device
    running = torch.ones(batch, dtype=torch.bool, device=device)
    bad = torch.zeros(batch, dtype=torch.bool, device=device)
    iterations = torch.zeros(batch, dtype=torch.int64, device=device)
    for _ in range(max_iter):
        new = update(state)
        change = torch.zeros(batch, dtype=state[0].dtype, device=device)
        finite = torch.ones(batch, dtype=torch.bool, device=device)
        for old, nxt in zip(state, new):
            change = torch.maximum(change, (nxt - old).abs().amax(-1))
            finite &= torch.isfinite(nxt).all(-1)
        accept = running & finite
        keep = (~accept)[:, None]
        state = [torch.where(keep, old, nxt) for old, nxt in zip(state, new)]
        iterations += running.long()
        bad |= running & ~finite
        running = accept & ~(change <= tol)
        if not bool(running.any()):
            break
    status = torch.full((batch,), int(Status.SOLVED), dtype=torch.int64, device=device)
    status = torch.where(running, torch.full_like(status, int(Status.MAX_ITERATIONS)), status)
    status = torch.where(bad, torch.full_like(status, int(Status.NON_FINITE)), status)
    return state, status, iterations


def worse_status(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise: ``a`` where it is not ``SOLVED``, else ``b`` (the first failure wins)."""
    return torch.where(a == int(Status.SOLVED), b, a)


def zero_unusable(states: list[torch.Tensor], status: torch.Tensor) -> list[torch.Tensor]:
    """``states`` with the rows of unusable elements (see ``usable``) set to 0, so that a huge or
    non-finite state cannot leak into the batch's gradient through ``0 · inf``."""
    keep = usable(status)
    return [torch.where(keep, s, torch.zeros_like(s)) for s in states]


def usable(status: torch.Tensor) -> torch.Tensor:
    """``(B, 1)`` mask of the elements whose states may enter the gradient: ``SOLVED`` or
    ``MAX_ITERATIONS`` (not ``NON_FINITE``, nor ``UNBOUNDED_BELOW`` from ``declarative.minimize``)."""
    return ((status == int(Status.SOLVED)) | (status == int(Status.MAX_ITERATIONS)))[:, None]


class LearningMethod:
    """Base class: a rule turning a mini-batch ``(x, y)`` into weight gradients in ``.grad``.

    ``method(model, x, y)`` reads the layered network of ``model`` (see ``layered_network``), runs
    the method's inference, and *accumulates* the gradient of the batch-mean objective into the
    ``.grad`` of every ``nn.Linear`` weight and bias (as ``loss.backward()`` would: call
    ``optimizer.zero_grad()`` first). It returns an ``InferenceReport``; the last one is also kept in
    ``method.last_report``. ``method.gradients(model, x, y)`` returns the gradients without touching
    ``.grad``.

    Subclasses implement ``_layer_grads(net, x, y) -> (grads, report)`` with ``grads`` a list of
    ``(∇W_k, ∇b_k)`` per layer, already averaged over the batch. β acts on the *per-example* loss
    (its nudge is ``β ∇ℓ_i``); the parameters' gradient is the batch mean.

    Args:
        output: ``"softmax"`` (softmax + cross-entropy, default) or ``"squared"`` (identity +
            squared error), or an ``Output``.
    """

    name = "method"
    iterative = False

    def __init__(self, output: str | Output = "softmax"):
        self.output = make_output(output)
        self.last_report: InferenceReport | None = None

    # -- public -----------------------------------------------------------------------------------
    def gradients(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """``([∇W_1, ∇b_1, …], report)``, in the order of ``layered_network(model).parameters()``."""
        return self._gradients(layered_network(model), x, y)

    def _gradients(self, net: LayeredNetwork, x, y):
        net.check_input(x, y, net.widths[-1])
        with torch.no_grad():
            grads, report = self._layer_grads(net, x.detach(), y)
        flat = []
        for lin, (gw, gb) in zip(net.linears, grads):
            flat.append(gw)
            if lin.bias is not None:
                flat.append(gb)
        self.last_report = report
        return flat, report

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> InferenceReport:
        net = layered_network(model)
        flat, report = self._gradients(net, x, y)
        for p, g in zip(net.parameters(), flat):
            if p.grad is None:
                p.grad = g  # a fresh tensor of this call
            else:
                p.grad.add_(g)
        return report

    # -- helpers for subclasses -------------------------------------------------------------------
    def _forward_report(self, net: LayeredNetwork, x, y, status=None, iterations=None, logits=None):
        """The report of a batch; ``logits`` (the forward's ``a_L``) are recomputed when not given."""
        if logits is None:
            logits = net.forward(x)[0][-1]
        batch = x.shape[0]
        if status is None:
            status = torch.full((batch,), int(Status.SOLVED), dtype=torch.int64, device=x.device)
        if iterations is None:
            iterations = torch.zeros(batch, dtype=torch.int64, device=x.device)
        return InferenceReport(loss=self.output.logit_loss(logits, y), logits=logits, status=status,
                               iterations=iterations)

    @staticmethod
    def _hebbian(post: torch.Tensor, pre: torch.Tensor, scale: float = 1.0):
        """``(scale · mean_b post_b pre_bᵀ, scale · mean_b post_b)``."""
        batch = post.shape[0]
        return (post.T @ pre).mul_(scale / batch), post.sum(0).mul_(scale / batch)

    def __repr__(self):
        return f"{type(self).__name__}()"


def check_inference_options(tol, max_iter) -> tuple[float, int]:
    """Validate an inference tolerance (> 0, relative to β) and iteration limit (≥ 1)."""
    return check_positive("tol", tol), check_count("max_iter", max_iter, 1)


def check_method_beta(beta, name: str) -> float:
    """β: a finite float > 0 (``declarative.check_beta``)."""
    return check_beta(beta, name)


