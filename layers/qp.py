"""``QPLayer``: a batched convex quadratic program as a differentiable layer."""

from __future__ import annotations

import torch
from torch import nn

import contrastive  # noqa: F401  (registers the "contrastive" and "symmetric" mode names)
from declarative import GradientMode, resolve_mode
from declarative.qp import QPOptions, solve_qp
from declarative.solution import Solution


class QPLayer(nn.Module):
    r"""``z* = argmin_z ½zᵀQz + qᵀz  s.t.  Gz ≤ h,  Az = b`` for a batch, as a layer.

    The forward is a batched primal–dual interior-point method in pure torch
    (``declarative.qp.solve_qp_ipm``); gradients reach all six parameters through ``mode``:

    * ``"implicit"``: the exact one-sided derivative (β → 0⁺ limit of the contrastive gradient):
      the KKT linear system under strict complementarity, the backward QP
      ``min ½dᵀQd + gᵀd s.t. G_S d = 0, G_W d ≤ 0, A d = 0`` where constraints are weakly active
      (active with zero multiplier) — there the two-sided derivative does not exist.
    * ``"contrastive"``: ``(1/β)[∂_θ𝓛(ẑ_β) − ∂_θ𝓛(z*)]`` with the nudged re-solve ``q → q + βg``
      (DESIGN.md §3.1, formula (C)); ``"symmetric"``: the centred version with ``±β``.

    **Gradient failures are per element.** With ``"implicit"``, an element whose forward solve
    failed gets zero gradients; so does a solved element whose implicit tangent fails (its backward
    QP not solved, in float32 also not by its float64 re-solve — e.g. a minimiser that is not
    unique along a direction the loss sees, where no derivative exists — or a non-finite tangent),
    with a ``RuntimeWarning`` naming its batch indices. The other elements' gradients are exact, and
    nothing is raised, whatever ``check``. Zero rather than NaN, so that one element cannot poison
    a parameter shared by the batch or the optimiser's state; turn the warning into an error with
    ``warnings.simplefilter("error", RuntimeWarning)`` to stop instead.

    Either constraint block may be omitted. Unbatched parameters (e.g. a learned ``G``) broadcast
    against batched ones and receive the gradient summed over the batch.

    Args:
        mode: ``"implicit"``, ``"contrastive"``, ``"symmetric"`` or a ``GradientMode`` object.
        beta: nudging strength, required by the contrastive modes.
        options: ``QPOptions`` (tolerances: relative residuals ≤ 1e-8 in float64, ≤ 1e-4 in
            float32 by default).
        check: raise a ``SolverError`` naming the failing batch indices of the forward solve
            (default); if False, ``solve`` returns per-element statuses instead. The backward
            never raises for a failing element (see above).

    Shape:
        - Q: ``(B, n, n)`` or ``(n, n)``;  q: ``(B, n)`` or ``(n,)``
        - G: ``(B, m, n)`` or ``(m, n)``;  h: ``(B, m)`` or ``(m,)``  (optional)
        - A: ``(B, p, n)`` or ``(p, n)``;  b: ``(B, p)`` or ``(p,)``  (optional)
        - Output: ``(B, n)``, or ``(n,)`` when every input is unbatched.

    Examples::

        >>> import torch, layers
        >>> layer = layers.QPLayer()
        >>> Q = torch.eye(3, dtype=torch.float64); G = -torch.eye(3, dtype=torch.float64)
        >>> q = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
        >>> z = layer(Q, q, G, torch.zeros(3, dtype=torch.float64))   # = relu(-q)
        >>> z.sum().backward()

    References:
        B. Amos, J. Z. Kolter, "OptNet", ICML 2017; C. Zach, "Bilevel Programs Meet Deep
        Learning", 2021.
    """

    def __init__(self, mode: str | GradientMode = "implicit", beta: float | None = None,
                 options: QPOptions | None = None, check: bool = True):
        super().__init__()
        self.mode = resolve_mode(mode, beta)
        if options is not None and not isinstance(options, QPOptions):
            raise TypeError(f"options: expected QPOptions, got {type(options).__name__}")
        self.options = options
        self.check = check

    def solve(self, Q: torch.Tensor, q: torch.Tensor, G: torch.Tensor | None = None,
              h: torch.Tensor | None = None, A: torch.Tensor | None = None,
              b: torch.Tensor | None = None, warm_start: Solution | None = None) -> Solution:
        """The full ``Solution``: ``z`` (differentiable), ``duals["lam"]``, ``duals["nu"]``,
        per-element ``status``, ``iterations`` and ``residuals``."""
        return solve_qp(Q, q, G, h, A, b, mode=self.mode, options=self.options,
                        warm_start=warm_start, check=self.check)

    def forward(self, Q: torch.Tensor, q: torch.Tensor, G: torch.Tensor | None = None,
                h: torch.Tensor | None = None, A: torch.Tensor | None = None,
                b: torch.Tensor | None = None) -> torch.Tensor:
        return self.solve(Q, q, G, h, A, b).z

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, check={self.check}"
