r"""Check a layer's forward and gradients against cvxpy: ``check_against_cvxpy``, ``assert_close_to_cvxpy``.

The reference is a solution we did not write: cvxpy with Clarabel at tight tolerance (gap and
feasibility 1e-12). Gradients are compared along random directions, by central finite
differences of reference solutions:

.. math::

    \underbrace{\Big\langle \nabla_x \langle w, f(x)\rangle_b,\; d \Big\rangle}_{\text{layer (backward)}}
    \quad\text{vs}\quad
    \Big\langle w_b,\; \frac{r_b(x + h d) - r_b(x - h d)}{2h} \Big\rangle ,

for a random cotangent ``w`` of the outputs and a random direction ``d`` of every floating input
(``r`` = the reference), per batch element ``b`` (the leading index of the outputs), so that a
shared (unbatched) input's gradient is checked element by element too. The error of a
directional derivative is reported as ``|layer − fd| / max(1, |fd|)`` (absolute below 1, relative
above).

**Finite differences.** The reference is accurate to ~1e-10 on well-posed LPs/QPs, so a
difference quotient has noise ~1e-10/h; the solution maps of LPs/QPs are piecewise linear in the
linear terms and right-hand sides (``q``, ``h``, ``b``): there the quotient is exact unless
``x ± hd`` crosses a kink, and the default ``step = 1e-4`` keeps the noise ~1e-6. Where the
parameters enter matrices the map is smooth within a piece and the truncation error is O(h²).
At a weakly active constraint the two-sided derivative does not exist; the central quotient is
then the average of the two one-sided ones and the layer's one-sided ``"implicit"`` gradient
differs from it by design.

**Which reference.** ``reference=`` (a callable ``(*numpy inputs) -> output array or tuple``)
if given; otherwise ``layer.cvxpy_reference()`` if the layer defines it (``layers.CvxpyLayer``);
otherwise a builder registered for the layer's type with ``register_cvxpy_reference`` (the
``layers`` package registers ``QPLayer`` and ``LassoLayer``); otherwise, for modules holding a
declared activation problem (``.problem`` a ``ReLUProblem``, ``BoxProblem``,
``SparsemaxProblem`` or ``SoftmaxProblem``, e.g. ``layers.ArgminReLU``), the activation
references of ``declarative.reference.activations``.

Examples::

    >>> from declarative.testing import assert_close_to_cvxpy
    >>> report = assert_close_to_cvxpy(layer, A, b)     # raises AssertionError on a mismatch
    >>> print(report)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

__all__ = ["CvxpyCheckReport", "assert_close_to_cvxpy", "check_against_cvxpy",
           "register_cvxpy_reference"]

_REGISTRY: dict[type, Callable] = {}


def register_cvxpy_reference(cls: type, builder: Callable) -> None:
    """Register how instances of ``cls`` map to a cvxpy reference.

    Args:
        cls: a layer class (subclasses inherit the registration).
        builder: ``builder(layer) -> reference``, where ``reference(*inputs)`` takes the layer's
            inputs as numpy float64 arrays (non-tensor inputs unchanged) and returns the cvxpy
            solution(s) with the shapes of the layer's output(s).
    """
    if not isinstance(cls, type) or not callable(builder):
        raise TypeError(f"register_cvxpy_reference: expected a class and a callable, got "
                        f"{type(cls).__name__} and {type(builder).__name__}")
    _REGISTRY[cls] = builder


@dataclass
class CvxpyCheckReport:
    """What ``check_against_cvxpy`` measured.

    Attributes:
        forward_error: ``(E,)`` max absolute error of the outputs per element.
        gradient_error: ``(K, E)`` error ``|layer − fd| / max(|fd|, min(1, s))`` of the
            directional derivative along each of the ``K`` random directions, per element, with
            ``s`` the largest ``|fd|`` of the check (relative for large derivatives; for small
            ones relative to their scale, so that a gradient wrong everywhere cannot pass).
        layer_derivative, fd_derivative: ``(K, E)`` the two directional derivatives.
        step: the finite-difference step ``h``.
    """

    forward_error: np.ndarray
    gradient_error: np.ndarray
    layer_derivative: np.ndarray
    fd_derivative: np.ndarray
    step: float

    @property
    def max_forward_error(self) -> float:
        return float(np.max(self.forward_error, initial=0.0))

    @property
    def max_gradient_error(self) -> float:
        return float(np.max(self.gradient_error, initial=0.0))

    def failures(self, forward_tol: float, gradient_tol: float) -> list[str]:
        """Messages for the elements above tolerance (empty if everything passes)."""
        out = [f"element {i}: forward error {e:.3g} > {forward_tol:g}"
               for i, e in enumerate(self.forward_error) if not e <= forward_tol]
        for k, row in enumerate(self.gradient_error):
            out += [f"direction {k}, element {i}: gradient error {e:.3g} > {gradient_tol:g} "
                    f"(layer {self.layer_derivative[k, i]:.10g}, finite differences "
                    f"{self.fd_derivative[k, i]:.10g})"
                    for i, e in enumerate(row) if not e <= gradient_tol]
        return out

    def __str__(self) -> str:
        return (f"CvxpyCheckReport: {self.forward_error.size} elements, "
                f"{self.gradient_error.shape[0]} directions, step {self.step:g}: max forward error "
                f"{self.max_forward_error:.3g}, max gradient error {self.max_gradient_error:.3g}")


# -- references ---------------------------------------------------------------------------------
def _activation_reference(layer):
    from .activations import BoxProblem, ReLUProblem, SoftmaxProblem, SparsemaxProblem
    from .reference.activations import activation_reference

    prob = getattr(layer, "problem", None)
    if isinstance(prob, ReLUProblem):
        return lambda x: activation_reference("relu", x)
    if isinstance(prob, BoxProblem):
        return lambda x: activation_reference("box", x, lo=prob.lo, hi=prob.hi)
    for cls, name in ((SparsemaxProblem, "sparsemax"), (SoftmaxProblem, "softmax")):
        if isinstance(prob, cls):
            dim = prob.dim
            return lambda x: np.moveaxis(activation_reference(name, np.moveaxis(x, dim, -1)), -1, dim)
    return None


def _find_reference(layer_or_fn, reference):
    if reference is not None:
        return reference
    if hasattr(layer_or_fn, "cvxpy_reference"):
        return layer_or_fn.cvxpy_reference()
    for cls in type(layer_or_fn).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls](layer_or_fn)
    ref = _activation_reference(layer_or_fn)
    if ref is not None:
        return ref
    raise TypeError(f"check_against_cvxpy: no cvxpy reference known for {type(layer_or_fn).__name__}; "
                    f"pass reference=callable or register one with register_cvxpy_reference")


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _to_numpy(x):
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else x


def _run_reference(reference, inputs) -> list[np.ndarray]:
    return [np.asarray(r, dtype=np.float64) for r in _as_tuple(reference(*[_to_numpy(x) for x in inputs]))]


def _elements(outs) -> int:
    """The number of elements (leading size shared by every output), 1 if none is shared."""
    leads = {o.shape[0] if o.dim() else None for o in outs}
    return leads.pop() if len(leads) == 1 and None not in leads else 1


def _per_element_dot(ws, outs, E) -> np.ndarray:
    """``Σ_j <w_j[b], out_j[b]>`` for every element ``b`` (outputs as numpy arrays)."""
    tot = np.zeros(E)
    for w, o in zip(ws, outs):
        prod = np.asarray(w) * np.asarray(o)
        tot += prod.reshape(E, -1).sum(-1) if E > 1 else prod.sum()
    return tot


# -- the check ----------------------------------------------------------------------------------
def check_against_cvxpy(layer_or_fn, *inputs, reference: Callable | None = None,
                        directions: int = 2, step: float = 1e-4, seed: int = 0,
                        per_element: bool = True) -> CvxpyCheckReport:
    """Compare a layer (or function) with cvxpy solutions: forward, and gradients along random
    directions by central finite differences of the reference (see the module docstring).

    Args:
        layer_or_fn: a module or callable returning a tensor or a tuple of tensors.
        *inputs: its inputs; floating tensors are differentiated and perturbed, anything else
            (floats, None, integer tensors) is passed unchanged.
        reference: ``(*numpy inputs) -> array or tuple of arrays`` with the outputs' shapes; found
            automatically when None (module docstring).
        directions: number ``K`` of random (cotangent, direction) pairs.
        step: finite-difference step ``h`` (directions have unit-variance entries).
        seed: seed of the random directions.
        per_element: one backward per element (errors per element, shared inputs included); if
            False, one backward per direction and the errors are of the whole batch's sum.

    Returns:
        ``CvxpyCheckReport`` (``forward_error``, ``gradient_error``, ...).
    """
    ref = _find_reference(layer_or_fn, reference)
    if not isinstance(step, (int, float)) or not step > 0:
        raise ValueError(f"step: expected a positive float, got {step!r}")
    diff = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    leaves = list(inputs)
    for i in diff:
        leaves[i] = inputs[i].detach().clone().requires_grad_(True)
    outs = _as_tuple(layer_or_fn(*leaves))
    E = _elements(outs) if per_element else 1
    expected = _run_reference(ref, inputs)
    if len(expected) != len(outs):
        raise ValueError(f"reference: expected {len(outs)} outputs (those of the layer), got {len(expected)}")
    fwd = np.zeros(E)
    for o, r in zip(outs, expected):
        if tuple(o.shape) != r.shape:
            raise ValueError(f"reference: expected an output of shape {tuple(o.shape)}, got {r.shape}")
        err = np.abs(_to_numpy(o) - r)
        fwd = np.maximum(fwd, err.reshape(E, -1).max(-1) if E > 1 else err.max(initial=0.0))
    gen = np.random.default_rng(seed)
    lay, fd = np.zeros((directions, E)), np.zeros((directions, E))
    for k in range(directions):
        ws = [gen.standard_normal(o.shape) for o in outs]
        ds = {i: gen.standard_normal(tuple(inputs[i].shape)) for i in diff}
        lay[k] = _layer_derivative(outs, [leaves[i] for i in diff], ws, [ds[i] for i in diff], E)
        plus, minus = list(inputs), list(inputs)
        for i in diff:
            x = _to_numpy(inputs[i])
            plus[i], minus[i] = x + step * ds[i], x - step * ds[i]
        rp, rm = _run_reference(ref, plus), _run_reference(ref, minus)
        fd[k] = _per_element_dot(ws, [(a - b) / (2 * step) for a, b in zip(rp, rm)], E)
    # relative where the derivative is large, else relative to the largest derivative of the check
    # (capped at 1): a gradient that is wrong everywhere (e.g. zero) fails however small the
    # derivatives are (an absolute error would pass it when every derivative is ~1e-5)
    scale = min(1.0, float(np.abs(fd).max(initial=0.0)))
    err = np.abs(lay - fd) / np.maximum(np.abs(fd), scale if scale > 0 else 1.0)
    return CvxpyCheckReport(forward_error=fwd, gradient_error=err, layer_derivative=lay,
                            fd_derivative=fd, step=float(step))


def _layer_derivative(outs, xs, ws, ds, E) -> np.ndarray:
    """``<∇_x Σ_j <w_j[b], out_j[b]>, d>`` for every element ``b`` (one backward each)."""
    res = np.zeros(E)
    diffable = [(o, w) for o, w in zip(outs, ws) if o.requires_grad]
    if not diffable or not xs:
        return res
    for b in range(E):
        grads_out = []
        for o, w in diffable:
            wt = torch.as_tensor(w, dtype=o.dtype, device=o.device)
            if E > 1:
                mask = torch.zeros(o.shape[0], dtype=o.dtype, device=o.device)
                mask[b] = 1
                wt = wt * mask.reshape(-1, *([1] * (o.dim() - 1)))
            grads_out.append(wt)
        grads = torch.autograd.grad([o for o, _ in diffable], xs, grads_out, retain_graph=True,
                                    allow_unused=True)
        res[b] = sum(float((g.detach().double().cpu().numpy() * d).sum())
                     for g, d in zip(grads, ds) if g is not None)
    return res


def assert_close_to_cvxpy(layer_or_fn, *inputs, forward_tol: float = 1e-6,
                          gradient_tol: float = 1e-4, **kwargs) -> CvxpyCheckReport:
    """``check_against_cvxpy`` that raises ``AssertionError`` listing every element whose forward
    error exceeds ``forward_tol`` or whose gradient error exceeds ``gradient_tol``; returns the
    report otherwise. ``kwargs`` go to ``check_against_cvxpy``."""
    report = check_against_cvxpy(layer_or_fn, *inputs, **kwargs)
    bad = report.failures(forward_tol, gradient_tol)
    if bad:
        raise AssertionError(f"{report}\n" + "\n".join(bad[:20])
                             + (f"\n... and {len(bad) - 20} more" if len(bad) > 20 else ""))
    return report
